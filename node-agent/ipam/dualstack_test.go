package ipam

// Dual-stack: one IPv4 and one IPv6 address per attachment, both or
// neither, in one journal record, released and cooled down together.

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func prefix(s string) netip.Prefix {
	if s == "" {
		return netip.Prefix{}
	}
	return netip.MustParsePrefix(s)
}

func openDual(t *testing.T, path, v4, v6 string, cooldown time.Duration) *Store {
	t.Helper()
	s, err := OpenDualStack(path, prefix(v4), prefix(v6), cooldown)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// families returns the IPv4 and IPv6 blocks' counts of a dual-stack store.
func families(t *testing.T, s *Store) (v4, v6 FamilyStats) {
	t.Helper()
	st := s.StatsByFamily()
	if len(st) != 2 || !st[0].Block.Addr().Is4() || !st[1].Block.Addr().Is6() {
		t.Fatalf("StatsByFamily = %+v, want the IPv4 block then the IPv6 block", st)
	}
	return st[0], st[1]
}

func journalLines(t *testing.T, path string) int {
	t.Helper()
	j, err := os.ReadFile(path + JournalSuffix)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(j), "\n")
}

// crash leaves the store as a killed agent does: files as they are, no
// compaction, lock released.
func crash(s *Store) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.release()
}

// Every address of the IPv6 block but its Subnet-Router anycast address
// is handed out — its first and last addresses included: IPv6 has no
// broadcast address, and the gateway is link-local — each beside an IPv4
// one, and each allocation is one journal record holding both.
func TestDualStackAllocatesBothNeverAnycast(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.json")
	s := openDual(t, path, "10.1.2.0/23", "fd00:1::/120", 0)
	if got := s.PodCIDRs(); len(got) != 2 || got[0] != prefix("10.1.2.0/23") || got[1] != prefix("fd00:1::/120") {
		t.Fatalf("PodCIDRs = %v", got)
	}
	seen := map[netip.Addr]bool{}
	for i := 0; i < 255; i++ {
		a, err := s.Allocate(req(fmt.Sprint(i)))
		if err != nil {
			t.Fatalf("allocation %d: %v", i, err)
		}
		if !prefix("10.1.2.0/23").Contains(a.IP) || !prefix("fd00:1::/120").Contains(a.IPv6) {
			t.Fatalf("allocation %d: %v and %v, want one of each block", i, a.IP, a.IPv6)
		}
		if seen[a.IP] || seen[a.IPv6] {
			t.Fatalf("%v or %v handed out twice", a.IP, a.IPv6)
		}
		seen[a.IP], seen[a.IPv6] = true, true
	}
	if seen[netip.MustParseAddr("fd00:1::")] {
		t.Error("the Subnet-Router anycast address fd00:1:: was handed out")
	}
	for _, want := range []string{"fd00:1::1", "fd00:1::ff"} {
		if !seen[netip.MustParseAddr(want)] {
			t.Errorf("%s was never handed out", want)
		}
	}
	if n := journalLines(t, path); n != 1+255 {
		t.Errorf("journal holds %d lines, want a header and one record per allocation (255)", n)
	}
	before := journalLines(t, path)
	_, err := s.Allocate(req("one-too-many"))
	if !errors.Is(err, ErrExhausted) || !strings.Contains(err.Error(), "IPv6") {
		t.Fatalf("full IPv6 block: %v, want ErrExhausted naming the IPv6 block", err)
	}
	if journalLines(t, path) != before {
		t.Error("a refused allocation wrote a journal record")
	}
	v4, v6 := families(t, s)
	if v4.Used != 255 || v4.Free != 509-255 || v6.Used != 255 || v6.Free != 0 || v6.Cooling != 0 {
		t.Errorf("stats: IPv4 %+v, IPv6 %+v", v4, v6)
	}
	if used, free, cooling := s.Stats(); used != v4.Used || free != v4.Free || cooling != v4.Cooling {
		t.Errorf("Stats() = %d %d %d, want the IPv4 block's %+v", used, free, cooling, v4)
	}
}

