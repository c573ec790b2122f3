# Cluster tier: a real single-node Kubernetes built from pinned Go modules (tests/cluster/gobuild):
# kube-apiserver, -controller-manager, -scheduler, kubelet, kube-proxy and kubectl v1.37.2, etcd,
# CoreDNS, metrics-server and Prometheus in ONE Go module (the packages they share compile once); the
# prometheus-operator and its config reloader in a second one (gobuild/monitoring: in the first, MVS
# lifts Prometheus and Alertmanager to the versions metrics-server needs, which the operator does not
# compile against); the pause container (C, from the Kubernetes module); Debian's containerd, runc,
# CNI plugins and iptables. tests/support/cluster runs it all.
CLUSTER_GO    := tests/cluster/gobuild
CLUSTER_MON   := $(CLUSTER_GO)/monitoring
CLUSTER_BIN   := $(TOOLS)/cluster/bin
K8S_VERSION   := v1.37.2
CLUSTER_APT   := containerd runc containernetworking-plugins iptables
# Static binaries for `FROM scratch` images; -trimpath on every invocation (a flag that differs
# between invocations would change every package's cache key and compile everything twice).
CLUSTER_BUILD := CGO_ENABLED=0 nice -n 10 go build -trimpath
# Version stamps: without them kubectl and helm cannot parse the server version (the chart's
# kubeVersion check fails) and the binaries report v0.0.0-master.
K8S_LDFLAGS   := -s -w $(foreach p,k8s.io/client-go/pkg/version k8s.io/component-base/version,\
  -X $(p).gitVersion=$(K8S_VERSION) -X $(p).gitMajor=1 -X $(p).gitMinor=$(word 2,$(subst ., ,$(K8S_VERSION))) \
  -X $(p).gitTreeState=clean -X $(p).buildDate=2026-01-01T00:00:00Z)
