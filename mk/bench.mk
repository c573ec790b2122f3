# Benchmarks tier: `make bench` measures ml-service against `mlflow models serve`, MLServer and
# BentoML. `setup-bench` stays light (wrk and vegeta, for the smoke test); the competitors'
# virtualenvs are heavy, so only `make bench` (via bench-envs) installs them.
BENCH_DIR  := $(TOOLS)/bench
BENCH_REQS := benchmarks/requirements
BENCH_ENVS := mlserver bentoml profile
# e.g. make bench BENCH_ARGS="--quick --servers ml-service,mlflow,http-floor"
BENCH_ARGS ?=
# Open-loop (constant-rate) load generator, built from its Go module (~1 min of CPU cold).
VEGETA_VERSION := v12.13.0
VEGETA_STAMP   := $(TOOLS)/bin/vegeta-$(VEGETA_VERSION)

.PHONY: setup-bench bench-envs bench-bytecode bench bench-lock bench-clean
SETUP_TARGETS += setup-bench

setup-bench: $(VEGETA_STAMP) ## install wrk (Debian) and vegeta (Go) for the benchmark harness
	@command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }
	@{ wrk --version || true; } 2>&1 | sed -n 1p  # wrk exits 1 after printing its version

$(VEGETA_STAMP):
	mkdir -p $(TOOLS)/bin
	cd /tmp && nice go install -trimpath -ldflags '-s -w -X main.Version=$(VEGETA_VERSION)' \
	  github.com/tsenart/vegeta/v12@$(VEGETA_VERSION)
	touch $@

$(BENCH_DIR)/%/.synced: $(BENCH_REQS)/%.txt | $(UV)
	test -x $(BENCH_DIR)/$*/bin/python || $(UV) venv -q --python $(PYTHON) $(BENCH_DIR)/$*
	VIRTUAL_ENV=$(BENCH_DIR)/$* nice $(UV) pip sync -q --require-hashes $<
	touch $@

# ml-service itself runs from what the image installs (requirements/runtime.txt), not from the dev
# virtualenv: full mlflow there pulls pyarrow into pandas' import, ~40 MB of RSS a pod never has.
$(BENCH_DIR)/runtime/.synced: requirements/runtime.txt | $(UV)
	test -x $(BENCH_DIR)/runtime/bin/python || $(UV) venv -q --python $(PYTHON) $(BENCH_DIR)/runtime
	VIRTUAL_ENV=$(BENCH_DIR)/runtime nice $(UV) pip sync -q --require-hashes $<
	touch $@

bench-envs: $(BENCH_DIR)/runtime/.synced $(foreach e,$(BENCH_ENVS),$(BENCH_DIR)/$(e)/.synced) ## ml-service's runtime and the competitors' virtualenvs (MLServer, BentoML, py-spy)

# Bytecode for every environment a server starts from: without it (uv does not compile by default and
# PYTHONDONTWRITEBYTECODE may be set) each start recompiles sklearn, scipy, pandas... (~8 s here),
# which would swamp the start-up comparison. Caches only; idempotent and quick once done.
bench-bytecode: venv bench-envs
	for d in $(VENV) $(foreach e,runtime $(BENCH_ENVS),$(BENCH_DIR)/$(e)); do \
	  nice $$d/bin/python -m compileall -q -j 0 $$d/lib >/dev/null || true; done
	nice $(BIN)/python -m compileall -q -j 0 $(ROOT)/app/ml_service >/dev/null || true

bench: venv setup-bench bench-envs bench-bytecode ## benchmark ml-service vs mlflow serve, MLServer, BentoML -> docs/benchmarks.md
	$(BIN)/python benchmarks/run.py --tools-dir $(BENCH_DIR) $(BENCH_ARGS)

bench-lock: $(UV) ## re-resolve benchmarks/requirements/*.txt
	for e in $(BENCH_ENVS); do \
	  $(UV) pip compile $(BENCH_REQS)/$$e.in --python-version 3.11 --generate-hashes --no-emit-index-url \
	    --no-header --quiet -o $(BENCH_REQS)/$$e.txt; done

bench-clean: ## remove the competitor virtualenvs and local benchmark scratch
	rm -rf $(BENCH_DIR) $(ROOT)/.local/bench
