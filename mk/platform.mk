# Platform tier: MLflow on a real PostgreSQL (Debian's server package, started by the tests
# as an unprivileged user) and a real S3 server (MinIO, built here from its Go module), the faults, the
# sqlite -> PostgreSQL + S3 migration, and charts/mlflow-platform. docs/mlflow-platform.md.
# MinIO publishes no semver module tags: the Go module proxy serves its commits as pseudo-versions.
# Bump with `go list -m -json github.com/minio/minio@latest`.
MINIO_VERSION := v0.0.0-20260212201848-7aac2a2c5b7c
# The HTTPRoute CRD the chart's `expose.httpRoute` is validated against (the CRD YAML of the Gateway API
# Go module; the newest release that needs no newer Go toolchain).
GATEWAY_API_VERSION := v1.6.3
PLATFORM_CHART := charts/mlflow-platform

.PHONY: setup-platform platform-chart-docs platform-images platform-image-refs platform-minio
SETUP_TARGETS += setup-platform

setup-platform: $(CHART_STAMP)/minio-$(MINIO_VERSION) $(CHART_STAMP)/crds-gateway-api-$(GATEWAY_API_VERSION) ## PostgreSQL server (apt), MinIO (built from its Go module), the Gateway API CRDs
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { export DEBIAN_FRONTEND=noninteractive; \
	  apt-get -o DPkg::Lock::Timeout=600 update -qq; \
	  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends postgresql >/dev/null; }
	@ls /usr/lib/postgresql/*/bin/postgres | sed -n 1p
	@$(TOOLS)/bin/minio --version | sed -n 1p

# MinIO's go.mod has no replace directive, so `go install module@version` builds it as published.
$(CHART_STAMP)/minio-$(MINIO_VERSION):
	cd /tmp && GOFLAGS= nice go install -trimpath -ldflags '-s -w' github.com/minio/minio@$(MINIO_VERSION)
	@mkdir -p $(@D) && touch $@

$(CHART_STAMP)/crds-gateway-api-$(GATEWAY_API_VERSION):
	dir=$$(cd /tmp && GOFLAGS= go mod download -json sigs.k8s.io/gateway-api@$(GATEWAY_API_VERSION) \
	  | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])') && \
	  mkdir -p $(TOOLS)/crds/gateway-api && \
	  install -m 644 $$dir/config/crd/standard/gateway.networking.k8s.io_httproutes.yaml $(TOOLS)/crds/gateway-api/
	@mkdir -p $(@D) && touch $@

test-platform: setup-platform ## run the platform tier (PostgreSQL + MinIO + mlflow server, faults, migration, chart)

platform-chart-docs: ## regenerate charts/mlflow-platform README values table and values.schema.json
	$(TOOLS)/bin/valuesschema $(PLATFORM_CHART)/values.yaml > $(PLATFORM_CHART)/values.schema.json.tmp
	mv $(PLATFORM_CHART)/values.schema.json.tmp $(PLATFORM_CHART)/values.schema.json
	$(TOOLS)/bin/helm-docs --chart-search-root $(PLATFORM_CHART) --template-files README.md.gotmpl --output-file README.md

# The three images of charts/mlflow-platform (platform.Dockerfile), on the same local debootstrap base as
# the serving image. Not part of `make test` (the mlflow-server venv alone takes minutes): the in-cluster
# tier builds them, the `platform-images` workflow builds and pushes them.
# Names: $(PLATFORM_REGISTRY)/<image>:<tag>, the chart's defaults (the registry path is read from the
# chart's values, which `make adopt` points at your repository); tags: the MLflow version, PostgreSQL's
# major, the MinIO module version.
PLATFORM_REGISTRY ?= $(shell sed -n 's|^    repository: \(.*\)/mlflow-server$$|\1|p' $(PLATFORM_CHART)/values.yaml)
MLFLOW_SERVER_VERSION = $(shell sed -n 's/^mlflow==\([^ ]*\).*/\1/p' requirements/mlflow-server.txt)
PLATFORM_IMAGES = mlflow-server=$(PLATFORM_REGISTRY)/mlflow-server:$(MLFLOW_SERVER_VERSION) \
  postgresql=$(PLATFORM_REGISTRY)/mlflow-postgresql:15 minio=$(PLATFORM_REGISTRY)/mlflow-minio:$(MINIO_VERSION)

platform-image-refs: ## print TARGET=IMAGE:TAG for each platform image (PLATFORM_REGISTRY=ghcr.io/<owner>/<repo>)
	@printf '%s\n' $(PLATFORM_IMAGES)

# The MinIO binary the `minio` target copies in (platform.Dockerfile.dockerignore lets only it through).
platform-minio: $(CHART_STAMP)/minio-$(MINIO_VERSION) ## the MinIO binary for the image, in build/platform/
	# copied then renamed: the cluster tier may build from this context at the same time
	mkdir -p build/platform && install -m 755 $(TOOLS)/bin/minio build/platform/.minio.$$$$ && \
	  mv -f build/platform/.minio.$$$$ build/platform/minio

platform-images: setup-platform platform-minio ## build the mlflow-server, postgresql and minio images of charts/mlflow-platform
	@$(DOCKER_SCRIPTS)/with-dockerd.sh $(DOCKER_SCRIPTS)/build-platform-images.sh $(PLATFORM_IMAGES)
