package controller

import (
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/aliasip/aliasip/cloud"
	"github.com/aliasip/aliasip/controller/allocator"
)

// assignment is a block the controller holds for a node.
type assignment struct {
	cidr netip.Prefix
	inst cloud.InstanceRef
}

// blocks is the controller's block bookkeeping: the pool, which node holds
// which block (and on which instance), the blocks cooling down and the
// nodes waiting for one. Every method takes its lock; nothing else touches
// its maps, so each rule about ownership is in one place.
type blocks struct {
	mu      sync.Mutex
	alloc   *allocator.Allocator    // nil until reset
	owned   map[string]assignment   // node -> its block
	owner   map[netip.Prefix]string // block -> node
	cooling map[netip.Prefix]time.Time
	waiting map[string]bool // nodes waiting for a free block
	dirty   bool            // the last save of the cooling set failed
}

func newBlocks() *blocks {
	return &blocks{
		owned:   map[string]assignment{},
		owner:   map[netip.Prefix]string{},
		cooling: map[netip.Prefix]time.Time{},
		waiting: map[string]bool{},
	}
}

// reset installs a rebuilt state.
func (b *blocks) reset(alloc *allocator.Allocator, owned map[string]assignment, owner map[netip.Prefix]string, cooling map[netip.Prefix]time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.alloc, b.owned, b.owner, b.cooling = alloc, owned, owner, cooling
}

// stats is the pool's used, free and cooling block counts.
func (b *blocks) stats() (used, free, cooling int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.alloc == nil {
		return 0, 0, 0
	}
	return b.alloc.Used(), b.alloc.Free(), len(b.cooling)
}

// occupy marks blocks used (aliases seen on a NIC).
func (b *blocks) occupy(ps ...netip.Prefix) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, p := range ps {
		if _, err := b.alloc.Occupy(p); err != nil {
			return fmt.Errorf("mark %v used: %w", p, err)
		}
	}
	return nil
}

// reserve returns the node's held block, or allocates a new one; a node
// that finds none is recorded as waiting.
func (b *blocks) reserve(name string, inst cloud.InstanceRef) (netip.Prefix, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if a, ok := b.owned[name]; ok {
		a.inst = inst
		b.owned[name] = a
		return a.cidr, nil
	}
	cidr, err := b.alloc.Allocate()
	if err != nil {
		b.waiting[name] = true
		return netip.Prefix{}, err
	}
	delete(b.waiting, name)
	b.owned[name] = assignment{cidr: cidr, inst: inst}
	b.owner[cidr] = name
	return cidr, nil
}

// unreserve returns a block the node reserved, and the cloud never
// applied, to the pool.
func (b *blocks) unreserve(name string, cidr netip.Prefix) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if a, ok := b.owned[name]; ok && a.cidr == cidr {
		delete(b.owned, name)
	}
	if b.owner[cidr] != name {
		return nil
	}
	delete(b.owner, cidr)
	return b.alloc.Release(cidr)
}

// holdBack takes a block from the node and keeps it out of the pool until
// the given time (another resource holds it).
func (b *blocks) holdBack(name string, cidr netip.Prefix, until time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if a, ok := b.owned[name]; ok && a.cidr == cidr {
		delete(b.owned, name)
	}
	if b.owner[cidr] == name {
		delete(b.owner, cidr)
	}
	b.cooling[cidr] = until
}

// claim records name as the holder of cidr on inst; it returns the name of
// another live node that already holds it ("" when the claim succeeded).
// A block the node reserved before and now gives up (it adopts another)
// cools down until coolUntil, as it may have reached the cloud.
func (b *blocks) claim(name string, cidr netip.Prefix, inst cloud.InstanceRef, alive func(string) bool, coolUntil time.Time) (string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if other, ok := b.owner[cidr]; ok && other != name {
		if alive(other) {
			return other, nil
		}
		// The holder is gone: its pending release must not remove the
		// alias from the node that now holds the block.
		if b.owned[other].cidr == cidr {
			delete(b.owned, other)
		}
	}
	if prev, ok := b.owned[name]; ok && prev.cidr != cidr && b.owner[prev.cidr] == name {
		delete(b.owner, prev.cidr)
		b.cooling[prev.cidr] = coolUntil
	}
	if _, err := b.alloc.Occupy(cidr); err != nil {
		return "", fmt.Errorf("claim %v: %w", cidr, err)
	}
	delete(b.cooling, cidr)
	b.owned[name] = assignment{cidr: cidr, inst: inst}
	b.owner[cidr] = name
	delete(b.waiting, name)
	return "", nil
}

