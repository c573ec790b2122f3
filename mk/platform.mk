# Platform tier: MLflow on a real PostgreSQL (Debian's server package, started by the tests
# as an unprivileged user) and a real S3 server (MinIO, built here from its Go module), the faults, the
# sqlite -> PostgreSQL + S3 migration, and charts/mlflow-platform. docs/mlflow-platform.md.
# MinIO publishes no semver module tags: the Go module proxy serves its commits as pseudo-versions.
# Bump with `go list -m -json github.com/minio/minio@latest`.
MINIO_VERSION := v0.0.0-20260212201848-7aac2a2c5b7c
PLATFORM_CHART := charts/mlflow-platform

.PHONY: setup-platform platform-chart-docs platform-images
SETUP_TARGETS += setup-platform

setup-platform: $(CHART_STAMP)/minio-$(MINIO_VERSION) ## PostgreSQL server (apt) and MinIO (built from its Go module)
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { export DEBIAN_FRONTEND=noninteractive; \
	  apt-get -o DPkg::Lock::Timeout=600 update -qq; \
	  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends postgresql >/dev/null; }
	@ls /usr/lib/postgresql/*/bin/postgres | sed -n 1p
	@$(TOOLS)/bin/minio --version | sed -n 1p

# MinIO's go.mod has no replace directive, so `go install module@version` builds it as published.
$(CHART_STAMP)/minio-$(MINIO_VERSION):
	cd /tmp && GOFLAGS= nice go install -trimpath -ldflags '-s -w' github.com/minio/minio@$(MINIO_VERSION)
	@mkdir -p $(@D) && touch $@

test-platform: setup-platform ## run the platform tier (PostgreSQL + MinIO + mlflow server, faults, migration, chart)

platform-chart-docs: ## regenerate charts/mlflow-platform README values table and values.schema.json
	$(TOOLS)/bin/valuesschema $(PLATFORM_CHART)/values.yaml > $(PLATFORM_CHART)/values.schema.json.tmp
	mv $(PLATFORM_CHART)/values.schema.json.tmp $(PLATFORM_CHART)/values.schema.json
	$(TOOLS)/bin/helm-docs --chart-search-root $(PLATFORM_CHART) --template-files README.md.gotmpl --output-file README.md

# The three images of charts/mlflow-platform (platform.Dockerfile), on the same local debootstrap base as
# the serving image. Not part of `make test` (the mlflow-server venv alone takes minutes): the in-cluster
# tier builds them. Tags: mlflow-server:<mlflow version>, mlflow-postgresql:15, mlflow-minio:<module version>.
MLFLOW_SERVER_VERSION = $(shell sed -n 's/^mlflow==\([^ ]*\).*/\1/p' requirements/mlflow-server.txt)
platform-images: setup-platform ## build the mlflow-server, postgresql and minio images of charts/mlflow-platform
	mkdir -p build/platform && install -m 755 $(TOOLS)/bin/minio build/platform/minio
	@$(DOCKER_SCRIPTS)/with-dockerd.sh $(DOCKER_SCRIPTS)/build-platform-images.sh \
	  mlflow-server=mlflow-server:$(MLFLOW_SERVER_VERSION) postgresql=mlflow-postgresql:15 \
	  minio=mlflow-minio:$(MINIO_VERSION)
