"""SEER RegNetY-16GF (80M trunk parameters): SwAV on uncurated images at SEER's scale.

Command (per worker; see experiments/launch/multi_worker.sh for TF_CONFIG):
    python -m seer_tf.bin.pretrain --config=experiments/seer_regnety_16gf.py --workdir=gs://BUCKET/seer_16gf \
        --config.data.source=tfrecord --config.data.paths="('/data/uncurated/*.tfrecord',)"
Hardware: SEER used 512 V100 32GB GPUs (batch 8192 = 16 per GPU) for ~122k steps; the same config
runs on 64 hosts x 8 GPUs or a TPU pod (--config.train.strategy=tpu, mixed_bfloat16).
Expected: ImageNet fine-tuning accuracy grows with trunk size up to 84.2% for 256GF (SEER paper, Table 1).
Head: [trunk width] + [4096, 4096, 256] (BN: True), K=16000 prototypes (VISSL seer configs).
"""

from experiments.base import seer_config


def get_config():
    return seer_config("seer_regnety_16gf", [4096, 4096, 256], head_use_bn=True)
