#!/usr/bin/env bash
# Cloud TPU VM (TPUStrategy). Create the VM with a TensorFlow 2.21 TPU runtime, then on it:
#   gcloud compute tpus tpu-vm ssh NAME --zone=ZONE --worker=all --command="cd seer_tf && \
#       experiments/launch/tpu_vm.sh --config=experiments/seer_regnety_256gf.py --workdir=gs://BUCKET/run"
# bfloat16 is TPU-native: no loss scaling. Inputs must come from GCS (TFRecords or tfds data_dir).
# DRY_RUN=1 prints the command instead of running. Exit code 42: preempted and checkpointed.
set -euo pipefail
source "$(dirname "$0")/common.sh"
with_overrides --config.train.strategy=tpu --config.train.tpu_address=local \
    --config.train.precision=mixed_bfloat16 -- "$@"
launch "${CMD_ARGS[@]}"
