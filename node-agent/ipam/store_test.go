package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
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
	t.Cleanup(func() { s.Close() })
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
	// The directory is locked while a store is open: a second agent on it
	// is refused.
	if _, err := Open(path, netip.MustParsePrefix("10.1.2.0/24"), time.Hour); !errors.Is(err, ErrLocked) {
		t.Fatalf("second store on a locked directory: %v, want ErrLocked", err)
	}
	s.Close()
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
	s2.Close()
	if _, err := Open(path, netip.MustParsePrefix("10.9.9.0/24"), 0); !errors.Is(err, ErrPodCIDRChanged) {
		t.Fatalf("state of another podCIDR: %v, want ErrPodCIDRChanged", err)
	}
	for _, bad := range []string{"{not json", ""} {
		os.WriteFile(path, []byte(bad), 0o600)
		if _, err := Open(path, netip.MustParsePrefix("10.1.2.0/24"), 0); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("state %q: %v, want ErrCorrupt", bad, err)
		}
	}
	// A refused open does not keep the lock.
	s3 := open(t, filepath.Join(filepath.Dir(path), "other.json"), "10.1.2.0/24", 0)
	s3.Close()
}

// Recover starts afresh from allocations found on the host: they are kept
// (never handed out again), invalid ones dropped, and the state is saved.
func TestRecover(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.json")
	os.WriteFile(path, nil, 0o600) // power loss: 0 bytes
	live := []Allocation{
		{Key: Key{ContainerID: "c1", IfName: "eth0"}, HostVeth: "veth1", IP: netip.MustParseAddr("10.1.2.2")},
		{Key: Key{ContainerID: "c2", IfName: "eth0"}, HostVeth: "veth2", IP: netip.MustParseAddr("10.1.2.3")},
		{Key: Key{ContainerID: "x", IfName: "eth0"}, IP: netip.MustParseAddr("10.9.9.9")},  // outside
		{Key: Key{ContainerID: "gw", IfName: "eth0"}, IP: netip.MustParseAddr("10.1.2.1")}, // reserved
	}
	s, err := Recover(path, netip.MustParsePrefix("10.1.2.0/24"), time.Minute, live)
	if err != nil {
		t.Fatal(err)
	}
	if got := len(s.List()); got != 2 {
		t.Fatalf("%d allocations recovered, want 2: %v", got, s.List())
	}
	for i := 0; i < 250; i++ {
		a, err := s.Allocate(req(fmt.Sprint("n", i)))
		if err != nil {
			break
		}
		if a.IP == live[0].IP || a.IP == live[1].IP {
			t.Fatalf("handed out %v, a live pod's address", a.IP)
		}
	}
	s.Close()
	s2 := open(t, path, "10.1.2.0/24", time.Minute)
	if _, ok := s2.Get(live[0].Key); !ok {
		t.Error("recovered allocation not saved")
	}
}

// A write that fails leaves memory as it was (the release did not happen),
// and leaves nothing behind that a restarted agent would replay.
func TestFailedSaveRollsBack(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.json")
	s := open(t, path, "10.1.2.0/24", time.Hour)
	a, _ := s.Allocate(req("a"))
	// The journal cannot be written (nor truncated), and neither can the
	// snapshot's temporary file.
	ro, err := os.Open(path + JournalSuffix)
	if err != nil {
		t.Fatal(err)
	}
	s.journal.Close()
	s.journal = ro
	if err := os.Mkdir(path+".tmp", 0o700); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Release(a.Key); err == nil {
		t.Fatal("release saved through an unwritable journal")
	}
	if got, ok := s.Get(a.Key); !ok || got.IP != a.IP {
		t.Fatalf("failed release changed memory: %v %v", got, ok)
	}
	if _, err := s.Retain(func(Allocation) bool { return false }); err == nil {
		t.Fatal("retain saved through an unwritable temporary file")
	}
	if used, _, cooling := s.Stats(); used != 1 || cooling != 0 {
		t.Fatalf("failed retain changed memory: used %d cooling %d", used, cooling)
	}
	// Writable again: the next change rewrites the snapshot first, and a
	// reopened store holds exactly what memory did.
	os.Remove(path + ".tmp")
	b, err := s.Allocate(req("b"))
	if err != nil {
		t.Fatalf("allocate once writable again: %v", err)
	}
	s.Close()
	s2 := open(t, path, "10.1.2.0/24", time.Hour)
	if got, ok := s2.Get(a.Key); !ok || got.IP != a.IP {
		t.Errorf("a's allocation lost after the failed release: %v %v", got, ok)
	}
	if got, ok := s2.Get(b.Key); !ok || got.IP != b.IP {
		t.Errorf("b's allocation lost: %v %v", got, ok)
	}
	if used, _, cooling := s2.Stats(); used != 2 || cooling != 0 {
		t.Errorf("reopened: used %d cooling %d, want 2 and 0", used, cooling)
	}
}

