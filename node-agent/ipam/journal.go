// Persistence: the snapshot and the journal beside it (append, replay,
// compact, snapshot), as the package comment describes.

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
	"time"

	"golang.org/x/sys/unix"
)

type fileState struct {
	// Generation names this snapshot; only a journal that starts with it
	// continues it.
	Generation string `json:"generation,omitempty"`
	// Seq is the last journal record the snapshot holds.
	Seq     uint64       `json:"seq,omitempty"`
	PodCIDR netip.Prefix `json:"podCIDR"`
	// IPv6PodCIDR is the IPv6 block of a dual-stack store; omitted (zero)
	// when single-stack, as in every state written before dual-stack.
	IPv6PodCIDR netip.Prefix             `json:"ipv6PodCIDR,omitzero"`
	Allocations []Allocation             `json:"allocations"`
	Cooling     map[netip.Addr]time.Time `json:"cooling,omitempty"`
	// ExtraBlocks are the node's extra IPv4 blocks of a growable range
	// (SetExtraBlocks); omitted when it has none.
	ExtraBlocks []Block `json:"extraBlocks,omitempty"`
}

// JournalSuffix names the journal: the snapshot's path and this.
const JournalSuffix = ".journal"

func (s *Store) load() error {
	if err := s.read(); err != nil {
		return err
	}
	// Start with a snapshot of everything and an empty journal.
	return s.compact()
}

// read fills the maps from the snapshot and the journal. With no cidr set
// (ReadAllocations) the snapshot's blocks are taken.
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
		s.cidr, s.cidr6 = st.PodCIDR, st.IPv6PodCIDR
	}
	// A snapshot that records its blocks (all but the oldest) records both:
	// no IPv6 block is single-stack, and differs from a dual-stack store's.
	recorded := st.PodCIDR.IsValid() || st.IPv6PodCIDR.IsValid()
	if (st.PodCIDR.IsValid() && st.PodCIDR != s.cidr) || (recorded && st.IPv6PodCIDR != s.cidr6) {
		return fmt.Errorf("%w: %s holds %v, the node now has %v", ErrPodCIDRChanged, s.path, blocks(st.PodCIDR, st.IPv6PodCIDR), s.PodCIDRs())
	}
	if err := s.checkExtra(st.ExtraBlocks); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrCorrupt, s.path, err)
	}
	s.extra = st.ExtraBlocks
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

// blocks formats the blocks a snapshot records, as PodCIDRs would.
func blocks(v4, v6 netip.Prefix) []netip.Prefix {
	if v6.IsValid() {
		return []netip.Prefix{v4, v6}
	}
	return []netip.Prefix{v4}
}

// add puts a stored allocation in the maps, refusing what no save writes.
// A dual-stack allocation without an IPv6 address is one Recover kept.
func (s *Store) add(a *Allocation) error {
	if !s.cidr.Contains(a.IP) && s.extraOf(a.IP) < 0 {
		return fmt.Errorf("%v (%s) outside %v and the extra blocks %v", a.IP, a.Key, s.cidr, s.extra)
	}
	if a.IPv6.IsValid() && !s.cidr6.Contains(a.IPv6) {
		return fmt.Errorf("%v (%s) outside the IPv6 block %v", a.IPv6, a.Key, s.cidr6)
	}
	for _, ip := range a.addrs() {
		if other, dup := s.byIP[ip]; dup && other != a.Key {
			return fmt.Errorf("%v held by both %s and %s", ip, other, a.Key)
		}
	}
	if old, ok := s.allocs[a.Key]; ok {
		for _, ip := range old.addrs() {
			delete(s.byIP, ip)
		}
	}
	s.allocs[a.Key] = a
	for _, ip := range a.addrs() {
		s.byIP[ip] = a.Key
		delete(s.cooling, ip)
	}
	return nil
}

// record is one journal line: an allocation made (both of its addresses),
// or one released (and when its addresses may be reused).
type record struct {
	Seq       uint64      `json:"seq"`
	Add       *Allocation `json:"add,omitempty"`
	Del       *Key        `json:"del,omitempty"`
	CoolUntil *time.Time  `json:"coolUntil,omitempty"`
	// Blocks is the node's new set of extra blocks (SetExtraBlocks).
	Blocks *[]Block `json:"blocks,omitempty"`
}

// kinds counts what a record holds: exactly one of Add, Del and Blocks.
func (r record) kinds() int {
	n := 0
	for _, set := range []bool{r.Add != nil, r.Del != nil, r.Blocks != nil} {
		if set {
			n++
		}
	}
	return n
}

// replay applies the journal's records newer than the snapshot.
func (s *Store) replay(journal []byte) error {
	for len(journal) > 0 {
		line, rest, complete := bytes.Cut(journal, []byte("\n"))
		journal = rest
		var r record
		if err := json.Unmarshal(line, &r); err != nil || r.kinds() != 1 {
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
		if r.Blocks != nil {
			if err := s.checkExtra(*r.Blocks); err != nil {
				return fmt.Errorf("%w: %s%s: %v", ErrCorrupt, s.path, JournalSuffix, err)
			}
			s.extra = *r.Blocks
			continue
		}
		if r.Add != nil {
			if err := s.add(r.Add); err != nil {
				return fmt.Errorf("%w: %s%s: %v", ErrCorrupt, s.path, JournalSuffix, err)
			}
			continue
		}
		if a, ok := s.allocs[*r.Del]; ok {
			delete(s.allocs, a.Key)
			for _, ip := range a.addrs() {
				delete(s.byIP, ip)
				if r.CoolUntil != nil {
					s.cooling[ip] = *r.CoolUntil
				}
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
	st := fileState{Generation: s.gen, Seq: s.seq, PodCIDR: s.cidr, IPv6PodCIDR: s.cidr6, Allocations: make([]Allocation, 0, len(s.allocs)), Cooling: map[netip.Addr]time.Time{},
		ExtraBlocks: s.extra}
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
