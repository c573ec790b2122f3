// Replaces github.com/prometheus/prometheus/plugins/plugins.go at build time (mk/cluster.mk):
// the operator's Prometheus discovers targets through Kubernetes only, so the other service
// discovery plugins (and their cloud SDKs, minutes of compile time) are left out.
package plugins

import (
	_ "github.com/prometheus/prometheus/discovery/kubernetes" // Register kubernetes plugin.
)