// Exhausting either block refuses the allocation whole: the other
// block's address is not taken (nor its cursor moved), nothing is
// journaled, nothing is left in memory.
func TestDualStackBothOrNeither(t *testing.T) {
	for _, c := range []struct {
		name, v4, v6 string
		fits         int    // allocations that succeed
		family       string // named by the error
		// After one release (no cooldown), the next allocation gets the
		// address following the last one handed out of the block that
		// was not exhausted: the refused allocation did not take it.
		wantNext string
	}{
		{"IPv4 exhausted", "10.1.2.0/30", "fd00:1::/120", 1, "10.1.2.0/30", "fd00:1::2"},
		{"IPv6 exhausted", "10.1.2.0/24", "fd00:1::/126", 3, "IPv6 block fd00:1::/126", "10.1.2.5"},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "s.json")
			s := openDual(t, path, c.v4, c.v6, 0)
			var first Allocation
			for i := range c.fits {
				a, err := s.Allocate(req(fmt.Sprint(i)))
				if err != nil {
					t.Fatal(err)
				}
				if i == 0 {
					first = a
				}
			}
			before := journalLines(t, path)
			for range 3 {
				if _, err := s.Allocate(req("refused")); !errors.Is(err, ErrExhausted) || !strings.Contains(err.Error(), c.family) {
					t.Fatalf("%v, want ErrExhausted naming %s", err, c.family)
				}
			}
			if journalLines(t, path) != before {
				t.Error("a refused allocation wrote a journal record")
			}
			if _, ok := s.Get(req("refused").Key); ok {
				t.Error("a refused allocation is in memory")
			}
			v4, v6 := families(t, s)
			if v4.Used != c.fits || v6.Used != c.fits {
				t.Errorf("used: IPv4 %d, IPv6 %d, want %d each", v4.Used, v6.Used, c.fits)
			}
			if _, _, err := s.Release(first.Key); err != nil {
				t.Fatal(err)
			}
			a, err := s.Allocate(req("next"))
			if err != nil {
				t.Fatal(err)
			}
			if a.IP.String() != c.wantNext && a.IPv6.String() != c.wantNext {
				t.Errorf("next allocation %v %v, want %s: the refused one moved a cursor", a.IP, a.IPv6, c.wantNext)
			}
			s.Close()
			s2 := openDual(t, path, c.v4, c.v6, 0)
			if got := s2.List(); len(got) != c.fits {
				t.Errorf("reopened: %d allocations, want %d: %+v", len(got), c.fits, got)
			}
		})
	}
}

// A crash in the write of an allocation's record, at any byte — between
// its IPv4 and its IPv6 address included — leaves the whole allocation
// or none of it after replay, never one address of it.
func TestDualStackJournalReplay(t *testing.T) {
	const v4, v6 = "10.1.2.0/24", "fd00:1::/112"
	path := filepath.Join(t.TempDir(), "s.json")
	s := openDual(t, path, v4, v6, time.Hour)
	a, _ := s.Allocate(req("a"))
	b, _ := s.Allocate(req("b"))
	if _, ok, err := s.Release(b.Key); !ok || err != nil {
		t.Fatalf("release b: %v %v", ok, err)
	}
	snap, _ := os.ReadFile(path)
	before, _ := os.ReadFile(path + JournalSuffix)
	c, err := s.Allocate(req("c"))
	if err != nil {
		t.Fatal(err)
	}
	after, _ := os.ReadFile(path + JournalSuffix)
	crash(s)
	rec := after[len(before):]
	var r record
	if err := json.Unmarshal(rec, &r); err != nil || r.Add == nil || r.Add.IP != c.IP || r.Add.IPv6 != c.IPv6 {
		t.Fatalf("c's journal record %q (%v): want one record with both %v and %v", rec, err, c.IP, c.IPv6)
	}
	if i := strings.Index(string(rec), c.IPv6.String()); i < 0 || !strings.Contains(string(rec[:i]), c.IP.String()) {
		t.Fatalf("record %q: want the IPv4 address before the IPv6 one", rec)
	}

	dir := t.TempDir()
	for cut := 0; cut <= len(rec); cut++ {
		p := filepath.Join(dir, fmt.Sprint(cut), "s.json")
		os.MkdirAll(filepath.Dir(p), 0o700)
		os.WriteFile(p, snap, 0o600)
		os.WriteFile(p+JournalSuffix, append(append([]byte{}, before...), rec[:cut]...), 0o600)
		s2, err := OpenDualStack(p, prefix(v4), prefix(v6), time.Hour)
		if err != nil {
			t.Fatalf("journal cut after %d of %d bytes of c's record: %v", cut, len(rec), err)
		}
		got, ok := s2.Get(c.Key)
		// The record without its newline is whole: its write returned or
		// not, either way nobody holds another allocation for c's addresses.
		if whole := cut >= len(rec)-1; ok != whole {
			t.Errorf("cut at %d of %d (%q): c allocated %v, want %v", cut, len(rec), rec[:cut], ok, whole)
		}
		if ok && (got.IP != c.IP || got.IPv6 != c.IPv6) {
			t.Errorf("cut at %d: c replayed as %v %v, want %v %v", cut, got.IP, got.IPv6, c.IP, c.IPv6)
		}
		if got, ok := s2.Get(a.Key); !ok || got.IP != a.IP || got.IPv6 != a.IPv6 {
			t.Fatalf("cut at %d: a replayed as %+v %v", cut, got, ok)
		}
		if _, ok := s2.Get(b.Key); ok {
			t.Fatalf("cut at %d: the release of b was not replayed", cut)
		}
		st4, st6 := families(t, s2)
		if st4.Used != st6.Used || st4.Cooling != 1 || st6.Cooling != 1 {
			t.Fatalf("cut at %d: IPv4 %+v, IPv6 %+v: want as many used of each, and b's two addresses cooling", cut, st4, st6)
		}
		s2.Close()
	}

	// The state read aside holds both addresses.
	got, err := ReadAllocations(path)
	if err != nil || len(got) != 2 {
		t.Fatalf("ReadAllocations = %+v, %v", got, err)
	}
	for _, al := range got {
		if !al.IPv6.IsValid() {
			t.Errorf("ReadAllocations: %s has no IPv6 address", al.Key)
		}
	}
}

