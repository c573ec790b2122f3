# Argo Rollouts (progressive delivery: the chart's `delivery.strategy: canary`), built from its Go
# module (tests/cluster/gobuild/rollouts, its own: Rollouts v1.10 pins the Kubernetes libraries at
# v0.34.5, and built against Argo CD's v0.37 the controller rejects every Rollout, validating the pod
# template with the newer rules). Only rollouts-controller is built (the cluster tier runs it as an
# add-on); no kubectl plugin: the tests read the Rollout's status (docs/canary.md says how). Its CRDs
# come from the same module: the chart tier validates the Rollout and AnalysisTemplate the chart
# renders against them, the cluster tier installs them with the controller (manifests/install.yaml).
ROLLOUTS_VERSION := v1.10.2
ROLLOUTS_MODULE := github.com/argoproj/argo-rollouts
ROLLOUTS_SRC := tests/cluster/gobuild/rollouts
ROLLOUTS_DIR := $(TOOLS)/argo-rollouts-$(ROLLOUTS_VERSION)
# v1.10 needs Go >= 1.26.10: the go command fetches the toolchain Argo CD uses here (a Go module).
ROLLOUTS_GOTOOLCHAIN := go1.27.3
# The module zip has no commit to stamp: the binaries report v<version>+unknown.
ROLLOUTS_LDFLAGS := -s -w -X $(ROLLOUTS_MODULE)/utils/version.version=$(ROLLOUTS_VERSION:v%=%)
export ROLLOUTS_VERSION

ROLLOUTS_MANIFESTS := $(ROLLOUTS_DIR)/manifests/.copied

.PHONY: setup-rollouts
SETUP_TARGETS += setup-rollouts

setup-rollouts: $(ROLLOUTS_MANIFESTS) $(ROLLOUTS_DIR)/.built ## Argo Rollouts controller and its CRDs (Go module)

# The chart tier validates against the CRDs only (CI's first job sets up the chart tier alone, so
# setup-chart fetches them: a module download, no build); the cluster tier runs the controller.
setup-chart: $(ROLLOUTS_MANIFESTS)
test-cluster: setup-rollouts

# Copied out of the module cache, so the tests need no `go` call (nor a toolchain switch) to find them.
$(ROLLOUTS_MANIFESTS): $(ROLLOUTS_SRC)/go.mod mk/rollouts.mk
	mkdir -p $(@D)
	mod=$$(cd $(ROLLOUTS_SRC) && GOTOOLCHAIN=$(ROLLOUTS_GOTOOLCHAIN) go mod download -json $(ROLLOUTS_MODULE) \
	  | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])') && \
	  install -m 644 $$mod/manifests/install.yaml $$mod/manifests/crds/rollout-crd.yaml \
	    $$mod/manifests/crds/analysis-template-crd.yaml $(@D)/
	touch $@

# CGO off and -trimpath like upstream's release build.
$(ROLLOUTS_DIR)/.built: $(ROLLOUTS_SRC)/go.mod $(ROLLOUTS_SRC)/go.sum mk/rollouts.mk
	mkdir -p $(@D)
	@start=$$SECONDS; cd $(ROLLOUTS_SRC) && GOTOOLCHAIN=$(ROLLOUTS_GOTOOLCHAIN) GOFLAGS='-mod=readonly -buildvcs=false' \
	  CGO_ENABLED=0 nice -n 10 go build -trimpath -ldflags '$(ROLLOUTS_LDFLAGS)' -o $(@D)/ \
	  $(ROLLOUTS_MODULE)/cmd/rollouts-controller && \
	  echo "rollouts: Argo Rollouts $(ROLLOUTS_VERSION) controller built in $$((SECONDS - start)) s"
	touch $@
