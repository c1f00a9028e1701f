"""SEER RegNetY-8.0GF (38M trunk parameters): SwAV on uncurated images at SEER's scale.

Command (per worker; see experiments/launch/multi_worker.sh for TF_CONFIG):
    python -m seer_tf.bin.pretrain --config=experiments/seer_regnety_8gf.py --workdir=gs://BUCKET/seer_8gf \
        --config.data.source=tfrecord --config.data.paths="('/data/uncurated/*.tfrecord',)"
Hardware: SEER used 512 V100 32GB GPUs (batch 8192 = 16 per GPU) for ~122k steps; the same config
runs on 64 hosts x 8 GPUs or a TPU pod (--config.train.strategy=tpu, mixed_bfloat16).
Expected: ImageNet fine-tuning accuracy grows with trunk size up to 84.2% for 256GF (SEER paper, Table 1).
Schedule: optim.schedule="plateau": after the 8k-step warmup the LR stays at 9.6 and is halved
when the smoothed loss stops improving (min 0.0096), the schedule SEER used for the models
smaller than 256GF (source: the SEER paper as recorded in seer_tf/optim/schedules.py; 256GF used
the cosine decay of base.seer_config). Override with --config.optim.schedule=cosine.
Head: [trunk width] + [4096, 4096, 256] (BN: True), K=16000 prototypes (VISSL seer configs).
"""

from experiments.base import seer_config


def get_config():
    c = seer_config("seer_regnety_8gf", [4096, 4096, 256], head_use_bn=True)
    c.optim.update(schedule="plateau", plateau_min_lr=0.0096)
    return c
