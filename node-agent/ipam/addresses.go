// Address policy: which address of a block may be handed out next, which
// are reserved, and how a freed one cools down before reuse.

package ipam

import (
	"math"
	"math/bits"
	"net/netip"
	"time"
)

// drop removes an allocation (its addresses cool down) and returns what
// puts it back, for a write that fails, and the journal record: one
// record, whose CoolUntil applies to both addresses.
func (s *Store) drop(a *Allocation) (undo func(), rec record) {
	delete(s.allocs, a.Key)
	addrs := a.addrs()
	type cool struct {
		until time.Time
		was   bool
	}
	prev := make([]cool, len(addrs))
	for i, ip := range addrs {
		delete(s.byIP, ip)
		prev[i].until, prev[i].was = s.cooling[ip]
	}
	key := a.Key
	rec = record{Del: &key}
	if s.cooldown > 0 {
		until := s.now().Add(s.cooldown).UTC()
		for _, ip := range addrs {
			s.cooling[ip] = until
		}
		rec.CoolUntil = &until
	}
	return func() {
		s.allocs[a.Key] = a
		for i, ip := range addrs {
			s.byIP[ip] = a.Key
			if prev[i].was {
				s.cooling[ip] = prev[i].until
			} else {
				delete(s.cooling, ip)
			}
		}
	}, rec
}

// size is the number of addresses in block, saturated at math.MaxInt.
func size(block netip.Prefix) int {
	host := block.Addr().BitLen() - block.Bits()
	if host >= bits.UintSize-1 {
		return math.MaxInt
	}
	return 1 << host
}

// usable is the number of addresses of block that may ever be handed out
// (saturated at math.MaxInt): all but the reserved ones.
func usable(block netip.Prefix) int {
	n := size(block)
	if n == math.MaxInt {
		return n
	}
	if block.Addr().Is4() {
		return n - 3 // network, gateway, broadcast
	}
	return n - 1 // Subnet-Router anycast
}

// reserved reports whether ip may never be handed out.
//
// IPv4: the network, gateway (the podCIDR's first address) and broadcast
// addresses.
//
// IPv6: only the block's Subnet-Router anycast address, the one whose
// interface identifier is all zeros (RFC 4291 section 2.6.1: every router
// with an interface on the subnet must support it, so packets to it are
// a router's, not a pod's). IPv6 has no broadcast address (RFC 4291
// section 2),
// and the pods' gateway is a fixed link-local address on the host veth
// (fe80::/10, RFC 4291 section 2.5.6, never of the block), so nothing else
// of the block is the host's.
func (s *Store) reserved(ip netip.Addr) bool {
	if ip.Is6() {
		return ip == s.cidr6.Addr()
	}
	if !s.cidr.Contains(ip) {
		return false // an extra block: its addresses are all pods' (/32 routes; the gateway is link-local)
	}
	network := s.cidr.Addr()
	if ip == network || ip == network.Next() {
		return true
	}
	return !s.cidr.Contains(ip.Next())
}

// findFree scans block next-fit from cursor: the address freed last is
// reused last. Expired cooling entries are dropped on the way.
func (s *Store) findFree(block netip.Prefix, cursor netip.Addr) (netip.Addr, bool) {
	now := s.now()
	ip := cursor
	if !ip.IsValid() || !block.Contains(ip) {
		ip = block.Addr()
	}
	// Every address passed over is reserved (at most 3), held or cooling
	// down: once more than that many were passed, a free one was met or
	// none is left. This bounds the scan of an IPv6 block of 2^64.
	n := min(size(block), len(s.byIP)+len(s.cooling)+4)
	for range n {
		if !s.reserved(ip) {
			if _, used := s.byIP[ip]; !used {
				t, cooling := s.cooling[ip]
				if !cooling || !now.Before(t) {
					delete(s.cooling, ip)
					return ip, true
				}
			}
		}
		ip = ip.Next()
		if !block.Contains(ip) {
			ip = block.Addr()
		}
	}
	return netip.Addr{}, false
}
