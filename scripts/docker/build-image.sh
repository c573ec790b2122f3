#!/usr/bin/env bash
# Build the ml-service image with BuildKit. Used by `make image` and the image tests.
#
#   build-image.sh [--image NAME:TAG] [--base IMAGE|local|dockerfile] [--model URI | --model-dir DIR]
#                  [--model-name N] [--model-version V] [--iidfile FILE] [--report] [-- extra docker build args]
#
#   --base local        (default) a debootstrap base built once and cached (build-base.sh)
#   --base dockerfile   the digest-pinned official Python image named in the Dockerfile
#   --model URI         bake a model in: download it from MLflow (MLFLOW_TRACKING_URI, MLflow's
#                       credential env vars) into build/model-fetch-<pid> and build `baked`
#   --model-dir DIR     bake an already downloaded model directory (must be under build/model*)
#   --model-name N, --model-version V   labels for --model-dir (default ml-service / local)
#   --report            also print the tag, size and virtualenv size (stderr)
#
# Secrets (BuildKit, never stored in a layer): the CA bundle named by PIP_CERT (else SSL_CERT_FILE,
# REQUESTS_CA_BUNDLE) is passed as `pip_cert`, PIP_CONFIG_FILE as `pip_conf`; with neither set the
# build uses the image's own trust store, as on any normal network.
# Prints the image ID on stdout; progress goes to stderr. Needs DOCKER_HOST (dockerd.sh start).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DOCKER="${DOCKER:-/usr/bin/docker}"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
IMAGE="ml-service:dev"
BASE=local
MODEL_URI=""
MODEL_DIR=""
IIDFILE=""
EXTRA=()
model_name=""
model_version=""
TARGET=runtime
REPORT=0

while [[ $# -gt 0 ]]; do
    case "$1" in
        --image) IMAGE="$2"; shift 2 ;;
        --base) BASE="$2"; shift 2 ;;
        --model) MODEL_URI="$2"; shift 2 ;;
        --model-dir) MODEL_DIR="$2"; shift 2 ;;
        --model-name) model_name="$2"; shift 2 ;;
        --model-version) model_version="$2"; shift 2 ;;
        --iidfile) IIDFILE="$2"; shift 2 ;;
        --report) REPORT=1; shift ;;
        --) shift; EXTRA=("$@"); break ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

cd "$ROOT"
args=(--network host --tag "$IMAGE")

case "$BASE" in
    dockerfile | "") ;;
    local) args+=(--build-arg "BASE_IMAGE=$(scripts/docker/build-base.sh)") ;;
    *) args+=(--build-arg "BASE_IMAGE=$BASE") ;;
esac

if [[ -n "$MODEL_URI" ]]; then
    # a directory per build: concurrent builds must not share (or delete) each other's model
    MODEL_DIR="build/model-fetch-$$"
    trap 'rm -rf "$ROOT/$MODEL_DIR" "$ROOT/$MODEL_DIR.partial"' EXIT
    mkdir -p build
    # Prints "name version" of the downloaded model (registry URIs resolve to a version number).
    read -r model_name model_version < <("$PYTHON" scripts/docker/fetch_model.py "$MODEL_URI" "$MODEL_DIR")
fi
if [[ -n "$MODEL_DIR" ]]; then
    MODEL_DIR="$(realpath --relative-to="$ROOT" "$MODEL_DIR")"
    [[ "$MODEL_DIR" == build/model* && -f "$MODEL_DIR/MLmodel" ]] || {
        echo "--model-dir must be an MLflow model directory under build/model* (the build context allow-list)" >&2
        exit 2
    }
    TARGET=baked
    args+=(--build-arg "MODEL_DIR=$MODEL_DIR"
        --build-arg "MODEL_NAME=${model_name:-ml-service}"
        --build-arg "MODEL_VERSION=${model_version:-local}")
fi

cert="${PIP_CERT:-${SSL_CERT_FILE:-${REQUESTS_CA_BUNDLE:-}}}"
if [[ -n "$cert" && -f "$cert" ]]; then args+=(--secret "id=pip_cert,src=$cert"); fi
if [[ -n "${PIP_CONFIG_FILE:-}" && -f "${PIP_CONFIG_FILE}" ]]; then
    args+=(--secret "id=pip_conf,src=$PIP_CONFIG_FILE")
fi

revision="$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"
if [[ -n "$(git -C "$ROOT" status --porcelain -- app requirements Dockerfile 2>/dev/null)" ]]; then
    revision="$revision-dirty"
fi
version="$(sed -n 's/^__version__ = "\(.*\)"/\1/p' app/ml_service/__init__.py)"
# A remote URL may carry credentials (https://user:token@host/...): the label gets it without them.
source_url="$(git -C "$ROOT" config --get remote.origin.url 2>/dev/null | PYTHONPATH="$ROOT/app" "$PYTHON" -c \
    'import sys; from ml_service.redact import without_userinfo; print(without_userinfo(sys.stdin.read().strip()))' || true)"
args+=(--target "$TARGET" --build-arg "VERSION=${version:-0.0.0}" --build-arg "REVISION=$revision"
    --build-arg "SOURCE=${source_url:-unknown}")

iid="${IIDFILE:-$(mktemp)}"
mkdir -p "$(dirname "$iid")"
start=$SECONDS
DOCKER_BUILDKIT=1 "$DOCKER" build --progress=plain --iidfile "$iid" "${args[@]}" "${EXTRA[@]}" . >&2
id="$(cat "$iid")"
[[ -n "$IIDFILE" ]] || rm -f "$iid"
if [[ $REPORT == 1 ]]; then
    size="$("$DOCKER" image inspect --format '{{.Size}}' "$id")"
    venv="$("$DOCKER" run --rm --network none --entrypoint du "$id" -sb /opt/venv | cut -f1)"
    {
        echo "image:       $IMAGE ($TARGET target)"
        echo "image id:    $id"
        echo "size:        $((size / 1000000)) MB (virtualenv $((venv / 1000000)) MB)"
        echo "build time:  $((SECONDS - start)) s"
    } >&2
fi
echo "$id"