// coolRemoved records that an alias was removed from a node's NIC: unless
// another node holds the block, it cools down until the given time.
func (b *blocks) coolRemoved(name string, p netip.Prefix, until time.Time) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if holder, held := b.owner[p]; held && holder != name {
		return nil
	}
	delete(b.owner, p)
	if _, err := b.alloc.Occupy(p); err != nil {
		return fmt.Errorf("cool %v: %w", p, err)
	}
	b.cooling[p] = until
	return nil
}

// releasing returns what the release of a deleted node must remove from
// the cloud; ok is false when it holds nothing (any more).
func (b *blocks) releasing(name string) (a assignment, ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.waiting, name)
	a, ok = b.owned[name]
	if ok && b.owner[a.cidr] != name {
		// Another node claimed the block since: nothing of ours to remove.
		delete(b.owned, name)
		return assignment{}, false
	}
	return a, ok
}

// released records that a deleted node's alias was removed: the block
// cools down until the given time.
func (b *blocks) released(name string, a assignment, until time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.owned, name)
	if b.owner[a.cidr] == name {
		delete(b.owner, a.cidr)
		b.cooling[a.cidr] = until
	}
}

// leaked records that the leak collector removed an alias from an
// instance without a Node. A block still held by a live node is left
// alone; one held by a deleted node (whose release never succeeded) is
// taken from it. It reports whether the block now cools down.
func (b *blocks) leaked(p netip.Prefix, until time.Time, alive func(string) bool) (bool, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if holder, held := b.owner[p]; held {
		if alive(holder) {
			return false, nil
		}
		delete(b.owner, p)
		if b.owned[holder].cidr == p {
			delete(b.owned, holder)
		}
	}
	if _, err := b.alloc.Occupy(p); err != nil {
		return false, fmt.Errorf("cool leaked %v: %w", p, err)
	}
	b.cooling[p] = until
	return true, nil
}

// expire returns the blocks whose cooldown ended to the pool. It reports
// how many cooldowns ended and how many blocks went back to the pool, the
// next time a cooldown ends (at most horizon), and the nodes to wake when
// the pool has a free block.
func (b *blocks) expire(now, horizon time.Time) (expired, freed int, next time.Time, woken []string, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	next = horizon
	for cidr, at := range b.cooling {
		if now.Before(at) {
			if at.Before(next) {
				next = at
			}
			continue
		}
		expired++
		delete(b.cooling, cidr)
		if _, held := b.owner[cidr]; !held {
			if rerr := b.alloc.Release(cidr); rerr != nil {
				err = fmt.Errorf("release cooled block %v: %w", cidr, rerr)
				continue
			}
			freed++
		}
	}
	if b.alloc.Free() > 0 {
		for n := range b.waiting {
			woken = append(woken, n)
		}
	}
	return expired, freed, next, woken, err
}

// coolingSnapshot copies the cooling set.
func (b *blocks) coolingSnapshot() map[netip.Prefix]time.Time {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make(map[netip.Prefix]time.Time, len(b.cooling))
	for k, v := range b.cooling {
		out[k] = v
	}
	return out
}

// coolingUntil reports whether a block cools down, and until when.
func (b *blocks) coolingUntil(p netip.Prefix) (time.Time, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	t, ok := b.cooling[p]
	return t, ok
}

// inUse reports whether a block is out of the pool.
func (b *blocks) inUse(p netip.Prefix) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.alloc.InUse(p)
}

// isWaiting reports whether a node waits for a free block.
func (b *blocks) isWaiting(name string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.waiting[name]
}

// setDirty records whether the last save of the cooling set failed, and
// returns what it was.
func (b *blocks) setDirty(d bool) (was bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	was, b.dirty = b.dirty, d
	return was
}

func (b *blocks) isDirty() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.dirty
}
