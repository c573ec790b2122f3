#!/usr/bin/env bash
# Build the images of charts/mlflow-platform from platform.Dockerfile: `make platform-images`.
#   build-platform-images.sh TARGET=NAME:TAG...   e.g. postgresql=mlflow-postgresql:15
# Same base as the serving image (the local debootstrap base unless BASE_IMAGE is set), same optional
# BuildKit secrets (PIP_CERT / PIP_CONFIG_FILE). Prints "TARGET NAME:TAG SIZE BUILD-SECONDS" per image.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DOCKER="${DOCKER:-/usr/bin/docker}"
cd "$ROOT"
base="${BASE_IMAGE:-$(scripts/docker/build-base.sh)}"
secrets=()
cert="${PIP_CERT:-${SSL_CERT_FILE:-${REQUESTS_CA_BUNDLE:-}}}"
[[ -n "$cert" && -s "$cert" ]] && secrets+=(--secret "id=pip_cert,src=$cert")
[[ -n "${PIP_CONFIG_FILE:-}" && -s "$PIP_CONFIG_FILE" ]] && secrets+=(--secret "id=pip_conf,src=$PIP_CONFIG_FILE")
for spec in "$@"; do
    target="${spec%%=*}" tag="${spec#*=}"
    start=$(date +%s)
    DOCKER_BUILDKIT=1 "$DOCKER" build --network host --file platform.Dockerfile --target "$target" \
        --build-arg "BASE_IMAGE=$base" "${secrets[@]}" --tag "$tag" --quiet . >/dev/null
    size=$("$DOCKER" image inspect --format '{{.Size}}' "$tag")
    echo "$target $tag $((size / 1000000))MB $(($(date +%s) - start))s"
done