K8S_COMMANDS  := kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl
CLUSTER_SRC   := $(CLUSTER_GO)/go.mod $(CLUSTER_GO)/go.sum $(wildcard $(CLUSTER_GO)/*/*.go) \
  $(CLUSTER_MON)/go.mod $(CLUSTER_MON)/go.sum mk/cluster.mk

SETUP_TARGETS += setup-cluster
.PHONY: setup-cluster cluster-apt

cluster-apt:
	@if ! command -v containerd >/dev/null || ! command -v runc >/dev/null || \
	    ! test -x /usr/lib/cni/bridge || ! command -v iptables >/dev/null; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get -o DPkg::Lock::Timeout=600 update -qq; \
	  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends $(CLUSTER_APT) >/dev/null; \
	fi

# Four `go build` invocations over one build cache: the Kubernetes commands (one invocation, their
# version stamp); etcd, CoreDNS and metrics-server; Prometheus (same module; its own version stamp);
# the operator and its reloader (second module). Prometheus links every service discovery (and its
# cloud SDK) through one generated file, plugins/plugins.go: a go.work replaces the module by a copy
# whose plugins.go (gobuild/overlay/plugins.go) keeps Kubernetes' only (`go build -overlay` refuses
# files in the module cache; packages of the copy still hit the build cache).
$(CLUSTER_BIN)/.built: $(CLUSTER_SRC)
	@mkdir -p $(CLUSTER_BIN) $(TOOLS)/cluster/src
	@start=$$SECONDS; cd $(CLUSTER_GO) && \
	  $(CLUSTER_BUILD) -ldflags '$(K8S_LDFLAGS)' -o $(CLUSTER_BIN)/ $(addprefix k8s.io/kubernetes/cmd/,$(K8S_COMMANDS)) && \
	  echo "cluster: Kubernetes $(K8S_VERSION) commands built in $$((SECONDS - start)) s"
	@start=$$SECONDS; cd $(CLUSTER_GO) && \
	  $(CLUSTER_BUILD) -ldflags '-s -w' -o $(CLUSTER_BIN)/ ./etcd ./coredns sigs.k8s.io/metrics-server/cmd/metrics-server && \
	  echo "cluster: etcd, CoreDNS, metrics-server built in $$((SECONDS - start)) s"
	@start=$$SECONDS; cd $(CLUSTER_GO) && \
	  mod=$$(go list -m -f '{{.Version}} {{.Dir}}' github.com/prometheus/prometheus) && \
	  v=$$(echo "$${mod% *}" | sed -E 's/^v0\.3([0-9]{2})\.([0-9]+)$$/3.\1.\2/; s/^3\.0([0-9])\./3.\1./') && \
	  src=$(TOOLS)/cluster/src/prometheus && rm -rf $$src && \
	  cp -r "$${mod#* }" $$src && chmod -R u+w $$src && cp overlay/plugins.go $$src/plugins/plugins.go && \
	  printf 'go %s\nuse %s\nreplace github.com/prometheus/prometheus %s => %s\n' "$$(go list -m -f '{{.GoVersion}}')" \
	    "$(ROOT)/$(CLUSTER_GO)" "$${mod% *}" "$$src" > $(TOOLS)/cluster/src/go.work && \
	  GOWORK=$(TOOLS)/cluster/src/go.work $(CLUSTER_BUILD) \
	    -ldflags "-s -w -X github.com/prometheus/common/version.Version=$$v" \
	    -o $(CLUSTER_BIN)/ github.com/prometheus/prometheus/cmd/prometheus && \
	  echo "cluster: Prometheus $$v built in $$((SECONDS - start)) s"
	@start=$$SECONDS; cd $(CLUSTER_MON) && \
	  op=$$(go list -m -f '{{.Version}}' github.com/prometheus-operator/prometheus-operator) && \
	  $(CLUSTER_BUILD) -ldflags "-s -w -X github.com/prometheus/common/version.Version=$${op#v}" -o $(CLUSTER_BIN)/ \
	    github.com/prometheus-operator/prometheus-operator/cmd/operator \
	    github.com/prometheus-operator/prometheus-operator/cmd/prometheus-config-reloader && \
	  echo "cluster: prometheus-operator $$op built in $$((SECONDS - start)) s"
	@k8s=$$(cd $(CLUSTER_GO) && go list -m -f '{{.Dir}}' k8s.io/kubernetes) && \
	  tag=$$(sed -n 's/^TAG ?= *//p' $$k8s/build/pause/Makefile) && \
	  gcc -Os -static -Wall -Werror -DVERSION=$$tag -o $(CLUSTER_BIN)/pause $$k8s/build/pause/linux/pause.c && \
	  ver() { (cd $$1 && go list -m -f '{{.Version}}' $$2); } && \
	  printf '{"kubernetes": "%s", "etcd": "%s", "coredns": "%s", "metrics-server": "%s", "prometheus-operator": "%s", "prometheus": "v%s", "pause": "%s"}\n' \
	    $(K8S_VERSION) $$(ver $(CLUSTER_GO) go.etcd.io/etcd/server/v3) $$(ver $(CLUSTER_GO) github.com/coredns/coredns) \
	    $$(ver $(CLUSTER_GO) sigs.k8s.io/metrics-server) $$(ver $(CLUSTER_MON) github.com/prometheus-operator/prometheus-operator) \
	    $$($(CLUSTER_BIN)/prometheus --version 2>&1 | sed -n 's/^prometheus, version \([^ ]*\).*/\1/p') $$tag \
	    > $(CLUSTER_BIN)/versions.json
	@$(CLUSTER_BIN)/kubectl version --client | sed -n 1p
	@cat $(CLUSTER_BIN)/versions.json
	@touch $@

setup-cluster: cluster-apt $(CLUSTER_BIN)/.built ## build Kubernetes, etcd, CoreDNS, metrics-server, prometheus-operator (+apt: containerd, runc, CNI)

# The tier also builds charts/mlflow-platform's images (MinIO from setup-platform) and runs Argo CD
# (setup-gitops).
test-cluster: setup-cluster setup-platform setup-gitops ## run the cluster tier (a local single-node Kubernetes, or KUBECONFIG's cluster)
