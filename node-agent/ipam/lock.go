// The state directory's lifecycle: open and lock (flock), recover from a lost
// state, close and release, and moving a bad state aside.

package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/aliasip/aliasip/internal/blocksize"
)

// Open loads (or creates) the store at path for the node's podCIDR, and
// locks its directory. A state file written for another podCIDR is refused
// with ErrPodCIDRChanged, an empty or unreadable one with ErrCorrupt: the
// caller decides what becomes of it (see Recover).
func Open(path string, podCIDR netip.Prefix, cooldown time.Duration) (*Store, error) {
	return OpenDualStack(path, podCIDR, netip.Prefix{}, cooldown)
}

// OpenDualStack is Open for a dual-stack node: v4 is its IPv4 block (the
// podCIDR Open takes), v6 its IPv6 block (its second podCIDR, a /112 on
// GCE), which the same rule as the controller's (internal/blocksize) wants
// a /126 or larger. Each allocation then holds an address of each. The
// zero v6 opens the store single-stack, as Open does. A state written for
// other blocks — a single-stack one included — is refused with
// ErrPodCIDRChanged.
func OpenDualStack(path string, v4, v6 netip.Prefix, cooldown time.Duration) (*Store, error) {
	s, err := newStore(path, v4, v6, cooldown)
	if err != nil {
		return nil, err
	}
	if err := s.load(); err != nil {
		s.release() // no compaction: the state on disk stays as it was
		return nil, err
	}
	return s, nil
}

// Recover starts a store at path afresh, with allocations rebuilt from the
// host (the pods' veths and routes), when the state file was lost. The
// caller moves the bad file aside first.
func Recover(path string, podCIDR netip.Prefix, cooldown time.Duration, allocs []Allocation) (*Store, error) {
	return RecoverDualStack(path, podCIDR, netip.Prefix{}, cooldown, allocs)
}

// RecoverDualStack is Recover for the blocks OpenDualStack takes. An
// allocation is kept for its IPv4 address, as by Recover; its IPv6
// address is kept with it if it is a valid one of the IPv6 block, held by
// no other, and dropped otherwise (the pod keeps its IPv4 address alone:
// a pod found on the host is never given an address it was not seen with).
// An allocation without a valid IPv4 address is dropped whole.
func RecoverDualStack(path string, v4, v6 netip.Prefix, cooldown time.Duration, allocs []Allocation) (*Store, error) {
	return RecoverWithBlocks(path, v4, v6, nil, cooldown, allocs)
}

// RecoverWithBlocks is RecoverDualStack for a node of a growable range:
// its extra blocks (as its NodeBlocks grants them) are the store's again,
// and an allocation found on the host in one of them is kept like one in
// the podCIDR.
func RecoverWithBlocks(path string, v4, v6 netip.Prefix, extra []Block, cooldown time.Duration, allocs []Allocation) (*Store, error) {
	s, err := newStore(path, v4, v6, cooldown)
	if err != nil {
		return nil, err
	}
	if err := s.checkExtra(extra); err != nil {
		s.release()
		return nil, err
	}
	s.extra = extra
	for i := range allocs {
		a := allocs[i]
		if (!s.cidr.Contains(a.IP) && s.extraOf(a.IP) < 0) || s.reserved(a.IP) {
			continue
		}
		if _, dup := s.byIP[a.IP]; dup {
			continue
		}
		if _, dup := s.byIP[a.IPv6]; dup || !s.cidr6.Contains(a.IPv6) || s.reserved(a.IPv6) {
			a.IPv6 = netip.Addr{}
		}
		if a.Created.IsZero() {
			a.Created = s.now().UTC()
		}
		s.allocs[a.Key] = &a
		for _, ip := range a.addrs() {
			s.byIP[ip] = a.Key
		}
	}
	if err := s.compact(); err != nil {
		s.release()
		return nil, err
	}
	return s, nil
}

// KeepAside links the state at path (snapshot and journal) to aside as
// well, so that ReadAllocations(aside) reads it whole, without taking it
// from path: until a replacement is written there (Recover), a restarted
// agent still finds the bad state, not an empty one.
func KeepAside(path, aside string) error {
	for _, suffix := range []string{"", JournalSuffix} {
		if err := os.Link(path+suffix, aside+suffix); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}

// MoveAside renames the state at path (snapshot and journal) to aside, so
// that ReadAllocations(aside) still reads it whole.
func MoveAside(path, aside string) error {
	if err := os.Rename(path, aside); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err := os.Rename(path+JournalSuffix, aside+JournalSuffix); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

func newStore(path string, podCIDR, v6 netip.Prefix, cooldown time.Duration) (*Store, error) {
	podCIDR = podCIDR.Masked()
	if !podCIDR.Addr().Is4() {
		return nil, fmt.Errorf("podCIDR %v: want an IPv4 range", podCIDR)
	}
	// The same rule the controller applies before handing a block out.
	if err := blocksize.Check(podCIDR); err != nil {
		return nil, fmt.Errorf("podCIDR %v: %w", podCIDR, err)
	}
	if v6 != (netip.Prefix{}) {
		// An IPv4-mapped range (::ffff:a.b.c.d) is IPv4 in disguise.
		if v6.IsValid() && (!v6.Addr().Is6() || v6.Addr().Is4In6()) {
			return nil, fmt.Errorf("IPv6 block %v: want an IPv6 range", v6)
		}
		if err := blocksize.Check(v6); err != nil { // an invalid prefix too
			return nil, fmt.Errorf("IPv6 block %v: %w", v6, err)
		}
		v6 = v6.Masked()
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	lock, err := os.OpenFile(filepath.Join(filepath.Dir(path), ".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("IPAM state lock: %w", err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		return nil, fmt.Errorf("%w: %s: %v", ErrLocked, filepath.Dir(path), err)
	}
	journal, err := os.OpenFile(path+JournalSuffix, os.O_CREATE|os.O_RDWR|os.O_APPEND, 0o600)
	if err != nil {
		lock.Close()
		return nil, fmt.Errorf("IPAM journal: %w", err)
	}
	return &Store{
		path: path, cidr: podCIDR, cidr6: v6, cooldown: cooldown, now: time.Now, lock: lock, journal: journal,
		allocs: map[Key]*Allocation{}, byIP: map[netip.Addr]Key{}, cooling: map[netip.Addr]time.Time{},
	}, nil
}

// Close folds the journal into the snapshot and releases the state
// directory's lock. Every change after Close fails with ErrClosed and
// writes nothing: the directory may be another store's by then. Closing
// twice is a no-op.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lock == nil {
		return nil
	}
	// Leave the whole state in the snapshot: what a reader of the snapshot
	// alone (a release before the journal, after a rollback) needs.
	cerr := s.compact()
	if err := s.release(); err != nil {
		return err
	}
	return cerr
}

// release closes the files and drops the lock, leaving the state on disk
// as it is. The caller holds s.mu, or is the only one holding s.
func (s *Store) release() error {
	if s.lock == nil {
		return nil
	}
	s.journal.Close()
	err := s.lock.Close() // closing the descriptor drops the flock
	s.lock = nil
	return err
}
