//go:build tools

// The prometheus-operator and its config reloader, in a module of their own: in the Kubernetes module
// MVS lifts github.com/prometheus/prometheus (and Alertmanager) to the versions metrics-server needs,
// whose APIs the operator does not compile against. Here the operator's own go.mod decides, as in
// its upstream build. (Prometheus itself is built in the Kubernetes module: its Kubernetes discovery
// needs a client-go as new as that one.)
package monitoring

import (
	_ "github.com/prometheus-operator/prometheus-operator/cmd/operator"
	_ "github.com/prometheus-operator/prometheus-operator/cmd/prometheus-config-reloader"
)
