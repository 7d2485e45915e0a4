package controller

import (
	"fmt"
	"net/netip"
	"sort"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/labels"

	"github.com/aliasip/aliasip/cloud"
	"github.com/aliasip/aliasip/controller/allocator"
)

// assignment is a block the controller holds for a node.
type assignment struct {
	cidr netip.Prefix
	inst cloud.InstanceRef
}

// blocks is the controller's block bookkeeping: the pools (the default
// range and the PodRanges' ranges), which node holds which block (and on
// which instance), the blocks cooling down and the nodes waiting for one.
// Every method takes its lock; nothing else touches its maps, so each rule
// about ownership is in one place. Pools never overlap, so a block belongs
// to at most one pool, and owner and cooling are keyed by the block alone.
type blocks struct {
	mu      sync.Mutex
	pools   map[string]*pool        // by name; empty until reset
	owned   map[string]assignment   // node -> its block
	owner   map[netip.Prefix]string // block -> node
	cooling map[netip.Prefix]time.Time
	waiting map[string]bool // nodes waiting for a free block
	// inflight: blocks whose alias add is running now, by node. Only such
	// a reservation holds a block against a node whose NIC carries it.
	inflight map[netip.Prefix]string
	// afterCooling: blocks cooling down that a node's podCIDR names (a
	// podCIDR we did not give): the node gets the block when it expires,
	// instead of the pool.
	afterCooling map[netip.Prefix]string
	dirty        bool            // the last save of the cooling set failed
	changed      map[string]bool // pools whose counts changed since takeChanged
	// unusable are the PodRanges that exist but hand out no block (not
	// ready: overlapping, invalid, being deleted), by the selector they
	// have: a node they select waits rather than getting a block elsewhere.
	unusable map[string]labels.Selector
	// extra: the extra blocks of growable ranges' nodes (their NodeBlocks
	// status), block -> node. They are held like podCIDRs: never freed,
	// never claimed by another node, until given back.
	extra map[netip.Prefix]string
}

func newBlocks() *blocks {
	return &blocks{
		pools:        map[string]*pool{},
		owned:        map[string]assignment{},
		owner:        map[netip.Prefix]string{},
		cooling:      map[netip.Prefix]time.Time{},
		waiting:      map[string]bool{},
		inflight:     map[netip.Prefix]string{},
		afterCooling: map[netip.Prefix]string{},
		changed:      map[string]bool{},
		unusable:     map[string]labels.Selector{},
		extra:        map[netip.Prefix]string{},
	}
}

// reset installs a state the rebuild restored into st (a blocks of its
// own, not shared). PodRanges recorded as pending (setPending) since the
// rebuild listed them stay unusable.
func (b *blocks) reset(st *blocks, unusable map[string]labels.Selector) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.pools = st.pools
	for name := range st.pools {
		b.changed[name] = true
	}
	for name, sel := range b.unusable {
		if _, listed := unusable[name]; !listed && b.pools[name] == nil {
			unusable[name] = sel
		}
	}
	b.unusable = unusable
	b.owned, b.owner, b.cooling, b.extra = st.owned, st.owner, st.cooling, st.extra
	// Resume handing out blocks where the previous process stood.
	for _, pl := range b.pools {
		pl.alloc.SeekAfterLastUsed()
	}
}

// The restore methods below fill a blocks the rebuild builds on its own
// (then installed by reset); they take no lock.

// restorePool adds a pool unless it overlaps one added before (false).
func (b *blocks) restorePool(pl *pool) bool {
	for _, other := range b.pools {
		if other.cidr.Overlaps(pl.cidr) {
			return false
		}
	}
	b.pools[pl.name] = pl
	return true
}

// poolCount is the number of pools.
func (b *blocks) poolCount() int { return len(b.pools) }

// isBlock reports whether p is a block of one of the pools.
func (b *blocks) isBlock(p netip.Prefix) bool {
	pl := b.poolOf(p)
	return pl != nil && pl.isBlock(p)
}

// restoreNode records a Node's podCIDR, a block of a pool: used, and the
// node's unless an earlier node holds it.
func (b *blocks) restoreNode(name string, p netip.Prefix, inst cloud.InstanceRef) error {
	if err := b.occupyLocked(p); err != nil {
		return err
	}
	if b.heldLocked(p) {
		// An older node's podCIDR, or an extra block its holder's NIC
		// carries (restored first: a kubelet may write any podCIDR).
		return nil
	}
	b.owned[name] = assignment{cidr: p, inst: inst}
	b.owner[p] = name
	return nil
}

