"""LARC: SGD with momentum and a per-tensor trust ratio, as SwAV and SEER trained with it.

SwAV (facebookresearch/swav `main_swav.py`) and VISSL's SEER configs wrap `torch.optim.SGD`
(momentum 0.9, coupled L2 weight decay) in NVIDIA apex `apex/parallel/LARC.py` with
`trust_coefficient=0.001, clip=False, eps=1e-8`. This module is that pair as one Keras 3
optimizer, so a TF run takes the same steps as the PyTorch reference (You et al. 2017,
"Large Batch Training of Convolutional Networks", arXiv:1708.03888, for the trust ratio).

Per tensor w with gradient g, weight decay wd and learning rate lr, one step is:

    if ||w|| != 0 and ||g|| != 0 and the tensor is adapted:
        a = trust * ||w|| / (||g|| + wd * ||w|| + eps)      # clip=True: a = min(a / lr, 1)
        g = (g + wd * w) * a
    elif the tensor is not adapted (our extension, see below):
        g = g + wd * w                                       # plain torch SGD weight decay
    else:                                                    # apex's zero-norm branch
        g = g                                                # raw gradient, NO weight decay
    buf = momentum * buf + g                                 # torch SGD, dampening 0
    d = g + momentum * buf if nesterov else buf
    w = w - lr * d

The zero-norm branch is apex's exact behaviour, not a guess: LARC.step() copies each param
group's `weight_decay`, sets the group's value to 0 so the wrapped SGD applies none, and adds
`wd * w` itself only inside `if param_norm != 0 and grad_norm != 0`. So a tensor whose weights or
gradient are all zero (a zero-initialized bias at step 0, a head that got no gradient) takes its
raw gradient without weight decay. A gradient that is `None` (SwAV drops the prototypes' gradient
for the first 313 iterations) is skipped by apex and torch SGD alike: no momentum decay, no decay
step. Keras `apply` filters `None` gradients out before `update_step`, which gives the same.

Which tensors get weight decay and which get the trust ratio is a rule over `variable.path`
(docs/design.md section 1): SEER applies both to every tensor (VISSL `regularize_bn: True`,
`regularize_bias: True`). A tensor excluded from weight decay behaves as apex does for a param
group with `weight_decay: 0` (wd = 0 in the ratio and in the update). A tensor excluded from
adaptation is our extension (apex has no such switch): it takes torch SGD's plain `g + wd * w`.

Keras 3 calls `update_step` with the raw tf.Variable (the per-device component under a
distribution strategy), so the rules are resolved once in `build()` by position and looked up
through `_get_variable_index`. Momentum slots are created in the order of the built variables
(checkpoints store them by position). Build the optimizer inside `strategy.scope()`.
"""

import re

import keras
import tensorflow as tf

_HALF = (tf.float16, tf.bfloat16)


def _path(variable):
    path = getattr(variable, "path", None)
    if path is None:  # a bare tf.Variable
        path = variable.name.split(":")[0]
    return path


def _as_rule(rule):
    """None | regex | list of regexes | callable(variable) -> bool  ->  callable(variable)."""
    if rule is None:
        return lambda v: False
    if callable(rule):
        return rule
    patterns = [rule] if isinstance(rule, str) else list(rule)
    compiled = [re.compile(p) for p in patterns]
    return lambda v: any(p.search(_path(v)) for p in compiled)


def is_vector(variable):
    """Rank <= 1: BatchNorm scales/offsets and biases (the usual LARS/LAMB exclusion)."""
    return len(variable.shape) <= 1


