// Package cloudtest is the contract of cloud.Interface as one test table,
// run against every implementation: the in-memory fake
// (fake/contract_test.go) and cloud/gce on the gcetest server
// (cloud/gce/contract_test.go). The rules of GCE's alias IP ranges are
// written twice, in package fake and in gcetest; here they are checked
// against each other.
//
// Each row names the GCE behaviour it rests on and where that behaviour is
// documented or was seen. A row that rests on no public evidence says so.
package cloudtest

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/aliasip/aliasip/cloud"
)

// The subnetwork every cloud under test has: its PodRange is PodRange,
// OtherRange is a second secondary range beside it, and IPv6Range is its
// internal IPv6 range, a ULA /64 like those GCE gives from fd20::/20.
var (
	PodRange   = cloud.AliasRange{CIDR: netip.MustParsePrefix("10.64.0.0/14"), RangeName: "pods"}
	OtherRange = cloud.AliasRange{CIDR: netip.MustParsePrefix("10.96.0.0/16"), RangeName: "services"}
	IPv6Range  = netip.MustParsePrefix("fd20:1:2:3::/64")
)

// Harness is what the contract needs of a cloud beyond cloud.Interface.
type Harness interface {
	// AddInstance creates an instance with no alias ranges, on the
	// subnetwork, and returns its reference. Its NIC is IPv4-only.
	AddInstance(t *testing.T, name string) cloud.InstanceRef
	// AddDualStackInstance creates an instance as AddInstance does whose
	// NIC is dual-stack and has been given its IPv6 range, the next of
	// IPv6Range the cloud hands out.
	AddDualStackInstance(t *testing.T, name string) cloud.InstanceRef
	// SetIPv6 sets the NIC's IPv6 range as another client's change of its
	// stack type does when it completes; the zero Prefix removes it.
	SetIPv6(t *testing.T, inst cloud.InstanceRef, p netip.Prefix)
	// DeleteInstance deletes an instance.
	DeleteInstance(t *testing.T, inst cloud.InstanceRef)
	// Apply sets an instance's alias ranges as another client's update
	// does when it completes: at once, with a new fingerprint.
	Apply(t *testing.T, inst cloud.InstanceRef, aliases ...cloud.AliasRange)
	// BeforeWrite runs fn once, when the next write of a NIC's alias list
	// reaches the cloud and before the cloud checks it: between the
	// writer's read and its write.
	BeforeWrite(fn func())
}

// Hook is a BeforeWrite slot for a Harness: Set arms it, Fire (called by
// the cloud's update hook) runs and disarms it. It is safe for concurrent use.
type Hook struct {
	mu sync.Mutex
	fn func()
}

// Set arms the hook with fn.
func (h *Hook) Set(fn func()) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.fn = fn
}

// Fire runs the armed fn, if any, once.
func (h *Hook) Fire() {
	h.mu.Lock()
	fn := h.fn
	h.fn = nil
	h.mu.Unlock()
	if fn != nil {
		fn()
	}
}

// env is one row's cloud.
type env struct {
	ctx context.Context
	c   cloud.Interface
	h   Harness
}

func pod(cidr string) cloud.AliasRange {
	return cloud.AliasRange{CIDR: netip.MustParsePrefix(cidr), RangeName: PodRange.RangeName}
}

func other(cidr string) cloud.AliasRange {
	return cloud.AliasRange{CIDR: netip.MustParsePrefix(cidr), RangeName: OtherRange.RangeName}
}

func render(as []cloud.AliasRange) string {
	out := make([]string, 0, len(as))
	for _, a := range as {
		out = append(out, a.RangeName+":"+a.CIDR.String())
	}
	slices.Sort(out)
	return strings.Join(out, " ")
}

// add calls AddAlias and checks its error against want (nil: success;
// else errors.Is).
func (e *env) add(t *testing.T, inst cloud.InstanceRef, a cloud.AliasRange, want error) {
	t.Helper()
	err := e.c.AddAlias(e.ctx, inst, a)
	if want == nil && err != nil || want != nil && !errors.Is(err, want) {
		t.Fatalf("AddAlias(%s, %s:%v) = %v, want %v", inst, a.RangeName, a.CIDR, err, want)
	}
}

