// Package ipam is the node agent's pod IP allocator: one address of the
// node's podCIDR per attachment (container ID + interface), with the pod's
// namespace/name and host veth recorded, persisted so that a crash or
// restart of the agent loses nothing.
//
// A store is single-stack (Open: the node's IPv4 block) or dual-stack
// (OpenDualStack: the IPv4 block and the node's IPv6 block, its second
// podCIDR). A dual-stack attachment holds one address of each block, as
// one transaction: Allocate hands out both or neither, in one journal
// record, and Release and Retain free both together, each cooling down.
// The blocks a state was written for are recorded in it: a store opened
// with other blocks — another IPv4 block, an IPv6 block added, changed or
// dropped — is refused with ErrPodCIDRChanged, since a node's podCIDRs
// never change (a changed set is another Node object).
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
// never handed out; of the IPv6 block, only its Subnet-Router anycast
// address (see reserved).
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

// ErrExhausted: every address of the podCIDR (or, dual-stack, of the IPv6
// block) is in use or cooling down.
var ErrExhausted = errors.New("pod IP range exhausted")

// ErrPodCIDRChanged: the state file was written for another podCIDR, or
// for another IPv6 block (or none, or one where the store now has none).
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

// Allocation is one attachment's pod addresses.
type Allocation struct {
	Key
	Namespace string `json:"namespace,omitempty"`
	Pod       string `json:"pod,omitempty"`
	PodUID    string `json:"podUID,omitempty"`
	HostVeth  string `json:"hostVeth,omitempty"`
	// IP is the pod's IPv4 address, of the podCIDR.
	IP netip.Addr `json:"ip"`
	// IPv6 is the pod's IPv6 address, of the IPv6 block, on a dual-stack
	// store; zero on a single-stack one (omitted from the state file, which
	// then reads as it did before dual-stack), and on an allocation that
	// Recover rebuilt from a pod whose IPv6 address was not found.
	IPv6    netip.Addr `json:"ipv6,omitzero"`
	Created time.Time  `json:"created"`
}

// addrs returns the allocation's addresses: its IPv4 one, then its IPv6
// one if it has one.
func (a *Allocation) addrs() []netip.Addr {
	if a.IPv6.IsValid() {
		return []netip.Addr{a.IP, a.IPv6}
	}
	return []netip.Addr{a.IP}
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
	cidr     netip.Prefix // the IPv4 block
	cidr6    netip.Prefix // the IPv6 block; zero when single-stack
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
	broken bool
	allocs map[Key]*Allocation
	// byIP and cooling hold the addresses of both families: an IPv4 and
	// an IPv6 netip.Addr never compare equal.
	byIP    map[netip.Addr]Key
	cooling map[netip.Addr]time.Time
	next    netip.Addr // IPv4 next-fit cursor
	next6   netip.Addr // IPv6 next-fit cursor
	// extra are the node's extra IPv4 blocks of a growable range (its
	// NodeBlocks status), in the order addresses are taken from them.
	extra []Block
}

// PodCIDR returns the IPv4 range addresses come from.
func (s *Store) PodCIDR() netip.Prefix { return s.cidr }

// PodCIDRs returns the blocks addresses come from, in the order of a
// node's spec.podCIDRs: the IPv4 block, then the IPv6 block if the store
// is dual-stack.
func (s *Store) PodCIDRs() []netip.Prefix {
	if s.cidr6.IsValid() {
		return []netip.Prefix{s.cidr, s.cidr6}
	}
	return []netip.Prefix{s.cidr}
}

// Allocate returns the attachment's addresses, allocating them if it has
// none (a repeated ADD gets the same ones). On a dual-stack store it hands
// out an IPv4 and an IPv6 address, or neither (ErrExhausted when either
// block has none free), made durable in one journal record.
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
	// Both addresses are found before anything changes: an exhausted IPv6
	// block leaves the IPv4 one (and its cursor) as it was.
	// The podCIDR first, then the extra blocks being used (never one
	// being drained).
	ip, ok := s.findFree(s.cidr, s.next)
	for _, b := range s.extra {
		if ok {
			break
		}
		if !b.Draining {
			ip, ok = s.findFree(b.CIDR, s.next)
		}
	}
	if !ok {
		if len(s.extra) > 0 {
			return Allocation{}, fmt.Errorf("%w: every address of %v and of the extra blocks %v in use, cooling down or draining", ErrExhausted, s.cidr, s.extra)
		}
		return Allocation{}, fmt.Errorf("%w: all %d addresses of %v in use or cooling down", ErrExhausted, usable(s.cidr), s.cidr)
	}
	var ip6 netip.Addr
	if s.cidr6.IsValid() {
		if ip6, ok = s.findFree(s.cidr6, s.next6); !ok {
			return Allocation{}, fmt.Errorf("%w: all %d addresses of the IPv6 block %v in use or cooling down", ErrExhausted, usable(s.cidr6), s.cidr6)
		}
	}
	a := &Allocation{Key: req.Key, Namespace: req.Namespace, Pod: req.Pod, PodUID: req.PodUID, HostVeth: req.HostVeth, IP: ip, IPv6: ip6, Created: s.now().UTC()}
	s.allocs[req.Key] = a
	for _, x := range a.addrs() {
		s.byIP[x] = req.Key
		delete(s.cooling, x) // expired: findFree returns no address cooling down
	}
	s.next = ip.Next()
	if ip6.IsValid() {
		s.next6 = ip6.Next()
	}
	// One record holds both addresses: a crash leaves the whole allocation
	// in the journal or none of it (a torn last record is dropped).
	if err := s.write(record{Add: a}); err != nil {
		delete(s.allocs, req.Key)
		for _, x := range a.addrs() {
			delete(s.byIP, x)
		}
		return Allocation{}, err
	}
	return *a, nil
}

// Release frees the attachment's addresses (both cool down first) and returns
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

// Retain releases every allocation for which keep returns false (both of
// its addresses), and returns those released.
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

// Stats returns the IPv4 block's addresses in use, free now, and cooling
// down. StatsByFamily counts the IPv6 block's too.
func (s *Store) Stats() (used, free, cooling int) {
	st := s.StatsByFamily()[0]
	return st.Used, st.Free, st.Cooling
}

// FamilyStats counts one block's addresses.
type FamilyStats struct {
	// Block is the IPv4 or the IPv6 block (Block.Addr().Is6()).
	Block netip.Prefix
	// Used are held by allocations, Cooling were released and may not be
	// handed out yet, Free may be handed out now. Used+Free+Cooling is the
	// number of addresses the store may ever hand out of the block, which
	// for an IPv6 block of more than 2^63 addresses is saturated at
	// math.MaxInt.
	Used, Free, Cooling int
}

// StatsByFamily returns each block's counts, in PodCIDRs order: the IPv4
// block, then the IPv6 block on a dual-stack store.
func (s *Store) StatsByFamily() []FamilyStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	out := make([]FamilyStats, 0, 2)
	for _, block := range s.PodCIDRs() {
		st := FamilyStats{Block: block}
		for ip, t := range s.cooling {
			if block.Contains(ip) && now.Before(t) {
				st.Cooling++
			}
		}
		for _, a := range s.allocs {
			for _, ip := range a.addrs() {
				if block.Contains(ip) {
					st.Used++
				}
			}
		}
		st.Free = usable(block) - st.Used - st.Cooling
		out = append(out, st)
	}
	return out
}
