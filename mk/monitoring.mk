# Monitoring tier: Prometheus/promtool (Debian) for rule tests and a real scrape, and Grafana's
# dashboard schema types (npm) + TypeScript to type-check dashboards/*.json.
# Node tools, pinned: Grafana's dashboard types + TypeScript, and Prometheus's own PromQL grammar
# (the parser its UI uses) to list the metrics each expression names.
MONITORING_NPM := @grafana/schema@13.2.3 typescript@5.9.3 \
  @prometheus-io/lezer-promql@0.315.0 @lezer/lr@1.4.12 @lezer/highlight@1.2.5
MONITORING_NODE := $(TOOLS)/monitoring-node
MONITORING_STAMP := $(MONITORING_NODE)/.installed-$(shell echo '$(MONITORING_NPM)' | sha256sum | cut -c1-12)

.PHONY: setup-monitoring test-monitoring bench-drift
SETUP_TARGETS += setup-monitoring

setup-monitoring: $(MONITORING_STAMP) ## install promtool/prometheus (apt) and @grafana/schema + typescript (npm, pinned)
	@if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get -o DPkg::Lock::Timeout=600 update -qq; \
	  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends prometheus >/dev/null; \
	fi
	@promtool --version 2>&1 | head -1

$(MONITORING_STAMP):
	rm -rf $(MONITORING_NODE) && mkdir -p $(MONITORING_NODE)
	cd $(MONITORING_NODE) && printf '{"name":"ml-service-monitoring-tools","private":true}\n' > package.json && \
	  npm install --no-audit --no-fund --silent --save-exact $(MONITORING_NPM)
	touch $@

test-monitoring: venv ## run the monitoring tier (promtool rule tests, dashboards, real Prometheus)
	$(BIN)/pytest -m monitoring tests/monitoring $(PYTEST_ARGS)

bench-drift: venv ## /predict latency with drift monitoring on vs off (-> .local/bench/drift-overhead.json)
	$(BIN)/pytest -s -p no:randomly tests/monitoring/test_drift_overhead.py $(PYTEST_ARGS)