@keras.saving.register_keras_serializable(package="seer_tf")
class LARC(keras.optimizers.Optimizer):
    """SGD with momentum wrapped in apex LARC (see the module docstring for the exact step).

    Args:
      learning_rate: float, `LearningRateSchedule`, or a no-argument callable (e.g.
        `schedules.HalveOnPlateau`). The optimizer LR that apex multiplies by the trust ratio.
      momentum: torch SGD momentum (buf = momentum * buf + g); 0 disables the slot.
      nesterov: torch SGD nesterov (d = g + momentum * buf).
      weight_decay: coupled L2 coefficient, applied inside the trust ratio as apex does. This is
        NOT Keras' decoupled `weight_decay`; the base class decay step is disabled.
      trust_coefficient, eps, clip: apex LARC arguments (SwAV/SEER: 0.001, 1e-8, False).
      exclude_from_weight_decay, exclude_from_adaptation: None, a regex or a list of regexes
        searched in `variable.path`, or a callable(variable) -> bool. Callables do not survive
        `get_config` to JSON.
      exclude_vectors_from_weight_decay, exclude_vectors_from_adaptation: also exclude every
        tensor of rank <= 1 (BN and biases). SEER: both False.
    """

    def __init__(
        self,
        learning_rate=0.3,
        momentum=0.9,
        nesterov=False,
        weight_decay=1e-5,
        trust_coefficient=0.001,
        eps=1e-8,
        clip=False,
        exclude_from_weight_decay=None,
        exclude_from_adaptation=None,
        exclude_vectors_from_weight_decay=False,
        exclude_vectors_from_adaptation=False,
        name="larc",
        **kwargs,
    ):
        super().__init__(learning_rate=learning_rate, name=name, weight_decay=None, **kwargs)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        if nesterov and momentum <= 0:
            raise ValueError("nesterov needs momentum > 0 (as in torch.optim.SGD)")
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        self.larc_weight_decay = float(weight_decay)
        self.trust_coefficient = float(trust_coefficient)
        self.eps = float(eps)
        self.clip = bool(clip)
        self.exclude_from_weight_decay_rule = exclude_from_weight_decay
        self.exclude_from_adaptation_rule = exclude_from_adaptation
        self.exclude_vectors_from_weight_decay = bool(exclude_vectors_from_weight_decay)
        self.exclude_vectors_from_adaptation = bool(exclude_vectors_from_adaptation)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        no_wd = _as_rule(self.exclude_from_weight_decay_rule)
        no_adapt = _as_rule(self.exclude_from_adaptation_rule)
        wds, adapts = [], []
        for v in variables:
            skip_wd = no_wd(v) or (self.exclude_vectors_from_weight_decay and is_vector(v))
            skip_adapt = no_adapt(v) or (self.exclude_vectors_from_adaptation and is_vector(v))
            wds.append(0.0 if skip_wd else self.larc_weight_decay)
            adapts.append(not skip_adapt)
        # Tuples of Python scalars: resolved once here, constants in the traced step.
        self._wd_by_index = tuple(wds)
        self._adapt_by_index = tuple(adapts)
        self._paths = tuple(_path(v) for v in variables)
        self.momentums = []
        if self.momentum > 0:
            self.momentums = self.add_optimizer_variables(variables, "momentum")

    def rules_by_path(self):
        """{variable.path: (weight_decay, adapted)} after build, for logs and config checks."""
        rules = zip(self._paths, self._wd_by_index, self._adapt_by_index)
        return {path: (wd, adapted) for path, wd, adapted in rules}

    def _apply_weight_decay(self, variables):
        """Disabled: weight decay is coupled into the gradient in `update_step` (apex/torch)."""
        return

    def update_step(self, gradient, variable, learning_rate):
        index = self._get_variable_index(variable)
        wd, adapt = self._wd_by_index[index], self._adapt_by_index[index]
        if isinstance(gradient, tf.IndexedSlices):
            gradient = tf.convert_to_tensor(gradient)
        # Arithmetic in the variable's dtype, but never in half precision: the norms of a large
        # tensor overflow float16. Mixed-precision Keras keeps variables float32 anyway.
        compute = tf.float32 if variable.dtype in _HALF else variable.dtype
        w = tf.cast(tf.convert_to_tensor(variable), compute)
        g = tf.cast(gradient, compute)
        lr = tf.cast(learning_rate, compute)
        buf = self.momentums[index] if self.momentum > 0 else None
        buf_value = tf.cast(tf.convert_to_tensor(buf), compute) if buf is not None else lr
        # The norms are TF's L2Loss (one multi-threaded pass each; XLA's CPU reductions are
        # single-threaded); the rest of the step is one XLA kernel per tensor instead of ~12
        # element-wise TF ops. RegNetY-400MF + SwAV head (230 tensors, 9.6M weights), one
        # apply on a 2-core CPU: 53 ms as plain TF ops, 32 ms so.
        w_norm = tf.sqrt(2.0 * tf.nn.l2_loss(w)) if adapt else lr
        g_norm = tf.sqrt(2.0 * tf.nn.l2_loss(g)) if adapt else lr
        step, new_buf = _larc_step(
            w, g, buf_value, lr, w_norm, g_norm, wd=wd, adapt=adapt, trust=self.trust_coefficient,
            eps=self.eps, clip=self.clip, momentum=self.momentum, nesterov=self.nesterov)
        if buf is not None:
            self.assign(buf, new_buf)
        self.assign_sub(variable, step)

    def get_config(self):
        config = super().get_config()
        config.pop("weight_decay", None)
        config.update(
            momentum=self.momentum,
            nesterov=self.nesterov,
            weight_decay=self.larc_weight_decay,
            trust_coefficient=self.trust_coefficient,
            eps=self.eps,
            clip=self.clip,
            exclude_from_weight_decay=_config_rule(self.exclude_from_weight_decay_rule),
            exclude_from_adaptation=_config_rule(self.exclude_from_adaptation_rule),
            exclude_vectors_from_weight_decay=self.exclude_vectors_from_weight_decay,
            exclude_vectors_from_adaptation=self.exclude_vectors_from_adaptation,
        )
        return config


@tf.function(jit_compile=True, reduce_retracing=True)
def _larc_step(w, g, buf, lr, w_norm, g_norm, wd, adapt, trust, eps, clip, momentum, nesterov):
    """(lr * d, new momentum buffer) of the module docstring's step for one tensor, given
    ||w|| and ||g|| (unused when not `adapt`); `buf` is unused without momentum."""
    if adapt:
        ratio = trust * w_norm / (g_norm + w_norm * wd + eps)
        if clip:
            ratio = tf.minimum(ratio / lr, 1.0)
        take = tf.logical_and(tf.not_equal(w_norm, 0.0), tf.not_equal(g_norm, 0.0))
        g = tf.where(take, (g + wd * w) * ratio, g)
    elif wd:
        g = g + wd * w
    new_buf = buf
    if momentum > 0:
        new_buf = momentum * buf + g
        g = g + momentum * new_buf if nesterov else new_buf
    return lr * g, new_buf


def _config_rule(rule):
    if rule is None or callable(rule) or isinstance(rule, str):
        return rule
    return list(rule)
