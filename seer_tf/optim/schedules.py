"""Learning-rate schedules of the SwAV/SEER recipes (docs/design.md section 1).

- `WarmupCosine`: SwAV's pretraining schedule with its exact discretization
  (facebookresearch/swav `main_swav.py`):

      warmup = np.linspace(start_warmup, base_lr, W)                    # both ends included
      cosine = [final + 0.5 * (base - final) * (1 + cos(pi * t / T)) for t in range(T)]
      lr_schedule = np.concatenate((warmup, cosine))                    # T = total - W

  so base_lr is used twice (last warmup step and cosine t=0) and the last scheduled step is one
  cosine tick above final_lr. SwAV indexes past the end with an IndexError; here steps past the
  end continue the formula to t = T, which is final_lr exactly. We evaluate
  0.5 * (1 + cos(pi t / T)) as sin(pi (T - t) / (2 T))^2: the same value, but accurate to float32
  rounding in relative terms at every step. In float32 the literal form has no correct digit in
  the last steps of a 114k-step decay (1 + cos x cancels) and cos(x / 2)^2 is still ~1e-3 off;
  it matters when final_lr is 0 (SwAV's default).
- `scaled_lr`: Goyal et al. 2017 linear scaling rule (SwAV/SEER: 0.3 per 256 images).
- `StepDecay`: multiply by gamma at given steps, torch `MultiStepLR` semantics (the decayed
  value applies from the boundary step on); the linear probe's x0.1 at epochs 8/16/24.
- `WarmupPlateau`: SEER's fixed LR halved when the loss stops falling (bin/pretrain's
  `optim.schedule = "plateau"`): warmup as `WarmupCosine`, then the LR is held and halved when
  the smoothed training loss has not improved for `patience` steps. A LearningRateSchedule and
  a tf.Module: its state is tf.Variables (checkpoint it as "schedule"), updated in graph by
  `observe_loss(loss)`, which the training loop calls once per step with the global loss
  (`observing_schedule(optimizer)` finds it).
- `HalveOnPlateau`: the same rule driven from Python (`update(loss)` per epoch or evaluation
  window), callable as the optimizer's LR.

Schedules compute in float32 (TPU has no float64); the optimizer casts to the variable dtype.
"""

import math

import keras
import numpy as np
import tensorflow as tf


def scaled_lr(lr_per_256, global_batch):
    """Linear scaling rule: lr_per_256 * global_batch / 256 (0.3 at 8192 images -> 9.6)."""
    return float(lr_per_256) * float(global_batch) / 256.0


