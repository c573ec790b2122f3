# Images of charts/mlflow-platform, built from the project's own lock files and tools (no registry image
# but the base): `make platform-images`. docs/mlflow-platform.md explains them.
# - mlflow-server: `mlflow server` with PostgreSQL (psycopg) and S3 (boto3) support and the basic-auth
#   app, exactly requirements/mlflow-server.txt;
# - postgresql: Debian's PostgreSQL server package and an entrypoint that initialises an empty volume;
# - minio: the MinIO binary `make setup-platform` builds from its Go module (copied into build/platform/).
# Every image runs as UID/GID 10001 with a read-only root filesystem (writes: the volume and /tmp).
ARG BASE_IMAGE=python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91

FROM ${BASE_IMAGE} AS mlflow-builder
SHELL ["/bin/bash", "-o", "pipefail", "-eu", "-c"]
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_NO_INPUT=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /build
COPY requirements/mlflow-server.txt ./
# Same optional BuildKit secrets as the serving image (a CA bundle / pip.conf), never in a layer.
RUN --mount=type=secret,id=pip_cert \
    --mount=type=secret,id=pip_conf \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi; \
    if [ -s /run/secrets/pip_conf ]; then export PIP_CONFIG_FILE=/run/secrets/pip_conf; fi; \
    python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --quiet --no-compile --require-hashes --no-deps \
        --only-binary=:all: -r mlflow-server.txt \
    && /opt/venv/bin/python -m pip uninstall --quiet --yes pip setuptools \
    && find /opt/venv -depth -type d \( -name tests -o -name test \) -exec rm -rf {} +

FROM ${BASE_IMAGE} AS mlflow-server
RUN groupadd --system --gid 10001 mlflow \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
        --shell /usr/sbin/nologin mlflow
COPY --from=mlflow-builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH VIRTUAL_ENV=/opt/venv PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp TMPDIR=/tmp MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true \
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
WORKDIR /opt/mlflow
USER 10001:10001
EXPOSE 5000
# The chart passes the store URIs; credentials arrive as environment variables (PGPASSWORD, AWS_*,
# MLFLOW_AUTH_*), never as arguments.
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000"]

FROM ${BASE_IMAGE} AS postgresql
SHELL ["/bin/bash", "-o", "pipefail", "-eu", "-c"]
# Debian's own package, as on the test machines (tests/support/mlflow_platform.py); the version is
# pinned by the base image's Debian release (bookworm: PostgreSQL 15), its security updates by apt.
# hadolint ignore=DL3008
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 pg \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
        --shell /usr/sbin/nologin pg
COPY scripts/docker/postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data/pgdata HOME=/tmp
USER 10001:10001
EXPOSE 5432
ENTRYPOINT ["postgres-entrypoint"]

FROM ${BASE_IMAGE} AS minio
COPY build/platform/minio /usr/local/bin/minio
ENV HOME=/tmp MINIO_BROWSER=off MINIO_UPDATE=off MINIO_CALLHOME_ENABLE=off
USER 10001:10001
EXPOSE 9000
ENTRYPOINT ["minio"]
CMD ["server", "/data", "--address", ":9000", "--console-address", "127.0.0.1:9001", "--certs-dir", "/tmp/certs"]