// restoreAlias marks an alias on an instance used when it comes from a
// pool (true).
func (b *blocks) restoreAlias(a cloud.AliasRange) (bool, error) {
	pl := b.poolOf(a.CIDR)
	if pl == nil || !pl.holds(a) {
		return false, nil
	}
	_, err := pl.alloc.Occupy(a.CIDR)
	return err == nil, err
}

// restoreCooling restores a saved cooling entry still cooling at now and
// held by no node (true); one of a range removed meanwhile cools on too
// (addPool marks it used if the range comes back before it expires).
func (b *blocks) restoreCooling(p netip.Prefix, until, now time.Time) (bool, error) {
	if b.heldLocked(p) || !now.Before(until) {
		return false, nil
	}
	if b.poolOf(p) != nil {
		if err := b.occupyLocked(p); err != nil {
			return false, err
		}
	}
	b.cooling[p] = until
	return true, nil
}

// poolOf returns the pool holding the block, or nil. The caller holds the lock.
func (b *blocks) poolOf(p netip.Prefix) *pool {
	for _, pl := range b.pools {
		if pl.contains(p) {
			return pl
		}
	}
	return nil
}

// occupyLocked marks p used in its pool. The caller holds the lock.
func (b *blocks) occupyLocked(p netip.Prefix) error {
	pl := b.poolOf(p)
	if pl == nil {
		return fmt.Errorf("%v: %w", p, allocator.ErrOutOfRange)
	}
	if _, err := pl.alloc.Occupy(p); err != nil {
		return err
	}
	b.changed[pl.name] = true
	return nil
}

// releaseLocked returns p to its pool's free blocks (a no-op when its pool
// is gone). Of the blocks p covers — one when p is a block, several when an
// alias of another size was on a NIC — those another node holds or that
// cool down stay out of the pool: nothing released can be a block someone
// holds. The caller holds the lock and has already dropped p's own owner
// and cooling entries.
func (b *blocks) releaseLocked(p netip.Prefix) error {
	pl := b.poolOf(p)
	if pl == nil {
		return nil
	}
	b.changed[pl.name] = true
	covered, err := pl.alloc.BlocksOf(p)
	if err != nil {
		return err
	}
	for _, blk := range covered {
		if b.heldLocked(blk) {
			continue
		}
		if _, cooling := b.cooling[blk]; cooling && blk != p {
			continue
		}
		if err := pl.alloc.Release(blk); err != nil {
			return err
		}
	}
	return nil
}

// stats returns every pool's block counts, by pool name.
func (b *blocks) stats() map[string]PoolStats {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make(map[string]PoolStats, len(b.pools))
	for name, pl := range b.pools {
		out[name] = PoolStats{Total: pl.alloc.Size(), Used: pl.alloc.Used(), Free: pl.alloc.Free()}
	}
	for p := range b.cooling {
		if pl := b.poolOf(p); pl != nil {
			s := out[pl.name]
			s.Cooling++
			out[pl.name] = s
		}
	}
	for n, a := range b.owned {
		if pl := b.poolOf(a.cidr); pl != nil && b.owner[a.cidr] == n {
			s := out[pl.name]
			s.Nodes++
			out[pl.name] = s
		}
	}
	return out
}

// poolStats returns one pool's counts; ok is false when there is no such pool.
func (b *blocks) poolStats(name string) (PoolStats, bool) {
	s, ok := b.stats()[name]
	return s, ok
}

// takeChanged returns the pools whose counts changed since the last call.
func (b *blocks) takeChanged() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]string, 0, len(b.changed))
	for n := range b.changed {
		out = append(out, n)
	}
	clear(b.changed)
	sort.Strings(out)
	return out
}

// ours reports whether an alias range comes from one of the pools.
func (b *blocks) ours(a cloud.AliasRange) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, pl := range b.pools {
		if pl.holds(a) {
			return true
		}
	}
	return false
}

// rangeOf returns the pool (name, its cloud range name) of which p is a
// block (see pool.isBlock); ok is false for anything else, including a
// prefix of another size inside a pool.
func (b *blocks) rangeOf(p netip.Prefix) (name, cloudName string, ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	pl := b.poolOf(p)
	if pl == nil || !pl.isBlock(p) {
		return "", "", false
	}
	return pl.name, pl.cloudName, true
}