@keras.saving.register_keras_serializable(package="seer_tf")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from `start_lr` to `peak_lr` over `warmup_steps`, then cosine to `final_lr`.

    Step s (0-based, the optimizer's `iterations`):
      s < W:        start + (peak - start) * s / (W - 1)        (np.linspace; W == 1 gives start)
      W <= s:       final + (peak - final) * sin(pi * (T - t) / (2 T))^2,
                    t = min(s - W, T), T = total - W   (= SwAV's 0.5 * (1 + cos(pi * t / T)))
    """

    def __init__(self, peak_lr, total_steps, warmup_steps=0, start_lr=0.0, final_lr=0.0):
        if not 0 <= warmup_steps < total_steps:
            raise ValueError(
                f"need 0 <= warmup_steps < total_steps, got {warmup_steps}, {total_steps}")
        self.peak_lr = float(peak_lr)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.start_lr = float(start_lr)
        self.final_lr = float(final_lr)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warmup, decay = float(self.warmup_steps), float(self.total_steps - self.warmup_steps)
        ramp = self.start_lr + (self.peak_lr - self.start_lr) * step / max(warmup - 1.0, 1.0)
        remaining = decay - tf.clip_by_value(step - warmup, 0.0, decay)  # T - t, exact
        half_cos = tf.square(tf.sin(remaining * (math.pi / (2.0 * decay))))
        cosine = self.final_lr + (self.peak_lr - self.final_lr) * half_cos
        return tf.where(step < warmup, ramp, cosine)

    def get_config(self):
        return dict(peak_lr=self.peak_lr, total_steps=self.total_steps,
                    warmup_steps=self.warmup_steps, start_lr=self.start_lr,
                    final_lr=self.final_lr)


@keras.saving.register_keras_serializable(package="seer_tf")
class StepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """initial_lr * gamma ** (number of boundaries <= step).

    Unlike `keras.optimizers.schedules.PiecewiseConstantDecay` (which switches after the
    boundary), the decayed value applies at the boundary step itself, as torch MultiStepLR.
    """

    def __init__(self, initial_lr, boundaries, gamma=0.1):
        self.initial_lr = float(initial_lr)
        self.boundaries = sorted(int(b) for b in boundaries)
        self.gamma = float(gamma)

    @classmethod
    def from_epochs(cls, initial_lr, epochs, steps_per_epoch, gamma=0.1):
        """E.g. the VISSL linear probe: `from_epochs(lr, (8, 16, 24), steps_per_epoch)`."""
        return cls(initial_lr, [int(e) * int(steps_per_epoch) for e in epochs], gamma)

    def __call__(self, step):
        step = tf.cast(step, tf.int64)
        if not self.boundaries:
            return tf.constant(self.initial_lr, tf.float32)
        passed = tf.reduce_sum(  # works for a scalar step and for a tensor of steps
            tf.cast(step[..., None] >= tf.constant(self.boundaries, tf.int64), tf.int32), axis=-1)
        factors = [self.gamma ** k for k in range(len(self.boundaries) + 1)]
        factors = tf.constant(factors, tf.float32)
        return self.initial_lr * tf.gather(factors, passed)

    def get_config(self):
        return dict(initial_lr=self.initial_lr, boundaries=list(self.boundaries), gamma=self.gamma)


@keras.saving.register_keras_serializable(package="seer_tf")
class HalveOnPlateau(tf.Module):
    """Fixed LR, multiplied by `factor` after `patience` updates without improvement.

    Call `update(loss)` from the host loop (per epoch or per evaluation window); a loss improves
    when it is below best - min_delta (absolute). After a cut the bad-update count restarts and
    the best loss is kept (torch ReduceLROnPlateau, mode="min", threshold_mode="abs"). NaN never
    improves. State lives in tf.Variables: put the object in the tf.train.Checkpoint (or pass it
    as the optimizer's learning_rate, which tracks it) and it resumes. Calling it returns the LR
    variable, so `LARC(learning_rate=plateau)` reads the current value every step. Create it
    inside `strategy.scope()` when training under a distribution strategy.
    """

    def __init__(self, initial_lr, patience=1, min_delta=0.0, factor=0.5, min_lr=0.0, name=None):
        super().__init__(name=name)
        if patience < 1 or not 0.0 < factor < 1.0:
            raise ValueError(f"need patience >= 1 and 0 < factor < 1, got {patience}, {factor}")
        self.initial_lr = float(initial_lr)
        self.patience = int(patience)
        self.min_delta = float(min_delta)
        self.factor = float(factor)
        self.min_lr = float(min_lr)
        self.lr = tf.Variable(self.initial_lr, trainable=False, dtype=tf.float32, name="lr")
        self.best = tf.Variable(np.inf, trainable=False, dtype=tf.float32, name="best_loss")
        self.bad_updates = tf.Variable(0, trainable=False, dtype=tf.int64, name="bad_updates")
        self.num_cuts = tf.Variable(0, trainable=False, dtype=tf.int64, name="num_cuts")

    def update(self, loss):
        """Record one loss value (Python-side, eager) and return the LR to use next."""
        loss = float(loss)
        if loss < float(self.best.numpy()) - self.min_delta:  # False for NaN
            self.best.assign(loss)
            self.bad_updates.assign(0)
        else:
            self.bad_updates.assign_add(1)
            if int(self.bad_updates.numpy()) >= self.patience:
                self.lr.assign(max(float(self.lr.numpy()) * self.factor, self.min_lr))
                self.num_cuts.assign_add(1)
                self.bad_updates.assign(0)
        return float(self.lr.numpy())

    def __call__(self):
        return self.lr

    def get_config(self):
        return dict(initial_lr=self.initial_lr, patience=self.patience, min_delta=self.min_delta,
                    factor=self.factor, min_lr=self.min_lr)

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="seer_tf")
class WarmupPlateau(keras.optimizers.schedules.LearningRateSchedule, tf.Module):
    """Linear warmup to `peak_lr`, then a fixed LR multiplied by `factor` on loss plateaus.

    `observe_loss(loss)` (graph op, once per step, cross-replica, the globally reduced loss):
      smoothed = bias-corrected EMA of the finite losses (`smoothing`; 0 = the raw loss);
      after warmup, smoothed < best - min_delta is an improvement (best = smoothed, wait = 0),
      anything else adds 1 to wait; wait == patience halves the LR (not below min_lr), wait = 0
      and best is kept (torch ReduceLROnPlateau, mode="min", threshold_mode="abs", per step).
    Non-finite losses are ignored (the loop skips those steps). Losses observed during warmup
    feed the EMA only. `__call__(step)` is the warmup ramp for step < warmup_steps, then the
    current LR variable: the optimizer reads it every step without retracing.
    """

    def __init__(self, peak_lr, warmup_steps=0, start_lr=0.0, patience=5000, min_delta=0.0,
                 min_lr=0.0, smoothing=0.0, factor=0.5, name="warmup_plateau"):
        tf.Module.__init__(self, name=name)
        if patience < 1 or not 0.0 < factor < 1.0 or not 0.0 <= smoothing < 1.0:
            raise ValueError(f"need patience >= 1, 0 < factor < 1, 0 <= smoothing < 1, got "
                             f"{patience}, {factor}, {smoothing}")
        self.peak_lr, self.warmup_steps = float(peak_lr), int(warmup_steps)
        self.start_lr, self.patience = float(start_lr), int(patience)
        self.min_delta, self.min_lr = float(min_delta), float(min_lr)
        self.smoothing, self.factor = float(smoothing), float(factor)

        def var(value, dtype, var_name):
            return tf.Variable(value, trainable=False, dtype=dtype, name=var_name,
                               aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

        self.lr = var(self.peak_lr, tf.float32, "lr")
        self.ema = var(0.0, tf.float32, "loss_ema")  # not bias-corrected
        self.best = var(np.inf, tf.float32, "best_loss")
        self.observed = var(0, tf.int64, "observed")
        self.wait = var(0, tf.int64, "wait")
        self.num_cuts = var(0, tf.int64, "num_cuts")

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        ramp = self.start_lr + (self.peak_lr - self.start_lr) * step / max(
            self.warmup_steps - 1.0, 1.0)
        return tf.where(step < self.warmup_steps, ramp, tf.convert_to_tensor(self.lr))

    def smoothed_loss(self):
        n = tf.cast(tf.maximum(self.observed, 1), tf.float32)
        return self.ema / (1.0 - tf.pow(tf.constant(self.smoothing, tf.float32), n))

    def observe_loss(self, loss):
        """Record one step's loss (a TF op; see the class docstring). Returns nothing."""
        loss = tf.cast(tf.reshape(loss, []), tf.float32)
        finite = tf.math.is_finite(loss)
        ema = self.smoothing * self.ema + (1.0 - self.smoothing) * loss
        observed = self.observed + 1
        self.ema.assign(tf.where(finite, ema, self.ema))
        self.observed.assign(tf.where(finite, observed, self.observed))
        smoothed = self.smoothed_loss()
        active = finite & (observed > self.warmup_steps)
        improved = active & (smoothed < self.best - self.min_delta)
        wait = tf.where(improved, tf.constant(0, tf.int64),
                        tf.where(active, self.wait + 1, self.wait))
        cut = wait >= self.patience
        self.best.assign(tf.where(improved, smoothed, self.best))
        self.lr.assign(tf.where(cut, tf.maximum(self.lr * self.factor, self.min_lr), self.lr))
        self.num_cuts.assign_add(tf.cast(cut, tf.int64))
        self.wait.assign(tf.where(cut, tf.constant(0, tf.int64), wait))

    def get_config(self):
        return dict(peak_lr=self.peak_lr, warmup_steps=self.warmup_steps, start_lr=self.start_lr,
                    patience=self.patience, min_delta=self.min_delta, min_lr=self.min_lr,
                    smoothing=self.smoothing, factor=self.factor)


def observing_schedule(optimizer):
    """The LR schedule of `optimizer` (or of the optimizer a LossScaleOptimizer wraps) that has
    `observe_loss`, else None. Keras 3's `optimizer.learning_rate` is the current *value*; the
    schedule object is `_learning_rate`."""
    for opt in (optimizer, getattr(optimizer, "inner_optimizer", None)):
        for attr in ("_learning_rate", "learning_rate"):
            schedule = getattr(opt, attr, None) if opt is not None else None
            if hasattr(schedule, "observe_loss"):
                return schedule
    return None
