//go:build tools

// The command mk/rollouts.mk builds, so `go mod tidy` keeps everything it needs in go.sum.
package rollouts

import (
	_ "github.com/argoproj/argo-rollouts/cmd/rollouts-controller"
)
