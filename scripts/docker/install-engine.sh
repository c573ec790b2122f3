#!/usr/bin/env bash
# What the image tier needs from apt: a Docker engine and client, and debootstrap for the local base.
# An engine that is already installed is left alone: a GitHub runner's Docker CE (docker-ce,
# containerd.io) conflicts with Debian's docker.io, and apt would remove it to install that. So docker.io
# comes only where no engine is installed at all, debootstrap wherever it is missing.
#
#   install-engine.sh        (root; DOCKER names the client the tier uses, /usr/bin/docker by default)
set -euo pipefail
DOCKER="${DOCKER:-/usr/bin/docker}"

packages=()
if ! command -v dockerd >/dev/null; then
    packages+=(docker.io)
elif ! test -x "$DOCKER"; then
    echo "install-engine: dockerd is installed but its client $DOCKER is not: install it with the" \
        "same packages as the engine (or set DOCKER to the client's path)" >&2
    exit 1
fi
command -v debootstrap >/dev/null || packages+=(debootstrap)
if ((${#packages[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi
