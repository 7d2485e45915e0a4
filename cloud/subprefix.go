package cloud

import (
	"fmt"
	"math/big"
	"net/netip"
)

// Subprefix returns the i-th prefix of length bits inside parent, counting
// from 0 at parent's first address: Subprefix(fd20:1:2:3::/64, 96, 1) is
// fd20:1:2:3:0:1::/96. It refuses a length shorter than parent's or longer
// than the address, and an i past parent's end. The clouds use it to give
// each instance the next /96 of a subnetwork's /64.
func Subprefix(parent netip.Prefix, bits int, i uint64) (netip.Prefix, error) {
	if !parent.IsValid() {
		return netip.Prefix{}, fmt.Errorf("subprefix of an invalid prefix")
	}
	parent = parent.Masked()
	size := parent.Addr().BitLen()
	n := bits - parent.Bits()
	if n < 0 || bits > size {
		return netip.Prefix{}, fmt.Errorf("no /%d inside %v", bits, parent)
	}
	if n < 64 && i >= 1<<n {
		return netip.Prefix{}, fmt.Errorf("%v has %d prefixes of length /%d; index %d is past its end", parent, uint64(1)<<n, bits, i)
	}
	v := new(big.Int).SetBytes(parent.Addr().AsSlice())
	v.Add(v, new(big.Int).Lsh(new(big.Int).SetUint64(i), uint(size-bits)))
	addr, _ := netip.AddrFromSlice(v.FillBytes(make([]byte, size/8)))
	return netip.PrefixFrom(addr, bits), nil
}
