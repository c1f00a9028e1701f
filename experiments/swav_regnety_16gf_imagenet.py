"""SwAV on ImageNet with a RegNetY-16GF trunk (SwAV paper recipe, 800 epochs, multi-crop).

Command (ImageNet already prepared by tfds in DATA_DIR; nothing is downloaded):
    python -m seer_tf.bin.pretrain --config=experiments/swav_regnety_16gf_imagenet.py \
        --workdir=DIR --config.data.data_dir=DATA_DIR
Hardware: 64 V100s (batch 4096) in the SwAV paper; 8 hosts x 8 GPUs with
--config.train.strategy=multi_worker, or a v3-128 TPU pod with strategy=tpu, mixed_bfloat16.
Expected: SwAV reports 75.3% linear top-1 for ResNet-50 at 800 epochs; SEER's paper reports
RegNetY-16GF pretrained on ImageNet in the same range (use bin/evaluate --protocol=linear).
Recipe: batch 4096, K=3000, eps 0.05, 3 Sinkhorn iterations, temperature 0.1, LARC, lr 4.8
(0.3 per 256), final 0.0048, wd 1e-6, prototypes frozen for 313 steps (one epoch).
"""

from experiments.base import swav_config

STEPS_PER_EPOCH = 1_281_167 // 4096  # 312.8 -> the "313" of main_swav's freeze_prototypes_niters


def get_config():
    c = swav_config()
    c.model.update(preset="regnety_16gf", head_dims=(2048, 128), head_use_bn=True,
                   num_prototypes=(3000,), remat="none")
    c.data.update(source="tfds", tfds_name="imagenet2012", tfds_split="train")
    c.swav.update(freeze_prototypes_steps=313, sinkhorn_iterations=3, epsilon=0.05)
    c.optim.update(lr_per_256=0.3, start_lr=0.0, final_lr=0.0048, warmup_steps=10 * STEPS_PER_EPOCH,
                   weight_decay=1e-6)
    c.train.update(batch_size=4096, total_steps=800 * STEPS_PER_EPOCH, strategy="multi_worker",
                   precision="mixed_float16", checkpoint_every=2500, log_every=50)
    return c