// Changes go to the journal (one record each), and a reopened store replays
// them; a record torn by a crash in its write is the last one and is
// dropped; a bad record before others is corruption.
func TestJournal(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.json")
	s := open(t, path, "10.1.2.0/24", time.Hour)
	snap, _ := os.ReadFile(path)
	a, _ := s.Allocate(req("a"))
	b, _ := s.Allocate(req("b"))
	s.Release(b.Key)
	if now, _ := os.ReadFile(path); string(now) != string(snap) {
		t.Error("a change rewrote the snapshot; it should only append to the journal")
	}
	journal, _ := os.ReadFile(path + JournalSuffix)
	if n := strings.Count(string(journal), "\n"); n != 4 {
		t.Fatalf("journal holds %d lines, want a header and 3 records:\n%s", n, journal)
	}
	// As if the agent were killed: no Close, the journal stays.
	s.journal.Close()
	s.lock.Close()
	s.lock = nil

	torn := append(append([]byte{}, journal...), []byte(`{"seq":4,"add":{"containerID":"c","ifN`)...)
	os.WriteFile(path+JournalSuffix, torn, 0o600)
	s2 := open(t, path, "10.1.2.0/24", time.Hour)
	if got, ok := s2.Get(a.Key); !ok || got.IP != a.IP {
		t.Fatalf("replayed: %v %v", got, ok)
	}
	if _, ok := s2.Get(b.Key); ok {
		t.Fatal("the release of b was not replayed")
	}
	if used, _, cooling := s2.Stats(); used != 1 || cooling != 1 {
		t.Fatalf("replayed: used %d cooling %d, want 1 and 1", used, cooling)
	}
	if _, ok := s2.Get(Key{ContainerID: "c", IfName: "eth0"}); ok {
		t.Fatal("a torn record was applied")
	}
	if j, _ := os.ReadFile(path + JournalSuffix); strings.Count(string(j), "\n") != 1 {
		t.Errorf("journal not folded into the snapshot on open: %q", j)
	}
	header, _ := os.ReadFile(path + JournalSuffix)
	s2.Close()
	header2, _ := os.ReadFile(path + JournalSuffix)
	if string(header2) == string(header) {
		t.Error("Close did not start a new generation")
	}

	// Garbage followed by a good record: not a torn write.
	os.WriteFile(path+JournalSuffix, []byte(string(header2)+"garbage\n"+`{"seq":99,"del":{"containerID":"a","ifName":"eth0"}}`+"\n"), 0o600)
	if _, err := Open(path, netip.MustParsePrefix("10.1.2.0/24"), 0); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("corrupt journal: %v, want ErrCorrupt", err)
	}
	// A journal without its snapshot: the state is lost, not empty.
	os.Remove(path)
	if _, err := Open(path, netip.MustParsePrefix("10.1.2.0/24"), 0); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("journal without snapshot: %v, want ErrCorrupt", err)
	}
}

// A crash between writing a snapshot and emptying the journal leaves
// records the snapshot already holds: they are skipped, not applied again
// over newer state.
func TestSnapshotCoversJournal(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.json")
	s := open(t, path, "10.1.2.0/24", 0)
	a, _ := s.Allocate(req("a"))
	old, _ := os.ReadFile(path + JournalSuffix) // "a allocated"
	s.Release(a.Key)
	b, _ := s.Allocate(req("b"))
	s.Close()
	s2 := open(t, path, "10.1.2.0/24", 0) // compacts: snapshot with b only
	s2.Close()
	os.WriteFile(path+JournalSuffix, old, 0o600)
	s3 := open(t, path, "10.1.2.0/24", 0)
	if _, ok := s3.Get(a.Key); ok {
		t.Fatal("a record the snapshot covers was applied again: a released pod holds its address")
	}
	if got, ok := s3.Get(b.Key); !ok || got.IP != b.IP {
		t.Fatalf("b: %v %v", got, ok)
	}
}

