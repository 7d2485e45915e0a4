package egress

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"go4.org/netipx"
)

// TableName is the nftables table aliasip owns: "table ip aliasip", and
// on a dual-stack node "table ip6 aliasip" beside it (ip6 masquerade is
// its own table: an ip table's chains see IPv4 packets only, nft(8)
// ADDRESS FAMILIES). Nothing else of the host's ruleset is touched:
// kube-proxy (iptables or nftables mode) and portmap keep their own
// tables and chains.
const TableName = "aliasip"

const (
	chainName     = "postrouting"
	setPodBlocks  = "pod_blocks"
	setNonMasq    = "nonmasq"
	ipv4SrcOffset = 12 // the IPv4 header's source address
	ipv4DstOffset = 16 // and destination address
	ipv6SrcOffset = 8  // the IPv6 header's source address
	ipv6DstOffset = 24 // and destination address
)

// family is what differs between the ip and the ip6 table.
type family struct {
	nft            nftables.TableFamily
	name           string // as nft(8) names it
	key            nftables.SetDatatype
	src, dst, size uint32
	max            netip.Addr // the last address
}

var (
	familyIPv4 = family{nftables.TableFamilyIPv4, "ip", nftables.TypeIPAddr, ipv4SrcOffset, ipv4DstOffset, 4, netip.MustParseAddr("255.255.255.255")}
	familyIPv6 = family{nftables.TableFamilyIPv6, "ip6", nftables.TypeIP6Addr, ipv6SrcOffset, ipv6DstOffset, 16, netip.MustParseAddr("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")}
)

func (f family) has(a netip.Addr) bool {
	if f.nft == nftables.TableFamilyIPv6 {
		return a.Is6() && !a.Is4In6()
	}
	return a.Is4()
}

// chainPriority is srcnat + 10. Base chains on one hook run in priority
// order and a connection's source NAT is decided by the first chain that
// maps it, so kube-proxy's masquerade of marked Service traffic (its
// KUBE-POSTROUTING in iptables' nat POSTROUTING at srcnat, or the
// nat-postrouting chain of its nftables table at srcnat) and portmap's
// hostPort SNAT come first, as ip-masq-agent's rule comes after
// KUBE-POSTROUTING in POSTROUTING (nft(8), CHAINS: "standard priority
// names", srcnat = 100; kubernetes pkg/proxy/nftables/proxier.go).
var chainPriority = nftables.ChainPriorityRef(*nftables.ChainPriorityNATSource + 10)

// Rules is what the table holds: one rule,
//
//	ip saddr @pod_blocks ip daddr != @nonmasq masquerade fully-random
//
// (ip6 saddr and ip6 daddr in the ip6 table; prefixes of the other
// family are left out of its sets)
// in a nat chain on postrouting. Masquerade takes the address of the
// interface the packet leaves by (the node's), and fully-random picks
// source ports at random as kube-proxy's --random-fully masquerade does,
// so two pods' connections never collide on a port.
type Rules struct {
	// PodBlocks are the sources that are masqueraded: this node's pod blocks.
	PodBlocks []netip.Prefix
	// NonMasquerade are the destinations pods reach with their own addresses.
	NonMasquerade []netip.Prefix
}

// Table programs and reads one aliasip table (ip or ip6) in one network
// namespace.
type Table struct {
	opts []nftables.ConnOption
	fam  family
}

// NewTable returns the ip table of the network namespace open at netnsFd
// (-1: this process's).
func NewTable(netnsFd int) *Table {
	return newTable(netnsFd, familyIPv4)
}

// NewTable6 returns the ip6 table (a dual-stack node's IPv6 masquerade)
// of the network namespace open at netnsFd (-1: this process's).
func NewTable6(netnsFd int) *Table {
	return newTable(netnsFd, familyIPv6)
}

func newTable(netnsFd int, fam family) *Table {
	t := &Table{fam: fam}
	if netnsFd >= 0 {
		t.opts = append(t.opts, nftables.WithNetNSFd(netnsFd))
	}
	return t
}

