package ipam

// Version skew and recovery: found by an adversarial review of the journal
// (each failed before its fix).

import (
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// copySnapshotOnly puts only the snapshot of the state at path into a new
// directory: what the release before 0096c32 reads (its load() knows no
// journal), e.g. after a DaemonSet / helm rollback.
func copySnapshotOnly(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(t.TempDir(), filepath.Base(path))
	if err := os.WriteFile(other, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return other
}

// A clean Close folds the journal into the snapshot: the release before the
// journal reads ipam.json only, and rolled back to after a clean shutdown
// it must not hand a live pod's address out again.
func TestCloseLeavesWholeStateInSnapshot(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ipam.json")
	s := open(t, path, "10.1.2.0/24", time.Hour)
	a, err := s.Allocate(req("a")) // pod a is running with this address
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil { // graceful shutdown for the rollout
		t.Fatal(err)
	}

	var st struct {
		Allocations []Allocation `json:"allocations"`
	}
	data, _ := os.ReadFile(path)
	if err := json.Unmarshal(data, &st); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, al := range st.Allocations {
		found = found || al.Key == a.Key
	}
	if !found {
		t.Errorf("after a clean Close, %s holds %d allocations and not a's %v: it is only in the journal", filepath.Base(path), len(st.Allocations), a.IP)
	}

	// The previous release: the snapshot alone.
	old := open(t, copySnapshotOnly(t, path), "10.1.2.0/24", time.Hour)
	b, err := old.Allocate(req("b"))
	if err != nil {
		t.Fatal(err)
	}
	if b.IP == a.IP {
		t.Errorf("a reader of ipam.json alone (the previous release) gave b %v, live pod a's address", b.IP)
	}
}

// The other direction of the same version skew: the journal this release
// left behind survives a run of the previous release (which rewrites
// ipam.json with no generation and never touches the journal); back on
// this release, that journal is not replayed over the newer snapshot.
func TestJournalOfAnotherGenerationIgnored(t *testing.T) {
	cidr := "10.1.2.0/24"
	t.Run("resurrected", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "ipam.json")
		s := open(t, path, cidr, 0)
		a, _ := s.Allocate(req("a"))
		s.Close()
		// Previous release: it never saw a; pod a was deleted meanwhile
		// (DEL of an unknown attachment is success); it saves its state
		// (old fileState: no seq) with pod c on .3.
		os.WriteFile(path, []byte(`{"podCIDR":"10.1.2.0/24","allocations":[{"containerID":"c","ifName":"eth0","namespace":"ns","pod":"c","ip":"10.1.2.3","created":"2026-01-01T00:00:00Z"}]}`), 0o600)
		s2 := open(t, path, cidr, 0)
		if got, ok := s2.Get(a.Key); ok {
			t.Errorf("a record written before the rollback was replayed over the newer snapshot: deleted pod a holds %v again", got.IP)
		}
	})
	t.Run("refused", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "ipam.json")
		s := open(t, path, cidr, 0)
		s.Allocate(req("a")) // .2
		s.Close()
		// Previous release: a unknown to it, it gave .2 to pod b.
		os.WriteFile(path, []byte(`{"podCIDR":"10.1.2.0/24","allocations":[{"containerID":"b","ifName":"eth0","namespace":"ns","pod":"b","ip":"10.1.2.2","created":"2026-01-01T00:00:00Z"}]}`), 0o600)
		s2, err := Open(path, netip.MustParsePrefix(cidr), 0)
		if err != nil {
			t.Fatalf("a valid snapshot of the previous release refused because of a stale journal: %v (the agent then rebuilds from the host and loses every pod's name/UID)", err)
		}
		defer s2.Close()
		if got, ok := s2.Get(req("b").Key); !ok || got.IP != netip.MustParseAddr("10.1.2.2") {
			t.Errorf("b: %v %v", got, ok)
		}
	})
}

// Recovery keeps the bad state aside (KeepAside) but leaves it in place
// until Recover has written the replacement: an agent killed in between
// (or whose host listing fails) finds the bad state again on restart and
// recovers again — never an empty store while pods hold addresses.
func TestStateKeptAsideUntilReplaced(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ipam.json")
	s := open(t, path, "10.1.2.0/24", 0)
	a, _ := s.Allocate(req("a"))
	s.Close()
	// The state is found corrupt (a bad record before the journal's last).
	j, _ := os.ReadFile(path + JournalSuffix)
	os.WriteFile(path+JournalSuffix, append(j, []byte("garbage\n{\"seq\":9,\"del\":{\"containerID\":\"x\",\"ifName\":\"eth0\"}}\n")...), 0o600)
	if _, err := Open(path, netip.MustParsePrefix("10.1.2.0/24"), 0); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("setup: %v, want ErrCorrupt", err)
	}
	aside := path + ".1764536163.corrupt"
	if err := KeepAside(path, aside); err != nil {
		t.Fatal(err)
	}
	if got, err := ReadAllocations(aside); err == nil {
		t.Errorf("the kept copy reads as valid: %v", got)
	}
	// Killed before Recover: the next start finds the bad state again.
	if s2, err := Open(path, netip.MustParsePrefix("10.1.2.0/24"), 0); !errors.Is(err, ErrCorrupt) {
		if s2 != nil {
			s2.Close()
		}
		t.Fatalf("reopened after KeepAside: %v, want ErrCorrupt again", err)
	}
	live := []Allocation{{Key: a.Key, IP: a.IP}}
	s3, err := Recover(path, netip.MustParsePrefix("10.1.2.0/24"), 0, live)
	if err != nil {
		t.Fatal(err)
	}
	s3.Close()
	s4 := open(t, path, "10.1.2.0/24", 0)
	if got, ok := s4.Get(a.Key); !ok || got.IP != a.IP {
		t.Fatalf("after Recover: %v %v, want a on %v", got, ok, a.IP)
	}
	if b, _ := s4.Allocate(req("b")); b.IP == a.IP {
		t.Fatalf("b got live pod a's %v", b.IP)
	}
}
