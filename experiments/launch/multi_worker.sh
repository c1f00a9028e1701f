#!/usr/bin/env bash
# Launch one MultiWorkerMirroredStrategy worker per host. Run on every host with its own index:
#   HOSTS="host0:2222,host1:2222" INDEX=0 experiments/launch/multi_worker.sh \
#       --config=experiments/seer_regnety_256gf.py --workdir=gs://BUCKET/run
# Worker 0 is the chief: it writes TensorBoard and the real checkpoints.
set -euo pipefail
: "${HOSTS:?comma-separated host:port list, same order on every host}"
: "${INDEX:?this host's position in HOSTS}"
workers=$(python3 -c "import json,sys; print(json.dumps(sys.argv[1].split(',')))" "$HOSTS")
export TF_CONFIG="{\"cluster\": {\"worker\": $workers}, \"task\": {\"type\": \"worker\", \"index\": $INDEX}}"
exec python -m seer_tf.bin.pretrain --config.train.strategy=multi_worker "$@"
