# ml-service serving image. docs/image.md explains every choice; the short version:
# - builder: a virtualenv with exactly requirements/runtime.txt (hash-checked wheels, no compilers);
# - runtime: the base image + that virtualenv + the app, UID/GID 10001, read-only root FS friendly
#   (writes only /tmp), HEALTHCHECK on the probe listener, python as PID 1 so SIGTERM reaches uvicorn;
# - targets: `runtime` (default: serves the demo model trained at build time unless MODEL_URI names
#   another, e.g. a registry version) and `baked` (a registry model copied in instead).
# Uses only the Dockerfile features built into BuildKit (no `# syntax=` line: nothing to pull).

# Official slim Python (Debian bookworm, Python 3.11), pinned by digest. Machines that cannot pull
# pass a local base: `make image` and the image tests build one with debootstrap.
ARG BASE_IMAGE=python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91

FROM ${BASE_IMAGE} AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-eu", "-c"]
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_NO_INPUT=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /build
COPY requirements/runtime.txt scripts/docker/image-excludes.txt ./
# Optional BuildKit secrets for builds behind a TLS-intercepting proxy, never stored in a layer:
#   pip_cert = extra CA bundle (PEM), pip_conf = a pip.conf (index URL with credentials...).
# The lock minus the packages image-excludes.txt names (Databricks only: see there).
# pip and setuptools leave the virtualenv once it is filled: serving installs nothing.
RUN --mount=type=secret,id=pip_cert \
    --mount=type=secret,id=pip_conf \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi; \
    if [ -s /run/secrets/pip_conf ]; then export PIP_CONFIG_FILE=/run/secrets/pip_conf; fi; \
    awk 'NR == FNR { if ($0 !~ /^#/ && NF) skip[$1] = 1; next } \
         /^[a-z0-9]/ { split($1, name, "=="); drop = (name[1] in skip) } !drop' \
        image-excludes.txt runtime.txt >image.txt \
    && python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --quiet --no-compile --require-hashes --no-deps \
        --only-binary=:all: -r image.txt \
    && /opt/venv/bin/python -m pip uninstall --quiet --yes pip setuptools
# Test suites, type stubs and Cython sources are never imported when serving (~55 MB).
# botocore carries the API models of ~450 AWS services (28 MB); the app only reads S3, and the
# credential chain may call STS (IRSA/web identity), SSO and sign-in: keep those (docs/image.md).
RUN find /opt/venv -depth \( \( -type d \( -name tests -o -name test \) \) \
        -o -name '*.pyi' -o -name '*.pyx' -o -name '*.pxd' -o -name '*.pxi' \) \
        -exec rm -rf {} + \
    && purelib="$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" \
    && find "$purelib/botocore/data" -mindepth 1 -maxdepth 1 -type d -not -name s3 -not -name sts \
        -not -name sso -not -name sso-oidc -not -name signin -exec rm -rf {} + \
    && find "$purelib/boto3/data" -mindepth 1 -maxdepth 1 -type d -not -name s3 -exec rm -rf {} + \
    && echo /opt/ml-service/app >"$purelib/ml_service_app.pth"
# The demo model: the default training run (seed 42, scikit-learn's bundled breast-cancer data, the
# same code and lock as `make train`) saved as an MLflow model directory with its drift reference, so
# `helm install` with no values serves predictions without any tracking server. Runs in the builder's
# venv (mlflow-skinny can save a model; no run, no registry).
FROM builder AS demo-model
# Only what training imports: serving-code changes keep this layer cached.
COPY app/ml_service/__init__.py app/ml_service/model_format.py app/ml_service/payload_format.py \
     /opt/ml-service/app/ml_service/
COPY app/ml_service/training /opt/ml-service/app/ml_service/training
RUN MLFLOW_DISABLE_TELEMETRY=true /opt/venv/bin/python -m ml_service.training \
        --output-dir /opt/ml-service/model --output-json /tmp/demo-model.json

