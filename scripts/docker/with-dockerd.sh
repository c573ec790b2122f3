#!/usr/bin/env bash
# Run a command with a Docker engine in DOCKER_HOST: the one already in DOCKER_HOST or on the
# default socket if it answers, else the project's private dockerd (dockerd.sh), which is stopped
# again afterwards if this script started it.
#
#   with-dockerd.sh COMMAND [ARGS...]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DOCKER="${DOCKER:-/usr/bin/docker}"

if "$DOCKER" version >/dev/null 2>&1; then
    exec "$@"
fi
started=0
if ! "$HERE/dockerd.sh" status; then
    "$HERE/dockerd.sh" start >/dev/null
    started=1
fi
export "$("$HERE/dockerd.sh" env)"
rc=0
"$@" || rc=$?
if [[ $started == 1 ]]; then "$HERE/dockerd.sh" stop; fi
exit $rc
