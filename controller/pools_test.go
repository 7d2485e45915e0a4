package controller

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/labels"

	"github.com/aliasip/aliasip/cloud"
	"github.com/aliasip/aliasip/controller/allocator"
)

// The choice of range for a node: PodRanges that select it, highest
// priority first, then the most free blocks; the default range only when
// no PodRange selects it; none when only ranges that hand out nothing do.
func TestCandidates(t *testing.T) {
	mk := func(name, cidr string, prio int32, sel string, used int, deleting bool) *pool {
		p := netip.MustParsePrefix(cidr)
		a, err := allocator.New(p, 28)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < used; i++ {
			if _, err := a.Allocate(); err != nil {
				t.Fatal(err)
			}
		}
		pl := &pool{name: name, cidr: p, maskSize: 28, priority: prio, alloc: a, deleting: deleting}
		if sel != "-" {
			s, err := labels.Parse(sel)
			if err != nil {
				t.Fatal(err)
			}
			pl.selector = s
		}
		return pl
	}
	pools := map[string]*pool{}
	for _, p := range []*pool{
		mk("default", "10.0.0.0/16", 0, "-", 0, false),
		mk("hi", "10.1.0.0/26", 10, "pool=a", 3, false),       // 4 blocks, 1 free
		mk("big", "10.2.0.0/24", 0, "pool=a", 0, false),       // 16 free
		mk("small", "10.3.0.0/26", 0, "pool=a", 0, false),     // 4 free
		mk("tied", "10.4.0.0/24", 0, "pool=b", 0, false),      // 16 free
		mk("tied2", "10.5.0.0/24", 0, "pool=b", 0, false),     // 16 free
		mk("going", "10.6.0.0/24", 5, "pool=c", 0, true),      // being deleted
		mk("everyone", "10.7.0.0/24", -1, "zone=z", 0, false), // another label
	} {
		pools[p.name] = p
	}
	unusable := map[string]labels.Selector{"overlapping": labels.SelectorFromSet(labels.Set{"pool": "d"})}
	for _, c := range []struct {
		labels      map[string]string
		want, block string
	}{
		{map[string]string{"pool": "a"}, "hi big small", ""},
		{map[string]string{"pool": "b"}, "tied tied2", ""},
		{map[string]string{"pool": "a", "zone": "z"}, "hi big small everyone", ""},
		{map[string]string{}, "default", ""},
		{map[string]string{"pool": "c"}, "", "going"},
		{map[string]string{"pool": "d"}, "", "overlapping"},
		{map[string]string{"pool": "d", "zone": "z"}, "everyone", ""},
	} {
		got, blocked := candidates(pools, unusable, c.labels)
		var names []string
		for _, p := range got {
			names = append(names, p.name)
		}
		if strings.Join(names, " ") != c.want || strings.Join(blocked, " ") != c.block {
			t.Errorf("labels %v: candidates %v blocked %v, want %q blocked %q", c.labels, names, blocked, c.want, c.block)
		}
	}
}

// The Exhausted condition's levels: 80 % used is nearly exhausted, no
// free block is exhausted.
func TestExhaustion(t *testing.T) {
	for _, c := range []struct {
		s      PoolStats
		level  int
		reason string
	}{
		{PoolStats{Total: 8, Used: 6, Free: 2}, 0, "BlocksAvailable"},
		{PoolStats{Total: 8, Used: 7, Free: 1}, 1, "NearlyExhausted"},
		{PoolStats{Total: 5, Used: 4, Free: 1}, 1, "NearlyExhausted"},
		{PoolStats{Total: 8, Used: 8, Free: 0, Cooling: 1}, 2, "Exhausted"},
	} {
		level, cond := exhaustion(c.s)
		if level != c.level || cond.Reason != c.reason || (level == 2) != (cond.Status == "True") {
			t.Errorf("%+v: level %d %s/%s, want %d %s", c.s, level, cond.Status, cond.Reason, c.level, c.reason)
		}
	}
}

