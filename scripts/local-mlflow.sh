#!/usr/bin/env bash
# Local MLflow tracking server for `make mlflow|train|serve|run`: sqlite + artifacts under
# .local/mlflow/, 127.0.0.1 only, in its own process group (its workers outlive a plain kill).
#   local-mlflow.sh start   start unless already answering; prints "started" or "running"
#   local-mlflow.sh stop    stop the process group this script started
#   local-mlflow.sh status
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PORT=${MLFLOW_PORT:-5000}
DATA=${MLFLOW_DATA_DIR:-$ROOT/.local/mlflow}
BIN=${VENV_BIN:-$ROOT/.venv/bin}
PIDFILE=$DATA/server.pid
URL=http://127.0.0.1:$PORT
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true

# the venv's python, not curl: one less thing a fresh machine needs
healthy() {
  "$BIN/python" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \
    "$URL/health" >/dev/null 2>&1
}
our_pid() { [[ -f $PIDFILE ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null && cat "$PIDFILE"; }

start() {
  if healthy; then echo "running"; return 0; fi
  if pid=$(our_pid); then
    echo "mlflow server (pid $pid) is starting" >&2
  else
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
      echo "port $PORT is taken by something that is not an MLflow server; set MLFLOW_PORT" >&2
      return 1
    fi
    mkdir -p "$DATA/artifacts"
    # setsid: own session and process group, so `stop` can end the server and its workers
    # together, and a Ctrl-C in the terminal reaches it only through `stop`.
    setsid "$BIN/mlflow" server --host 127.0.0.1 --port "$PORT" --workers 1 \
      --backend-store-uri "sqlite:///$DATA/mlflow.db" --artifacts-destination "$DATA/artifacts" \
      >>"$DATA/server.log" 2>&1 </dev/null &
    echo $! >"$PIDFILE"
  fi
  for _ in $(seq 1 240); do
    if healthy; then echo "started"; return 0; fi
    if ! our_pid >/dev/null; then
      echo "mlflow server exited; see $DATA/server.log" >&2; tail -20 "$DATA/server.log" >&2
      return 1
    fi
    sleep 0.5
  done
  echo "mlflow server did not answer $URL/health within 120 s; see $DATA/server.log" >&2
  return 1
}

stop() {
  local pid
  if ! pid=$(our_pid); then rm -f "$PIDFILE"; echo "not running"; return 0; fi
  kill -TERM -- "-$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.2; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$PIDFILE"
  echo "stopped"
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  status) if healthy; then echo "running at $URL"; else echo "not running"; exit 3; fi ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