// Family is the table's family as nft(8) names it: "ip" or "ip6".
func (t *Table) Family() string { return t.fam.name }

// Describe renders want as Read renders this table in the kernel.
func (t *Table) Describe(want Rules) string { return describe(t.fam, want) }

func (t *Table) conn() (*nftables.Conn, error) {
	return nftables.New(t.opts...)
}

// Sync makes the table hold exactly want. It reports whether it had to
// write (the table was missing, or differed: edited, flushed, or want
// changed). The write is one netlink transaction that deletes and
// re-creates the table, so packets see either the old rules or the new,
// never none; established connections keep their conntrack NAT bindings.
func (t *Table) Sync(want Rules) (changed bool, err error) {
	wantText := t.Describe(want)
	got, err := t.Read()
	if err != nil {
		return false, err
	}
	if got == wantText {
		return false, nil
	}
	c, err := t.conn()
	if err != nil {
		return false, err
	}
	table := &nftables.Table{Name: TableName, Family: t.fam.nft}
	// Add, delete, add: idempotent whether or not the table exists
	// (nft(8): "delete table" of a table just added in the same
	// transaction; kindnet's CleanRules relies on the same).
	c.AddTable(table)
	c.DelTable(table)
	c.AddTable(table)
	pods := &nftables.Set{Table: table, Name: setPodBlocks, KeyType: t.fam.key, Interval: true}
	if err := c.AddSet(pods, intervalElements(t.fam, want.PodBlocks)); err != nil {
		return false, fmt.Errorf("set %s: %w", setPodBlocks, err)
	}
	nonMasq := &nftables.Set{Table: table, Name: setNonMasq, KeyType: t.fam.key, Interval: true}
	if err := c.AddSet(nonMasq, intervalElements(t.fam, want.NonMasquerade)); err != nil {
		return false, fmt.Errorf("set %s: %w", setNonMasq, err)
	}
	accept := nftables.ChainPolicyAccept
	chain := c.AddChain(&nftables.Chain{
		Name: chainName, Table: table, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: chainPriority, Policy: &accept,
	})
	c.AddRule(&nftables.Rule{Table: table, Chain: chain, Exprs: []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: t.fam.src, Len: t.fam.size},
		&expr.Lookup{SourceRegister: 1, SetName: pods.Name, SetID: pods.ID},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: t.fam.dst, Len: t.fam.size},
		&expr.Lookup{SourceRegister: 1, SetName: nonMasq.Name, SetID: nonMasq.ID, Invert: true},
		&expr.Masq{FullyRandom: true},
	}})
	if err := c.Flush(); err != nil {
		return false, fmt.Errorf("program table %s %s: %w", t.fam.name, TableName, err)
	}
	return true, nil
}

// Delete removes the table (the explicit clean-up: masquerade turned off,
// or `aliasip-agent cleanup`). Deleting a table that is not there is not
// an error. The ip table's Delete removes the ip6 table too, in the same
// transaction: the one call that turns masquerade off leaves no IPv6
// masquerade of a dual-stack node behind. existed reports whether either
// was there.
func (t *Table) Delete() (existed bool, err error) {
	c, err := t.conn()
	if err != nil {
		return false, err
	}
	fams := []family{t.fam}
	if t.fam.nft == nftables.TableFamilyIPv4 {
		fams = append(fams, familyIPv6)
	}
	var names []string
	for _, f := range fams {
		_, ok, err := (&Table{fam: f}).find(c)
		if err != nil {
			return false, err
		}
		if ok {
			table := &nftables.Table{Name: TableName, Family: f.nft}
			c.AddTable(table)
			c.DelTable(table)
			names = append(names, f.name)
		}
	}
	if len(names) == 0 {
		return false, nil
	}
	if err := c.Flush(); err != nil {
		return true, fmt.Errorf("delete table %s %s: %w", strings.Join(names, ","), TableName, err)
	}
	return true, nil
}

