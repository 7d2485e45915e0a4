package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

func open(t *testing.T, path, cidr string, cooldown time.Duration) *Store {
	t.Helper()
	s, err := Open(path, netip.MustParsePrefix(cidr), cooldown)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func req(id string) Request {
	return Request{Key: Key{ContainerID: id, IfName: "eth0"}, Namespace: "ns", Pod: id}
}

func TestAllocateWholeRangeNeverReserved(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "s.json"), "10.1.2.0/24", 0)
	seen := map[netip.Addr]bool{}
	for i := 0; i < 253; i++ {
		a, err := s.Allocate(req(fmt.Sprint(i)))
		if err != nil {
			t.Fatalf("allocation %d: %v", i, err)
		}
		if seen[a.IP] {
			t.Fatalf("%v handed out twice", a.IP)
		}
		seen[a.IP] = true
	}
	for _, r := range []string{"10.1.2.0", "10.1.2.1", "10.1.2.255"} {
		if seen[netip.MustParseAddr(r)] {
			t.Errorf("reserved %s handed out", r)
		}
	}
	if _, err := s.Allocate(req("one-too-many")); !errors.Is(err, ErrExhausted) {
		t.Fatalf("full range: %v, want ErrExhausted", err)
	}
}

func TestIdempotentAndCooldown(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "s.json"), "10.1.2.0/30", time.Hour) // one usable address
	clock := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s.now = func() time.Time { return clock }
	a1, err := s.Allocate(req("a"))
	if err != nil || a1.IP.String() != "10.1.2.2" {
		t.Fatalf("%v %v", a1, err)
	}
	again, _ := s.Allocate(req("a"))
	if again.IP != a1.IP {
		t.Fatalf("repeated ADD got %v, want %v", again.IP, a1.IP)
	}
	if _, ok, _ := s.Release(a1.Key); !ok {
		t.Fatal("release: not found")
	}
	if _, ok, _ := s.Release(a1.Key); ok {
		t.Fatal("second release found something")
	}
	if _, err := s.Allocate(req("b")); !errors.Is(err, ErrExhausted) {
		t.Fatalf("during cooldown: %v, want ErrExhausted", err)
	}
	if _, _, c := s.Stats(); c != 1 {
		t.Fatalf("cooling = %d, want 1", c)
	}
	clock = clock.Add(time.Hour)
	if b, err := s.Allocate(req("b")); err != nil || b.IP != a1.IP {
		t.Fatalf("after cooldown: %v %v", b, err)
	}
}

func TestPersistAcrossReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.json")
	s := open(t, path, "10.1.2.0/24", time.Hour)
	a, _ := s.Allocate(req("a"))
	b, _ := s.Allocate(req("b"))
	s.Release(b.Key)
	s2 := open(t, path, "10.1.2.0/24", time.Hour)
	if got, ok := s2.Get(a.Key); !ok || got.IP != a.IP || got.Pod != "a" {
		t.Fatalf("reopened: %v %v", got, ok)
	}
	if _, _, c := s2.Stats(); c != 1 {
		t.Fatalf("cooldown lost across reopen")
	}
	if c, _ := s2.Allocate(req("c")); c.IP == b.IP || c.IP == a.IP {
		t.Fatalf("reopened store reused %v", c.IP)
	}
	if _, err := Open(path, netip.MustParsePrefix("10.9.9.0/24"), 0); !errors.Is(err, ErrPodCIDRChanged) {
		t.Fatalf("state of another podCIDR: %v, want ErrPodCIDRChanged", err)
	}
	os.WriteFile(path, []byte("{not json"), 0o600)
	if _, err := Open(path, netip.MustParsePrefix("10.1.2.0/24"), 0); err == nil {
		t.Fatal("corrupt state accepted")
	}
}

func TestRetainAndConcurrency(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "s.json"), "10.1.0.0/22", 0)
	var wg sync.WaitGroup
	for i := 0; i < 100; i++ {
		wg.Go(func() {
			if _, err := s.Allocate(req(fmt.Sprint(i))); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	ips := map[netip.Addr]bool{}
	for _, a := range s.List() {
		if ips[a.IP] {
			t.Fatalf("duplicate %v", a.IP)
		}
		ips[a.IP] = true
	}
	gone, err := s.Retain(func(a Allocation) bool { return a.ContainerID < "5" })
	if err != nil {
		t.Fatal(err)
	}
	if used, _, _ := s.Stats(); used+len(gone) != 100 || len(gone) == 0 {
		t.Fatalf("used %d + released %d != 100", used, len(gone))
	}
}

// FuzzOpen: any state file either opens into a consistent store or is
// refused with an error; never a panic, never a duplicate address.
func FuzzOpen(f *testing.F) {
	f.Add([]byte(`{"podCIDR":"10.1.2.0/24","allocations":[{"containerID":"a","ifName":"eth0","ip":"10.1.2.2"}]}`))
	f.Add([]byte(`{"allocations":[{"containerID":"a","ifName":"eth0","ip":"10.1.2.2"},{"containerID":"b","ifName":"eth0","ip":"10.1.2.2"}]}`))
	f.Add([]byte(`{"cooling":{"10.1.2.9":"2026-01-01T00:00:00Z"}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(t.TempDir(), "s.json")
		os.WriteFile(path, data, 0o600)
		s, err := Open(path, netip.MustParsePrefix("10.1.2.0/24"), time.Minute)
		if err != nil {
			return
		}
		seen := map[netip.Addr]bool{}
		for _, a := range s.List() {
			if seen[a.IP] || !s.PodCIDR().Contains(a.IP) {
				t.Fatalf("inconsistent store from %q: %v", data, a)
			}
			seen[a.IP] = true
		}
		if _, had := s.Get(req("fuzz").Key); had {
			return
		}
		if a, err := s.Allocate(req("fuzz")); err == nil && seen[a.IP] {
			t.Fatalf("allocated %v, already held", a.IP)
		}
	})
}
