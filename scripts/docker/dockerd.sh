#!/usr/bin/env bash
# Private Docker engine for builds and tests: Debian's dockerd started by hand, with its own
# data-root, exec-root, pid file and unix socket under one short /tmp directory per work tree
# (unix socket paths are capped at 108 bytes and containerd nests its sockets below the exec-root).
# The data-root persists between runs, so the base image and BuildKit's layer cache are reused; it
# is kept out of the work tree so that no linter or scanner walks millions of layer files.
# Nothing system-wide is touched.
#
#   dockerd.sh start   start it unless it already answers; prints DOCKER_HOST=unix://...
#   dockerd.sh stop    stop it by its pid file (only the daemon of this state dir)
#   dockerd.sh status  exit 0 when it answers
#   dockerd.sh env     print the DOCKER_HOST line
#
# ML_SERVICE_DOCKER_DIR overrides the state directory.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
STATE="${ML_SERVICE_DOCKER_DIR:-/tmp/mlsd-$(printf '%s' "$ROOT" | sha256sum | cut -c1-10)}"
SOCK="$STATE/docker.sock"
PIDFILE="$STATE/dockerd.pid"
LOG="$STATE/dockerd.log"
DOCKER="${DOCKER:-/usr/bin/docker}"
DOCKERD="${DOCKERD:-$(command -v dockerd || echo /usr/sbin/dockerd)}"

answers() { DOCKER_HOST="unix://$SOCK" "$DOCKER" version >/dev/null 2>&1; }

start() {
    if answers; then
        echo "DOCKER_HOST=unix://$SOCK"
        return 0
    fi
    [[ -x "$DOCKERD" ]] || { echo "dockerd not found: run 'make setup' (installs docker.io)" >&2; return 2; }
    mkdir -p "$STATE/data" "$STATE/exec"
    chmod 700 "$STATE"
    # No bridge and no iptables: builds and containers use --network host, so the engine needs no
    # netfilter rules (often unavailable in VMs and CI sandboxes) and leaves the host's firewall alone.
    setsid "$DOCKERD" \
        --data-root "$STATE/data" \
        --exec-root "$STATE/exec" \
        --pidfile "$PIDFILE" \
        --host "unix://$SOCK" \
        --bridge none --iptables=false --ip6tables=false --ip-masq=false \
        --userland-proxy=false \
        >>"$LOG" 2>&1 </dev/null &
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
    # dockerd leaves its netns file and the data-root bind mount behind: unmount what is under
    # the state dir, deepest first, so the next start (or an rm -rf) finds plain directories.
    local mnt
    for mnt in $(awk -v dir="$STATE/" 'index($2, dir) == 1 { print $2 }' /proc/self/mounts | sort -r); do
        umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true
    done
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) answers ;;
    env) echo "DOCKER_HOST=unix://$SOCK" ;;
    *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
