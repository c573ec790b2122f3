# GitOps tier: actionlint for the workflows, the Argo CD CRD schemas (argo-cd Go module, read from the
# module cache) and appset-render (expands the ApplicationSet like the ApplicationSet controller).
ACTIONLINT_VERSION := v1.7.12
# argo-cd v3.6.x needs Go >= 1.27; v3.5.7 is the newest that the machine's Go 1.26 accepts.
ARGOCD_VERSION := v3.5.7
export ARGOCD_VERSION
ARGOCD_MODULE := github.com/argoproj/argo-cd/v3
APPSET_RENDER_SRC := tests/gitops/appsetrender

.PHONY: setup-gitops test-gitops release-dry-run
SETUP_TARGETS += setup-gitops

setup-gitops: $(TOOLS)/bin/actionlint-$(ACTIONLINT_VERSION) $(TOOLS)/bin/appset-render ## actionlint (+shellcheck), appset-render, the Argo CD CRDs (go mod download)
	@# actionlint runs shellcheck on every `run:` script when it is on PATH.
	@command -v shellcheck >/dev/null || { export DEBIAN_FRONTEND=noninteractive; \
	  apt-get -o DPkg::Lock::Timeout=600 update -qq; \
	  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends shellcheck >/dev/null; }
	@dir=$$(cd /tmp && GOFLAGS= go mod download -json $(ARGOCD_MODULE)@$(ARGOCD_VERSION) | $(PYTHON) -c 'import json,sys; d=json.load(sys.stdin); print(d.get("Dir") or sys.exit(d.get("Error")))'); \
	  test -f "$$dir/manifests/crds/application-crd.yaml" && echo "argo-cd CRDs: $$dir/manifests/crds"

$(TOOLS)/bin/actionlint-$(ACTIONLINT_VERSION):
	mkdir -p $(TOOLS)/bin
	cd /tmp && GOFLAGS= go install github.com/rhysd/actionlint/cmd/actionlint@$(ACTIONLINT_VERSION)
	touch $@

$(TOOLS)/bin/appset-render: $(APPSET_RENDER_SRC)/main.go $(APPSET_RENDER_SRC)/go.mod $(APPSET_RENDER_SRC)/go.sum
	mkdir -p $(TOOLS)/bin
	cd $(APPSET_RENDER_SRC) && nice go build -trimpath -o $(TOOLS)/bin/appset-render .

test-gitops: venv ## run the gitops tier (actionlint, Argo CD schemas, rendered environments, release tooling)
	$(BIN)/pytest -m gitops tests/gitops $(PYTEST_ARGS)

release-dry-run: venv ## local end-to-end: train -> register (local MLflow) -> make image -> dev release branch -> render
	$(BIN)/python scripts/release_dry_run.py

# The release/promote workflows only need helm for their render check: not the whole chart tier.
# (HELM3_VERSION and CHART_STAMP come from mk/chart.mk, included before this file.)
.PHONY: gitops-ci-tools
gitops-ci-tools: $(CHART_STAMP)/helm3-$(HELM3_VERSION) ## helm only, for the release/promote workflows