// find looks the table up over c (c's namespace is the one searched).
func (t *Table) find(c *nftables.Conn) (*nftables.Table, bool, error) {
	tables, err := c.ListTablesOfFamily(t.fam.nft)
	if err != nil {
		return nil, false, fmt.Errorf("list tables: %w", err)
	}
	for _, tb := range tables {
		if tb.Name == TableName {
			return tb, true, nil
		}
	}
	return nil, false, nil
}

// InPlace returns the rules the table in the kernel holds (ok false: no
// table).
func (t *Table) InPlace() (r Rules, ok bool, err error) {
	c, err := t.conn()
	if err != nil {
		return r, false, err
	}
	table, ok, err := t.find(c)
	if err != nil || !ok {
		return r, false, err
	}
	sets, err := c.GetSets(table)
	if err != nil {
		return r, false, err
	}
	for _, s := range sets {
		elems, err := c.GetSetElements(s)
		if err != nil {
			return r, false, err
		}
		var ps []netip.Prefix
		for _, rg := range elementRanges(t.fam, elems) {
			ps = append(ps, rg.Prefixes()...)
		}
		switch s.Name {
		case setPodBlocks:
			r.PodBlocks = ps
		case setNonMasq:
			r.NonMasquerade = ps
		}
	}
	return r, true, nil
}

// Read renders the table as the kernel holds it, in Describe's form ("" if
// there is no table). Anything aliasip would not have written shows up as
// a difference.
func (t *Table) Read() (string, error) {
	c, err := t.conn()
	if err != nil {
		return "", err
	}
	table, ok, err := t.find(c)
	if err != nil || !ok {
		return "", err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "table %s %s", t.fam.name, TableName)
	if table.Flags != 0 {
		// dormant turns every base chain off while sets, chains and
		// rules stay as written: a difference to repair.
		fmt.Fprintf(&b, " flags=%#x", table.Flags)
	}
	b.WriteString("\n")
	sets, err := c.GetSets(table)
	if err != nil {
		return "", fmt.Errorf("list sets: %w", err)
	}
	sort.Slice(sets, func(i, j int) bool { return sets[i].Name < sets[j].Name })
	for _, s := range sets {
		elems, err := c.GetSetElements(s)
		if err != nil {
			return "", fmt.Errorf("list set %s: %w", s.Name, err)
		}
		kind := "set"
		if !s.Interval || s.KeyType.Name != t.fam.key.Name {
			kind = fmt.Sprintf("set(interval=%v,type=%s)", s.Interval, s.KeyType.Name)
		}
		fmt.Fprintf(&b, "%s %s %s\n", kind, s.Name, rangesText(elementRanges(t.fam, elems)))
	}
	chains, err := c.ListChainsOfTableFamily(t.fam.nft)
	if err != nil {
		return "", fmt.Errorf("list chains: %w", err)
	}
	sort.Slice(chains, func(i, j int) bool { return chains[i].Name < chains[j].Name })
	for _, ch := range chains {
		if ch.Table.Name != TableName {
			continue
		}
		fmt.Fprintf(&b, "chain %s %s\n", ch.Name, chainText(ch))
		rules, err := c.GetRules(table, ch)
		if err != nil {
			return "", fmt.Errorf("list rules of %s: %w", ch.Name, err)
		}
		for _, r := range rules {
			fmt.Fprintf(&b, "rule %s\n", exprsText(r.Exprs))
		}
	}
	return b.String(), nil
}

// Describe renders want in the form Read renders the kernel's ip table
// (Table.Describe for either table).
func Describe(want Rules) string { return describe(familyIPv4, want) }

