#!/usr/bin/env bash
# `make run`: local MLflow server -> train (alias champion) -> serve on 127.0.0.1:$PORT.
# Ctrl-C stops what this script started: the server app, and the MLflow server if it started it.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${VENV_BIN:-$ROOT/.venv/bin}
export MLFLOW_PORT=${MLFLOW_PORT:-5000} PORT=${PORT:-8000} HOST=${HOST:-127.0.0.1}
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-http://127.0.0.1:$MLFLOW_PORT}
export MODEL_URI=${MODEL_URI:-models:/ml-service@champion}
export MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true
SCRATCH=$ROOT/.local/run
mkdir -p "$SCRATCH"

started_mlflow=
serve_pid=
cleanup() {
  trap - INT TERM EXIT
  if [[ -n $serve_pid ]] && kill -0 "$serve_pid" 2>/dev/null; then
    kill -TERM "$serve_pid" 2>/dev/null || true  # graceful: readiness off, in-flight finish
    wait "$serve_pid" 2>/dev/null || true
  fi
  if [[ -n $started_mlflow ]]; then "$ROOT/scripts/local-mlflow.sh" stop >/dev/null || true; fi
  echo "stopped"
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM

if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
  echo "port $PORT is already in use; run with PORT=<free port>" >&2
  exit 1
fi

echo "==> MLflow tracking server on $MLFLOW_TRACKING_URI (data in .local/mlflow/)"
state=$("$ROOT/scripts/local-mlflow.sh" start)
[[ $state == started ]] && started_mlflow=1

echo "==> training; registering a new version of ml-service with alias champion"
"$BIN/python" -m ml_service.training --alias champion --output-json "$SCRATCH/train.json"

echo "==> serving $MODEL_URI on http://$HOST:$PORT"
"$BIN/python" -m ml_service &
serve_pid=$!

for _ in $(seq 1 600); do
  if ! kill -0 "$serve_pid" 2>/dev/null; then echo "the server exited" >&2; exit 1; fi
  if "$BIN/python" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \
      "http://127.0.0.1:$PORT/ready" >/dev/null 2>&1; then
    break
  fi
  sleep 0.5
done

body=$("$BIN/python" -c 'import json, sys
example = json.load(open(sys.argv[1]))["example"]
print(json.dumps({"instances": [example]}, separators=(",", ":")))' "$SCRATCH/train.json")
cat <<MSG

ml-service is ready: http://127.0.0.1:$PORT (docs: /docs, metrics: /metrics; MLflow UI: $MLFLOW_TRACKING_URI)
Try it:

curl -s -X POST http://127.0.0.1:$PORT/predict -H 'Content-Type: application/json' -d '$body'

Ctrl-C stops everything this command started.
MSG
wait "$serve_pid"
