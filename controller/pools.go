package controller

import (
	"fmt"
	"net/netip"
	"sort"

	"k8s.io/apimachinery/pkg/labels"

	"github.com/aliasip/aliasip/cloud"
	"github.com/aliasip/aliasip/controller/allocator"
)

// pool is one range node blocks are carved from: the default range (the
// flags') or a PodRange's. Its fields other than alloc are replaced whole
// (setPolicy); alloc is guarded by the blocks lock.
type pool struct {
	// name is the PodRange's name, or v1alpha1.DefaultRangeName.
	name string
	// cidr is the range; pools never overlap (addPool refuses it).
	cidr netip.Prefix
	// cloudName is the secondary range name its aliases carry on the NIC.
	cloudName string
	// maskSize is the blocks' mask size.
	maskSize int
	// priority orders the pools that select a node (highest first).
	priority int32
	// selector picks the nodes; nil for the default range, which gets the
	// nodes no PodRange selects.
	selector labels.Selector
	// deleting: the PodRange is being deleted; it hands out no new block.
	deleting bool

	alloc *allocator.Allocator
}

// isDefault reports whether the pool is the range given by flags.
func (p *pool) isDefault() bool { return p.selector == nil }

// holds reports whether an alias range comes from this pool.
func (p *pool) holds(a cloud.AliasRange) bool {
	return a.RangeName == p.cloudName && p.contains(a.CIDR)
}

// contains reports whether the prefix lies inside the pool's range.
func (p *pool) contains(q netip.Prefix) bool {
	return q.IsValid() && p.cidr.Bits() <= q.Bits() && p.cidr.Contains(q.Addr())
}

// isBlock reports whether the prefix is one of the pool's blocks: inside
// it, of its block size, and aligned. Only a block can be a node's: a
// prefix of another size inside the range (a podCIDR a kubelet wrote on
// its own Node, or one from before a size change) overlaps blocks other
// nodes may hold, so taking it as a node's would lock them or, at its
// release, free them.
func (p *pool) isBlock(q netip.Prefix) bool {
	return p.contains(q) && q.Bits() == p.maskSize && q.Masked() == q
}

// PoolStats are one pool's block counts.
type PoolStats struct {
	Total, Used, Free, Cooling, Nodes int
}

// candidates returns, in the order to try them, the pools a node with
// these labels may get a block from: the PodRanges that select it (not
// being deleted), highest priority first and, among equals, the one with
// the most free blocks (then by name, so the choice is stable); the
// default range when no PodRange selects the node. When only PodRanges
// that hand out no block (unusable) select it, there is no candidate and
// blocked names them: the node waits rather than getting a block from a
// range it was not meant for. The caller holds the blocks lock.
//
// Selectors are metav1.LabelSelectorAsSelector's: an empty selector ({})
// matches every node (k8s.io/apimachinery pkg/apis/meta/v1/helpers.go;
// https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors).
func candidates(pools map[string]*pool, unusable map[string]labels.Selector, nodeLabels map[string]string) (cands []*pool, blocked []string) {
	set := labels.Set(nodeLabels)
	var def *pool
	for _, p := range pools {
		switch {
		case p.isDefault():
			def = p
		case p.deleting:
			if p.selector.Matches(set) {
				blocked = append(blocked, p.name)
			}
		case p.selector.Matches(set):
			cands = append(cands, p)
		}
	}
	if len(cands) > 0 {
		sort.Slice(cands, func(i, j int) bool {
			a, b := cands[i], cands[j]
			if a.priority != b.priority {
				return a.priority > b.priority
			}
			if a.alloc.Free() != b.alloc.Free() {
				return a.alloc.Free() > b.alloc.Free()
			}
			return a.name < b.name
		})
		return cands, nil
	}
	for name, sel := range unusable {
		if sel.Matches(set) {
			blocked = append(blocked, name)
		}
	}
	sort.Strings(blocked)
	if len(blocked) > 0 || def == nil {
		return nil, blocked
	}
	return []*pool{def}, nil
}

