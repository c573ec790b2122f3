# Chart tier: Helm 3 and 4, helm-unittest, helm-docs, schema + PSS helpers, kubernetes-validate,
# checkov and the prometheus-operator CRDs. Everything is pinned and lands under $(TOOLS).
HELM3_VERSION         := v3.22.0
HELM4_VERSION         := v4.3.1
HELM_UNITTEST_VERSION := v1.1.2
HELM_DOCS_VERSION     := v1.14.2
PROM_OPERATOR_VERSION := v0.85.0
# Helm 3 reads its default Kubernetes version from ldflags (upstream derives it from client-go).
HELM3_KUBE_MINOR      := 37

CHART_DIR   := charts/ml-service
CHART_TOOLS := tests/chart/tools
CHART_STAMP := $(TOOLS)/.stamps
# helm keeps plugins and state here, never in ~/.config or ~/.local (tests/support/kube.py agrees).
export HELM_PLUGINS     := $(TOOLS)/helm/plugins
export HELM_DATA_HOME   := $(TOOLS)/helm/data
export HELM_CONFIG_HOME := $(TOOLS)/helm/config
export HELM_CACHE_HOME  := $(TOOLS)/helm/cache

SETUP_TARGETS += setup-chart
.PHONY: setup-chart chart-docs

HELM3_LDFLAGS := -s -w -X helm.sh/helm/v3/internal/version.version=$(HELM3_VERSION) \
  -X helm.sh/helm/v3/internal/version.gitTreeState=clean \
  $(foreach p,pkg/lint/rules pkg/chartutil,-X helm.sh/helm/v3/$(p).k8sVersionMajor=1 -X helm.sh/helm/v3/$(p).k8sVersionMinor=$(HELM3_KUBE_MINOR))

$(CHART_STAMP)/helm3-$(HELM3_VERSION):
	nice go install -trimpath -ldflags '$(HELM3_LDFLAGS)' helm.sh/helm/v3/cmd/helm@$(HELM3_VERSION)
	@mkdir -p $(@D) && touch $@

# Helm 4 is only here to prove the chart works with it: installed as `helm4`.
$(CHART_STAMP)/helm4-$(HELM4_VERSION):
	GOBIN=$(TOOLS)/helm4/bin nice go install -trimpath \
	  -ldflags '-s -w -X helm.sh/helm/v4/internal/version.version=$(HELM4_VERSION) -X helm.sh/helm/v4/internal/version.gitTreeState=clean' \
	  helm.sh/helm/v4/cmd/helm@$(HELM4_VERSION)
	ln -sfn ../helm4/bin/helm $(TOOLS)/bin/helm4
	@mkdir -p $(@D) && touch $@

$(CHART_STAMP)/helm-docs-$(HELM_DOCS_VERSION):
	nice go install -trimpath -ldflags '-s -w' github.com/norwoodj/helm-docs/cmd/helm-docs@$(HELM_DOCS_VERSION)
	@mkdir -p $(@D) && touch $@

# helm-unittest built from its module (its go.mod has a replace directive, so `go install pkg@v`
# refuses it: build inside the downloaded module instead), then registered as a plugin from a local
# directory (its own plugin.yaml would download a release binary in an install hook).
$(CHART_STAMP)/helm-unittest-$(HELM_UNITTEST_VERSION): $(CHART_STAMP)/helm3-$(HELM3_VERSION)
	dir=$$(go mod download -json github.com/helm-unittest/helm-unittest@$(HELM_UNITTEST_VERSION) \
	  | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])') && \
	  cd $$dir && nice go build -trimpath -ldflags '-s -w' -o $(TOOLS)/bin/helm-unittest ./cmd/helm-unittest
	rm -rf $(TOOLS)/helm/unittest-plugin && mkdir -p $(TOOLS)/helm/unittest-plugin $(HELM_PLUGINS)
	ln -s ../../bin/helm-unittest $(TOOLS)/helm/unittest-plugin/untt
	printf '%s\n' 'name: "unittest"' 'version: "$(HELM_UNITTEST_VERSION:v%=%)"' \
	  'usage: "unittest for helm charts"' 'description: "helm-unittest built by make setup-chart"' \
	  'ignoreFlags: false' 'command: "$$HELM_PLUGIN_DIR/untt"' > $(TOOLS)/helm/unittest-plugin/plugin.yaml
	$(TOOLS)/bin/helm plugin uninstall unittest >/dev/null 2>&1 || true
	$(TOOLS)/bin/helm plugin install $(TOOLS)/helm/unittest-plugin
	@mkdir -p $(@D) && touch $@

# psacheck (upstream Pod Security Standards evaluator) and valuesschema (values.schema.json generator).
$(CHART_STAMP)/charttools: $(CHART_TOOLS)/go.mod $(CHART_TOOLS)/go.sum $(wildcard $(CHART_TOOLS)/*/main.go)
	cd $(CHART_TOOLS) && nice go build -trimpath -o $(TOOLS)/bin/ ./psacheck ./valuesschema
	@mkdir -p $(@D) && touch $@

# The CRD YAML that prometheus-operator itself ships, read from the Go module cache.
$(CHART_STAMP)/crds-$(PROM_OPERATOR_VERSION):
	dir=$$(go mod download -json github.com/prometheus-operator/prometheus-operator@$(PROM_OPERATOR_VERSION) \
	  | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])') && \
	  mkdir -p $(TOOLS)/crds/prometheus-operator && \
	  install -m 644 $$dir/example/prometheus-operator-crd/monitoring.coreos.com_{servicemonitors,prometheusrules}.yaml \
	    $(TOOLS)/crds/prometheus-operator/
	@mkdir -p $(@D) && touch $@

# Python CLIs with their own hash-pinned requirements, each in its own venv.
$(TOOLS)/kubernetes-validate/.synced: $(CHART_TOOLS)/kubernetes-validate.txt | $(UV)
	test -x $(@D)/bin/python || $(UV) venv -q --python $(PYTHON) $(@D)
	VIRTUAL_ENV=$(@D) $(UV) pip sync -q --require-hashes $<
	touch $@

$(TOOLS)/checkov/.synced: $(CHART_TOOLS)/checkov.txt | $(UV)
	test -x $(@D)/bin/python || $(UV) venv -q --python $(PYTHON) $(@D)
	VIRTUAL_ENV=$(@D) $(UV) pip sync -q --require-hashes $<
	touch $@

CHART_SETUP_DEPS := $(CHART_STAMP)/helm3-$(HELM3_VERSION) $(CHART_STAMP)/helm4-$(HELM4_VERSION) \
  $(CHART_STAMP)/helm-docs-$(HELM_DOCS_VERSION) $(CHART_STAMP)/helm-unittest-$(HELM_UNITTEST_VERSION) \
  $(CHART_STAMP)/charttools $(CHART_STAMP)/crds-$(PROM_OPERATOR_VERSION) \
  $(TOOLS)/kubernetes-validate/.synced $(TOOLS)/checkov/.synced

setup-chart: $(CHART_SETUP_DEPS) ## helm 3+4, helm-unittest, helm-docs, kubernetes-validate, checkov, CRDs

chart-docs: ## regenerate the chart README values table and values.schema.json from values.yaml
	$(TOOLS)/bin/valuesschema $(CHART_DIR)/values.yaml > $(CHART_DIR)/values.schema.json.tmp
	mv $(CHART_DIR)/values.schema.json.tmp $(CHART_DIR)/values.schema.json
	$(TOOLS)/bin/helm-docs --chart-search-root $(CHART_DIR) --template-files README.md.gotmpl --output-file README.md

test-chart: setup-chart ## run only the chart tier tests
