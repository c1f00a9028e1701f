"""SwAV/SEER pretraining.

    python -m seer_tf.bin.pretrain                                   # the CPU demo (digits)
    python -m seer_tf.bin.pretrain --config=experiments/seer_regnety_256gf.py --workdir=DIR \
        --config.train.batch_size=64 --config.data.source=files --config.data.paths="('/imgs',)"

The config is read here and nowhere else: `build_*` below turn it into explicit constructor
arguments. Bad flags, unknown config keys and impossible settings end in one `error:` line.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

from absl import app, flags, logging
from ml_collections import config_flags

import seer_tf  # noqa: F401  (sets TF_ENABLE_ONEDNN_OPTS before TensorFlow starts)

import keras  # noqa: E402  (everything below loads TensorFlow: after seer_tf)
import tensorflow as tf  # noqa: E402

import experiments  # noqa: E402  (installed with seer_tf: the default config lives there)
from seer_tf import cpu, distribute, usage, weights  # noqa: E402
from seer_tf.data import digits, multicrop, pipeline, sources, synthetic  # noqa: E402
from seer_tf.eval import digits_demo  # noqa: E402
from seer_tf.losses.swav import FeatureQueue  # noqa: E402
from seer_tf.models import family  # noqa: E402
from seer_tf.models.regnet import RegNet, check_remat  # noqa: E402
from seer_tf.models.swav import SwAVModel  # noqa: E402
from seer_tf.optim.lars import LARC  # noqa: E402
from seer_tf.optim.schedules import WarmupCosine, WarmupPlateau, scaled_lr  # noqa: E402
from seer_tf.train import config_diff, report  # noqa: E402
from seer_tf.train.loop import NonFiniteLossError, Trainer  # noqa: E402
from seer_tf.train.preemption import RESTART_EXIT_CODE, Preempted  # noqa: E402
from seer_tf.train.step import SwAVStep  # noqa: E402

# No --config: the first-run demo. Overrides (--config.train.total_steps=...) apply to it too.
_DEMO_CONFIG = os.path.join(os.path.dirname(experiments.__file__), "digits_demo.py")
_CONFIG = config_flags.DEFINE_config_file("config", _DEMO_CONFIG,
                                          "Experiment config file (experiments/*.py); "
                                          "default: the digits demo.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, TensorBoard, config.json; "
                                "required except for the demo and smoke configs.")
_ALLOW_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False,
    "Resume a workdir although the config changed keys that change shapes, data or the model.")
SUMMARY_FILE = "final.json"

ConfigError = usage.UsageError  # one user-error type for every binary


def _check(cond, message):
    if not cond:
        raise ConfigError(message)


def validate(config, num_replicas: int, strategy=None):
    """Settings that cannot work, caught before anything is built (`strategy`: checks that
    need the devices, once the strategy exists)."""
    t, s, d, m = config.train, config.swav, config.data, config.model
    try:
        check_remat(m.remat, m.remat_fraction)
    except ValueError as e:
        raise ConfigError(f"model.{e}") from None
    if m.preset:
        try:
            family.get_preset(m.preset)
        except ValueError as e:
            raise ConfigError(f"model.preset: {e}") from None
    _check(t.strategy in distribute.STRATEGIES,
           f"train.strategy {t.strategy!r} is unknown; choose from {', '.join(distribute.STRATEGIES)}")
    _check(t.log_every > 0, f"train.log_every must be positive, got {t.log_every}")
    _check(t.steps_per_loop == -1 or (t.steps_per_loop > 0 and t.log_every % t.steps_per_loop == 0),
           f"train.log_every {t.log_every} must be a multiple of train.steps_per_loop "
           f"{t.steps_per_loop} (metrics are fetched only at loop boundaries)")
    _check(t.max_nonfinite_steps > 0,
           f"train.max_nonfinite_steps must be positive, got {t.max_nonfinite_steps}")
    _check(t.jit_step in (-1, 0, 1), f"train.jit_step must be -1, 0 or 1, got {t.jit_step}")
    if strategy is not None and t.jit_step == 1:
        _check(distribute.should_jit(strategy),
               f"train.jit_step=1 with {num_replicas} CPU replicas: XLA cannot compile "
               f"cross-replica collectives on CPU; use jit_step=0 (or -1: XLA where it works)")
    _check(t.batch_size > 0, f"train.batch_size must be positive, got {t.batch_size}")
    _check(t.batch_size % num_replicas == 0,
           f"train.batch_size {t.batch_size} is not divisible by the {num_replicas} replicas")
    _check(t.total_steps > 0, f"train.total_steps must be positive, got {t.total_steps}")
    _check(t.precision in ("float32", "mixed_float16", "mixed_bfloat16"),
           f"train.precision must be float32, mixed_float16 or mixed_bfloat16, got {t.precision!r}")
    _check(len(d.crop_sizes) == len(d.crop_counts) == len(d.crop_min_scales) == len(d.crop_max_scales),
           "data.crop_sizes, crop_counts, crop_min_scales and crop_max_scales must have equal lengths")
    n_crops = sum(d.crop_counts)
    _check(n_crops >= 2, f"SwAV needs at least 2 crops, the config makes {n_crops}")
    _check(all(0 <= c < n_crops for c in s.crops_for_assign),
           f"swav.crops_for_assign {list(s.crops_for_assign)} must index the {n_crops} crops")
    if s.queue_length:
        _check(s.queue_length % t.batch_size == 0,
               f"swav.queue_length {s.queue_length} is not a multiple of the global batch "
               f"{t.batch_size}")


def build_strategy(config):
    return distribute.get_strategy(config.train.strategy, config.train.tpu_address)


def build_model(config):
    m = config.model
    multi = config.train.strategy != "default"
    if m.preset:
        spec = family.spec_for(m.preset).as_kwargs()
    else:
        spec = dict(depths=list(m.depths), widths=list(m.widths),
                    group_widths=list(m.group_widths), stem_width=m.stem_width)
    backbone = RegNet(**spec, remat=m.remat, remat_fraction=m.remat_fraction,
                      sync_bn=bool(m.sync_bn and multi), name="regnet")
    if backbone.remat == "block":
        logging.info("activation checkpointing: the first %d of %d blocks (remat_fraction %.2f)",
                     backbone.remat_blocks, len(backbone.blocks()), backbone.remat_fraction)
    model = SwAVModel(backbone, [backbone.widths[-1]] + list(m.head_dims), list(m.num_prototypes),
                      use_bn=m.head_use_bn, sync_bn=bool(m.sync_bn and multi))
    model.build_all()
    return model


def build_optimizer(config):
    """LARC with the `optim.schedule` LR: SwAV's warmup + cosine, SEER's warmup + fixed LR
    halved on loss plateaus (the loop feeds it the loss: schedules.observing_schedule), or
    warmup + constant."""
    o, t = config.optim, config.train
    peak = scaled_lr(o.lr_per_256, t.batch_size)
    warmup = min(o.warmup_steps, t.total_steps - 1)
    start = o.start_lr if o.warmup_steps else peak
    kind = o.get("schedule", "cosine")
    if kind == "plateau":
        schedule = WarmupPlateau(peak, warmup_steps=warmup, start_lr=start,
                                 patience=o.plateau_patience, min_delta=o.plateau_min_delta,
                                 min_lr=o.plateau_min_lr, smoothing=o.plateau_smoothing)
    elif kind in ("cosine", "constant"):
        final = o.final_lr if kind == "cosine" else peak
        schedule = WarmupCosine(peak, t.total_steps, warmup_steps=warmup, start_lr=start,
                                final_lr=final)
    else:
        raise ConfigError(f"optim.schedule must be cosine, plateau or constant, got {kind!r}")
    opt = LARC(schedule, momentum=o.momentum, weight_decay=o.weight_decay,
               trust_coefficient=o.trust_coefficient,
               exclude_vectors_from_weight_decay=o.exclude_vectors_from_weight_decay,
               exclude_vectors_from_adaptation=o.exclude_vectors_from_adaptation)
    if t.precision == "mixed_float16":
        opt = keras.optimizers.LossScaleOptimizer(opt)
    return opt


def build_step(config, model, optimizer, strategy):
    s = config.swav
    queue = None
    if s.queue_length:
        queue = FeatureQueue(s.queue_length, model.head.dims[-1], len(s.crops_for_assign),
                             start_step=s.queue_start_step, global_batch_size=config.train.batch_size)
    return SwAVStep(
        model, optimizer, num_replicas=strategy.num_replicas_in_sync,
        crops_for_assign=tuple(s.crops_for_assign), temperature=s.temperature,
        epsilon=s.epsilon, sinkhorn_iterations=s.sinkhorn_iterations,
        freeze_prototypes_steps=s.freeze_prototypes_steps, queue=queue,
        replica_sum=distribute.replica_sum_fn(), replica_max=distribute.replica_max_fn(),
        all_gather=distribute.replica_all_gather_fn(), replica_index=distribute.replica_index,
        jit_sinkhorn=distribute.should_jit(strategy) and strategy.num_replicas_in_sync == 1)


def build_dataset_fn(config):
    """(input_context, start_step) -> per-replica batches of crops (a tuple, crop order)."""
    d, batch = config.data, config.train.batch_size
    dtype = tf.bfloat16 if config.train.precision == "mixed_bfloat16" else tf.float32
    if d.source == "synthetic":
        return lambda ctx, start: synthetic.crops_dataset(
            ctx, start, batch, d.crop_sizes, d.crop_counts, d.seed, dtype)

    crops = tuple(multicrop.CropSpec(size, count, (lo, hi)) for size, count, lo, hi in zip(
        d.crop_sizes, d.crop_counts, d.crop_min_scales, d.crop_max_scales))
    augment = multicrop.Augment(flip=d.flip_prob, jitter=d.jitter_prob,
                                brightness=d.jitter_strength, contrast=d.jitter_strength,
                                saturation=d.jitter_strength, hue=d.jitter_strength / 4,
                                grayscale=d.grayscale_prob, blur=d.blur_prob)
    if d.source == "digits":
        return lambda ctx, start: digits.pretrain_dataset(
            ctx, start, batch, crops, augment, image_size=d.image_size, seed=d.seed)
    source = build_source(d)
    if (d.refresh_every_steps and d.get("listing_strides", 1) <= 1
            and isinstance(source, sources.FileListSource)):
        logging.warning("data.refresh_every_steps on a list with data.listing_strides=1: every "
                        "refresh re-reads the list's first lines; set listing_strides to at "
                        "least lines / (refresh_every_steps x batch_size)")
    stats_seen = []
    exact = bool(d.get("exact_resume", True))

    def dataset_fn(ctx, start):
        """Exact resume (data.exact_resume): the same stream whatever `start` is; the loop
        restores the iterator from the checkpoint (`checkpoint_input`), shuffle buffer and all.
        Approximate resume: the iterator is not saved and a resumed run reshuffles with a seed
        derived from the step (fresh samples, not a replay of the interrupted pass)."""
        ds, stats = pipeline.training_stream(
            source, global_batch_size=batch, crops=crops, augment=augment, input_context=ctx,
            seed=d.seed if exact else d.seed + 1_000_003 * start, dtype=dtype,
            shuffle_buffer=d.shuffle_buffer, refresh_every=d.refresh_every_steps * batch or None,
            max_pixels=d.max_pixels, strides=d.get("listing_strides", 1))
        stats_seen.append(stats)
        return ds

    dataset_fn.decode_stats = stats_seen
    dataset_fn.checkpoint_input = exact
    return dataset_fn


def build_source(d):
    """The configured source, checked now (missing paths, empty globs, unprepared TFDS data:
    one UsageError line before any graph is built)."""
    source = None
    if d.source == "files":
        _check(len(d.paths) > 0, "data.paths is empty: give directories, globs or .txt file lists")
        lists = [p for p in d.paths if p.endswith(".txt")]
        dirs = [p for p in d.paths if not p.endswith(".txt") and not any(c in p for c in "*?[")]
        globs = [p for p in d.paths if any(c in p for c in "*?[") and not p.endswith(".txt")]
        _check(len([x for x in (lists, dirs, globs) if x]) == 1,
               "data.paths must be all directories, all globs, or all .txt file lists")
        source = (sources.FileListSource(lists) if lists else
                  sources.DirectorySource(dirs) if dirs else sources.GlobSource(globs))
    if d.source == "tfrecord":
        _check(len(d.paths) > 0, "data.paths is empty: give TFRecord shard globs")
        source = sources.TFRecordSource(list(d.paths))
    if d.source == "tfds":
        _check(bool(d.tfds_name), "data.tfds_name is empty")
        source = sources.TfdsSource(d.tfds_name, data_dir=d.data_dir or None, split=d.tfds_split)
    if source is not None:
        return sources.check_source(source)
    raise ConfigError(f"data.source must be synthetic, digits, files, tfrecord or tfds, "
                      f"got {d.source!r}")


def _warn_slow_half_precision(precision, strategy):
    """Half precision on a CPU without bf16 instructions is emulated: measured 8x slower than
    float32 for a RegNetY-400MF SwAV step (docs/benchmarks.md)."""
    if (precision != "float32" and not distribute.on_accelerators(strategy)
            and not cpu.has_native_bf16()):
        logging.warning("train.precision=%s on a CPU without AVX512_BF16/AMX: half precision is "
                        "emulated and ~8x slower than float32 here; use float32 on this machine.",
                        precision)


def resolve_steps_per_loop(train, strategy) -> int:
    """train.steps_per_loop, with -1 resolved: 1 on CPU (a step is seconds there; nothing to
    amortize), log_every on GPUs/TPUs (the host syncs with the device only when it logs)."""
    if train.steps_per_loop > 0:
        return int(train.steps_per_loop)
    return int(train.log_every) if distribute.on_accelerators(strategy) else 1


def run(config, workdir: str):
    """Pretrains into `workdir`; returns (model, result). Raises `Preempted` after saving when
    any worker got SIGTERM, `NonFiniteLossError` when the state went non-finite."""
    keras.utils.set_random_seed(config.train.seed)
    if config.train.precision != "float32":
        keras.mixed_precision.set_global_policy(config.train.precision)
    strategy = build_strategy(config)
    validate(config, strategy.num_replicas_in_sync, strategy)
    _warn_slow_half_precision(config.train.precision, strategy)
    dataset_fn = build_dataset_fn(config)
    with strategy.scope():
        model = build_model(config)
        optimizer = build_optimizer(config)
        step = build_step(config, model, optimizer, strategy)
    t = config.train
    trainer = Trainer(strategy, step, dataset_fn, workdir=workdir, total_steps=t.total_steps,
                      global_batch_size=t.batch_size,
                      steps_per_loop=resolve_steps_per_loop(t, strategy), log_every=t.log_every,
                      checkpoint_every=t.checkpoint_every, histogram_every=t.histogram_every,
                      image_every=t.image_every,
                      jit_step=None if t.jit_step < 0 else bool(t.jit_step),
                      max_nonfinite_steps=t.max_nonfinite_steps,
                      checkpoint_input=bool(getattr(dataset_fn, "checkpoint_input", False)),
                      extra_scalars=report.data_scalars(dataset_fn))
    if trainer.chief:
        tf.io.gfile.makedirs(workdir)
        weights.describe_workdir(workdir, config.to_dict(), model)
    result = trainer.run()
    summary_path = os.path.join(workdir, SUMMARY_FILE)
    if result["last_metrics"] is not None and trainer.chief:
        with tf.io.gfile.GFile(summary_path, "w") as f:
            f.write(json.dumps({"step": result["step"], "final": result["last_metrics"]},
                               default=float))
    elif result["last_metrics"] is None and tf.io.gfile.exists(summary_path):
        with tf.io.gfile.GFile(summary_path) as f:  # a finished run, run again
            result["last_metrics"] = json.loads(f.read())["final"]
    result["weights_digest"] = weights.digest(model)
    return model, result


def _workdir(config) -> str:
    if _WORKDIR.value:
        return _WORKDIR.value
    if config.train.require_workdir:
        raise ConfigError("--workdir is required for this config: its checkpoints must outlive "
                          "the process so that a restart can resume")
    return tempfile.mkdtemp(prefix="seer_tf_")


def _check_resume(config, workdir):
    config_diff.check_resume(weights.read_config(workdir), config.to_dict(), workdir,
                             allow=_ALLOW_CHANGE.value)


def _train(config, workdir):
    try:
        _check_resume(config, workdir)
        if config.demo.enabled:
            return digits_demo.run_demo(config, workdir, run, build_model)
        _, result = run(config, workdir)
    except Preempted as e:
        print(f"preempted at step {e.step}: saved {e.checkpoint}; run the same command again "
              f"to resume (exit code {RESTART_EXIT_CODE})", file=sys.stderr)
        print(json.dumps({"workdir": workdir, "step": e.step, "stopped": "preempted"}))
        return RESTART_EXIT_CODE
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"workdir": workdir, "step": result["step"], "stopped": result["stopped"],
                      "final": result["last_metrics"],
                      "weights_digest": result["weights_digest"]}, default=float))
    return 0


def main(argv):
    if len(argv) > 1:
        print(f"error: unexpected arguments {argv[1:]}", file=sys.stderr)
        return 2
    config = _CONFIG.value
    try:
        validate(config, 1)
        workdir = _workdir(config)
    except usage.UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    status = usage.run(lambda: _train(config, workdir))
    return 1 if status == 2 else status


def parse_flags(argv):
    """absl's parser, but a bad flag or unknown config key is one `error:` line, not a traceback."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        message = str(e)
    except (AttributeError, KeyError, TypeError, ValueError) as e:  # ml_collections overrides
        message = f"bad config override: {str(e).strip(chr(34))}"
    print(f"error: {message.splitlines()[0] if message else 'bad flags'}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    logging.set_verbosity(logging.INFO)
    app.run(lambda argv: sys.exit(main(argv)), flags_parser=parse_flags)
