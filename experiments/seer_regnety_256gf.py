"""SEER RegNetY-256GF (1.27B trunk parameters): SwAV on uncurated images at SEER's scale.

Command (per worker; see experiments/launch/multi_worker.sh for TF_CONFIG):
    python -m seer_tf.bin.pretrain --config=experiments/seer_regnety_256gf.py --workdir=gs://BUCKET/seer_256gf \
        --config.data.source=tfrecord --config.data.paths="('/data/uncurated/*.tfrecord',)"
Hardware: SEER used 512 V100 32GB GPUs (batch 8192 = 16 per GPU) for ~122k steps; the same config
runs on 64 hosts x 8 GPUs or a TPU pod (--config.train.strategy=tpu, mixed_bfloat16).
Expected: SEER paper: ImageNet fine-tune 84.2%, linear probe 77.5%, 10% low-shot 77.9%.
Schedule: optim.schedule="cosine" (base.seer_config): warmup 8k steps, cosine from 9.6 to 0.0096.
Head: [trunk width] + [8192, 8192, 256] (BN: False), K=16000 prototypes (VISSL seer configs).
"""

from experiments.base import seer_config


def get_config():
    return seer_config("seer_regnety_256gf", [8192, 8192, 256], head_use_bn=False)
