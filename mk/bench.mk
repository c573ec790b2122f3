# Benchmarks tier (issue 7): `make bench` measures ml-service against `mlflow models serve`, MLServer and
# BentoML. `setup-bench` stays light (wrk only, for the smoke test); the competitors' virtualenvs are
# heavy, so only `make bench` (via bench-envs) installs them.
BENCH_DIR  := $(TOOLS)/bench
BENCH_REQS := benchmarks/requirements
BENCH_ENVS := mlserver bentoml profile
# e.g. make bench BENCH_ARGS="--duration 5 --servers ml-service,mlflow"
BENCH_ARGS ?=

.PHONY: setup-bench bench-envs bench bench-lock bench-clean
SETUP_TARGETS += setup-bench

setup-bench: ## install wrk (Debian) for the benchmark harness
	@command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }
	@wrk --version 2>&1 | head -1

$(BENCH_DIR)/%/.synced: $(BENCH_REQS)/%.txt | $(UV)
	test -x $(BENCH_DIR)/$*/bin/python || $(UV) venv -q --python $(PYTHON) $(BENCH_DIR)/$*
	VIRTUAL_ENV=$(BENCH_DIR)/$* nice $(UV) pip sync -q --require-hashes $<
	touch $@

bench-envs: $(foreach e,$(BENCH_ENVS),$(BENCH_DIR)/$(e)/.synced) ## competitor virtualenvs (MLServer, BentoML, py-spy)

bench: venv setup-bench bench-envs ## benchmark ml-service vs mlflow serve, MLServer, BentoML -> docs/benchmarks.md
	$(BIN)/python benchmarks/run.py --tools-dir $(BENCH_DIR) $(BENCH_ARGS)

bench-lock: $(UV) ## re-resolve benchmarks/requirements/*.txt
	for e in $(BENCH_ENVS); do \
	  $(UV) pip compile $(BENCH_REQS)/$$e.in --python-version 3.11 --generate-hashes --no-emit-index-url \
	    --no-header --quiet -o $(BENCH_REQS)/$$e.txt; done

bench-clean: ## remove the competitor virtualenvs and local benchmark scratch
	rm -rf $(BENCH_DIR) $(ROOT)/.local/bench