// Release and Retain free both addresses; both cool down, across a
// reopen too; the store refuses while either family's addresses cool.
func TestDualStackReleaseAndCooldown(t *testing.T) {
	t.Run("IPv4 cools", func(t *testing.T) {
		s := openDual(t, filepath.Join(t.TempDir(), "s.json"), "10.1.2.0/30", "fd00:1::/120", time.Hour)
		clock := time.Now()
		s.now = func() time.Time { return clock }
		a, _ := s.Allocate(req("a"))
		got, ok, err := s.Release(a.Key)
		if err != nil || !ok || got.IP != a.IP || got.IPv6 != a.IPv6 {
			t.Fatalf("Release = %+v %v %v, want a's allocation", got, ok, err)
		}
		if _, err := s.Allocate(req("b")); !errors.Is(err, ErrExhausted) {
			t.Fatalf("IPv4 cooling down: %v, want ErrExhausted", err)
		}
		v4, v6 := families(t, s)
		if v4.Cooling != 1 || v4.Free != 0 || v6.Cooling != 1 || v6.Used != 0 || v6.Free != 254 {
			t.Errorf("IPv4 %+v, IPv6 %+v", v4, v6)
		}
		clock = clock.Add(time.Hour)
		if b, err := s.Allocate(req("b")); err != nil || b.IP != a.IP {
			t.Fatalf("after the cooldown: %+v %v, want a's %v", b, err, a.IP)
		}
	})
	t.Run("IPv6 cools", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "s.json")
		s := openDual(t, path, "10.1.2.0/24", "fd00:1::/126", time.Hour)
		clock := time.Now()
		s.now = func() time.Time { return clock }
		var all []Allocation
		for _, id := range []string{"a", "b", "c"} {
			x, err := s.Allocate(req(id))
			if err != nil {
				t.Fatal(err)
			}
			all = append(all, x)
		}
		if _, _, err := s.Release(all[0].Key); err != nil {
			t.Fatal(err)
		}
		gone, err := s.Retain(func(x Allocation) bool { return x.Key != all[1].Key })
		if err != nil || len(gone) != 1 || gone[0].IPv6 != all[1].IPv6 {
			t.Fatalf("Retain = %+v %v, want b", gone, err)
		}
		if _, err := s.Allocate(req("d")); !errors.Is(err, ErrExhausted) {
			t.Fatalf("IPv6 cooling down: %v, want ErrExhausted", err)
		}
		v4, v6 := families(t, s)
		if v4.Used != 1 || v4.Cooling != 2 || v6.Used != 1 || v6.Cooling != 2 || v6.Free != 0 {
			t.Errorf("IPv4 %+v, IPv6 %+v", v4, v6)
		}
		s.Close()
		s2 := openDual(t, path, "10.1.2.0/24", "fd00:1::/126", time.Hour)
		s2.now = func() time.Time { return clock }
		if _, v6 := families(t, s2); v6.Cooling != 2 {
			t.Fatalf("IPv6 cooldown lost across reopen: %+v", v6)
		}
		if _, err := s2.Allocate(req("d")); !errors.Is(err, ErrExhausted) {
			t.Fatalf("reopened, IPv6 cooling down: %v, want ErrExhausted", err)
		}
		clock = clock.Add(time.Hour)
		d, err := s2.Allocate(req("d"))
		if err != nil || d.IPv6 != all[0].IPv6 {
			t.Fatalf("after the cooldown: %+v %v, want a's %v", d, err, all[0].IPv6)
		}
	})
}

