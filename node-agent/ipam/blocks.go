// Extra blocks: a node of a growable PodRange holds, besides its podCIDR,
// the IPv4 blocks its NodeBlocks status grants it. The store takes
// addresses from them after the podCIDR, never from one being drained,
// and never lets a block with an address in it (held, or cooling down)
// go.

package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"
)

// ErrBlockInUse: a block that still holds addresses cannot leave the store.
var ErrBlockInUse = errors.New("extra block still holds addresses")

// Block is an extra block of the node and whether it is being drained.
type Block struct {
	CIDR     netip.Prefix `json:"cidr"`
	Draining bool         `json:"draining,omitempty"`
}

// BlockUsage is one block's addresses: Capacity the store may ever hand
// out of it, Allocated held or cooling down.
type BlockUsage struct {
	CIDR                netip.Prefix
	Capacity, Allocated int
	Draining            bool
}

// checkExtra refuses a set of extra blocks that is not IPv4 blocks apart
// from the podCIDR and from each other.
func (s *Store) checkExtra(bs []Block) error {
	for i, b := range bs {
		switch {
		case !b.CIDR.IsValid() || !b.CIDR.Addr().Is4() || b.CIDR.Masked() != b.CIDR:
			return fmt.Errorf("extra block %v: want an IPv4 network in CIDR notation", b.CIDR)
		case s.cidr.IsValid() && b.CIDR.Overlaps(s.cidr):
			return fmt.Errorf("extra block %v overlaps the podCIDR %v", b.CIDR, s.cidr)
		}
		for _, o := range bs[:i] {
			if o.CIDR.Overlaps(b.CIDR) {
				return fmt.Errorf("extra blocks %v and %v overlap", o.CIDR, b.CIDR)
			}
		}
	}
	return nil
}

// extraOf returns the index of the extra block holding ip, or -1.
func (s *Store) extraOf(ip netip.Addr) int {
	return slices.IndexFunc(s.extra, func(b Block) bool { return b.CIDR.Contains(ip) })
}

// ExtraBlocks returns the extra blocks.
func (s *Store) ExtraBlocks() []Block {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.extra)
}

// SetExtraBlocks makes bs the node's extra blocks, durably. A block left
// out that still holds an address (an allocation, or one cooling down)
// is refused with ErrBlockInUse and nothing changes: a block is given
// back only once drained (Drained).
func (s *Store) SetExtraBlocks(bs []Block) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lock == nil {
		return ErrClosed
	}
	if err := s.checkExtra(bs); err != nil {
		return err
	}
	if slices.Equal(bs, s.extra) {
		return nil
	}
	now := s.now()
	for _, old := range s.extra {
		if slices.ContainsFunc(bs, func(b Block) bool { return b.CIDR == old.CIDR }) {
			continue
		}
		if n := s.heldLocked(old.CIDR, now); n > 0 {
			return fmt.Errorf("%w: %v holds %d", ErrBlockInUse, old.CIDR, n)
		}
	}
	prev := s.extra
	s.extra = slices.Clone(bs)
	blocks := slices.Clone(bs)
	if err := s.write(record{Blocks: &blocks}); err != nil {
		s.extra = prev
		return err
	}
	return nil
}

// heldLocked counts block's addresses held or cooling down at now. The
// caller holds the lock.
func (s *Store) heldLocked(block netip.Prefix, now time.Time) int {
	n := 0
	for ip := range s.byIP {
		if block.Contains(ip) {
			n++
		}
	}
	for ip, t := range s.cooling {
		if block.Contains(ip) && now.Before(t) {
			n++
		}
	}
	return n
}

// Drained reports whether an extra block being drained holds no address
// (held or cooling down): it may be given back.
func (s *Store) Drained(block netip.Prefix) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := slices.IndexFunc(s.extra, func(b Block) bool { return b.CIDR == block })
	return i >= 0 && s.extra[i].Draining && s.heldLocked(block, s.now()) == 0
}

// Usage returns the IPv4 blocks' usage: the podCIDR, then each extra block.
func (s *Store) Usage() []BlockUsage {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	out := []BlockUsage{{CIDR: s.cidr, Capacity: usable(s.cidr), Allocated: s.heldLocked(s.cidr, now)}}
	for _, b := range s.extra {
		out = append(out, BlockUsage{CIDR: b.CIDR, Capacity: size(b.CIDR), Allocated: s.heldLocked(b.CIDR, now), Draining: b.Draining})
	}
	return out
}
