package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// A node of a growable range: addresses come from the podCIDR first (13
// of a /28), then from each extra block in order (all 16 of a /28: their
// pods' gateway is link-local), never from a block being drained; the
// same address is never handed out twice.
func TestExtraBlocksAllocateAfterThePodCIDR(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "s.json"), "10.241.0.0/28", 0)
	b1, b2 := netip.MustParsePrefix("10.241.0.32/28"), netip.MustParsePrefix("10.241.0.48/28")
	if err := s.SetExtraBlocks([]Block{{CIDR: b1}, {CIDR: b2, Draining: true}}); err != nil {
		t.Fatal(err)
	}
	seen := map[netip.Addr]bool{}
	for i := 0; i < 13+16; i++ {
		a, err := s.Allocate(req(fmt.Sprint(i)))
		if err != nil {
			t.Fatalf("allocation %d: %v", i, err)
		}
		if seen[a.IP] {
			t.Fatalf("%v handed out twice", a.IP)
		}
		seen[a.IP] = true
		switch {
		case i < 13 && !s.PodCIDR().Contains(a.IP):
			t.Fatalf("allocation %d got %v before the podCIDR was full", i, a.IP)
		case i >= 13 && !b1.Contains(a.IP):
			t.Fatalf("allocation %d got %v, want one of %v", i, a.IP, b1)
		}
	}
	if _, err := s.Allocate(req("full")); !errors.Is(err, ErrExhausted) {
		t.Fatalf("with only a draining block left: %v, want ErrExhausted", err)
	}
	u := s.Usage()
	if len(u) != 3 || u[0].Capacity != 13 || u[0].Allocated != 13 || u[1].Capacity != 16 || u[1].Allocated != 16 || u[2].Allocated != 0 || !u[2].Draining {
		t.Errorf("usage %+v", u)
	}
}

// A block leaves the store only empty: not while an address of it is held
// or cooling down; Drained says when a draining block may be given back.
// The blocks and the allocations in them survive a crash (the journal) and
// a reopen (the snapshot).
func TestExtraBlocksDrainAndPersist(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.json")
	now := time.Unix(1000, 0)
	s := open(t, path, "10.241.0.0/30", time.Minute) // one pod address
	s.now = func() time.Time { return now }
	b1 := netip.MustParsePrefix("10.241.0.32/28")
	if err := s.SetExtraBlocks([]Block{{CIDR: b1}}); err != nil {
		t.Fatal(err)
	}
	s.Allocate(req("first"))
	a, err := s.Allocate(req("in-extra"))
	if err != nil || !b1.Contains(a.IP) {
		t.Fatalf("%v %v", a, err)
	}
	// Killed: no Close; the journal holds the blocks and the allocation.
	s.journal.Close()
	s.lock.Close()
	s.lock = nil
	s = open(t, path, "10.241.0.0/30", time.Minute)
	s.now = func() time.Time { return now }
	if got, ok := s.Get(a.Key); !ok || got.IP != a.IP {
		t.Fatalf("after a crash: %v %v", got, ok)
	}
	if bs := s.ExtraBlocks(); len(bs) != 1 || bs[0].CIDR != b1 {
		t.Fatalf("extra blocks after a crash: %v", bs)
	}
	if err := s.SetExtraBlocks([]Block{{CIDR: b1, Draining: true}}); err != nil {
		t.Fatal(err)
	}
	if s.Drained(b1) {
		t.Error("Drained while a pod holds an address of the block")
	}
	if err := s.SetExtraBlocks(nil); !errors.Is(err, ErrBlockInUse) {
		t.Fatalf("dropping a block with a pod: %v, want ErrBlockInUse", err)
	}
	if _, err := s.Allocate(req("new")); !errors.Is(err, ErrExhausted) {
		t.Fatalf("allocated from a draining block: %v", err)
	}
	s.Release(a.Key)
	if s.Drained(b1) {
		t.Error("Drained while the released address cools down")
	}
	if err := s.SetExtraBlocks(nil); !errors.Is(err, ErrBlockInUse) {
		t.Fatalf("dropping a block with an address cooling down: %v, want ErrBlockInUse", err)
	}
	now = now.Add(time.Minute)
	if !s.Drained(b1) {
		t.Fatal("not Drained once empty and cooled")
	}
	s.Close()
	s = open(t, path, "10.241.0.0/30", time.Minute)
	if bs := s.ExtraBlocks(); len(bs) != 1 || !bs[0].Draining {
		t.Fatalf("extra blocks after a reopen: %v", bs)
	}
	if err := s.SetExtraBlocks(nil); err != nil {
		t.Fatalf("dropping a drained block: %v", err)
	}
	s.Close()
	s = open(t, path, "10.241.0.0/30", time.Minute)
	if bs := s.ExtraBlocks(); len(bs) != 0 {
		t.Fatalf("extra blocks after the drop and a reopen: %v", bs)
	}
}

// Extra blocks must be IPv4 networks apart from the podCIDR and each other.
func TestExtraBlocksRefused(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "s.json"), "10.241.0.0/28", 0)
	for _, bs := range [][]Block{
		{{CIDR: netip.MustParsePrefix("10.241.0.0/28")}},
		{{CIDR: netip.MustParsePrefix("10.241.0.0/24")}},
		{{CIDR: netip.MustParsePrefix("10.241.0.33/28")}},
		{{CIDR: netip.MustParsePrefix("fd00::/112")}},
		{{CIDR: netip.MustParsePrefix("10.241.0.32/28")}, {CIDR: netip.MustParsePrefix("10.241.0.32/27")}},
	} {
		if err := s.SetExtraBlocks(bs); err == nil {
			t.Errorf("SetExtraBlocks(%v) accepted", bs)
		}
	}
	if bs := s.ExtraBlocks(); len(bs) != 0 {
		t.Errorf("a refused set changed the blocks: %v", bs)
	}
}

// A drain racing ADDs: whatever order the store's lock gives them, an
// address handed out of the block before it was marked draining keeps it
// from being reported drained, and none is handed out of it after; no
// address twice.
func TestExtraBlocksDrainRacesAllocate(t *testing.T) {
	for round := 0; round < 20; round++ {
		s := open(t, filepath.Join(t.TempDir(), "s.json"), "10.241.0.0/30", 0) // one podCIDR address
		b1 := netip.MustParsePrefix("10.241.0.32/28")
		if err := s.SetExtraBlocks([]Block{{CIDR: b1}}); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		got := make(chan Allocation, 32)
		for i := 0; i < 8; i++ {
			wg.Go(func() {
				if a, err := s.Allocate(req(fmt.Sprintf("r%d-%d", round, i))); err == nil {
					got <- a
				}
			})
		}
		wg.Go(func() {
			if err := s.SetExtraBlocks([]Block{{CIDR: b1, Draining: true}}); err != nil {
				t.Error(err)
			}
		})
		wg.Wait()
		close(got)
		seen := map[netip.Addr]bool{}
		inBlock := 0
		for a := range got {
			if seen[a.IP] {
				t.Fatalf("%v handed out twice", a.IP)
			}
			seen[a.IP] = true
			if b1.Contains(a.IP) {
				inBlock++
			}
		}
		if drained := s.Drained(b1); drained != (inBlock == 0) {
			t.Fatalf("round %d: %d addresses of the draining block held, Drained = %v", round, inBlock, drained)
		}
		if a, err := s.Allocate(req("after")); err == nil && b1.Contains(a.IP) {
			t.Fatalf("handed out %v of a draining block", a.IP)
		}
	}
}
