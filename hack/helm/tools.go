//go:build tools

// Package helm pins the helm binary hack/deps.sh builds to lint, render and
// dry-run-install charts/aliasip in the tests.
package helm

import _ "helm.sh/helm/v3/cmd/helm"
