// Address policy: which address of the podCIDR may be handed out next,
// which are reserved, and how a freed one cools down before reuse.

package ipam

import "net/netip"

// drop removes an allocation (its address cools down) and returns what
// puts it back, for a write that fails, and the journal record.
func (s *Store) drop(a *Allocation) (undo func(), rec record) {
	delete(s.allocs, a.Key)
	delete(s.byIP, a.IP)
	prev, wasCooling := s.cooling[a.IP]
	key := a.Key
	rec = record{Del: &key}
	if s.cooldown > 0 {
		until := s.now().Add(s.cooldown).UTC()
		s.cooling[a.IP] = until
		rec.CoolUntil = &until
	}
	return func() {
		s.allocs[a.Key] = a
		s.byIP[a.IP] = a.Key
		if wasCooling {
			s.cooling[a.IP] = prev
		} else {
			delete(s.cooling, a.IP)
		}
	}, rec
}

// usable is the number of addresses that may ever be handed out.
func (s *Store) usable() int {
	return 1<<(32-s.cidr.Bits()) - 3
}

// reserved reports whether ip is the network, gateway or broadcast address.
func (s *Store) reserved(ip netip.Addr) bool {
	network := s.cidr.Addr()
	if ip == network || ip == network.Next() {
		return true
	}
	return !s.cidr.Contains(ip.Next())
}

// findFree scans next-fit from the cursor: the address freed last is
// reused last. Expired cooling entries are dropped on the way.
func (s *Store) findFree() (netip.Addr, bool) {
	now := s.now()
	start := s.next
	if !start.IsValid() || !s.cidr.Contains(start) {
		start = s.cidr.Addr()
	}
	ip := start
	for i := 0; i < 1<<(32-s.cidr.Bits()); i++ {
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
		if !s.cidr.Contains(ip) {
			ip = s.cidr.Addr()
		}
	}
	return netip.Addr{}, false
}