// The state a single-stack store writes — the format of the release
// before dual-stack, written out literally — loads unchanged, journal
// included; a dual-stack store refuses it, and every other change of the
// recorded blocks, as a changed podCIDR is refused.
func TestStateOfSingleStackRelease(t *testing.T) {
	const snapshot = `{
 "generation": "0011223344556677",
 "seq": 2,
 "podCIDR": "10.1.2.0/24",
 "allocations": [
  {"containerID": "a", "ifName": "eth0", "namespace": "ns", "pod": "a", "hostVeth": "veth1", "ip": "10.1.2.2", "created": "2026-01-01T00:00:00Z"},
  {"containerID": "b", "ifName": "eth0", "namespace": "ns", "pod": "b", "hostVeth": "veth2", "ip": "10.1.2.3", "created": "2026-01-01T00:00:00Z"}
 ],
 "cooling": {"10.1.2.9": "2999-01-01T00:00:00Z"}
}`
	const journal = `{"generation":"0011223344556677"}
{"seq":3,"add":{"containerID":"c","ifName":"eth0","namespace":"ns","pod":"c","ip":"10.1.2.4","created":"2026-01-01T00:00:00Z"}}
{"seq":4,"del":{"containerID":"b","ifName":"eth0"},"coolUntil":"2999-01-01T00:00:00Z"}
`
	write := func(t *testing.T) string {
		path := filepath.Join(t.TempDir(), "ipam.json")
		os.WriteFile(path, []byte(snapshot), 0o600)
		os.WriteFile(path+JournalSuffix, []byte(journal), 0o600)
		return path
	}
	t.Run("single-stack loads it", func(t *testing.T) {
		path := write(t)
		s := open(t, path, "10.1.2.0/24", time.Hour)
		for id, ip := range map[string]string{"a": "10.1.2.2", "c": "10.1.2.4"} {
			if got, ok := s.Get(req(id).Key); !ok || got.IP.String() != ip || got.IPv6.IsValid() {
				t.Errorf("%s: %+v %v, want %s and no IPv6 address", id, got, ok, ip)
			}
		}
		if _, ok := s.Get(req("b").Key); ok {
			t.Error("the release of b was not replayed")
		}
		if used, _, cooling := s.Stats(); used != 2 || cooling != 2 {
			t.Errorf("used %d cooling %d, want 2 and 2", used, cooling)
		}
		if st := s.StatsByFamily(); len(st) != 1 || len(s.PodCIDRs()) != 1 {
			t.Errorf("single-stack: StatsByFamily %+v, PodCIDRs %v", st, s.PodCIDRs())
		}
		if _, err := s.Allocate(req("d")); err != nil {
			t.Fatal(err)
		}
		s.Close()
		// Written back as the release before dual-stack wrote it: no IPv6
		// field at all.
		data, _ := os.ReadFile(path)
		if strings.Contains(strings.ToLower(string(data)), "ipv6") {
			t.Errorf("a single-stack snapshot names IPv6:\n%s", data)
		}
	})
	t.Run("dual-stack refuses it", func(t *testing.T) {
		path := write(t)
		_, err := OpenDualStack(path, prefix("10.1.2.0/24"), prefix("fd00:1::/112"), 0)
		if !errors.Is(err, ErrPodCIDRChanged) {
			t.Fatalf("single-stack state opened dual-stack: %v, want ErrPodCIDRChanged", err)
		}
		// Refused before anything was written: the state is as it was.
		if data, _ := os.ReadFile(path); string(data) != snapshot {
			t.Error("a refused open rewrote the snapshot")
		}
		if data, _ := os.ReadFile(path + JournalSuffix); string(data) != journal {
			t.Error("a refused open rewrote the journal")
		}
	})
	t.Run("recorded blocks must match", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "ipam.json")
		s := openDual(t, path, "10.1.2.0/24", "fd00:1::/112", 0)
		s.Allocate(req("a"))
		s.Close()
		for _, c := range []struct{ v4, v6 string }{
			{"10.1.2.0/24", ""},             // IPv6 block dropped
			{"10.1.2.0/24", "fd00:2::/112"}, // another IPv6 block
			{"10.1.2.0/24", "fd00:1::/120"}, // another size
			{"10.9.9.0/24", "fd00:1::/112"}, // another IPv4 block
		} {
			if _, err := OpenDualStack(path, prefix(c.v4), prefix(c.v6), 0); !errors.Is(err, ErrPodCIDRChanged) {
				t.Errorf("state of [10.1.2.0/24 fd00:1::/112] opened with [%s %s]: %v, want ErrPodCIDRChanged", c.v4, c.v6, err)
			}
		}
		if _, err := Open(path, prefix("10.1.2.0/24"), 0); !errors.Is(err, ErrPodCIDRChanged) {
			t.Errorf("dual-stack state opened by Open: %v, want ErrPodCIDRChanged", err)
		}
		s2 := openDual(t, path, "10.1.2.0/24", "fd00:1::/112", 0)
		if got, ok := s2.Get(req("a").Key); !ok || !got.IPv6.IsValid() {
			t.Errorf("the same blocks: a is %+v %v", got, ok)
		}
	})
}

