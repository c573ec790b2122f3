# Monitoring tier: Prometheus/promtool (Debian) for rule tests and a real scrape, and Grafana's
# dashboard schema types (npm) + TypeScript to type-check dashboards/*.json.
# Node tools, pinned by tests/monitoring/node/package-lock.json (exact versions + integrity hashes):
# Grafana's dashboard types + TypeScript, and Prometheus's own PromQL grammar (the parser its UI
# uses) to list the metrics each expression names.
MONITORING_NODE_SRC := tests/monitoring/node
MONITORING_NODE     := $(TOOLS)/monitoring-node
MONITORING_STAMP    := $(MONITORING_NODE)/.installed

.PHONY: setup-monitoring bench-drift
SETUP_TARGETS += setup-monitoring

setup-monitoring: $(MONITORING_STAMP) ## install promtool/prometheus (apt) and @grafana/schema + typescript (npm, pinned)
	@if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get -o DPkg::Lock::Timeout=600 update -qq; \
	  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends prometheus >/dev/null; \
	fi
	@promtool --version 2>&1 | sed -n 1p

$(MONITORING_STAMP): $(MONITORING_NODE_SRC)/package.json $(MONITORING_NODE_SRC)/package-lock.json
	rm -rf $(MONITORING_NODE) && mkdir -p $(MONITORING_NODE)
	cp $^ $(MONITORING_NODE)/
	cd $(MONITORING_NODE) && npm ci --no-audit --no-fund --silent
	touch $@

test-monitoring: setup-monitoring ## run the monitoring tier (promtool rule tests, dashboards, real Prometheus)

bench-drift: venv ## /predict latency with drift monitoring on vs off (-> .local/bench/drift-overhead.json)
	DRIFT_BENCH_REQUESTS=1500 $(BIN)/pytest -s tests/monitoring/test_drift_overhead.py $(PYTEST_ARGS)
