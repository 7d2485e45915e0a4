//go:build tools

// Package cni pins the CNI reference plugins hack/deps.sh builds: portmap
// (chained after aliasip-cni, CNI 1.1) and ptp + host-local (the benchmark's
// comparison, at the same version).
package cni

import (
	_ "github.com/containernetworking/plugins/plugins/ipam/host-local"
	_ "github.com/containernetworking/plugins/plugins/main/ptp"
	_ "github.com/containernetworking/plugins/plugins/meta/portmap"
)
