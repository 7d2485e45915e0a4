// Package ipam is the node agent's pod IP allocator: one address of the
// node's podCIDR per attachment (container ID + interface), with the pod's
// namespace/name and host veth recorded, persisted so that a crash or
// restart of the agent loses nothing.
//
// The state is one JSON file, rewritten on every change through a temporary
// file that is fsynced, renamed over the old one, and whose directory is
// fsynced: a reader (or a restarted agent) sees the old state or the new
// one, never a torn one, even across a power loss (a rename without the
// fsyncs can leave a 0-byte file on XFS and ext4 with delalloc). A state
// file that is empty or corrupt anyway is reported as ErrCorrupt, so the
// caller can rebuild the allocations from the host (Recover) instead of
// crash-looping. A failed save rolls the in-memory change back. The state
// directory is locked (flock) for as long as the Store is open: two agents
// never share it.
//
// Freed addresses cool down before reuse, so a packet for a deleted pod is
// not delivered to its successor. The podCIDR's network address, its first
// address (the gateway address by convention) and its broadcast address are
// never handed out.
package ipam

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
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

type fileState struct {
	PodCIDR     netip.Prefix             `json:"podCIDR"`
	Allocations []Allocation             `json:"allocations"`
	Cooling     map[netip.Addr]time.Time `json:"cooling,omitempty"`
}

// Store is the allocator. It is safe for concurrent use.
type Store struct {
	path     string
	cidr     netip.Prefix
	cooldown time.Duration
	now      func() time.Time

	lock *os.File // flock held on the state directory's lock file

	mu      sync.Mutex
	allocs  map[Key]*Allocation
	byIP    map[netip.Addr]Key
	cooling map[netip.Addr]time.Time
	next    netip.Addr
}

