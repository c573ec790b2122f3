//go:build tools

// The commands mk/rollouts.mk builds, so `go mod tidy` keeps everything they need in go.sum.
package rollouts

import (
	_ "github.com/argoproj/argo-rollouts/cmd/kubectl-argo-rollouts"
	_ "github.com/argoproj/argo-rollouts/cmd/rollouts-controller"
)
