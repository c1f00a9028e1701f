"""The shared shape of a SwAV/SEER pretraining config (numbers: docs/design.md section 1).

Every experiment file starts from `swav_config()` and overrides what its recipe changes. Only
the binaries read configs; they turn them into explicit constructor arguments.
"""

import ml_collections


def swav_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()

    c.model = dict(
        preset="regnety_tiny",     # a seer_tf.models.family preset, or "" to use the lists below
        depths=(), widths=(), group_widths=(), stem_width=32,
        head_dims=(4096, 4096, 256),  # after the trunk width: [w4] + head_dims
        head_use_bn=True,
        num_prototypes=(3000,),
        remat="none",              # "none" | "block" | "stage" activation checkpointing
        remat_fraction=1.0,        # "block": checkpoint the earliest blocks holding this share
                                   # of the activations (0.6: ~2/3 of the saving, ~1/2 the time)
        sync_bn=True,              # SyncBN under multi-replica strategies
    )
    c.data = dict(
        source="synthetic",        # synthetic | digits | files | tfrecord | tfds
        paths=(),                  # dirs / globs / list files (files), shard globs (tfrecord)
        tfds_name="", tfds_split="train", data_dir="",
        refresh_every_steps=0,     # re-list the sources every N steps (SEER-style refresh)
        crop_sizes=(224, 96), crop_counts=(2, 4),
        crop_min_scales=(0.14, 0.05), crop_max_scales=(1.0, 0.14),
        flip_prob=0.5, jitter_strength=0.8, jitter_prob=0.8, grayscale_prob=0.2, blur_prob=0.5,
        max_pixels=4096 * 4096, shuffle_buffer=10_000, seed=0,
        image_size=32,             # digits source only: upscaled size
        listing_strides=1,         # >1: each pass is that many interleaved sub-passes, so a
                                   # refresh samples the whole listing (>= size / refresh)
        exact_resume=True,         # checkpoint the input iterator (shuffle buffer included:
                                   # ~buffer x record size); False: resume reseeds from the step
    )
    c.swav = dict(
        temperature=0.1, epsilon=0.05, sinkhorn_iterations=3, crops_for_assign=(0, 1),
        freeze_prototypes_steps=313, queue_length=0, queue_start_step=0,
    )
    c.optim = dict(
        lr_per_256=0.3, start_lr=0.3, final_lr=0.0, warmup_steps=0,
        schedule="cosine",         # cosine | plateau (fixed lr halved on loss plateaus) | constant
        plateau_patience=5000,     # plateau: steps without a min_delta improvement of the
        plateau_min_delta=0.01,    # smoothed loss before the lr is halved, down to min_lr
        plateau_min_lr=0.0, plateau_smoothing=0.99,  # EMA factor of the smoothed loss
        weight_decay=1e-6, momentum=0.9, trust_coefficient=0.001,
        exclude_vectors_from_weight_decay=False, exclude_vectors_from_adaptation=False,
    )
    c.train = dict(
        batch_size=256,            # global batch (split evenly over replicas)
        total_steps=1000, strategy="default", tpu_address="",
        precision="float32",       # float32 | mixed_float16 | mixed_bfloat16
        log_every=10, checkpoint_every=500, histogram_every=1000, image_every=0, seed=0,
        jit_step=-1,               # -1: XLA where the platform supports it (GPU/TPU), 0 off, 1 on
        steps_per_loop=-1,         # steps per device call (K); -1: 1 on CPU, log_every on
                                   # GPU/TPU. log_every must be a multiple of K.
        max_nonfinite_steps=20,    # float16: stop after this many skipped (non-finite) steps
                                   # in a row. The loss scale starts at 2^15 and halves per
                                   # skip, so 20 in a row reach 2^-5: no float16 overflow
                                   # survives that, the loss itself has diverged.
        require_workdir=True,      # refuse to run without --workdir (a restart must find it)
    )
    c.demo = dict(enabled=False, shots=5, test_fraction=0.3, seed=0)  # digits demo table
    return c


def seer_config(preset: str, head_dims, head_use_bn: bool) -> ml_collections.ConfigDict:
    """SEER (VISSL `pretrain/swav/seer` configs): 1B random Instagram images, batch 8192 on
    512 V100s, 2x224+4x96 crops, K=16000, 10 Sinkhorn iterations, LARC, wd 1e-5 on all tensors,
    lr 0.3 per 256 (9.6) with 8k warmup steps from 0.3, cosine to 0.0096, ~122k steps, fp16,
    SyncBN, activation checkpointing, prototypes frozen for the first 313 steps."""
    c = swav_config()
    c.model.preset = preset
    c.model.head_dims = tuple(head_dims)
    c.model.head_use_bn = head_use_bn
    c.model.num_prototypes = [16000]
    c.model.remat = "block"
    c.data.source = "files"
    c.data.refresh_every_steps = 5000
    c.data.listing_strides = 32  # a refresh (5000 x 8192 = 41M) samples all of ~1.3B images
    c.swav.sinkhorn_iterations = 10
    c.optim.update(lr_per_256=0.3, start_lr=0.3, final_lr=0.0096, warmup_steps=8000,
                   weight_decay=1e-5)
    c.train.update(batch_size=8192, total_steps=122_070, strategy="multi_worker",
                   precision="mixed_float16", checkpoint_every=1000, log_every=50)
    return c
