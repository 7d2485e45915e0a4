// Package blocksize is the one rule on a node block's size that both
// daemons apply: the controller hands out no block the node agent's IPAM
// would refuse, and the agent refuses exactly what the controller would
// not hand out.
//
// A block must hold, besides its pods, the addresses the agent never hands
// out: in IPv4 the network and broadcast addresses and the pod gateway
// (node-agent/ipam: usable = size - 3), in IPv6 the Subnet-Router anycast
// address (RFC 4291 section 2.6.1) and the gateway. With at least one pod,
// that is a /30 for IPv4 and a /126 for IPv6.
package blocksize

import (
	"fmt"
	"net/netip"
)

// MaxMaskSize returns the longest mask a node block may have in an address
// family of addrBits bits (32 or 128).
func MaxMaskSize(addrBits int) int { return addrBits - 2 }

// CheckMask reports whether blocks of /maskSize in a family of addrBits
// bits can serve pods.
func CheckMask(maskSize, addrBits int) error {
	if maskSize > MaxMaskSize(addrBits) {
		family := "IPv4"
		if addrBits == 128 {
			family = "IPv6"
		}
		return fmt.Errorf("/%d blocks leave no address for a pod: %s node blocks must be /%d or larger", maskSize, family, MaxMaskSize(addrBits))
	}
	return nil
}

// Check reports whether a node's block can serve pods.
func Check(block netip.Prefix) error {
	if !block.IsValid() {
		return fmt.Errorf("invalid block %v", block)
	}
	return CheckMask(block.Bits(), block.Addr().BitLen())
}
