package gce

import (
	"context"
	"net/netip"
	"sync"
	"time"

	compute "google.golang.org/api/compute/v1"

	"github.com/aliasip/aliasip/cloud"
)

// nicState is what we know of an instance's nic0. fingerprint is "" when
// unknown (after our own write: the operation changes it).
type nicState struct {
	name        string
	subnetwork  string
	aliases     []*compute.AliasIpRange
	ipv6        netip.Prefix // nicIPv6; the zero Prefix when none
	fingerprint string
	// seq orders the reads and writes the state comes from: a state is
	// never replaced by one from a read that began before it was recorded.
	seq uint64
	// writeSeq, for a state our own write recorded, is when that write
	// began: writes to one NIC are ordered by its fingerprint, so a write
	// that began later holds the newer list whatever order their
	// completions are reported in.
	writeSeq uint64
}

func newNICState(nic *compute.NetworkInterface) *nicState {
	name := nic.Name
	if name == "" {
		name = "nic0"
	}
	return &nicState{name: name, subnetwork: nic.Subnetwork, aliases: nic.AliasIpRanges, ipv6: nicIPv6(nic), fingerprint: nic.Fingerprint}
}

// nicCache holds the NICs of the instances we manage, filled by lists (and
// gets for instances a list has not seen yet) and by our own writes, so a
// node's sync costs no call when nothing changed.
type nicCache struct {
	c *Cloud

	mu    sync.Mutex
	seq   uint64
	m     map[cloud.InstanceRef]*nicState
	pages int // pages the last full list took
	batch *missBatch
}

// missBatch gathers cache misses for MissWindow.
type missBatch struct {
	done chan struct{}
	n    int
}

func newNICCache(c *Cloud) *nicCache {
	return &nicCache{c: c, m: map[cloud.InstanceRef]*nicState{}}
}

func (m *nicCache) key(inst cloud.InstanceRef) cloud.InstanceRef {
	inst.Project = m.c.project(inst)
	return inst
}

// begin returns the sequence number of a read or write that starts now.
func (m *nicCache) begin() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.seq++
	return m.seq
}

func (m *nicCache) get(inst cloud.InstanceRef) (*nicState, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	st, ok := m.m[m.key(inst)]
	return st, ok
}

// store records the NIC read by a read that began at seq, unless a later
// read or write already recorded a newer state. It returns the state read.
func (m *nicCache) store(inst cloud.InstanceRef, nic *compute.NetworkInterface, seq uint64) *nicState {
	st := newNICState(nic)
	st.seq = seq
	m.mu.Lock()
	defer m.mu.Unlock()
	k := m.key(inst)
	if old, ok := m.m[k]; !ok || old.seq <= seq {
		m.m[k] = st
	}
	return st
}

// applied records the list our finished write (begun at writeSeq) left on
// the NIC. It is stamped with the time of completion, so no read or list
// that began before the operation finished (and may have seen the old
// list) replaces it; only a record of a write that began later wins over it.
func (m *nicCache) applied(inst cloud.InstanceRef, from *nicState, aliases []*compute.AliasIpRange, writeSeq uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := m.key(inst)
	if old, ok := m.m[k]; ok && old.writeSeq > writeSeq {
		return
	}
	m.seq++
	// The write sent only aliasIpRanges, and the call "follows PATCH
	// semantics" (InstancesService.UpdateNetworkInterface): the NIC's
	// IPv6 range is as it was read.
	m.m[k] = &nicState{name: from.name, subnetwork: from.subnetwork, aliases: aliases, ipv6: from.ipv6, seq: m.seq, writeSeq: writeSeq}
}

// forget drops what a read or write begun before seq recorded.
func (m *nicCache) forget(inst cloud.InstanceRef, seq uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := m.key(inst)
	if old, ok := m.m[k]; ok && old.seq <= seq {
		delete(m.m, k)
	}
}

// replace installs a full list begun at seq: entries it has are updated
// unless newer, entries in its scope (our project and subnetwork) it lacks
// are dropped unless newer. Entries outside its scope, read one by one (a
// NIC on another subnetwork, an instance of another project), are kept so
// they do not miss again at every sync.
func (m *nicCache) replace(all map[cloud.InstanceRef]*nicState, seq uint64, pages int, inScope func(cloud.InstanceRef, *nicState) bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for k, old := range m.m {
		if _, ok := all[k]; !ok && old.seq < seq && inScope(k, old) {
			delete(m.m, k)
		}
	}
	for k, st := range all {
		st.seq = seq
		if old, ok := m.m[k]; !ok || old.seq < seq {
			m.m[k] = st
		}
	}
	m.pages = pages
}

// awaitMiss waits until the misses gathered with this one have been served:
// when they outnumber the pages a list takes, by one list; otherwise each
// caller reads its own instance.
func (m *nicCache) awaitMiss(ctx context.Context) error {
	m.mu.Lock()
	b := m.batch
	if b == nil {
		b = &missBatch{done: make(chan struct{})}
		m.batch = b
		time.AfterFunc(m.c.cfg.MissWindow, func() { m.flush(b) })
	}
	b.n++
	m.mu.Unlock()
	select {
	case <-b.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (m *nicCache) flush(b *missBatch) {
	m.mu.Lock()
	m.batch = nil
	n, pages := b.n, max(m.pages, 1)
	m.mu.Unlock()
	defer close(b.done)
	if n <= pages {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, _, err := m.c.list(ctx); err != nil {
		m.c.logf("gce: listing instances for %d cache misses: %v", n, err)
	}
}
