//go:build tools

// Package codegen pins the code generators hack/update-codegen.sh runs:
// k8s.io/code-generator (kube_codegen.sh: deepcopy-gen, client-gen,
// lister-gen, informer-gen) and controller-gen (the PodRange CRD with its
// CEL validation, from the markers on the Go types).
package codegen

import (
	_ "k8s.io/code-generator"
	_ "k8s.io/code-generator/cmd/client-gen"
	_ "k8s.io/code-generator/cmd/deepcopy-gen"
	_ "k8s.io/code-generator/cmd/informer-gen"
	_ "k8s.io/code-generator/cmd/lister-gen"
	_ "sigs.k8s.io/controller-tools/cmd/controller-gen"
)