// Open loads (or creates) the store at path for the node's podCIDR, and
// locks its directory. A state file written for another podCIDR is refused
// with ErrPodCIDRChanged, an empty or unreadable one with ErrCorrupt: the
// caller decides what becomes of it (see Recover).
func Open(path string, podCIDR netip.Prefix, cooldown time.Duration) (*Store, error) {
	s, err := newStore(path, podCIDR, cooldown)
	if err != nil {
		return nil, err
	}
	if err := s.load(); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// Recover starts a store at path afresh, with allocations rebuilt from the
// host (the pods' veths and routes), when the state file was lost. The
// caller moves the bad file aside first.
func Recover(path string, podCIDR netip.Prefix, cooldown time.Duration, allocs []Allocation) (*Store, error) {
	s, err := newStore(path, podCIDR, cooldown)
	if err != nil {
		return nil, err
	}
	for i := range allocs {
		a := allocs[i]
		if !s.cidr.Contains(a.IP) || s.reserved(a.IP) {
			continue
		}
		if _, dup := s.byIP[a.IP]; dup {
			continue
		}
		if a.Created.IsZero() {
			a.Created = s.now().UTC()
		}
		s.allocs[a.Key] = &a
		s.byIP[a.IP] = a.Key
	}
	if err := s.save(); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

func newStore(path string, podCIDR netip.Prefix, cooldown time.Duration) (*Store, error) {
	podCIDR = podCIDR.Masked()
	if !podCIDR.Addr().Is4() || podCIDR.Bits() > 30 {
		return nil, fmt.Errorf("podCIDR %v: want an IPv4 range of /30 or larger", podCIDR)
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
	return &Store{
		path: path, cidr: podCIDR, cooldown: cooldown, now: time.Now, lock: lock,
		allocs: map[Key]*Allocation{}, byIP: map[netip.Addr]Key{}, cooling: map[netip.Addr]time.Time{},
	}, nil
}

// Close releases the state directory's lock.
func (s *Store) Close() error {
	if s.lock == nil {
		return nil
	}
	err := s.lock.Close() // closing the descriptor drops the flock
	s.lock = nil
	return err
}

func (s *Store) load() error {
	data, err := os.ReadFile(s.path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return s.save()
	case err != nil:
		return fmt.Errorf("read IPAM state: %w", err)
	}
	if len(data) == 0 {
		return fmt.Errorf("%w: %s is empty", ErrCorrupt, s.path)
	}
	var st fileState
	if err := json.Unmarshal(data, &st); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrCorrupt, s.path, err)
	}
	if st.PodCIDR.IsValid() && st.PodCIDR != s.cidr {
		return fmt.Errorf("%w: %s holds %v, the node now has %v", ErrPodCIDRChanged, s.path, st.PodCIDR, s.cidr)
	}
	for i := range st.Allocations {
		a := st.Allocations[i]
		if !s.cidr.Contains(a.IP) {
			return fmt.Errorf("%w: %s: %v (%s) outside %v", ErrCorrupt, s.path, a.IP, a.Key, s.cidr)
		}
		if other, dup := s.byIP[a.IP]; dup {
			return fmt.Errorf("%w: %s: %v held by both %s and %s", ErrCorrupt, s.path, a.IP, other, a.Key)
		}
		s.allocs[a.Key] = &a
		s.byIP[a.IP] = a.Key
	}
	for ip, t := range st.Cooling {
		s.cooling[ip] = t
	}
	return nil
}

// ReadAllocations reads the allocations of a state file without opening a
// store on it (an old state kept aside).
func ReadAllocations(path string) ([]Allocation, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var st fileState
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrCorrupt, path, err)
	}
	return st.Allocations, nil
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
	if err := s.save(); err != nil {
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
	a, ok := s.allocs[k]
	if !ok {
		return Allocation{}, false, nil
	}
	undo := s.drop(a)
	if err := s.save(); err != nil {
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
	var out []Allocation
	var undos []func()
	for _, a := range s.allocs {
		if !keep(*a) {
			out = append(out, *a)
			undos = append(undos, s.drop(a))
		}
	}
	if len(out) == 0 {
		return nil, nil
	}
	if err := s.save(); err != nil {
		for _, u := range undos {
			u()
		}
		return nil, err
	}
	return out, nil
}

// drop removes an allocation (its address cools down) and returns what
// puts it back, for a save that fails.
func (s *Store) drop(a *Allocation) (undo func()) {
	delete(s.allocs, a.Key)
	delete(s.byIP, a.IP)
	prev, wasCooling := s.cooling[a.IP]
	if s.cooldown > 0 {
		s.cooling[a.IP] = s.now().Add(s.cooldown).UTC()
	}
	return func() {
		s.allocs[a.Key] = a
		s.byIP[a.IP] = a.Key
		if wasCooling {
			s.cooling[a.IP] = prev
		} else {
			delete(s.cooling, a.IP)
		}
	}
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

// usable is the number of addresses that may ever be handed out.
func (s *Store) usable() int {
	return 1<<(32-s.cidr.Bits()) - 3
}

// reserved reports whether ip is the network, gateway or broadcast address.
func (s *Store) reserved(ip netip.Addr) bool {
	network := s.cidr.Addr()
	if ip == network || ip == network.Next() {
		return true
	}
	return !s.cidr.Contains(ip.Next())
}

// findFree scans next-fit from the cursor: the address freed last is
// reused last. Expired cooling entries are dropped on the way.
func (s *Store) findFree() (netip.Addr, bool) {
	now := s.now()
	start := s.next
	if !start.IsValid() || !s.cidr.Contains(start) {
		start = s.cidr.Addr()
	}
	ip := start
	for i := 0; i < 1<<(32-s.cidr.Bits()); i++ {
		if !s.reserved(ip) {
			if _, used := s.byIP[ip]; !used {
				t, cooling := s.cooling[ip]
				if !cooling || !now.Before(t) {
					delete(s.cooling, ip)
					return ip, true
				}
			}
		}
		ip = ip.Next()
		if !s.cidr.Contains(ip) {
			ip = s.cidr.Addr()
		}
	}
	return netip.Addr{}, false
}

// save writes the state atomically (temporary file, then rename).
func (s *Store) save() error {
	st := fileState{PodCIDR: s.cidr, Allocations: make([]Allocation, 0, len(s.allocs)), Cooling: map[netip.Addr]time.Time{}}
	for _, a := range s.allocs {
		st.Allocations = append(st.Allocations, *a)
	}
	sort.Slice(st.Allocations, func(i, j int) bool { return st.Allocations[i].IP.Less(st.Allocations[j].IP) })
	now := s.now()
	for ip, t := range s.cooling {
		if now.Before(t) {
			st.Cooling[ip] = t
		}
	}
	data, err := json.MarshalIndent(st, "", " ")
	if err != nil {
		return err
	}
	tmp := s.path + ".tmp"
	if err := writeSynced(tmp, data); err != nil {
		return fmt.Errorf("write IPAM state: %w", err)
	}
	if err := os.Rename(tmp, s.path); err != nil {
		return fmt.Errorf("write IPAM state: %w", err)
	}
	// The rename itself is durable only once the directory is synced.
	dir, err := os.Open(filepath.Dir(s.path))
	if err != nil {
		return fmt.Errorf("sync IPAM state directory: %w", err)
	}
	defer dir.Close()
	if err := dir.Sync(); err != nil {
		return fmt.Errorf("sync IPAM state directory: %w", err)
	}
	return nil
}

// writeSynced writes data to path and fsyncs it before closing.
func writeSynced(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
