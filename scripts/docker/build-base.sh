#!/usr/bin/env bash
# Build a local Debian bookworm base image with python3 + venv (debootstrap | docker import), for
# machines that cannot pull images. Bookworm's python3 is 3.11, the version the project pins.
# The tag carries a hash of this script, so the image is rebuilt only when it is missing or the
# recipe changed; repeat runs cost one `docker image inspect`.
#
#   build-base.sh            prints the image reference (e.g. ml-service-base:bookworm-1a2b3c4d5e6f)
#   build-base.sh --tag      prints the reference without building
#
# The Debian mirror is read from this machine's apt sources at run time (override: DEBIAN_MIRROR).
# Needs root (debootstrap), debootstrap and a docker engine in DOCKER_HOST.
set -euo pipefail

SUITE=bookworm
PACKAGES=python3,python3-venv,ca-certificates
RECIPE_HASH="$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-12)"
IMAGE="${BASE_IMAGE_NAME:-ml-service-base}:$SUITE-$RECIPE_HASH"
DOCKER="${DOCKER:-/usr/bin/docker}"

if [[ "${1:-}" == "--tag" ]]; then
    echo "$IMAGE"
    exit 0
fi

if "$DOCKER" image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "$IMAGE"
    exit 0
fi

mirror() {
    if [[ -n "${DEBIAN_MIRROR:-}" ]]; then
        echo "$DEBIAN_MIRROR"
        return
    fi
    local f uri
    # deb822 sources: the URIs of a stanza whose Suites has the bare suite (not -security/-updates).
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f "$f" ]] || continue
        uri="$(awk -v suite="$SUITE" '
            /^[[:space:]]*$/ { if (u != "" && s) { print u; exit } u = ""; s = 0; next }
            tolower($1) == "uris:" { u = $2 }
            tolower($1) == "suites:" { for (i = 2; i <= NF; i++) if ($i == suite) s = 1 }
            END { if (u != "" && s) print u }' "$f" | sed -n 1p)"
        if [[ -n "$uri" ]]; then
            echo "$uri"
            return
        fi
    done
    # one-line sources: "deb [opts] URI SUITE components"
    uri="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
        awk -v suite="$SUITE" '$1 == "deb" { for (i = 2; i < NF; i++) if ($(i + 1) == suite && $i ~ /^[a-z]+:\/\//) { print $i; exit } }')"
    if [[ -n "$uri" ]]; then
        echo "$uri"
        return
    fi
    echo "no Debian $SUITE mirror in the apt sources; set DEBIAN_MIRROR" >&2
    return 1
}

command -v debootstrap >/dev/null || { echo "debootstrap missing: run 'make setup'" >&2; exit 2; }
MIRROR="$(mirror)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/ml-service-base.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
ROOTFS="$WORK/rootfs"

echo "debootstrap $SUITE into $ROOTFS" >&2
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOTFS" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 || {
    tail -n 30 "$WORK/debootstrap.log" >&2
    exit 1
}

# Slim it down: package caches, indexes, docs (copyright files kept) and translations are not needed
# in a container, and /dev is provided by the engine. The standard library's bytecode (compiled by
# the python3 package) stays: a read-only root FS could not cache it at run time.
rm -rf "$ROOTFS"/var/cache/apt/* "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/log/* \
    "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* "$ROOTFS"/usr/share/locale/* \
    "$ROOTFS"/usr/share/doc-base "$ROOTFS"/usr/share/lintian "$ROOTFS"/dev/* \
    "$ROOTFS"/debootstrap
find "$ROOTFS/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
find "$ROOTFS/usr/share/doc" -mindepth 1 -type d -empty -delete

tar --numeric-owner -C "$ROOTFS" -c . |
    "$DOCKER" import \
        --change 'ENV LANG=C.UTF-8' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["python3"]' \
        --change "LABEL org.opencontainers.image.title=ml-service-base org.opencontainers.image.description=debootstrap-$SUITE-minbase-python3 org.ml-service.recipe=$RECIPE_HASH" \
        - "$IMAGE" >/dev/null
echo "$IMAGE"