// rangeContaining returns the pool p lies inside, whatever its size, and
// the pool's block size.
func (b *blocks) rangeContaining(p netip.Prefix) (name string, maskSize int, ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	pl := b.poolOf(p)
	if pl == nil {
		return "", 0, false
	}
	return pl.name, pl.maskSize, true
}

// occupy marks blocks used (aliases seen on a NIC).
func (b *blocks) occupy(ps ...netip.Prefix) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, p := range ps {
		if err := b.occupyLocked(p); err != nil {
			return fmt.Errorf("mark %v used: %w", p, err)
		}
	}
	return nil
}

// reserve returns the node's held block, or allocates a new one from the
// first of its candidate pools (see candidates) that has a free block; it
// also returns the pool's name. A node that finds none is recorded as
// waiting; the error then names the pools tried.
func (b *blocks) reserve(name string, inst cloud.InstanceRef, nodeLabels map[string]string) (netip.Prefix, string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if a, ok := b.owned[name]; ok {
		a.inst = inst
		b.owned[name] = a
		pl := b.poolOf(a.cidr)
		if pl == nil {
			return netip.Prefix{}, "", fmt.Errorf("block %v held for %s is in no range", a.cidr, name)
		}
		return a.cidr, pl.name, nil
	}
	cands, blocked := candidates(b.pools, b.unusable, nodeLabels)
	var tried []string
	for _, pl := range cands {
		cidr, err := pl.alloc.Allocate()
		if err != nil {
			tried = append(tried, fmt.Sprintf("%s (/%d of %v)", pl.name, pl.maskSize, pl.cidr))
			continue
		}
		delete(b.waiting, name)
		b.owned[name] = assignment{cidr: cidr, inst: inst}
		b.owner[cidr] = name
		b.changed[pl.name] = true
		return cidr, pl.name, nil
	}
	b.waiting[name] = true
	if len(blocked) > 0 {
		return netip.Prefix{}, "", fmt.Errorf("the PodRanges that select the node are not ready (%v): %w", blocked, allocator.ErrRangeExhausted)
	}
	if len(cands) == 0 {
		return netip.Prefix{}, "", fmt.Errorf("no range for the node: %w", allocator.ErrRangeExhausted)
	}
	return netip.Prefix{}, "", fmt.Errorf("no free block in %v: %w", tried, allocator.ErrRangeExhausted)
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
	return b.releaseLocked(cidr)
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
	if pl := b.poolOf(cidr); pl != nil {
		b.changed[pl.name] = true
	}
}

// holderState is what the recorded holder of a block is, as the API sees it.
type holderState int

const (
	// holderGone: no such Node; its claim lapses.
	holderGone holderState = iota
	// holderReserving: a live Node whose podCIDR is not the block: it
	// reserved the block and its alias add has not settled (it is in
	// flight, or will fail on the alias another NIC carries).
	holderReserving
	// holderHolding: a live Node whose podCIDR is the block.
	holderHolding
)

// claim records name as the holder of cidr on inst. When another node
// holds it, claim changes nothing and returns that node and what it is
// (holderReserving or holderHolding). A block the node reserved before
// and now gives up (it adopts another) cools down until coolUntil, as it
// may have reached the cloud.
func (b *blocks) claim(name string, cidr netip.Prefix, inst cloud.InstanceRef, holder func(node string, cidr netip.Prefix) holderState, coolUntil time.Time) (string, holderState, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if pl := b.poolOf(cidr); pl == nil || !pl.isBlock(cidr) {
		return "", holderGone, fmt.Errorf("claim %v: not a block of any range", cidr)
	}
	if other, ok := b.extra[cidr]; ok {
		// Another node's extra block (or this node's own, which its
		// podCIDR cannot also be): held, whatever that node's podCIDR.
		return other, holderHolding, nil
	}
	if other, ok := b.owner[cidr]; ok && other != name {
		st := holder(other, cidr)
		if st == holderReserving && b.inflight[cidr] != other {
			// Reserved, but no write of it runs: the reservation is only
			// a hint, and this node's NIC carrying the block is the fact
			// (its write will be refused). The reservation lapses; the
			// other node reserves anew. Waiting on it instead could wait
			// forever: two nodes whose NICs carry each other's
			// reservation never write again.
			st = holderGone
		}
		if st != holderGone {
			return other, st, nil
		}
		// The holder is gone (or its reservation lapsed): its pending
		// release must not remove the alias from the node that now holds
		// the block.
		if b.owned[other].cidr == cidr {
			delete(b.owned, other)
		}
	}
	if prev, ok := b.owned[name]; ok && prev.cidr != cidr && b.owner[prev.cidr] == name {
		delete(b.owner, prev.cidr)
		b.cooling[prev.cidr] = coolUntil
	}
	if err := b.occupyLocked(cidr); err != nil {
		return "", holderGone, fmt.Errorf("claim %v: %w", cidr, err)
	}
	delete(b.cooling, cidr)
	b.owned[name] = assignment{cidr: cidr, inst: inst}
	b.owner[cidr] = name
	delete(b.waiting, name)
	return "", holderGone, nil
}

