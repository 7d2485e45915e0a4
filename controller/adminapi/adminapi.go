// Package adminapi is what the controller answers on its administrative
// socket (--admin-socket), for kubectl aliasip: the cloud as the controller
// sees it, and the release of an alias that check found leaked. The wire is
// internal/sockrpc: one JSON request and answer per connection.
package adminapi

import "github.com/aliasip/aliasip/internal/sockrpc"

// The calls.
const (
	OpCloud        sockrpc.Op = "cloud"         // nothing → CloudView
	OpReleaseAlias sockrpc.Op = "release-alias" // AliasLeak → LeakResult
)

// CloudView is the controller's ranges and the cloud's instances with their
// alias ranges, each mapped to the Node it belongs to.
type CloudView struct {
	// Ready: the controller leads and has rebuilt its state. A standby
	// answers with Ready false and no ranges.
	Ready bool `json:"ready"`
	// DualStack: the controller runs with --dual-stack, so every Node's
	// podCIDRs should be [IPv4 block, the first /112 of its NIC's IPv6
	// range].
	DualStack bool       `json:"dualStack,omitempty"`
	Ranges    []Range    `json:"ranges"`
	Instances []Instance `json:"instances"`
}

// Range is one pool: the default range (the flags') or a PodRange's.
type Range struct {
	Name      string `json:"name"`
	CIDR      string `json:"cidr"`
	CloudName string `json:"cloudName,omitempty"` // the secondary range its aliases carry
	MaskSize  int    `json:"maskSize"`
	Default   bool   `json:"default,omitempty"`
	Total     int    `json:"total"`
	Used      int    `json:"used"`
	Free      int    `json:"free"`
	Cooling   int    `json:"cooling"`
	Nodes     int    `json:"nodes"`
}

// Instance is one VM, the Node it belongs to ("" when none does) and its
// alias ranges.
type Instance struct {
	Ref     string  `json:"ref"`
	Node    string  `json:"node,omitempty"`
	Aliases []Alias `json:"aliases"`
	// IPv6 is the internal IPv6 range of the instance's primary NIC (a
	// /96 on GCE), "" when it has none.
	IPv6 string `json:"ipv6,omitempty"`
}

// Alias is one alias range; Range names our range it comes from ("" when
// it is none of ours).
type Alias struct {
	CIDR      string `json:"cidr"`
	CloudName string `json:"cloudName,omitempty"`
	Range     string `json:"range,omitempty"`
}

// AliasLeak names an alias check found on an instance without a Node.
type AliasLeak struct {
	Instance string `json:"instance"`
	CIDR     string `json:"cidr"`
}

// LeakResult says whether the alias was removed, and why (not).
type LeakResult struct {
	Released bool   `json:"released"`
	Reason   string `json:"reason"`
}
