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
	"bytes"
	"crypto/rand"
	"encoding/hex"
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

	"golang.org/x/sys/unix"

	"github.com/aliasip/aliasip/internal/blocksize"
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

type fileState struct {
	// Generation names this snapshot; only a journal that starts with it
	// continues it.
	Generation string `json:"generation,omitempty"`
	// Seq is the last journal record the snapshot holds.
	Seq         uint64                   `json:"seq,omitempty"`
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
		s.release() // no compaction: the state on disk stays as it was
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
	if err := s.compact(); err != nil {
		s.release()
		return nil, err
	}
	return s, nil
}

// JournalSuffix names the journal: the snapshot's path and this.
const JournalSuffix = ".journal"

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

func newStore(path string, podCIDR netip.Prefix, cooldown time.Duration) (*Store, error) {
	podCIDR = podCIDR.Masked()
	if !podCIDR.Addr().Is4() {
		return nil, fmt.Errorf("podCIDR %v: want an IPv4 range", podCIDR)
	}
	// The same rule the controller applies before handing a block out.
	if err := blocksize.Check(podCIDR); err != nil {
		return nil, fmt.Errorf("podCIDR %v: %w", podCIDR, err)
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
		path: path, cidr: podCIDR, cooldown: cooldown, now: time.Now, lock: lock, journal: journal,
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

func (s *Store) load() error {
	if err := s.read(); err != nil {
		return err
	}
	// Start with a snapshot of everything and an empty journal.
	return s.compact()
}

// read fills the maps from the snapshot and the journal. With no cidr set
// (ReadAllocations) the snapshot's is taken.
func (s *Store) read() error {
	journal, jerr := os.ReadFile(s.path + JournalSuffix)
	if jerr != nil && !errors.Is(jerr, os.ErrNotExist) {
		return fmt.Errorf("read IPAM journal: %w", jerr)
	}
	data, err := os.ReadFile(s.path)
	switch {
	case errors.Is(err, os.ErrNotExist) && len(journal) == 0:
		return nil // a new store
	case errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("%w: %s is missing but its journal is not", ErrCorrupt, s.path)
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
	if !s.cidr.IsValid() {
		s.cidr = st.PodCIDR
	}
	if st.PodCIDR.IsValid() && st.PodCIDR != s.cidr {
		return fmt.Errorf("%w: %s holds %v, the node now has %v", ErrPodCIDRChanged, s.path, st.PodCIDR, s.cidr)
	}
	for i := range st.Allocations {
		if err := s.add(&st.Allocations[i]); err != nil {
			return fmt.Errorf("%w: %s: %v", ErrCorrupt, s.path, err)
		}
	}
	for ip, t := range st.Cooling {
		s.cooling[ip] = t
	}
	s.seq = st.Seq
	s.gen = st.Generation
	head, rest, _ := bytes.Cut(journal, []byte("\n"))
	var h journalHeader
	if json.Unmarshal(head, &h) != nil || h.Generation == "" || h.Generation != st.Generation {
		// Not this snapshot's journal: one the snapshot already covers
		// (a crash between the two steps of compact), one whose header
		// write was torn, or one left from before an older release wrote
		// this snapshot. Everything it could hold is in the snapshot or
		// was never answered.
		return nil
	}
	return s.replay(rest)
}

// journalHeader is the journal's first line.
type journalHeader struct {
	Generation string `json:"generation"`
}

// add puts a stored allocation in the maps, refusing what no save writes.
func (s *Store) add(a *Allocation) error {
	if !s.cidr.Contains(a.IP) {
		return fmt.Errorf("%v (%s) outside %v", a.IP, a.Key, s.cidr)
	}
	if other, dup := s.byIP[a.IP]; dup && other != a.Key {
		return fmt.Errorf("%v held by both %s and %s", a.IP, other, a.Key)
	}
	if old, ok := s.allocs[a.Key]; ok {
		delete(s.byIP, old.IP)
	}
	s.allocs[a.Key] = a
	s.byIP[a.IP] = a.Key
	delete(s.cooling, a.IP)
	return nil
}

// record is one journal line: an allocation made, or one released (and
// when its address may be reused).
type record struct {
	Seq       uint64      `json:"seq"`
	Add       *Allocation `json:"add,omitempty"`
	Del       *Key        `json:"del,omitempty"`
	CoolUntil *time.Time  `json:"coolUntil,omitempty"`
}

// replay applies the journal's records newer than the snapshot.
func (s *Store) replay(journal []byte) error {
	for len(journal) > 0 {
		line, rest, complete := bytes.Cut(journal, []byte("\n"))
		journal = rest
		var r record
		if err := json.Unmarshal(line, &r); err != nil || (r.Add == nil) == (r.Del == nil) {
			if !complete || len(bytes.TrimSpace(rest)) == 0 {
				// The last record, torn by a crash in its write: the call
				// that wrote it never returned, nobody was given its result.
				return nil
			}
			return fmt.Errorf("%w: %s%s: bad record %q", ErrCorrupt, s.path, JournalSuffix, line)
		}
		if r.Seq <= s.seq {
			continue // in the snapshot already
		}
		s.seq = r.Seq
		if r.Add != nil {
			if err := s.add(r.Add); err != nil {
				return fmt.Errorf("%w: %s%s: %v", ErrCorrupt, s.path, JournalSuffix, err)
			}
			continue
		}
		if a, ok := s.allocs[*r.Del]; ok {
			delete(s.allocs, a.Key)
			delete(s.byIP, a.IP)
			if r.CoolUntil != nil {
				s.cooling[a.IP] = *r.CoolUntil
			}
		}
	}
	return nil
}

// ReadAllocations reads the allocations of a state (snapshot and journal)
// without opening a store on it: an old state kept aside by MoveAside.
func ReadAllocations(path string) ([]Allocation, error) {
	s := &Store{path: path, allocs: map[Key]*Allocation{}, byIP: map[netip.Addr]Key{}, cooling: map[netip.Addr]time.Time{}}
	if _, err := os.Stat(path); err != nil {
		return nil, err
	}
	if err := s.read(); err != nil {
		return nil, err
	}
	return s.snapshot().Allocations, nil
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

// drop removes an allocation (its address cools down) and returns what
// puts it back, for a write that fails, and the journal record.
func (s *Store) drop(a *Allocation) (undo func(), rec record) {
	delete(s.allocs, a.Key)
	delete(s.byIP, a.IP)
	prev, wasCooling := s.cooling[a.IP]
	key := a.Key
	rec = record{Del: &key}
	if s.cooldown > 0 {
		until := s.now().Add(s.cooldown).UTC()
		s.cooling[a.IP] = until
		rec.CoolUntil = &until
	}
	return func() {
		s.allocs[a.Key] = a
		s.byIP[a.IP] = a.Key
		if wasCooling {
			s.cooling[a.IP] = prev
		} else {
			delete(s.cooling, a.IP)
		}
	}, rec
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

// maxJournal bounds the journal: past it the next change rewrites the
// snapshot instead (a /24 of pods churning writes ~250 bytes a change).
var maxJournal int64 = 256 << 10

// write makes recs durable: appended to the journal in one write and
// fdatasynced, or — when the journal is full or a failed write may have
// left a record in it — the whole state in a new snapshot. On error the
// caller rolls its in-memory change back; no record of it stays behind.
func (s *Store) write(recs ...record) error {
	if s.lock == nil {
		return ErrClosed
	}
	first := s.seq + 1
	s.seq += uint64(len(recs)) // consumed even on failure: see broken
	if s.broken || s.jsize >= maxJournal {
		return s.compact()
	}
	var buf bytes.Buffer
	for i := range recs {
		recs[i].Seq = first + uint64(i)
		line, err := json.Marshal(recs[i])
		if err != nil {
			return err
		}
		buf.Write(line)
		buf.WriteByte('\n')
	}
	n, err := s.journal.Write(buf.Bytes())
	if err == nil {
		// fdatasync: the records and the file's new size, not its times.
		err = unix.Fdatasync(int(s.journal.Fd()))
	}
	if err != nil {
		// Take the record out again, whether or not it reached the disk,
		// so that it is never replayed. If even that fails, the next
		// change writes a snapshot first, whose sequence number (the
		// failed records' were consumed) covers whatever is left.
		if terr := s.truncateJournal(s.jsize); terr != nil {
			s.broken = true
		}
		return fmt.Errorf("write IPAM journal: %w", err)
	}
	s.jsize += int64(n)
	return nil
}

// compact writes the whole state as a new snapshot, then empties the
// journal (the snapshot's sequence number covers every record in it, should
// a crash come in between).
func (s *Store) compact() error {
	if s.lock == nil {
		return ErrClosed // the directory is not ours any more
	}
	var g [8]byte
	if _, err := rand.Read(g[:]); err != nil {
		return err
	}
	s.gen = hex.EncodeToString(g[:])
	if err := s.save(); err != nil {
		// The rename may have happened before the failure: rewrite the
		// snapshot from memory (rolled back by the caller) next time.
		s.broken = true
		return err
	}
	// The old journal is of another generation now: ignored if a crash
	// comes before it is replaced.
	header, err := json.Marshal(journalHeader{Generation: s.gen})
	if err != nil {
		return err
	}
	header = append(header, '\n')
	if err := s.truncateJournal(0); err != nil {
		s.broken = true
		return nil // the snapshot is durable; the journal is replaced next time
	}
	n, err := s.journal.Write(header)
	if err == nil {
		err = unix.Fdatasync(int(s.journal.Fd()))
	}
	s.jsize = int64(n)
	if err != nil {
		// Records appended to a journal without its header would be
		// ignored on load: start over at the next change.
		s.broken = true
		return nil
	}
	s.broken = false
	return nil
}

func (s *Store) truncateJournal(size int64) error {
	if err := s.journal.Truncate(size); err != nil {
		return err
	}
	if err := unix.Fdatasync(int(s.journal.Fd())); err != nil {
		return err
	}
	s.jsize = size
	return nil
}

// snapshot is the state as the snapshot file holds it.
func (s *Store) snapshot() fileState {
	st := fileState{Generation: s.gen, Seq: s.seq, PodCIDR: s.cidr, Allocations: make([]Allocation, 0, len(s.allocs)), Cooling: map[netip.Addr]time.Time{}}
	for _, a := range s.allocs {
		st.Allocations = append(st.Allocations, *a)
	}
	sort.Slice(st.Allocations, func(i, j int) bool { return st.Allocations[i].IP.Less(st.Allocations[j].IP) })
	now := time.Now()
	if s.now != nil {
		now = s.now()
	}
	for ip, t := range s.cooling {
		if now.Before(t) {
			st.Cooling[ip] = t
		}
	}
	return st
}

// save writes the snapshot atomically (temporary file, then rename).
func (s *Store) save() error {
	data, err := json.MarshalIndent(s.snapshot(), "", " ")
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