// The blocks methods below manage the pools themselves (adding,
// removing, policy); those above in blocks.go move blocks between them.

// pool returns a copy of the named pool's policy fields (alloc is nil in
// the copy); ok is false when there is none.
func (b *blocks) pool(name string) (pool, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	pl, ok := b.pools[name]
	if !ok {
		return pool{}, false
	}
	cp := *pl
	cp.alloc = nil
	return cp, true
}

// poolList returns copies of every pool's policy fields (alloc nil), by name.
func (b *blocks) poolList() []pool {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]pool, 0, len(b.pools))
	for _, pl := range b.pools {
		cp := *pl
		cp.alloc = nil
		out = append(out, cp)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

// addPool adds a pool whose blocks in used are marked used (the podCIDRs
// and aliases already in its range). It refuses, naming it, a pool that
// overlaps one already there (the older range keeps allocating).
func (b *blocks) addPool(pl *pool, used []netip.Prefix) (overlaps string, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.pools[pl.name]; ok {
		return "", fmt.Errorf("range %s already in use", pl.name)
	}
	for _, other := range b.pools {
		if other.cidr.Overlaps(pl.cidr) {
			return other.name, nil
		}
	}
	for _, p := range used {
		if _, err := pl.alloc.Occupy(p); err != nil {
			return "", fmt.Errorf("range %s: mark %v used: %w", pl.name, p, err)
		}
	}
	for p := range b.cooling {
		if pl.contains(p) {
			if _, err := pl.alloc.Occupy(p); err != nil {
				return "", err
			}
		}
	}
	b.pools[pl.name] = pl
	b.changed[pl.name] = true
	return "", nil
}

// overlapping returns the name of a pool other than name whose range
// overlaps cidr ("" when none).
func (b *blocks) overlapping(name string, cidr netip.Prefix) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, other := range b.pools {
		if other.name != name && other.cidr.Overlaps(cidr) {
			return other.name
		}
	}
	return ""
}

// setUnusable records that a PodRange hands out no block (sel nil: it
// selects nothing, as when its selector cannot be parsed). It reports
// whether that changed which nodes it holds back.
func (b *blocks) setUnusable(name string, sel labels.Selector) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if sel == nil {
		sel = labels.Nothing()
	}
	prev, ok := b.unusable[name]
	b.unusable[name] = sel
	return !ok || prev.String() != sel.String() || prev.Empty() != sel.Empty()
}

// setPending records a PodRange that is not a pool (yet) as unusable,
// with the selector it has (nil: it selects nothing); a PodRange that is
// a pool is left alone.
func (b *blocks) setPending(name string, sel labels.Selector) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.pools[name]; ok {
		return
	}
	if sel == nil {
		sel = labels.Nothing()
	}
	b.unusable[name] = sel
}

// clearUnusable forgets a PodRange recorded by setUnusable.
func (b *blocks) clearUnusable(name string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.unusable, name)
}

// setPolicy updates a pool's priority, selector and deleting mark.
func (b *blocks) setPolicy(name string, update func(*pool)) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if pl, ok := b.pools[name]; ok {
		update(pl)
	}
}

// holders returns the nodes holding a block of the named pool.
func (b *blocks) holders(name string) []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.holdersLocked(name)
}

func (b *blocks) holdersLocked(name string) []string {
	pl, ok := b.pools[name]
	if !ok {
		return nil
	}
	var out []string
	for n, a := range b.owned {
		if pl.contains(a.cidr) && b.owner[a.cidr] == n {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out
}

// removePool removes a pool no node holds a block of. Its cooling blocks
// cool on (they are keyed by block, not pool): a range re-created over the
// same addresses before they are cool does not hand out at once the block
// of a node deleted moments ago (addPool marks them used). It reports the
// holders instead when there are some (then nothing changes).
func (b *blocks) removePool(name string) []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.pools[name]; !ok {
		return nil
	}
	if h := b.holdersLocked(name); len(h) > 0 {
		return h
	}
	delete(b.pools, name)
	return nil
}