func describe(f family, want Rules) string {
	accept := nftables.ChainPolicyAccept
	ch := &nftables.Chain{Type: nftables.ChainTypeNAT, Hooknum: nftables.ChainHookPostrouting, Priority: chainPriority, Policy: &accept}
	return fmt.Sprintf("table %s %s\nset %s %s\nset %s %s\nchain %s %s\nrule %s\n", f.name, TableName,
		setNonMasq, rangesText(merge(f, want.NonMasquerade)),
		setPodBlocks, rangesText(merge(f, want.PodBlocks)),
		chainName, chainText(ch),
		exprsText([]expr.Any{
			&expr.Payload{Base: expr.PayloadBaseNetworkHeader, Offset: f.src, Len: f.size},
			&expr.Lookup{SetName: setPodBlocks},
			&expr.Payload{Base: expr.PayloadBaseNetworkHeader, Offset: f.dst, Len: f.size},
			&expr.Lookup{SetName: setNonMasq, Invert: true},
			&expr.Masq{FullyRandom: true},
		}))
}

func chainText(ch *nftables.Chain) string {
	s := fmt.Sprintf("type=%s", ch.Type)
	if ch.Hooknum != nil {
		s += fmt.Sprintf(" hook=%d", *ch.Hooknum)
	}
	if ch.Priority != nil {
		s += fmt.Sprintf(" priority=%d", *ch.Priority)
	}
	if ch.Policy != nil {
		s += fmt.Sprintf(" policy=%d", *ch.Policy)
	}
	return s
}

// exprsText renders the expressions aliasip writes by meaning (registers
// and set IDs aside); any other expression by its type, so it differs.
func exprsText(es []expr.Any) string {
	var parts []string
	for _, e := range es {
		switch e := e.(type) {
		case *expr.Payload:
			parts = append(parts, fmt.Sprintf("payload(base=%d,off=%d,len=%d)", e.Base, e.Offset, e.Len))
		case *expr.Lookup:
			parts = append(parts, fmt.Sprintf("lookup(@%s,invert=%v)", e.SetName, e.Invert))
		case *expr.Masq:
			parts = append(parts, fmt.Sprintf("masq(random=%v,fully-random=%v,persistent=%v,ports=%v)", e.Random, e.FullyRandom, e.Persistent, e.ToPorts))
		default:
			parts = append(parts, fmt.Sprintf("%T", e))
		}
	}
	return strings.Join(parts, " ")
}

// merge returns the prefixes of family f as the smallest list of ranges
// (overlaps and neighbours joined): what an interval set can hold, since
// the kernel refuses overlapping intervals.
func merge(f family, ps []netip.Prefix) []netipx.IPRange {
	var b netipx.IPSetBuilder
	for _, p := range ps {
		if p.IsValid() && f.has(p.Addr()) {
			b.AddPrefix(p.Masked())
		}
	}
	s, _ := b.IPSet()
	return s.Ranges()
}

// intervalElements turns prefixes into an interval set's elements: each
// range is its first address, then the address after its last flagged as
// an interval end (nft(8) "flags interval"; the kernel's rbtree set
// keeps the two as separate elements).
//
// An interval reaching the family's last address has no end element
// (there is no next address), as nft writes such a range.
func intervalElements(f family, ps []netip.Prefix) []nftables.SetElement {
	var out []nftables.SetElement
	for _, r := range merge(f, ps) {
		out = append(out, nftables.SetElement{Key: r.From().AsSlice()})
		if r.To() != f.max {
			out = append(out, nftables.SetElement{Key: r.To().Next().AsSlice(), IntervalEnd: true})
		}
	}
	return out
}

