package v1alpha1

import (
	"fmt"
	"math/bits"
)

// MaskSizeForMaxPods returns the mask size of the smallest block with at
// least twice as many addresses as maxPods, in an address family of
// addrBits (32 or 128). It is GKE's rule for its maximum pods per node:
// 8 → /28, 9–16 → /27, 17–32 → /26, 33–64 → /25, 65–110 → /24
// (https://cloud.google.com/kubernetes-engine/docs/how-to/flexible-pod-cidr,
// "The block always contains at least twice as many addresses as the
// maximum number of Pods per node").
func MaskSizeForMaxPods(maxPods int32, addrBits int) int {
	if maxPods < 1 {
		return addrBits
	}
	// The smallest n with 2^n >= 2*maxPods.
	host := bits.Len32(uint32(2*maxPods - 1))
	return addrBits - host
}

// BlockMaskSize returns the mask size of the range's blocks, in an address
// family of addrBits: maskSize, or the one maxPodsPerNode needs.
func (s *PodRangeSpec) BlockMaskSize(addrBits int) (int, error) {
	switch {
	case s.MaskSize != nil:
		return int(*s.MaskSize), nil
	case s.MaxPodsPerNode != nil:
		return MaskSizeForMaxPods(*s.MaxPodsPerNode, addrBits), nil
	default:
		return 0, fmt.Errorf("neither maskSize nor maxPodsPerNode is set")
	}
}