// Blocks of the wrong family or too small are refused, by the rule the
// controller applies (internal/blocksize); a state holding an address no
// dual-stack or single-stack store writes is corrupt.
func TestDualStackBadInput(t *testing.T) {
	for _, c := range []struct {
		name   string
		v4, v6 netip.Prefix
		want   string // in the error; "" for success
	}{
		{"dual-stack", prefix("10.1.2.0/24"), prefix("fd00:1::/112"), ""},
		{"smallest IPv6 block", prefix("10.1.2.0/24"), prefix("fd00:1::/126"), ""},
		{"a /64", prefix("10.1.2.0/24"), prefix("fd00:1::/64"), ""},
		{"host bits masked", prefix("10.1.2.0/24"), prefix("fd00:1::5/112"), ""},
		{"no IPv6 block is single-stack", prefix("10.1.2.0/24"), netip.Prefix{}, ""},
		{"IPv6 block as the IPv4 one", prefix("fd00:1::/112"), prefix("fd00:1::/112"), "want an IPv4 range"},
		{"IPv4 block as the IPv6 one", prefix("10.1.2.0/24"), prefix("10.9.0.0/24"), "want an IPv6 range"},
		{"IPv4-mapped IPv6 block", prefix("10.1.2.0/24"), prefix("::ffff:10.9.0.0/120"), "want an IPv6 range"},
		{"/127", prefix("10.1.2.0/24"), prefix("fd00:1::/127"), "/126 or larger"},
		{"/128", prefix("10.1.2.0/24"), prefix("fd00:1::1/128"), "/126 or larger"},
		{"invalid IPv6 block", prefix("10.1.2.0/24"), netip.PrefixFrom(netip.MustParseAddr("fd00:1::"), 129), "invalid"},
		{"/31 with an IPv6 block", prefix("10.1.2.0/31"), prefix("fd00:1::/112"), "/30 or larger"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s, err := OpenDualStack(filepath.Join(t.TempDir(), "s.json"), c.v4, c.v6, 0)
			if c.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				defer s.Close()
				a, err := s.Allocate(req("a"))
				if err != nil {
					t.Fatal(err)
				}
				if c.v6.IsValid() && !c.v6.Masked().Contains(a.IPv6) || !c.v6.IsValid() && a.IPv6.IsValid() {
					t.Errorf("allocated IPv6 %v with block %v", a.IPv6, c.v6)
				}
				if st := s.StatsByFamily(); c.v6.Bits() == 64 && (st[1].Used != 1 || st[1].Free != math.MaxInt-1) {
					t.Errorf("a /64: %+v, want the count saturated", st[1])
				}
				return
			}
			if err == nil {
				s.Close()
				t.Fatalf("opened with [%v %v]", c.v4, c.v6)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("%v, want %q", err, c.want)
			}
		})
	}

	const header = `{"generation":"g"}` + "\n"
	for _, c := range []struct{ name, v6, snapshot, record string }{
		{"IPv6 address outside the block", "fd00:1::/112",
			`{"generation":"g","podCIDR":"10.1.2.0/24","ipv6PodCIDR":"fd00:1::/112","allocations":[]}`,
			`{"seq":1,"add":{"containerID":"a","ifName":"eth0","ip":"10.1.2.2","ipv6":"fd00:2::2"}}`},
		{"IPv6 address held twice", "fd00:1::/112",
			`{"generation":"g","podCIDR":"10.1.2.0/24","ipv6PodCIDR":"fd00:1::/112","allocations":[{"containerID":"a","ifName":"eth0","ip":"10.1.2.2","ipv6":"fd00:1::2"}]}`,
			`{"seq":1,"add":{"containerID":"b","ifName":"eth0","ip":"10.1.2.3","ipv6":"fd00:1::2"}}`},
		{"IPv6 address in a single-stack state", "",
			`{"generation":"g","podCIDR":"10.1.2.0/24","allocations":[]}`,
			`{"seq":1,"add":{"containerID":"a","ifName":"eth0","ip":"10.1.2.2","ipv6":"fd00:1::2"}}`},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "s.json")
			os.WriteFile(path, []byte(c.snapshot), 0o600)
			os.WriteFile(path+JournalSuffix, []byte(header+c.record+"\n"+`{"seq":2,"del":{"containerID":"x","ifName":"eth0"}}`+"\n"), 0o600)
			if s, err := OpenDualStack(path, prefix("10.1.2.0/24"), prefix(c.v6), 0); !errors.Is(err, ErrCorrupt) {
				if s != nil {
					s.Close()
				}
				t.Fatalf("%v, want ErrCorrupt", err)
			}
		})
	}
}