func (e *env) remove(t *testing.T, inst cloud.InstanceRef, cidr string) {
	t.Helper()
	if err := e.c.RemoveAlias(e.ctx, inst, netip.MustParsePrefix(cidr)); err != nil {
		t.Fatalf("RemoveAlias(%s, %s) = %v, want nil", inst, cidr, err)
	}
}

// want checks the NIC's alias ranges, in any order.
func (e *env) want(t *testing.T, inst cloud.InstanceRef, want ...cloud.AliasRange) {
	t.Helper()
	got, err := e.c.Aliases(e.ctx, inst)
	if err != nil {
		t.Fatalf("Aliases(%s) = %v", inst, err)
	}
	if render(got) != render(want) {
		t.Fatalf("Aliases(%s) = [%s], want [%s]", inst, render(got), render(want))
	}
}

// ipv6 calls IPv6Range and fails the test on an error.
func (e *env) ipv6(t *testing.T, inst cloud.InstanceRef) netip.Prefix {
	t.Helper()
	p, err := e.c.IPv6Range(e.ctx, inst)
	if err != nil {
		t.Fatalf("IPv6Range(%s) = %v", inst, err)
	}
	return p
}

// wantList checks that ListInstances names exactly the instances of want,
// each with its IPv6 range.
func (e *env) wantList(t *testing.T, want map[cloud.InstanceRef]netip.Prefix) {
	t.Helper()
	list, err := e.c.ListInstances(e.ctx)
	if err != nil {
		t.Fatalf("ListInstances = %v", err)
	}
	got := map[cloud.InstanceRef]netip.Prefix{}
	for _, in := range list {
		got[in.Ref] = in.IPv6
	}
	if !maps.Equal(got, want) {
		t.Fatalf("ListInstances IPv6 ranges = %v, want %v", got, want)
	}
}

