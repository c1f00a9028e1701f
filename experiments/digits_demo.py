"""The first-run demo: SwAV on scikit-learn's handwritten digits, on a 2-core CPU.

Command (the README's first command; no --config means this file):
    python -m seer_tf.bin.pretrain
Hardware: a laptop / 2-core CPU, under 10 minutes including evaluation.
Expected: a table where the pretrained trunk's features beat the same network at random init
and raw pixels: linear probe (70/30 stratified split, seed 0) >= 97.5%, 5 labels per class
>= 90%, and at least half of the prototypes in use.

Data: 1,797 real 8x8 digits that ship with scikit-learn, upscaled to 32x32. Recipe changes from
SEER, for 8x8 grayscale digits: two 32px crops at scale (0.4, 1) and no small crops (a 16px
crop of a few original pixels carries no digit identity; with them training stalls at ln K),
no flips (mirrored digits are other symbols), brightness/contrast jitter 0.4 and no
hue/saturation/grayscale/blur (gray images), K=64 prototypes, batch 128, LARC lr 2.4 with warmup
and cosine, and Sinkhorn epsilon 0.03: with 0.05 and jitter this run stalls at ln K (uniform
codes) within 50 steps, the failure SEER also fixed by lowering epsilon.
"""

from experiments.base import swav_config


def get_config():
    c = swav_config()
    c.model.update(preset="", depths=(1, 1, 2, 1), widths=(32, 64, 128, 256),
                   group_widths=(16, 16, 16, 16), stem_width=32,
                   head_dims=(512, 128), head_use_bn=True, num_prototypes=(64,), remat="none")
    c.data.update(source="digits", image_size=32, crop_sizes=(32,), crop_counts=(2,),
                  crop_min_scales=(0.4,), crop_max_scales=(1.0,), flip_prob=0.0,
                  jitter_strength=0.4, jitter_prob=0.8, grayscale_prob=0.0, blur_prob=0.0)
    c.swav.update(freeze_prototypes_steps=30, sinkhorn_iterations=3, epsilon=0.03)
    c.optim.update(lr_per_256=4.8, start_lr=0.0, final_lr=0.0024, warmup_steps=50,
                   weight_decay=1e-6)
    c.train.update(batch_size=128, total_steps=1000, log_every=50, checkpoint_every=500,
                   histogram_every=500, image_every=500, require_workdir=False)
    c.demo.update(enabled=True, shots=5, test_fraction=0.3, seed=0)
    return c