// The pool bookkeeping: a pool overlapping another is refused, blocks in
// use are marked when a pool is added, reservations follow the
// candidates, a pool held by a node is not removed, and the counts say
// who holds what.
func TestBlocksPools(t *testing.T) {
	newPool := func(name, cidr, sel string) *pool {
		p := netip.MustParsePrefix(cidr)
		a, err := allocator.New(p, 26)
		if err != nil {
			t.Fatal(err)
		}
		pl := &pool{name: name, cidr: p, cloudName: "podrange-" + name, maskSize: 26, alloc: a}
		if sel != "" {
			pl.selector = labels.SelectorFromSet(labels.Set{"pool": sel})
		}
		return pl
	}
	rebuilt := newBlocks()
	rebuilt.restorePool(newPool("default", "10.0.0.0/24", ""))
	b := newBlocks()
	b.reset(rebuilt, map[string]labels.Selector{})
	if other, err := b.addPool(newPool("inside", "10.0.0.128/25", "x"), nil); err != nil || other != "default" {
		t.Fatalf("overlapping pool: %q, %v; want refused naming default", other, err)
	}
	used := netip.MustParsePrefix("10.1.0.0/26")
	if other, err := b.addPool(newPool("a", "10.1.0.0/25", "a"), []netip.Prefix{used}); err != nil || other != "" {
		t.Fatalf("addPool a: %q, %v", other, err)
	}
	cidr, rng, err := b.reserve("n1", cloud.InstanceRef{Name: "n1"}, map[string]string{"pool": "a"})
	if err != nil || rng != "a" || cidr.String() != "10.1.0.64/26" {
		t.Fatalf("reserve n1: %v from %q, %v; want the free 10.1.0.64/26 of a", cidr, rng, err)
	}
	if _, _, err := b.reserve("n2", cloud.InstanceRef{Name: "n2"}, map[string]string{"pool": "a"}); !errors.Is(err, allocator.ErrRangeExhausted) || !b.isWaiting("n2") {
		t.Fatalf("reserve n2 from a full pool: %v, waiting %v", err, b.isWaiting("n2"))
	}
	if _, rng, err := b.reserve("n3", cloud.InstanceRef{Name: "n3"}, nil); err != nil || rng != "default" {
		t.Fatalf("reserve n3 (no PodRange selects it): %q, %v", rng, err)
	}
	st := b.stats()
	if got := st["a"]; got != (PoolStats{Total: 2, Used: 2, Free: 0, Nodes: 1}) {
		t.Errorf("stats a = %+v", got)
	}
	if got := st["default"]; got != (PoolStats{Total: 4, Used: 1, Free: 3, Nodes: 1}) {
		t.Errorf("stats default = %+v", got)
	}
	if h := b.removePool("a"); len(h) != 1 || h[0] != "n1" {
		t.Fatalf("removePool a while n1 holds a block: %v", h)
	}
	if a, ok := b.releasing("n1"); !ok {
		t.Fatal("n1 holds nothing")
	} else {
		b.released("n1", a, time.Now().Add(time.Hour))
	}
	if h := b.removePool("a"); len(h) != 0 {
		t.Fatalf("removePool a with no holder: %v", h)
	}
	if _, ok := b.pool("a"); ok || b.inUse(cidr) {
		t.Errorf("pool a still there, or its cooling block still counted")
	}
	// n1's block cools on: a range re-created over a's addresses does
	// not hand it out before its cooldown ends.
	if _, cooling := b.coolingUntil(cidr); !cooling {
		t.Fatalf("the cooling block %v of a removed pool was forgotten", cidr)
	}
	if other, err := b.addPool(newPool("a-again", "10.1.0.0/25", "a"), nil); err != nil || other != "" {
		t.Fatalf("addPool a-again: %q, %v", other, err)
	}
	if got, _, err := b.reserve("n4", cloud.InstanceRef{Name: "n4"}, map[string]string{"pool": "a"}); err != nil || got == cidr {
		t.Errorf("reserve n4 from the re-created range: %v, %v; want a block other than the cooling %v", got, err, cidr)
	}
	if _, _, _, _, err := b.expire(time.Now().Add(2*time.Hour), time.Now().Add(3*time.Hour)); err != nil || b.inUse(cidr) {
		t.Errorf("the block did not go back to the re-created pool when cool: in use %v, %v", b.inUse(cidr), err)
	}
}