// The journal is bounded: past maxJournal a change rewrites the snapshot.
func TestJournalCompaction(t *testing.T) {
	old := maxJournal
	maxJournal = 2 << 10
	t.Cleanup(func() { maxJournal = old })
	path := filepath.Join(t.TempDir(), "s.json")
	s := open(t, path, "10.1.0.0/22", time.Hour)
	want := map[Key]netip.Addr{}
	for i := 0; i < 300; i++ {
		a, err := s.Allocate(req(fmt.Sprint("p", i)))
		if err != nil {
			t.Fatal(err)
		}
		want[a.Key] = a.IP
		if i%3 == 0 {
			s.Release(a.Key)
			delete(want, a.Key)
		}
		if st, _ := os.Stat(path + JournalSuffix); st.Size() > maxJournal+1024 {
			t.Fatalf("journal grew to %d bytes, bound %d", st.Size(), maxJournal)
		}
	}
	s.Close()
	s2 := open(t, path, "10.1.0.0/22", time.Hour)
	if got := len(s2.List()); got != len(want) {
		t.Fatalf("%d allocations after reopen, want %d", got, len(want))
	}
	for k, ip := range want {
		if got, ok := s2.Get(k); !ok || got.IP != ip {
			t.Fatalf("%s: %v %v, want %v", k, got, ok, ip)
		}
	}
	if _, _, cooling := s2.Stats(); cooling != 100 {
		t.Errorf("%d cooling after reopen, want 100", cooling)
	}
}

// A state moved aside is read whole, journal included.
func TestMoveAsideReadsJournal(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.json")
	s := open(t, path, "10.1.2.0/24", 0)
	a, _ := s.Allocate(req("a"))
	s.Close()
	if err := MoveAside(path, path+".old"); err != nil {
		t.Fatal(err)
	}
	got, err := ReadAllocations(path + ".old")
	if err != nil || len(got) != 1 || got[0].IP != a.IP {
		t.Fatalf("ReadAllocations = %v, %v; want a's %v", got, err, a.IP)
	}
	if _, err := os.Stat(path + JournalSuffix); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("journal left behind: %v", err)
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
		defer s.Close()
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

// TestClosedStoreWritesNothing: after Close the state directory is no
// longer this store's — a new Store (the agent restarted on it) may own it.
// Every change to the closed store fails with ErrClosed and leaves the
// files as the new owner wrote them. Before, the first change failed on
// the closed journal and marked the store broken; the next rewrote the
// snapshot from the closed store's memory, without the lock, over the new
// owner's state.
func TestClosedStoreWritesNothing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.json")
	old := open(t, path, "10.1.2.0/24", 0)
	a, err := old.Allocate(req("a"))
	if err != nil {
		t.Fatal(err)
	}
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}
	if err := old.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	owner := open(t, path, "10.1.2.0/24", 0)
	if _, _, err := owner.Release(a.Key); err != nil {
		t.Fatal(err)
	}
	b, err := owner.Allocate(req("b"))
	if err != nil {
		t.Fatal(err)
	}
	files := func() string {
		snap, _ := os.ReadFile(path)
		journal, _ := os.ReadFile(path + JournalSuffix)
		return string(snap) + "\n--journal--\n" + string(journal)
	}
	before := files()

	// Each kind of change, twice: the second is the one that used to
	// rewrite the snapshot.
	for range 2 {
		if _, err := old.Allocate(req("c")); !errors.Is(err, ErrClosed) {
			t.Errorf("Allocate after Close: %v, want ErrClosed", err)
		}
		if _, _, err := old.Release(a.Key); !errors.Is(err, ErrClosed) {
			t.Errorf("Release after Close: %v, want ErrClosed", err)
		}
		if _, err := old.Retain(func(Allocation) bool { return false }); !errors.Is(err, ErrClosed) {
			t.Errorf("Retain after Close: %v, want ErrClosed", err)
		}
	}
	if after := files(); after != before {
		t.Fatalf("a closed store changed the state files:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if _, ok := old.Get(req("c").Key); ok {
		t.Error("a refused Allocate left its allocation in memory")
	}
	owner.Close()
	reopened := open(t, path, "10.1.2.0/24", 0)
	if got := reopened.List(); len(got) != 1 || got[0].Key != b.Key {
		t.Errorf("state after reopening: %+v, want only %v", got, b.Key)
	}
}

// The controller hands out no block smaller than /30 (internal/blocksize);
// the store refuses exactly those, by the same rule.
func TestStoreRefusesBlocksNoPodFits(t *testing.T) {
	for _, c := range []struct {
		cidr string
		ok   bool
	}{{"10.1.2.0/30", true}, {"10.1.2.0/31", false}, {"10.1.2.1/32", false}} {
		s, err := Open(filepath.Join(t.TempDir(), "s.json"), netip.MustParsePrefix(c.cidr), time.Hour)
		if (err == nil) != c.ok {
			t.Errorf("Open with podCIDR %s: %v, want ok=%v", c.cidr, err, c.ok)
		}
		if err == nil {
			s.Close()
		} else if !strings.Contains(err.Error(), "/30 or larger") {
			t.Errorf("Open with podCIDR %s: %v, want the block-size rule's message", c.cidr, err)
		}
	}
}