// Recover keeps what the host shows: an allocation for its IPv4 address,
// with its IPv6 address if that is a valid one of the block and held by
// no other. The store never hands out a kept address, and reloads what
// Recover saved.
func TestDualStackRecover(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.json")
	os.WriteFile(path, nil, 0o600) // power loss: 0 bytes
	a6 := netip.MustParseAddr("fd00:1::2")
	live := []Allocation{
		{Key: Key{ContainerID: "both", IfName: "eth0"}, IP: netip.MustParseAddr("10.1.2.2"), IPv6: a6},
		{Key: Key{ContainerID: "v4only", IfName: "eth0"}, IP: netip.MustParseAddr("10.1.2.3")},
		{Key: Key{ContainerID: "outside", IfName: "eth0"}, IP: netip.MustParseAddr("10.1.2.4"), IPv6: netip.MustParseAddr("fd00:2::4")},
		{Key: Key{ContainerID: "anycast", IfName: "eth0"}, IP: netip.MustParseAddr("10.1.2.5"), IPv6: netip.MustParseAddr("fd00:1::")},
		{Key: Key{ContainerID: "dup", IfName: "eth0"}, IP: netip.MustParseAddr("10.1.2.6"), IPv6: a6},
		{Key: Key{ContainerID: "badv4", IfName: "eth0"}, IP: netip.MustParseAddr("10.9.9.9"), IPv6: netip.MustParseAddr("fd00:1::9")},
	}
	s, err := RecoverDualStack(path, prefix("10.1.2.0/24"), prefix("fd00:1::/120"), 0, live)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"both": "fd00:1::2", "v4only": "invalid IP", "outside": "invalid IP", "anycast": "invalid IP", "dup": "invalid IP"}
	check := func(s *Store) {
		t.Helper()
		if got := len(s.List()); got != len(want) {
			t.Errorf("%d allocations, want %d: %+v", got, len(want), s.List())
		}
		for id, ip6 := range want {
			if got, ok := s.Get(req(id).Key); !ok || got.IPv6.String() != ip6 {
				t.Errorf("%s: %+v %v, want IPv6 %s", id, got, ok, ip6)
			}
		}
	}
	check(s)
	kept := map[netip.Addr]bool{a6: true}
	for _, l := range live[:len(live)-1] {
		kept[l.IP] = true
	}
	for i := 0; ; i++ {
		a, err := s.Allocate(req(fmt.Sprint("n", i)))
		if errors.Is(err, ErrExhausted) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if kept[a.IP] || kept[a.IPv6] {
			t.Fatalf("handed out %v %v: a live pod holds one of them", a.IP, a.IPv6)
		}
		want[fmt.Sprint("n", i)] = a.IPv6.String()
	}
	s.Close()
	check(openDual(t, path, "10.1.2.0/24", "fd00:1::/120", 0))
}

