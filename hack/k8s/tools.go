//go:build tools

// Package k8s pins the Kubernetes control-plane binaries that hack/deps.sh
// builds for the integration tests and benchmarks.
package k8s

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
)
