package controller

import (
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