// Concurrent allocations and releases: no address of either family
// handed out twice, every allocation holding both, the counts agreeing.
func TestDualStackConcurrency(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.json")
	s := openDual(t, path, "10.1.0.0/22", "fd00:1::/112", time.Hour)
	var wg sync.WaitGroup
	for i := range 100 {
		wg.Go(func() {
			if _, err := s.Allocate(req(fmt.Sprint(i))); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	for i := range 100 {
		wg.Go(func() {
			if i%2 == 0 {
				if _, ok, err := s.Release(req(fmt.Sprint(i)).Key); !ok || err != nil {
					t.Errorf("release %d: %v %v", i, ok, err)
				}
				return
			}
			if _, err := s.Allocate(req(fmt.Sprint("new", i))); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Go(func() {
		if _, err := s.Retain(func(a Allocation) bool { return a.ContainerID != "1" }); err != nil {
			t.Error(err)
		}
	})
	wg.Wait()
	check := func(s *Store) []Allocation {
		t.Helper()
		seen := map[netip.Addr]bool{}
		list := s.List()
		for _, a := range list {
			if !a.IPv6.IsValid() || seen[a.IP] || seen[a.IPv6] {
				t.Fatalf("%+v: half an allocation, or an address held twice", a)
			}
			seen[a.IP], seen[a.IPv6] = true, true
		}
		v4, v6 := families(t, s)
		if len(list) != 99 || v4.Used != 99 || v6.Used != 99 || v4.Cooling != 51 || v6.Cooling != 51 {
			t.Fatalf("%d allocations, IPv4 %+v, IPv6 %+v; want 99 used, 51 cooling in each", len(list), v4, v6)
		}
		return list
	}
	before := check(s)
	crash(s)
	after := check(openDual(t, path, "10.1.0.0/22", "fd00:1::/112", time.Hour))
	for i := range before {
		if before[i].Key != after[i].Key || before[i].IP != after[i].IP || before[i].IPv6 != after[i].IPv6 {
			t.Fatalf("replayed %+v, was %+v", after[i], before[i])
		}
	}
}

// FuzzOpenDualStack: any state either opens into a consistent dual-stack
// store or is refused; never a panic, never an address held twice.
func FuzzOpenDualStack(f *testing.F) {
	f.Add([]byte(`{"podCIDR":"10.1.2.0/24","ipv6PodCIDR":"fd00:1::/126","allocations":[{"containerID":"a","ifName":"eth0","ip":"10.1.2.2","ipv6":"fd00:1::1"}]}`))
	f.Add([]byte(`{"podCIDR":"10.1.2.0/24","ipv6PodCIDR":"fd00:1::/126","allocations":[{"containerID":"a","ifName":"eth0","ip":"10.1.2.2","ipv6":"fd00:1::1"},{"containerID":"b","ifName":"eth0","ip":"10.1.2.3","ipv6":"fd00:1::1"}]}`))
	f.Add([]byte(`{"podCIDR":"10.1.2.0/24","ipv6PodCIDR":"fd00:1::/126","cooling":{"fd00:1::1":"2999-01-01T00:00:00Z","fd00:1::2":"2999-01-01T00:00:00Z"}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(t.TempDir(), "s.json")
		os.WriteFile(path, data, 0o600)
		s, err := OpenDualStack(path, prefix("10.1.2.0/24"), prefix("fd00:1::/126"), time.Minute)
		if err != nil {
			return
		}
		defer s.Close()
		seen := map[netip.Addr]bool{}
		for _, a := range s.List() {
			if seen[a.IP] || seen[a.IPv6] || !prefix("10.1.2.0/24").Contains(a.IP) || a.IPv6.IsValid() && !prefix("fd00:1::/126").Contains(a.IPv6) {
				t.Fatalf("inconsistent store from %q: %+v", data, a)
			}
			seen[a.IP] = true
			if a.IPv6.IsValid() {
				seen[a.IPv6] = true
			}
		}
		if _, had := s.Get(req("fuzz").Key); had {
			return
		}
		if a, err := s.Allocate(req("fuzz")); err == nil && (seen[a.IP] || seen[a.IPv6] || a.IPv6 == netip.MustParseAddr("fd00:1::")) {
			t.Fatalf("allocated %v %v, already held or reserved", a.IP, a.IPv6)
		}
	})
}
