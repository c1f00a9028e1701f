"""CPU smoke run used by the tests: a tiny RegNetY on synthetic crops, a few steps.

Command:
    python -m seer_tf.bin.pretrain --config=experiments/cpu_smoke.py --workdir=WORKDIR
Hardware: any CPU, seconds.
Expected: the loss is finite and logged to TensorBoard; checkpoints at every 2 steps.
"""

from experiments.base import swav_config


def get_config():
    c = swav_config()
    c.model.update(preset="regnety_tiny", head_dims=(32, 16), num_prototypes=(24,), remat="none")
    c.data.update(source="synthetic", crop_sizes=(32, 16), crop_counts=(2, 2),
                  crop_min_scales=(0.14, 0.05), crop_max_scales=(1.0, 0.14))
    c.swav.update(freeze_prototypes_steps=1, sinkhorn_iterations=3)
    c.optim.update(lr_per_256=0.3, start_lr=0.0, final_lr=0.0, warmup_steps=0, weight_decay=1e-6)
    c.train.update(batch_size=8, total_steps=4, log_every=1, checkpoint_every=2, histogram_every=2,
                   image_every=2, require_workdir=False)
    return c