// rows is the contract. A cloud may serve Aliases from a cache that only
// its own writes and ListInstances refresh (cloud/gce does), so a row
// reads a NIC another client changed only after writing it or listing.
var rows = []struct {
	name string
	run  func(t *testing.T, e *env)
}{
	{
		// updateNetworkInterface replaces the NIC's whole alias list
		// ("follows PATCH semantics", the list being one field:
		// google.golang.org/api/compute/v1 InstancesService.UpdateNetworkInterface),
		// so a writer sends the full list: adding keeps the others, of
		// any secondary range, and adding what is there changes nothing.
		name: "full list: adding keeps the other ranges, of every secondary range",
		run: func(t *testing.T, e *env) {
			vm := e.h.AddInstance(t, "vm")
			e.add(t, vm, pod("10.64.1.0/24"), nil)
			e.add(t, vm, pod("10.64.2.0/24"), nil)
			e.add(t, vm, other("10.96.1.0/24"), nil)
			e.add(t, vm, pod("10.64.1.0/24"), nil)
			e.want(t, vm, pod("10.64.1.0/24"), pod("10.64.2.0/24"), other("10.96.1.0/24"))
			e.remove(t, vm, "10.64.2.0/24")
			e.want(t, vm, pod("10.64.1.0/24"), other("10.96.1.0/24"))
		},
	},
	{
		// A range we did not add (another client's, of another secondary
		// range) survives our writes: the same full-list rule.
		name: "another client's range of another secondary range is kept",
		run: func(t *testing.T, e *env) {
			vm := e.h.AddInstance(t, "vm")
			e.want(t, vm)
			e.h.Apply(t, vm, other("10.96.7.0/24"))
			e.add(t, vm, pod("10.64.1.0/24"), nil)
			e.want(t, vm, other("10.96.7.0/24"), pod("10.64.1.0/24"))
			e.remove(t, vm, "10.64.1.0/24")
			e.want(t, vm, other("10.96.7.0/24"))
		},
	},
	{
		// "This IP CIDR range must belong to the specified subnetwork"
		// and the range is allocated from the secondary range named by
		// subnetworkRangeName (compute/v1 AliasIpRange.ipCidrRange and
		// .subnetworkRangeName): a range outside the one it names is
		// refused, nothing applied. An empty name (the primary range) is
		// refused by the interface itself (cloud.Interface.AddAlias).
		name: "a range outside the secondary range it names, or naming none, is invalid",
		run: func(t *testing.T, e *env) {
			vm := e.h.AddInstance(t, "vm")
			e.add(t, vm, pod("10.64.1.0/24"), nil)
			e.add(t, vm, pod("10.96.2.0/24"), cloud.ErrInvalid)
			e.add(t, vm, other("10.64.2.0/24"), cloud.ErrInvalid)
			e.add(t, vm, cloud.AliasRange{CIDR: netip.MustParsePrefix("10.64.3.0/24")}, cloud.ErrInvalid)
			e.want(t, vm, pod("10.64.1.0/24"))
		},
	},
	{
		// A range may not "contain IP addresses ... used by other network
		// interfaces" (compute/v1 AliasIpRange.ipCidrRange). GCE finds the
		// overlap when the operation runs and reports it there, as
		// IP_IN_USE_BY_ANOTHER_RESOURCE, "IP '10.128.3.140/31' is already
		// being used by another resource."
		// (GoogleCloudPlatform/compute-image-tools#659,
		// F5Networks/f5-google-gdm-templates#78): AddAlias returns it,
		// once the write has run, as ErrRangeConflict, whether the other
		// NIC's range is equal, inside or around ours, ours or another
		// client's; neither NIC changes.
		name: "an overlap with another NIC's range is a conflict",
		run: func(t *testing.T, e *env) {
			a, b := e.h.AddInstance(t, "a"), e.h.AddInstance(t, "b")
			e.add(t, a, pod("10.64.4.0/24"), nil)
			e.h.Apply(t, b, pod("10.64.9.0/24"))
			c := e.h.AddInstance(t, "c")
			e.add(t, c, pod("10.64.4.0/24"), cloud.ErrRangeConflict)
			e.add(t, c, pod("10.64.4.128/25"), cloud.ErrRangeConflict)
			e.add(t, c, pod("10.64.0.0/21"), cloud.ErrRangeConflict)
			e.add(t, c, pod("10.64.9.0/24"), cloud.ErrRangeConflict)
			e.want(t, c)
			e.want(t, a, pod("10.64.4.0/24"))
			e.add(t, c, pod("10.64.5.0/24"), nil)
			e.want(t, c, pod("10.64.5.0/24"))
		},
	},
	{
		// Two ranges of one NIC that overlap are refused with the request,
		// before any operation, as invalid (ErrInvalid), not as a range
		// another resource holds. UNVERIFIED: no public copy of GCE's
		// answer to this was found; both clouds encode the same guess
		// (gcetest's validate, "Alias IP ranges ... overlap", 400 invalid).
		// The controller never sends it: it picks blocks apart from the
		// NIC it read.
		name: "an overlap on the same NIC is invalid",
		run: func(t *testing.T, e *env) {
			vm := e.h.AddInstance(t, "vm")
			e.add(t, vm, pod("10.64.4.0/24"), nil)
			e.add(t, vm, pod("10.64.4.0/25"), cloud.ErrInvalid)
			e.add(t, vm, pod("10.64.0.0/21"), cloud.ErrInvalid)
			e.want(t, vm, pod("10.64.4.0/24"))
		},
	},
	{
		// The per-NIC limit, cloud.MaxAliasRangesPerNIC ranges (all
		// secondary ranges together): the last one fits, one more is
		// ErrTooManyAliases and nothing is applied. UNVERIFIED: neither
		// the limit's value (the repository's constant; Google's old
		// "Configuring alias IP ranges" page said 10 ranges, as quoted in
		// ClusterLabs resource-agents' gcp-vpc-move-vip change) nor the
		// wording of GCE's refusal (cloud/gce tooManyAliases) has a
		// current public source; both clouds encode the same value.
		name: "the per-NIC limit",
		run: func(t *testing.T, e *env) {
			vm := e.h.AddInstance(t, "vm")
			full := []cloud.AliasRange{other("10.96.0.0/24")}
			for i := 1; i < cloud.MaxAliasRangesPerNIC-1; i++ {
				full = append(full, pod(fmt.Sprintf("10.64.%d.0/24", i)))
			}
			e.h.Apply(t, vm, full...)
			last := pod("10.65.0.0/24")
			e.add(t, vm, last, nil)
			e.add(t, vm, pod("10.65.1.0/24"), cloud.ErrTooManyAliases)
			e.want(t, vm, append(full, last)...)
			e.remove(t, vm, "10.64.1.0/24")
			e.add(t, vm, pod("10.65.1.0/24"), nil)
		},
	},
	{
		// A write carries the fingerprint of the NIC it read; "412
		// Precondition Failed if the fingerprint is out of date"
		// (compute/v1 NetworkInterface.fingerprint). On a re-read, a new
		// range of the same secondary range means another writer chose a
		// block from the NIC we saw: AddAlias adds nothing and says
		// ErrStaleFingerprint (cloud.Interface.AddAlias); the other
		// writer's range stays.
		name: "stale fingerprint: the NIC gained a range of the same secondary range",
		run: func(t *testing.T, e *env) {
			vm := e.h.AddInstance(t, "vm")
			e.add(t, vm, pod("10.64.1.0/24"), nil)
			e.h.BeforeWrite(func() { e.h.Apply(t, vm, pod("10.64.1.0/24"), pod("10.64.2.0/24")) })
			e.add(t, vm, pod("10.64.3.0/24"), cloud.ErrStaleFingerprint)
			e.want(t, vm, pod("10.64.1.0/24"), pod("10.64.2.0/24"))
			e.add(t, vm, pod("10.64.3.0/24"), nil)
			e.want(t, vm, pod("10.64.1.0/24"), pod("10.64.2.0/24"), pod("10.64.3.0/24"))
		},
	},
	{
		// The same 412, but what appeared is of another secondary range:
		// it says nothing about our choice, so the write is retried on
		// the new fingerprint and keeps it. A range that went away is no
		// reason to stop either.
		name: "stale fingerprint: the NIC changed in another secondary range, or lost a range",
		run: func(t *testing.T, e *env) {
			vm := e.h.AddInstance(t, "vm")
			e.add(t, vm, pod("10.64.1.0/24"), nil)
			e.h.BeforeWrite(func() { e.h.Apply(t, vm, pod("10.64.1.0/24"), other("10.96.1.0/24")) })
			e.add(t, vm, pod("10.64.2.0/24"), nil)
			e.want(t, vm, pod("10.64.1.0/24"), other("10.96.1.0/24"), pod("10.64.2.0/24"))
			e.h.BeforeWrite(func() { e.h.Apply(t, vm, other("10.96.1.0/24")) })
			e.add(t, vm, pod("10.64.3.0/24"), nil)
			e.want(t, vm, other("10.96.1.0/24"), pod("10.64.3.0/24"))
		},
	},
	{
		// A missing instance: instances.get answers 404 "The resource
		// '.../instances/NAME' was not found" (gcetest, as GCE words it).
		// Reading or adding says ErrInstanceNotFound, whether the
		// instance was never seen or was deleted after a write;
		// removing from it succeeds (cloud.Interface.RemoveAlias), and
		// ListInstances no longer names it.
		name: "a missing instance",
		run: func(t *testing.T, e *env) {
			ghost := e.h.AddInstance(t, "ghost")
			e.h.DeleteInstance(t, ghost)
			if _, err := e.c.Aliases(e.ctx, ghost); !errors.Is(err, cloud.ErrInstanceNotFound) {
				t.Fatalf("Aliases(%s) = %v, want ErrInstanceNotFound", ghost, err)
			}
			e.add(t, ghost, pod("10.64.1.0/24"), cloud.ErrInstanceNotFound)
			e.remove(t, ghost, "10.64.1.0/24")

			gone := e.h.AddInstance(t, "gone")
			e.add(t, gone, pod("10.64.2.0/24"), nil)
			e.h.DeleteInstance(t, gone)
			e.add(t, gone, pod("10.64.3.0/24"), cloud.ErrInstanceNotFound)
			e.remove(t, gone, "10.64.2.0/24")
			list, err := e.c.ListInstances(e.ctx)
			if err != nil || len(list) != 0 {
				t.Fatalf("ListInstances = %v, %v, want none", list, err)
			}
			// Its range is free again.
			vm := e.h.AddInstance(t, "vm")
			e.add(t, vm, pod("10.64.2.0/24"), nil)
		},
	},
	{
		// Removing a range that is not there succeeds and changes
		// nothing (cloud.Interface.RemoveAlias: the caller's release is
		// idempotent).
		name: "removing a range that is not there",
		run: func(t *testing.T, e *env) {
			vm := e.h.AddInstance(t, "vm")
			e.remove(t, vm, "10.64.1.0/24")
			e.add(t, vm, pod("10.64.1.0/24"), nil)
			e.remove(t, vm, "10.64.2.0/24")
			e.remove(t, vm, "10.64.1.0/25")
			e.want(t, vm, pod("10.64.1.0/24"))
			e.remove(t, vm, "10.64.1.0/24")
			e.remove(t, vm, "10.64.1.0/24")
			e.want(t, vm)
		},
	},
	{
		// ListInstances names every instance with its ranges as they are,
		// another client's writes included, sorted.
		name: "ListInstances",
		run: func(t *testing.T, e *env) {
			b, a := e.h.AddInstance(t, "b"), e.h.AddInstance(t, "a")
			e.add(t, a, pod("10.64.1.0/24"), nil)
			e.h.Apply(t, b, other("10.96.1.0/24"), pod("10.64.2.0/24"))
			list, err := e.c.ListInstances(e.ctx)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, in := range list {
				got = append(got, fmt.Sprintf("%s=[%s]", in.Ref, render(in.Aliases)))
			}
			want := []string{
				fmt.Sprintf("%s=[pods:10.64.1.0/24]", a),
				fmt.Sprintf("%s=[pods:10.64.2.0/24 services:10.96.1.0/24]", b),
			}
			if !slices.Equal(got, want) {
				t.Fatalf("ListInstances = %v, want %v", got, want)
			}
			// The list refreshed what the cloud knows of b.
			e.want(t, b, other("10.96.1.0/24"), pod("10.64.2.0/24"))
		},
	},
	{
		// A dual-stack NIC has an internal IPv6 range: ipv6Address with
		// internalIpv6PrefixLength (compute/v1 NetworkInterface,
		// https://cloud.google.com/compute/docs/reference/rest/v1/instances),
		// a /96 of the subnetwork's /64 ("The IPv6 subnet size is /64 ...
		// Each IPv6-enabled VM will be assigned a /96 address range from
		// the subnet", Google Cloud blog, "Planning an IPv6 network on
		// Google Cloud", 2023). Two NICs' ranges are apart; a NIC keeps
		// its range across reads, alias writes (the write sends only
		// aliasIpRanges, "PATCH semantics") and lists.
		name: "IPv6Range: a dual-stack NIC's /96 of the subnetwork's range",
		run: func(t *testing.T, e *env) {
			a, b := e.h.AddDualStackInstance(t, "a"), e.h.AddDualStackInstance(t, "b")
			pa, pb := e.ipv6(t, a), e.ipv6(t, b)
			for _, p := range []netip.Prefix{pa, pb} {
				if p.Bits() != 96 || p != p.Masked() || !IPv6Range.Contains(p.Addr()) {
					t.Fatalf("IPv6Range = %v, want a /96 inside %v", p, IPv6Range)
				}
			}
			if pa.Overlaps(pb) {
				t.Fatalf("IPv6Range(a) = %v and IPv6Range(b) = %v overlap", pa, pb)
			}
			e.add(t, a, pod("10.64.1.0/24"), nil)
			if got := e.ipv6(t, a); got != pa {
				t.Fatalf("IPv6Range(a) after an alias write = %v, want %v", got, pa)
			}
			e.wantList(t, map[cloud.InstanceRef]netip.Prefix{a: pa, b: pb})
			if got := e.ipv6(t, b); got != pb {
				t.Fatalf("IPv6Range(b) after a list = %v, want %v", got, pb)
			}
		},
	},
	{
		// stackType: "If not specified, IPV4_ONLY is used." (compute/v1
		// NetworkInterface.stackType): such a NIC has no ipv6Address, and
		// that is no error (cloud.Interface.IPv6Range).
		name: "IPv6Range: an IPv4-only NIC has none",
		run: func(t *testing.T, e *env) {
			vm := e.h.AddInstance(t, "vm")
			if got := e.ipv6(t, vm); got.IsValid() {
				t.Fatalf("IPv6Range(%s) = %v, want none", vm, got)
			}
			e.wantList(t, map[cloud.InstanceRef]netip.Prefix{vm: {}})
		},
	},
	{
		// stackType "can be both set at instance creation and update
		// network interface operations" (compute/v1
		// NetworkInterface.stackType): a node's NIC may get its range
		// after the node joined, or lose it. A cloud that serves
		// IPv6Range from what it last read sees the change after
		// ListInstances (cloud.Interface.IPv6Range).
		name: "IPv6Range: a range that arrives, or goes, later",
		run: func(t *testing.T, e *env) {
			vm := e.h.AddInstance(t, "vm")
			if got := e.ipv6(t, vm); got.IsValid() {
				t.Fatalf("IPv6Range(%s) = %v, want none", vm, got)
			}
			p := netip.MustParsePrefix("fd20:1:2:3:0:ff::/96")
			e.h.SetIPv6(t, vm, p)
			e.wantList(t, map[cloud.InstanceRef]netip.Prefix{vm: p})
			if got := e.ipv6(t, vm); got != p {
				t.Fatalf("IPv6Range(%s) after a list = %v, want %v", vm, got, p)
			}
			e.h.SetIPv6(t, vm, netip.Prefix{})
			e.wantList(t, map[cloud.InstanceRef]netip.Prefix{vm: {}})
			if got := e.ipv6(t, vm); got.IsValid() {
				t.Fatalf("IPv6Range(%s) after a list = %v, want none", vm, got)
			}
		},
	},
	{
		// A missing instance, as for Aliases: ErrInstanceNotFound,
		// whether never seen or gone by the last list.
		name: "IPv6Range: a missing instance",
		run: func(t *testing.T, e *env) {
			ghost := e.h.AddDualStackInstance(t, "ghost")
			e.h.DeleteInstance(t, ghost)
			if p, err := e.c.IPv6Range(e.ctx, ghost); !errors.Is(err, cloud.ErrInstanceNotFound) {
				t.Fatalf("IPv6Range(%s) = %v, %v, want ErrInstanceNotFound", ghost, p, err)
			}
			gone := e.h.AddDualStackInstance(t, "gone")
			e.ipv6(t, gone)
			e.h.DeleteInstance(t, gone)
			e.wantList(t, map[cloud.InstanceRef]netip.Prefix{})
			if p, err := e.c.IPv6Range(e.ctx, gone); !errors.Is(err, cloud.ErrInstanceNotFound) {
				t.Fatalf("IPv6Range(%s) after a list = %v, %v, want ErrInstanceNotFound", gone, p, err)
			}
		},
	},
	{
		name: "PodRange",
		run: func(t *testing.T, e *env) {
			p, name, err := e.c.PodRange(e.ctx)
			if err != nil || p != PodRange.CIDR || name != PodRange.RangeName {
				t.Fatalf("PodRange = %v, %q, %v, want %v, %q", p, name, err, PodRange.CIDR, PodRange.RangeName)
			}
		},
	},
}

// Run runs the contract, each row on a cloud of its own from newCloud,
// whose pod range is PodRange and whose subnetwork also has OtherRange.
func Run(t *testing.T, newCloud func(t *testing.T) (cloud.Interface, Harness)) {
	for _, row := range rows {
		t.Run(row.name, func(t *testing.T) {
			c, h := newCloud(t)
			row.run(t, &env{ctx: t.Context(), c: c, h: h})
		})
	}
}
