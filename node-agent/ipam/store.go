// Package ipam is the node agent's pod IP allocator: one address of the
// node's podCIDR per attachment (container ID + interface), with the pod's
// namespace/name and host veth recorded, persisted so that a crash or
// restart of the agent loses nothing.
//
// The state is a snapshot (one JSON file) and a journal beside it (one JSON
// record per line). A change is one record appended to the journal with a
// single write and made durable with fdatasync before the call returns: one
// flush on the ADD path, where rewriting the snapshot costs two (file and
// directory) and a rename. The snapshot is rewritten — through a temporary
// file that is fsynced, renamed over the old one, and whose directory is
// fsynced, so a reader sees the old snapshot or the new one, never a torn
// one — when the store opens, when it closes, and when the journal grows
// past a bound. Each snapshot starts a new generation: the journal's first
// line names the generation it continues, and a journal of another
// generation (a crash between a snapshot and emptying the journal, or a
// snapshot written by an older release that knows no journal) is ignored,
// since every snapshot holds everything before it. Within a generation,
// records carry sequence numbers and those the snapshot covers are skipped. A torn last
// record (a power loss in the middle of a write) is dropped: the call that
// wrote it never returned. A snapshot that is empty or corrupt, or a journal
// corrupt before its last record, is reported as ErrCorrupt, so the caller
// can rebuild the allocations from the host (Recover) instead of
// crash-looping. A failed write rolls the in-memory change back and takes
// the record out of the journal again. The state directory is locked
// (flock) for as long as the Store is open: two agents never share it.
//
// Freed addresses cool down before reuse, so a packet for a deleted pod is
// not delivered to its successor. The podCIDR's network address, its first
// address (the gateway address by convention) and its broadcast address are
// never handed out.
package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sort"
	"sync"
	"time"
)

// ErrExhausted: every address of the podCIDR is in use or cooling down.
var ErrExhausted = errors.New("pod IP range exhausted")

// ErrPodCIDRChanged: the state file was written for another podCIDR.
var ErrPodCIDRChanged = errors.New("IPAM state is for another podCIDR")

// ErrCorrupt: the state file is empty or cannot be read as state.
var ErrCorrupt = errors.New("IPAM state file is corrupt")

// ErrLocked: another process holds the state directory.
var ErrLocked = errors.New("IPAM state directory is in use by another process")

// ErrClosed: the store was closed; its state directory (and its lock) may
// belong to another Store or process now.
var ErrClosed = errors.New("IPAM store is closed")

// Key identifies one attachment.
type Key struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
}

func (k Key) String() string { return k.ContainerID + "/" + k.IfName }

// Allocation is one pod address.
type Allocation struct {
	Key
	Namespace string     `json:"namespace,omitempty"`
	Pod       string     `json:"pod,omitempty"`
	PodUID    string     `json:"podUID,omitempty"`
	HostVeth  string     `json:"hostVeth,omitempty"`
	IP        netip.Addr `json:"ip"`
	Created   time.Time  `json:"created"`
}

// Request asks for an address.
type Request struct {
	Key
	Namespace string
	Pod       string
	PodUID    string
	HostVeth  string
}

// Store is the allocator. It is safe for concurrent use.
type Store struct {
	path     string
	cidr     netip.Prefix
	cooldown time.Duration
	now      func() time.Time

	mu sync.Mutex
	// lock is the flock held on the state directory's lock file; nil once
	// the store is closed, after which nothing is written (ErrClosed).
	lock    *os.File
	journal *os.File // path + JournalSuffix, opened for appending
	jsize   int64    // bytes in the journal
	gen     string   // the snapshot's generation, which the journal continues
	seq     uint64   // of the last record written (or lost to a failed write)
	// broken: a failed write may have left a record in the journal that
	// could not be taken out again; the next change rewrites the snapshot
	// (which covers it) before anything is appended.
	broken  bool
	allocs  map[Key]*Allocation
	byIP    map[netip.Addr]Key
	cooling map[netip.Addr]time.Time
	next    netip.Addr
}

// PodCIDR returns the range addresses come from.
func (s *Store) PodCIDR() netip.Prefix { return s.cidr }

// Allocate returns the attachment's address, allocating one if it has none
// (a repeated ADD gets the same address).
func (s *Store) Allocate(req Request) (Allocation, error) {
	if req.ContainerID == "" || req.IfName == "" {
		return Allocation{}, errors.New("container ID and interface name are required")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lock == nil {
		return Allocation{}, ErrClosed
	}
	if a, ok := s.allocs[req.Key]; ok {
		return *a, nil
	}
	ip, ok := s.findFree()
	if !ok {
		return Allocation{}, fmt.Errorf("%w: all %d addresses of %v in use or cooling down", ErrExhausted, s.usable(), s.cidr)
	}
	a := &Allocation{Key: req.Key, Namespace: req.Namespace, Pod: req.Pod, PodUID: req.PodUID, HostVeth: req.HostVeth, IP: ip, Created: s.now().UTC()}
	s.allocs[req.Key] = a
	s.byIP[ip] = req.Key
	delete(s.cooling, ip)
	s.next = ip.Next()
	if err := s.write(record{Add: a}); err != nil {
		delete(s.allocs, req.Key)
		delete(s.byIP, ip)
		return Allocation{}, err
	}
	return *a, nil
}

// Release frees the attachment's address (it cools down first) and returns
// the allocation it had; releasing an unknown attachment returns false.
func (s *Store) Release(k Key) (Allocation, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lock == nil {
		return Allocation{}, false, ErrClosed
	}
	a, ok := s.allocs[k]
	if !ok {
		return Allocation{}, false, nil
	}
	undo, rec := s.drop(a)
	if err := s.write(rec); err != nil {
		undo()
		return Allocation{}, false, err
	}
	return *a, true, nil
}

// Retain releases every allocation for which keep returns false, and
// returns those released.
func (s *Store) Retain(keep func(Allocation) bool) ([]Allocation, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lock == nil {
		return nil, ErrClosed
	}
	var out []Allocation
	var undos []func()
	var recs []record
	for _, a := range s.allocs {
		if !keep(*a) {
			out = append(out, *a)
			undo, rec := s.drop(a)
			undos = append(undos, undo)
			recs = append(recs, rec)
		}
	}
	if len(out) == 0 {
		return nil, nil
	}
	if err := s.write(recs...); err != nil {
		for _, u := range undos {
			u()
		}
		return nil, err
	}
	return out, nil
}

// Get returns the attachment's allocation.
func (s *Store) Get(k Key) (Allocation, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.allocs[k]
	if !ok {
		return Allocation{}, false
	}
	return *a, true
}

// List returns every allocation, sorted by address.
func (s *Store) List() []Allocation {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Allocation, 0, len(s.allocs))
	for _, a := range s.allocs {
		out = append(out, *a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].IP.Less(out[j].IP) })
	return out
}

// Stats returns the addresses in use, free now, and cooling down.
func (s *Store) Stats() (used, free, cooling int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	for _, t := range s.cooling {
		if now.Before(t) {
			cooling++
		}
	}
	used = len(s.allocs)
	return used, s.usable() - used - cooling, cooling
}