# The serving code alone: the package's shared modules and serving/, not training or the release
# gate (they need the training extras, which the runtime venv does not have).
FROM scratch AS serving-code
COPY app/ml_service/__init__.py app/ml_service/__main__.py app/ml_service/model_format.py \
     app/ml_service/payload_format.py app/ml_service/redact.py /ml_service/
COPY app/ml_service/serving /ml_service/serving

# The root FS is read-only at run time, so Python cannot cache bytecode there and would compile
# every module a start imports (~2,400) before answering. compile_startup.py loads the demo model
# the way a start does and ships bytecode instead of source for exactly those modules (+~6 MB).
FROM builder AS startup-bytecode
COPY --from=serving-code /ml_service /opt/ml-service/app/ml_service
COPY --from=demo-model /opt/ml-service/model /opt/ml-service/model
COPY scripts/docker/compile_startup.py /build/
RUN MLFLOW_DISABLE_TELEMETRY=true /opt/venv/bin/python /build/compile_startup.py \
        /opt/venv /opt/ml-service/model

FROM ${BASE_IMAGE} AS serve
ARG VERSION=0.0.0-dev
ARG REVISION=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="ml-service" \
      org.opencontainers.image.description="scikit-learn model server (FastAPI + uvicorn, MLflow model registry)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.version="${VERSION}"
# Fixed IDs so Kubernetes runAsUser/fsGroup and file ownership agree everywhere.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
        --shell /usr/sbin/nologin app
COPY --from=startup-bytecode /opt/venv /opt/venv
COPY --from=serving-code /ml_service /opt/ml-service/app/ml_service
# The app keeps its source; its bytecode is trusted without checking it (nothing rewrites it).
RUN python3 -m compileall -q --invalidation-mode unchecked-hash /opt/ml-service/app
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    HOST=0.0.0.0 \
    PORT=8000 \
    PROBE_PORT=8081
# Not /tmp: the working directory is on sys.path for `python -m`, so it must not be writable.
WORKDIR /opt/ml-service
USER 10001:10001
# 8000: clients; 8081: the probe listener (/health, /ready, /metrics) for probes and scrapes only.
EXPOSE 8000 8081
# urllib raises on connection errors and non-2xx answers, so the exit code is the verdict. It asks
# the probe listener, which no client load can delay.
HEALTHCHECK --interval=10s --timeout=4s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PROBE_PORT', '8081'), timeout=3)"]
# Exec form: python is PID 1 and receives SIGTERM itself; the app turns it into a graceful
# uvicorn shutdown that exits 0.
ENTRYPOINT ["python", "-m", "ml_service"]

# A model baked in at build time, for clusters that cannot reach a tracking server:
#   scripts/docker/build-image.sh --model models:/ml-service@champion
# downloads the model directory into build/model and builds this target with MODEL_DIR=build/model.
FROM serve AS baked
ARG MODEL_DIR=build/model
ARG MODEL_NAME=ml-service
ARG MODEL_VERSION=local
LABEL org.ml-service.model.name="${MODEL_NAME}" \
      org.ml-service.model.version="${MODEL_VERSION}"
COPY ${MODEL_DIR} /opt/ml-service/model
ENV MODEL_URI=/opt/ml-service/model \
    MODEL_NAME=${MODEL_NAME} \
    MODEL_VERSION=${MODEL_VERSION}

# Default target: the demo model above. MODEL_URI in the environment (the chart's registry mode,
# `docker run -e`) replaces it; the demo files are then simply not read.
FROM serve AS runtime
LABEL org.ml-service.model.name="ml-service" \
      org.ml-service.model.version="demo"
COPY --from=demo-model /opt/ml-service/model /opt/ml-service/model
ENV MODEL_URI=/opt/ml-service/model \
    MODEL_NAME=ml-service \
    MODEL_VERSION=demo
