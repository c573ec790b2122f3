#!/usr/bin/env bash
# Private Docker engine for builds and tests: Debian's dockerd started by hand, with its own
# data-root (kept under .local/ so base images and layers are cached between runs), exec-root,
# pid file and unix socket. Nothing system-wide is touched.
#
#   dockerd.sh start   start it unless it already answers; prints DOCKER_HOST=unix://...
#   dockerd.sh stop    stop it by its pid file (only the daemon this state dir started)
#   dockerd.sh status  exit 0 when it answers
#   dockerd.sh env     print the DOCKER_HOST line
#
# Settings: ML_SERVICE_DOCKER_DIR (data, default <repo>/.local/docker),
#           ML_SERVICE_DOCKER_RUN (sockets/pid, default a short /tmp path: unix socket paths are capped
#           at 108 bytes and containerd nests its own sockets below the exec-root).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DATA_DIR="${ML_SERVICE_DOCKER_DIR:-$ROOT/.local/docker}"
RUN_DIR="${ML_SERVICE_DOCKER_RUN:-/tmp/mlsd-$(printf '%s' "$DATA_DIR" | sha256sum | cut -c1-10)}"
SOCK="$RUN_DIR/docker.sock"
PIDFILE="$RUN_DIR/dockerd.pid"
LOG="$DATA_DIR/dockerd.log"
DOCKER="${DOCKER:-/usr/bin/docker}"
DOCKERD="${DOCKERD:-$(command -v dockerd || echo /usr/sbin/dockerd)}"

answers() { DOCKER_HOST="unix://$SOCK" "$DOCKER" version >/dev/null 2>&1; }

start() {
    if answers; then
        echo "DOCKER_HOST=unix://$SOCK"
        return 0
    fi
    [[ -x "$DOCKERD" ]] || { echo "dockerd not found: run 'make setup' (installs docker.io)" >&2; return 2; }
    mkdir -p "$DATA_DIR/data" "$RUN_DIR/exec"
    chmod 700 "$RUN_DIR"
    # No bridge and no iptables: builds and containers use --network host, so the engine needs no
    # netfilter rules (often unavailable in VMs and CI sandboxes) and leaves the host's firewall alone.
    setsid "$DOCKERD" \
        --data-root "$DATA_DIR/data" \
        --exec-root "$RUN_DIR/exec" \
        --pidfile "$PIDFILE" \
        --host "unix://$SOCK" \
        --bridge none --iptables=false --ip6tables=false --ip-masq=false \
        --userland-proxy=false \
        >"$LOG" 2>&1 </dev/null &
    local i
    for i in $(seq 1 150); do
        if answers; then
            echo "DOCKER_HOST=unix://$SOCK"
            return 0
        fi
        if ! kill -0 $! 2>/dev/null; then break; fi
        sleep 0.2
    done
    echo "dockerd did not come up; last lines of $LOG:" >&2
    tail -n 20 "$LOG" >&2 || true
    stop >/dev/null 2>&1 || true
    return 1
}

stop() {
    [[ -f "$PIDFILE" ]] || return 0
    local pid i
    pid="$(cat "$PIDFILE")"
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        # dockerd stops its containers and its own containerd before it exits.
        for i in $(seq 1 150); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" || true; fi
    fi
    rm -f "$PIDFILE"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) answers ;;
    env) echo "DOCKER_HOST=unix://$SOCK" ;;
    *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