// coolRemoved records that an alias was removed from a node's NIC: unless
// another node holds the block, it cools down until the given time.
func (b *blocks) coolRemoved(name string, p netip.Prefix, until time.Time) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if holder, held := b.owner[p]; held && holder != name {
		return nil
	}
	if _, held := b.extra[p]; held {
		return nil
	}
	delete(b.owner, p)
	if err := b.occupyLocked(p); err != nil {
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
		if pl := b.poolOf(a.cidr); pl != nil {
			b.changed[pl.name] = true
		}
	}
}

// handOver records that a deleted node's alias was removed and its block
// passes to heir, a live node whose podCIDR it is: never free in between.
// A block the heir held before (a Node re-created under the same name
// with another podCIDR) cools down until coolUntil, as claim does.
func (b *blocks) handOver(name string, a assignment, heir string, coolUntil time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.owned, name)
	if b.owner[a.cidr] != name {
		return
	}
	if prev, ok := b.owned[heir]; ok && prev.cidr != a.cidr && b.owner[prev.cidr] == heir {
		delete(b.owner, prev.cidr)
		b.cooling[prev.cidr] = coolUntil
	}
	b.owner[a.cidr] = heir
	b.owned[heir] = assignment{cidr: a.cidr}
}

// holder returns the node recorded as holding a block ("" when none).
func (b *blocks) holder(cidr netip.Prefix) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if n, ok := b.extra[cidr]; ok {
		return n
	}
	return b.owner[cidr]
}

// heldLocked reports whether a node holds p, as its podCIDR or as an
// extra block. The caller holds the lock.
func (b *blocks) heldLocked(p netip.Prefix) bool {
	_, owned := b.owner[p]
	_, extra := b.extra[p]
	return owned || extra
}

// writing marks a node's alias write of a block as running (done: over).
func (b *blocks) writing(name string, cidr netip.Prefix, done bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if done {
		if b.inflight[cidr] == name {
			delete(b.inflight, cidr)
		}
		return
	}
	b.inflight[cidr] = name
}

// waitCooling records that a node's podCIDR names a block cooling down:
// when it expires the block becomes the node's, not the pool's. It
// returns when the cooldown ends; ok is false when the block does not
// cool down (any more).
func (b *blocks) waitCooling(name string, cidr netip.Prefix) (until time.Time, ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	until, ok = b.cooling[cidr]
	if ok {
		if _, taken := b.afterCooling[cidr]; !taken {
			b.afterCooling[cidr] = name
		}
	}
	return until, ok
}

// leaked records that the leak collector removed an alias from an
// instance without a Node. A block still held by a live node is left
// alone; one held by a deleted node (whose release never succeeded) is
// taken from it. It reports whether the block now cools down.
func (b *blocks) leaked(p netip.Prefix, until time.Time, alive func(string) bool) (bool, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if holder, held := b.extra[p]; held {
		if alive(holder) {
			return false, nil
		}
		delete(b.extra, p)
	}
	if holder, held := b.owner[p]; held {
		if alive(holder) {
			return false, nil
		}
		delete(b.owner, p)
		if b.owned[holder].cidr == p {
			delete(b.owned, holder)
		}
	}
	if err := b.occupyLocked(p); err != nil {
		return false, fmt.Errorf("cool leaked %v: %w", p, err)
	}
	b.cooling[p] = until
	return true, nil
}

// expire returns the blocks whose cooldown ended to their pools. It
// reports how many cooldowns ended and how many blocks went back to a
// pool, the next time a cooldown ends (at most horizon), and the nodes to
// wake when some pool has a free block.
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
		if heir, ok := b.afterCooling[cidr]; ok {
			delete(b.afterCooling, cidr)
			held := b.heldLocked(cidr)
			if _, hasOther := b.owned[heir]; !held && !hasOther {
				// The node whose podCIDR it is gets it (its release
				// returns it if the node is gone meanwhile).
				b.owner[cidr] = heir
				b.owned[heir] = assignment{cidr: cidr}
				woken = append(woken, heir)
				continue
			}
		}
		if !b.heldLocked(cidr) {
			if rerr := b.releaseLocked(cidr); rerr != nil {
				err = fmt.Errorf("release cooled block %v: %w", cidr, rerr)
				continue
			}
			freed++
		}
	}
	anyFree := false
	for _, pl := range b.pools {
		anyFree = anyFree || pl.alloc.Free() > 0
	}
	if anyFree {
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

// inUse reports whether a block is out of its pool.
func (b *blocks) inUse(p netip.Prefix) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	pl := b.poolOf(p)
	return pl != nil && pl.alloc.InUse(p)
}

