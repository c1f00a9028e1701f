#!/usr/bin/env bash
# One MultiWorkerMirroredStrategy worker per host. Run on every host with its own index:
#   HOSTS="host0:2222,host1:2222" INDEX=0 experiments/launch/multi_worker.sh \
#       --config=experiments/seer_regnety_256gf.py --workdir=gs://BUCKET/run
# Worker 0 is the chief: it writes TensorBoard and the checkpoints. DRY_RUN=1 prints the
# command and TF_CONFIG instead of running. Exit code 42: preempted and checkpointed, restart
# every worker with the same command.
set -euo pipefail
: "${HOSTS:?comma-separated host:port list, same order on every host}"
: "${INDEX:?the position of this host in HOSTS, from 0}"
source "$(dirname "$0")/common.sh"
workers=""
IFS=',' read -ra hosts <<< "$HOSTS"
for h in "${hosts[@]}"; do workers+="${workers:+, }\"$h\""; done
if ! [[ "$INDEX" =~ ^[0-9]+$ ]] || [ "$INDEX" -ge "${#hosts[@]}" ]; then
  echo "error: INDEX=$INDEX is not a position in HOSTS (${#hosts[@]} hosts)" >&2
  exit 2
fi
export TF_CONFIG="{\"cluster\": {\"worker\": [$workers]}, \"task\": {\"type\": \"worker\", \"index\": $INDEX}}"
with_overrides --config.train.strategy=multi_worker -- "$@"
launch "${CMD_ARGS[@]}"
