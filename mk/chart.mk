# Chart tier: Helm 3 and 4, helm-unittest, helm-docs, schema + PSS helpers, kubernetes-validate,
# checkov and the prometheus-operator CRDs. Everything is pinned and lands under $(TOOLS).
#
# The Go tools are built from one module, tests/chart/tools: its go.mod's `tool` block pins helm 3 and
# 4, helm-unittest and helm-docs beside its own psacheck and valuesschema, so they share one version
# of every library (Kubernetes' client libraries above all) and each package compiles once instead of
# once per tool (the cold setup of CI's first job). Each tool is its release's code, on the highest
# patch of a shared library any of them asks for. Move one with `go get -tool <package>@<version>`
# in that directory; the versions below are read from its go.mod.
CHART_DIR   := charts/ml-service
CHART_TOOLS := tests/chart/tools
CHART_STAMP := $(TOOLS)/.stamps
chart_module_version = $(shell awk '$$1 == "$(1)" { print $$2 }' $(CHART_TOOLS)/go.mod)
HELM3_VERSION         := $(call chart_module_version,helm.sh/helm/v3)
HELM4_VERSION         := $(call chart_module_version,helm.sh/helm/v4)
HELM_UNITTEST_VERSION := $(call chart_module_version,github.com/helm-unittest/helm-unittest)
HELM_DOCS_VERSION     := $(call chart_module_version,github.com/norwoodj/helm-docs)
PROM_OPERATOR_VERSION := v0.85.0
# Helm 3 reads its default Kubernetes version from ldflags (upstream derives it from client-go).
HELM3_KUBE_MINOR      := 37
CHART_MODULE   := $(CHART_TOOLS)/go.mod $(CHART_TOOLS)/go.sum
CHART_GO_BUILD := mkdir -p $(TOOLS)/bin && cd $(CHART_TOOLS) && go build -trimpath
# The other Go tools build after helm 3 (order only), which compiles the libraries they share: under
# `make -j` two builds would each compile them at once (Go's build cache does not share work in flight).
HELM3_FIRST    := | $(CHART_STAMP)/helm3-$(HELM3_VERSION)

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

$(CHART_STAMP)/helm3-$(HELM3_VERSION): $(CHART_MODULE)
	$(CHART_GO_BUILD) -ldflags '$(HELM3_LDFLAGS)' -o $(TOOLS)/bin/helm helm.sh/helm/v3/cmd/helm
	@mkdir -p $(@D) && touch $@

# Helm 4 is only here to prove the chart works with it: installed as `helm4`.
$(CHART_STAMP)/helm4-$(HELM4_VERSION): $(CHART_MODULE) $(HELM3_FIRST)
	$(CHART_GO_BUILD) -o $(TOOLS)/helm4/bin/helm \
	  -ldflags '-s -w -X helm.sh/helm/v4/internal/version.version=$(HELM4_VERSION) -X helm.sh/helm/v4/internal/version.gitTreeState=clean' \
	  helm.sh/helm/v4/cmd/helm
	ln -sfn ../helm4/bin/helm $(TOOLS)/bin/helm4
	@mkdir -p $(@D) && touch $@

$(CHART_STAMP)/helm-docs-$(HELM_DOCS_VERSION): $(CHART_MODULE) $(HELM3_FIRST)
	$(CHART_GO_BUILD) -ldflags '-s -w' -o $(TOOLS)/bin/helm-docs github.com/norwoodj/helm-docs/cmd/helm-docs
	@mkdir -p $(@D) && touch $@

# helm-unittest (its go.mod's replace directive is repeated in ours: a replace applies only in the
# main module), registered as a plugin from a local directory (its own plugin.yaml would download a
# release binary in an install hook).
$(CHART_STAMP)/helm-unittest-$(HELM_UNITTEST_VERSION): $(CHART_STAMP)/helm3-$(HELM3_VERSION)
	$(CHART_GO_BUILD) -ldflags '-s -w' -o $(TOOLS)/bin/helm-unittest github.com/helm-unittest/helm-unittest/cmd/helm-unittest
	rm -rf $(TOOLS)/helm/unittest-plugin && mkdir -p $(TOOLS)/helm/unittest-plugin $(HELM_PLUGINS)
	ln -s ../../bin/helm-unittest $(TOOLS)/helm/unittest-plugin/untt
	printf '%s\n' 'name: "unittest"' 'version: "$(HELM_UNITTEST_VERSION:v%=%)"' \
	  'usage: "unittest for helm charts"' 'description: "helm-unittest built by make setup-chart"' \
	  'ignoreFlags: false' 'command: "$$HELM_PLUGIN_DIR/untt"' > $(TOOLS)/helm/unittest-plugin/plugin.yaml
	$(TOOLS)/bin/helm plugin uninstall unittest >/dev/null 2>&1 || true
	$(TOOLS)/bin/helm plugin install $(TOOLS)/helm/unittest-plugin
	@mkdir -p $(@D) && touch $@

# psacheck (upstream Pod Security Standards evaluator) and valuesschema (values.schema.json generator).
$(CHART_STAMP)/charttools: $(CHART_MODULE) $(wildcard $(CHART_TOOLS)/*/main.go) $(HELM3_FIRST)
	$(CHART_GO_BUILD) -o $(TOOLS)/bin/ ./psacheck ./valuesschema
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