// isWaiting reports whether a node waits for a free block.
func (b *blocks) isWaiting(name string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.waiting[name]
}

// waitingNodes returns the nodes waiting for a free block.
func (b *blocks) waitingNodes() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]string, 0, len(b.waiting))
	for n := range b.waiting {
		out = append(out, n)
	}
	return out
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

// Extra blocks of growable ranges (growth.go).

// restoreExtra records, in a state the rebuild builds, that a node's
// NodeBlocks status grants it p: used, and the node's unless another node
// holds it (false).
func (b *blocks) restoreExtra(name string, p netip.Prefix) (bool, error) {
	if pl := b.poolOf(p); pl == nil || !pl.isBlock(p) {
		return false, nil
	}
	if b.heldLocked(p) {
		return false, nil
	}
	if err := b.occupyLocked(p); err != nil {
		return false, err
	}
	delete(b.cooling, p)
	b.extra[p] = name
	return true, nil
}

// recordExtra records that a node's NodeBlocks status grants it p (a
// grant this process did not make, or one restored): it returns the
// other node holding p ("" when the record succeeded). A block cooling
// down is taken (it was the node's before it went).
func (b *blocks) recordExtra(name string, p netip.Prefix) (string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if pl := b.poolOf(p); pl == nil || !pl.isBlock(p) {
		return "", fmt.Errorf("extra block %v: not a block of any range", p)
	}
	if other, ok := b.extra[p]; ok {
		if other != name {
			return other, nil
		}
		return "", nil
	}
	if other, ok := b.owner[p]; ok {
		return other, nil
	}
	// A block cooling down (given back, removed as a leftover, or held
	// for a node whose podCIDR names it) is no record's to take: only
	// the rebuild restores records, from what the NICs carry.
	if _, cooling := b.cooling[p]; cooling {
		return "(cooling down)", nil
	}
	if err := b.occupyLocked(p); err != nil {
		return "", err
	}
	b.extra[p] = name
	return "", nil
}

// grantExtra allocates a free block of the named pool for a node as an
// extra block.
func (b *blocks) grantExtra(name, poolName string) (netip.Prefix, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	pl := b.pools[poolName]
	if pl == nil {
		return netip.Prefix{}, fmt.Errorf("no range %q: %w", poolName, allocator.ErrRangeExhausted)
	}
	if pl.deleting {
		return netip.Prefix{}, fmt.Errorf("range %s is being deleted and hands out no block: %w", poolName, allocator.ErrRangeExhausted)
	}
	cidr, err := pl.alloc.Allocate()
	if err != nil {
		// Waits like a node without a podCIDR: woken when a block is free.
		b.waiting[name] = true
		return netip.Prefix{}, fmt.Errorf("no free block in %s (/%d of %v): %w", pl.name, pl.maskSize, pl.cidr, err)
	}
	delete(b.waiting, name)
	b.extra[cidr] = name
	b.changed[pl.name] = true
	return cidr, nil
}

// unreserveExtra returns an extra block the cloud never attached to the
// pool.
func (b *blocks) unreserveExtra(name string, p netip.Prefix) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.extra[p] != name {
		return nil
	}
	delete(b.extra, p)
	return b.releaseLocked(p)
}

// dropExtra takes an extra block from a node (given back, or a write
// that may have reached the cloud failed): it cools down until the given
// time before it is free again.
func (b *blocks) dropExtra(name string, p netip.Prefix, until time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.extra[p] != name {
		return
	}
	delete(b.extra, p)
	b.cooling[p] = until
	if pl := b.poolOf(p); pl != nil {
		b.changed[pl.name] = true
	}
}

// extrasOf returns a node's extra blocks, sorted.
func (b *blocks) extrasOf(name string) []netip.Prefix {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []netip.Prefix
	for p, n := range b.extra {
		if n == name {
			out = append(out, p)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Addr().Less(out[j].Addr()) })
	return out
}
