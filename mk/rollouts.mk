# Argo Rollouts (progressive delivery: the chart's `delivery.strategy: canary`), built from its Go
# module INSIDE Argo CD's (tests/gitops/argocd): one module, so minimal version selection gives the
# controller Argo CD's Kubernetes libraries and its build reuses every package Argo CD's build put in
# the Go build cache; only Rollouts' own packages are compiled on top (mk/gitops.mk builds Argo CD
# first). The cluster tier runs rollouts-controller as an add-on. Its CRDs come from the same module:
# the chart tier validates the Rollout and AnalysisTemplate the chart renders against them, the
# cluster tier installs them with the controller (manifests/install.yaml of the module). No kubectl
# plugin is built: the tests read the Rollout's status (docs/canary.md says how).
ROLLOUTS_VERSION := v1.10.2
ROLLOUTS_MODULE := github.com/argoproj/argo-rollouts
ROLLOUTS_DIR := $(TOOLS)/argo-rollouts-$(ROLLOUTS_VERSION)
# The module zip has no commit to stamp: the binary reports v<version>+unknown.
ROLLOUTS_LDFLAGS := -s -w -X $(ROLLOUTS_MODULE)/utils/version.version=$(ROLLOUTS_VERSION:v%=%)
export ROLLOUTS_VERSION

ROLLOUTS_MANIFESTS := $(ROLLOUTS_DIR)/manifests/.copied

.PHONY: setup-rollouts
SETUP_TARGETS += setup-rollouts

setup-rollouts: $(ROLLOUTS_MANIFESTS) $(ROLLOUTS_DIR)/.built ## Argo Rollouts controller and its CRDs (Go module, in Argo CD's)

# The chart tier validates against the CRDs only; the cluster tier runs the controller.
test-chart: $(ROLLOUTS_MANIFESTS)
test-cluster: setup-rollouts

# Copied out of the module cache, so the tests need no `go` call (nor a toolchain switch) to find them.
# The version is the one tests/gitops/argocd/go.mod requires: checked against ROLLOUTS_VERSION.
$(ROLLOUTS_MANIFESTS): $(ARGOCD_SRC)/go.mod mk/rollouts.mk
	mkdir -p $(@D)
	mod=$$(cd $(ARGOCD_SRC) && GOTOOLCHAIN=$(ARGOCD_GOTOOLCHAIN) go mod download -json $(ROLLOUTS_MODULE) \
	  | python3 -c 'import json,sys; m=json.load(sys.stdin); print(m["Version"], m["Dir"])') && \
	  test "$${mod%% *}" = "$(ROLLOUTS_VERSION)" || { \
	    echo "$(ARGOCD_SRC)/go.mod requires $(ROLLOUTS_MODULE) $${mod%% *}, mk/rollouts.mk pins $(ROLLOUTS_VERSION)"; exit 1; } && \
	  install -m 644 $${mod#* }/manifests/install.yaml $${mod#* }/manifests/crds/rollout-crd.yaml \
	    $${mod#* }/manifests/crds/analysis-template-crd.yaml $(@D)/
	touch $@

# The flags of Argo CD's build (CGO off, -trimpath, the same GOFLAGS), so its compiled packages are reused.
$(ROLLOUTS_DIR)/.built: $(ARGOCD_DIR)/.built $(ROLLOUTS_MANIFESTS) mk/rollouts.mk
	mkdir -p $(@D)
	@start=$$SECONDS; cd $(ARGOCD_SRC) && GOTOOLCHAIN=$(ARGOCD_GOTOOLCHAIN) GOFLAGS='-mod=readonly -buildvcs=false' \
	  CGO_ENABLED=0 nice -n 10 go build -trimpath -ldflags '$(ROLLOUTS_LDFLAGS)' -o $(@D)/ \
	  $(ROLLOUTS_MODULE)/cmd/rollouts-controller && \
	  echo "rollouts: Argo Rollouts $(ROLLOUTS_VERSION) controller built in $$((SECONDS - start)) s (on Argo CD's packages)"
	touch $@