// elementRanges reads an interval set's elements back into ranges, in
// whatever order the kernel lists them.
func elementRanges(f family, elems []nftables.SetElement) []netipx.IPRange {
	type point struct {
		a   netip.Addr
		end bool
	}
	var pts []point
	for _, e := range elems {
		a, ok := netip.AddrFromSlice(e.Key)
		if !ok {
			continue
		}
		if f.nft == nftables.TableFamilyIPv4 {
			a = a.Unmap()
		}
		pts = append(pts, point{a, e.IntervalEnd})
	}
	slices.SortFunc(pts, func(x, y point) int { return x.a.Compare(y.a) })
	var out []netipx.IPRange
	for i := 0; i < len(pts); i++ {
		if pts[i].end {
			continue // an end with no start (the kernel's leading 0.0.0.0 or :: end)
		}
		from := pts[i].a
		to := f.max
		if i+1 < len(pts) {
			if pts[i+1].end {
				to = pts[i+1].a.Prev()
				i++
			} else {
				to = pts[i+1].a.Prev() // a start right after a start: single-address gap
			}
		}
		out = append(out, netipx.IPRangeFrom(from, to))
	}
	return out
}

func rangesText(rs []netipx.IPRange) string {
	if len(rs) == 0 {
		return "{}"
	}
	parts := make([]string, len(rs))
	for i, r := range rs {
		if p, ok := r.Prefix(); ok {
			parts[i] = p.String()
		} else {
			parts[i] = r.String()
		}
	}
	return "{" + strings.Join(parts, ",") + "}"
}

// Watch calls changed whenever an nftables object of an aliasip table (of
// either family: the tables share their name) is added or removed (someone flushed, deleted or edited it; aliasip's own writes
// too), until ctx ends. Events of other tables are ignored. It returns an
// error only if the monitor cannot be opened at all; a monitor that ends
// later (the kernel drops a netlink socket's messages when a burst of
// events overflows its buffer: ENOBUFS, and the library then closes the
// stream) is reopened after calling changed, since events may be lost.
func (t *Table) Watch(ctx context.Context, changed func()) error {
	events, stop, err := t.monitor()
	if err != nil {
		return err
	}
	backoff := 100 * time.Millisecond
	for {
		t.drain(ctx, events, changed)
		stop()
		if ctx.Err() != nil {
			return nil
		}
		changed() // events may have been lost
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
		if events, stop, err = t.monitor(); err != nil {
			events, stop = nil, func() {}
			continue
		}
		backoff = 100 * time.Millisecond
	}
}

// monitor opens an nftables monitor; stop closes it and waits for its
// goroutines to end.
func (t *Table) monitor() (<-chan *nftables.MonitorEvent, func(), error) {
	// A lasting connection, closed by stop: the library's monitor does
	// not close its socket when it ends on an error (Monitor.Close is then
	// a no-op), which would leak one socket per reopen.
	c, err := nftables.New(append(slices.Clone(t.opts), nftables.AsLasting())...)
	if err != nil {
		return nil, nil, err
	}
	mon := nftables.NewMonitor(nftables.WithMonitorEventBuffer(64))
	events, err := c.AddMonitor(mon)
	if err != nil {
		c.CloseLasting()
		return nil, nil, fmt.Errorf("nftables monitor: %w", err)
	}
	stop := func() {
		mon.Close()
		c.CloseLasting()
		for range events {
			// until closed: the library forwards on an unbuffered channel
		}
	}
	return events, stop, nil
}

// drain reads events until the monitor ends or ctx does.
func (t *Table) drain(ctx context.Context, events <-chan *nftables.MonitorEvent, changed func()) {
	if events == nil {
		return
	}
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-events:
			if !ok {
				return
			}
			if ev.Error != nil {
				if ev.Type != nftables.MonitorEventTypeOOB {
					changed() // an object that did not parse: whose table cannot be told
				}
				continue
			}
			if ours(ev.Data) {
				changed()
			}
		}
	}
}

// ours reports whether an event's object belongs to the aliasip table
// (objects whose table cannot be told count as ours: a spare check costs
// a few netlink reads).
func ours(data any) bool {
	switch d := data.(type) {
	case *nftables.Table:
		return d.Name == TableName
	case *nftables.Chain:
		return d.Table == nil || d.Table.Name == TableName
	case *nftables.Rule:
		return d.Table == nil || d.Table.Name == TableName
	case *nftables.Set:
		return d.Table == nil || d.Table.Name == TableName
	default:
		return true
	}
}
