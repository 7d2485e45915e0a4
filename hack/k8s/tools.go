//go:build tools

// Package k8s pins the Kubernetes binaries that hack/deps.sh builds: the
// control plane for the integration tests and benchmarks, the node
// components (kubelet, kube-proxy) for the real-node cluster (make cluster),
// and Kubernetes' own end-to-end suite (e2e.test, `go test -c` of
// test/e2e) with its test server agnhost, for the conformance run.
package k8s

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "k8s.io/kubernetes/test/e2e"
	_ "k8s.io/kubernetes/test/images/agnhost"
)
