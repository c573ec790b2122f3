# GitOps tier: actionlint (+ shellcheck) for the workflows (`setup-workflows`: all that CI's first job
# needs, with zizmor from the virtualenv); Argo CD built from its Go module (argocd: application-
# controller, repo-server, applicationset-controller... by binary name; the cluster tier runs it) and
# appset-render (the ApplicationSet controller's own generator + template code, tests/gitops/argocd), in
# ONE `go build` so they share every compiled package, for the tests marked `argocd`; act (runs the
# workflows' jobs locally).
ACTIONLINT_VERSION := v1.7.12
ACT_VERSION := v0.2.89
ARGOCD_VERSION := v3.6.1
export ARGOCD_VERSION
# argo-cd v3.6 needs Go >= 1.27: the go command fetches this toolchain (a Go module) by itself.
ARGOCD_GOTOOLCHAIN := go1.27.3
ARGOCD_MODULE := github.com/argoproj/argo-cd/v3
ARGOCD_SRC := tests/gitops/argocd
ARGOCD_DIR := $(TOOLS)/argocd-$(ARGOCD_VERSION)
# The names the argocd binary answers to (cmd/main.go switches on its own file name).
ARGOCD_COMMANDS := argocd-server argocd-application-controller argocd-repo-server \
  argocd-applicationset-controller argocd-notifications argocd-cmp-server argocd-commit-server \
  argocd-git-ask-pass argocd-k8s-auth argocd-dex
ARGOCD_LDFLAGS := -s -w -X $(ARGOCD_MODULE)/common.version=$(ARGOCD_VERSION:v%=%) \
  -X $(ARGOCD_MODULE)/common.gitTag=$(ARGOCD_VERSION) -X $(ARGOCD_MODULE)/common.gitTreeState=clean

.PHONY: setup-gitops setup-workflows release-dry-run argocd adopt
SETUP_TARGETS += setup-gitops

# apt-get install of a Debian package unless its command (of the same name) is on PATH already.
apt_install = command -v $(1) >/dev/null || { export DEBIAN_FRONTEND=noninteractive; \
  apt-get -o DPkg::Lock::Timeout=600 update -qq; \
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends $(1) >/dev/null; }

setup-workflows: $(TOOLS)/bin/actionlint-$(ACTIONLINT_VERSION) ## actionlint + shellcheck: the gitops tests not marked `argocd` or `server`
	@# actionlint runs shellcheck on every `run:` script when it is on PATH.
	@$(call apt_install,shellcheck)

setup-gitops: setup-workflows $(ARGOCD_DIR)/.built $(TOOLS)/bin/act-$(ACT_VERSION) ## setup-workflows, Argo CD + appset-render, act, redis-server
	@# The cluster tier runs Argo CD with Debian's redis-server (tests/support/argocd.py).
	@$(call apt_install,redis-server)

$(TOOLS)/bin/actionlint-$(ACTIONLINT_VERSION):
	mkdir -p $(TOOLS)/bin
	cd /tmp && GOFLAGS= go install github.com/rhysd/actionlint/cmd/actionlint@$(ACTIONLINT_VERSION)
	touch $@

$(TOOLS)/bin/act-$(ACT_VERSION):
	mkdir -p $(TOOLS)/bin
	cd /tmp && GOFLAGS= CGO_ENABLED=0 nice go install -trimpath -ldflags='-s -w' github.com/nektos/act@$(ACT_VERSION)
	touch $@

argocd: $(ARGOCD_DIR)/.built ## build Argo CD $(ARGOCD_VERSION) and appset-render from the Go module (one go build)

# CGO off like upstream's release build; -trimpath and -s -w keep the link small. The Argo CD CRDs the
# tests validate against are read from the same module in the module cache.
$(ARGOCD_DIR)/.built: $(ARGOCD_SRC)/go.mod $(ARGOCD_SRC)/go.sum $(wildcard $(ARGOCD_SRC)/appset-render/*.go)
	rm -rf $(ARGOCD_DIR) && mkdir -p $(ARGOCD_DIR) $(TOOLS)/bin
	cd $(ARGOCD_SRC) && GOTOOLCHAIN=$(ARGOCD_GOTOOLCHAIN) GOFLAGS='-mod=readonly -buildvcs=false' CGO_ENABLED=0 \
	  nice -n 10 go build -trimpath -ldflags '$(ARGOCD_LDFLAGS)' -o $(ARGOCD_DIR)/ \
	  ./appset-render $(ARGOCD_MODULE)/cmd
	mv $(ARGOCD_DIR)/cmd $(ARGOCD_DIR)/argocd
	for name in $(ARGOCD_COMMANDS); do ln -sf argocd $(ARGOCD_DIR)/$$name; done
	for name in argocd appset-render $(ARGOCD_COMMANDS); do ln -sf ../$(notdir $(ARGOCD_DIR))/$$name $(TOOLS)/bin/$$name; done
	test -f "$$(cd $(ARGOCD_SRC) && GOTOOLCHAIN=$(ARGOCD_GOTOOLCHAIN) go list -m -f '{{.Dir}}' $(ARGOCD_MODULE))/manifests/crds/application-crd.yaml"
	touch $@

test-gitops: setup-gitops ## run the gitops tier (actionlint, act, Argo CD's ApplicationSet rendering, release tooling, quality gate)

release-dry-run: venv ## local end-to-end: train -> register (local MLflow) -> make image -> dev release branch -> render
	$(BIN)/python scripts/release_dry_run.py

adopt: ## point argocd/ at your repository: make adopt REPO=<owner>/<name> [REPO_URL=<URL Argo CD reads it from>] [CODE_OWNERS="@you ..."]
	$(PYTHON) scripts/adopt.py "$(REPO)" $(if $(REPO_URL),--repo-url "$(REPO_URL)") $(if $(CODE_OWNERS),--code-owners "$(CODE_OWNERS)")

# The release/promote workflows only need helm for their render check: not the whole chart tier.
# (HELM3_VERSION and CHART_STAMP come from mk/chart.mk, included before this file.)
.PHONY: gitops-ci-tools
gitops-ci-tools: $(CHART_STAMP)/helm3-$(HELM3_VERSION) ## helm only, for the release/promote workflows
