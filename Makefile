# ml-service: one obvious entry point for every job. `make help` lists them.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

ROOT   := $(CURDIR)
PYTHON ?= python3
VENV   := $(ROOT)/.venv
BIN    := $(VENV)/bin
# Pinned tools (helm, helm-unittest, promtool wrappers, linters...) land here, never system-wide.
TOOLS  := $(ROOT)/.tools
export PATH := $(TOOLS)/bin:$(BIN):$(PATH)
export GOBIN := $(TOOLS)/bin
UV_VERSION := 0.13.8
UV := $(TOOLS)/uv/bin/uv

# Each mk/<tier>.mk appends its own `setup-<tier>` target to SETUP_TARGETS.
SETUP_TARGETS :=
include $(sort $(wildcard mk/*.mk))

.PHONY: help setup venv lock test test-unit test-models lint run train serve docs version
help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

$(UV):
	$(PYTHON) -m venv $(TOOLS)/uv
	$(TOOLS)/uv/bin/pip install -q uv==$(UV_VERSION)

lock: $(UV) ## re-resolve requirements/*.txt from pyproject.toml (exact versions + hashes)
	$(UV) pip compile pyproject.toml --python-version 3.11 --generate-hashes --no-emit-index-url \
	  --no-header --quiet -o requirements/runtime.txt
	$(UV) pip compile pyproject.toml --extra train --extra server --extra dev -c requirements/runtime.txt \
	  --python-version 3.11 --generate-hashes --no-emit-index-url --no-header --quiet -o requirements/dev.txt
	# The mlflow-server image (charts/mlflow-platform): the server extra alone, same pins as dev.
	$(UV) pip compile requirements/mlflow-server.in -c requirements/dev.txt \
	  --python-version 3.11 --generate-hashes --no-emit-index-url --no-header --quiet -o requirements/mlflow-server.txt
	# runtime + training extras at the dev pins: the cluster tier's MLflow server image installs it
	$(UV) pip compile pyproject.toml --extra train -c requirements/dev.txt \
	  --python-version 3.11 --generate-hashes --no-emit-index-url --no-header --quiet -o requirements/train.txt

$(VENV)/.synced: requirements/dev.txt pyproject.toml | $(UV)
	test -x $(BIN)/python || $(UV) venv -q --python $(PYTHON) $(VENV)
	# Bytecode compiled once here: every server start (tests start many) would otherwise recompile.
	VIRTUAL_ENV=$(VENV) $(UV) pip sync -q --compile-bytecode --require-hashes requirements/dev.txt
	VIRTUAL_ENV=$(VENV) $(UV) pip install -q --no-deps -e .
	touch $@

venv: $(VENV)/.synced ## create .venv from the lock file

setup: venv $(SETUP_TARGETS) ## install everything the tests need (apt, Go and npm tools, virtualenvs)

# The cluster tier mostly waits on its node (pods starting, Argo CD syncing): it runs beside the
# tiers that do not measure time, and the timed ones (attacks, benchmarks) run alone once it is
# done. Its output is printed when it ends. PYTEST_CLUSTER_ARGS: its arguments (PYTEST_ARGS).
CLUSTER_LOG := $(ROOT)/.local/test-cluster.log
PYTEST_CLUSTER_ARGS ?= $(PYTEST_ARGS)
TIMED_TIERS := adversarial or bench

test: setup ## install what the tests need (idempotent: a second run installs nothing), run every tier
	@mkdir -p $(dir $(CLUSTER_LOG))
	@$(BIN)/pytest -m cluster $(PYTEST_CLUSTER_ARGS) >$(CLUSTER_LOG) 2>&1 & cluster=$$!; \
	untimed=0; $(BIN)/pytest -m "not cluster and not ($(TIMED_TIERS))" $(PYTEST_ARGS) || untimed=$$?; \
	clustered=0; wait $$cluster || clustered=$$?; \
	echo "---- the cluster tier, run beside the others ($(CLUSTER_LOG)) ----"; cat $(CLUSTER_LOG); \
	timed=0; $(BIN)/pytest -m "$(TIMED_TIERS)" $(PYTEST_ARGS) || timed=$$?; \
	echo "tiers: untimed exit $$untimed, cluster exit $$clustered, timed exit $$timed"; \
	test $$untimed -eq 0 -a $$clustered -eq 0 -a $$timed -eq 0

test-unit: venv ## the unit tier: seconds, needs only the virtualenv
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

test-models: venv ## in-process checks that fit real models (flat tree walk, training): a minute
	$(BIN)/pytest tests/models $(PYTEST_ARGS)

# `make test-<tier>`: the tier's own setup (each mk/<tier>.mk declares `test-<tier>: setup-<tier>`),
# then its tests, by marker (a marker is a directory of tests/: tests/conftest.py).
test-integration: venv setup-monitoring setup-chart ## the app over HTTP against a real MLflow server (+ schemathesis; Prometheus and helm for live quality)
test-compat: venv ## /invocations side by side with `mlflow models serve` and MLflow's client
test-adversarial: venv ## attacks on the running app: amplification, labels, secrets, floods, shutdown
test-%: venv
	$(BIN)/pytest -m $* $(PYTEST_ARGS)

version: ## set the project version everywhere: make version V=x.y.z
	$(PYTHON) scripts/set_version.py "$(V)"

docs: venv ## regenerate the generated parts of the docs (settings table...)
	$(BIN)/python scripts/gen_docs.py

lint: venv ## ruff
	$(BIN)/ruff check app tests scripts benchmarks
	$(BIN)/ruff format --check app tests scripts benchmarks
