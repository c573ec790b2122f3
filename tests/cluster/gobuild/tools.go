//go:build tools

// The commands built from other modules, so `go mod tidy` keeps everything they need in go.sum.
// mk/cluster.mk builds them (and ./etcd, ./coredns); the operator is in monitoring/, a module
// of its own.
package clusterbuild

import (
	_ "github.com/prometheus/prometheus/cmd/prometheus"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "sigs.k8s.io/metrics-server/cmd/metrics-server"
)
