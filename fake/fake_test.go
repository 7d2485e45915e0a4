package fake

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aliasip/aliasip/cloud"
)

var ctx = context.Background()

func mustNew(t *testing.T, o Options) *Cloud {
	t.Helper()
	if !o.PodRange.IsValid() {
		o.PodRange = netip.MustParsePrefix("10.0.0.0/16")
	}
	c, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func ref(name string) cloud.InstanceRef { return cloud.InstanceRef{Name: name} }

func TestUpdateInterfaceSemantics(t *testing.T) {
	c := mustNew(t, Options{MaxAliases: 3})
	c.RegisterInstance("a")
	c.RegisterInstance("b")
	pods := func(s ...string) []cloud.AliasRange {
		var out []cloud.AliasRange
		for _, p := range s {
			out = append(out, cloud.AliasRange{CIDR: netip.MustParsePrefix(p), RangeName: "pods"})
		}
		return out
	}
	_, fp, err := c.GetInterface(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.UpdateInterface(ctx, "a", fp, pods("10.0.1.0/24")); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		inst     string
		staleFP  bool
		aliases  []cloud.AliasRange
		want     error
		wantList string
	}{
		{name: "stale fingerprint", inst: "a", staleFP: true, aliases: pods("10.0.2.0/24"), want: cloud.ErrStaleFingerprint},
		{name: "outside pod range", inst: "a", aliases: pods("10.1.0.0/24"), want: cloud.ErrInvalid},
		{name: "overlaps other instance", inst: "b", aliases: pods("10.0.1.128/25"), want: cloud.ErrRangeConflict},
		{name: "overlaps itself", inst: "b", aliases: pods("10.0.4.0/24", "10.0.4.0/23"), want: cloud.ErrInvalid},
		{name: "other range over pod range", inst: "b", aliases: []cloud.AliasRange{{CIDR: netip.MustParsePrefix("10.0.9.0/24"), RangeName: "svc"}}, want: cloud.ErrInvalid},
		{name: "too many", inst: "b", aliases: pods("10.0.5.0/24", "10.0.6.0/24", "10.0.7.0/24", "10.0.8.0/24"), want: cloud.ErrTooManyAliases},
		{name: "unknown instance", inst: "zz", aliases: nil, want: cloud.ErrInstanceNotFound},
		{name: "full-list replace", inst: "a", aliases: pods("10.0.2.0/24", "10.0.3.0/24"), wantList: "[10.0.2.0/24 10.0.3.0/24]"},
		{name: "other secondary range kept apart", inst: "b", aliases: append(pods("10.0.9.0/24"), cloud.AliasRange{CIDR: netip.MustParsePrefix("172.16.0.0/24"), RangeName: "other"}), wantList: "[10.0.9.0/24 172.16.0.0/24]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, fp, _ := c.GetInterface(ctx, tc.inst)
			if tc.staleFP {
				fp--
			}
			err := c.UpdateInterface(ctx, tc.inst, fp, tc.aliases)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if tc.wantList != "" {
				got, _, _ := c.GetInterface(ctx, tc.inst)
				var ps []netip.Prefix
				for _, a := range got {
					ps = append(ps, a.CIDR)
				}
				if fmt.Sprint(ps) != tc.wantList {
					t.Fatalf("aliases %v, want %s", ps, tc.wantList)
				}
			}
		})
	}
}

func TestAddRemoveIdempotentAndConcurrent(t *testing.T) {
	c := mustNew(t, Options{})
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		c.RegisterInstance("shared")
		wg.Go(func() {
			p := netip.MustParsePrefix(fmt.Sprintf("10.0.%d.0/24", i))
			// A writer that sees the NIC gain a range of its secondary
			// range meanwhile adds nothing (ErrStaleFingerprint) and
			// decides again, as the controller does; none is lost.
			for {
				err := c.AddAlias(ctx, ref("shared"), cloud.AliasRange{CIDR: p, RangeName: "pods"})
				if errors.Is(err, cloud.ErrStaleFingerprint) {
					continue
				}
				if err != nil {
					t.Error(err)
				}
				return
			}
		})
	}
	wg.Wait()
	got, _ := c.Aliases(ctx, ref("shared"))
	if len(got) != 50 {
		t.Fatalf("%d aliases after 50 concurrent adds to one NIC, want 50 (full-list updates lost some)", len(got))
	}
	p := netip.MustParsePrefix("10.0.7.0/24")
	if err := c.AddAlias(ctx, ref("shared"), cloud.AliasRange{CIDR: p, RangeName: "pods"}); err != nil {
		t.Fatalf("re-adding present alias: %v", err)
	}
	for i := 0; i < 2; i++ {
		if err := c.RemoveAlias(ctx, ref("shared"), p); err != nil {
			t.Fatalf("remove #%d: %v", i, err)
		}
	}
	if err := c.RemoveAlias(ctx, ref("gone"), p); err != nil {
		t.Fatalf("remove from a vanished instance: %v", err)
	}
	got, _ = c.Aliases(ctx, ref("shared"))
	if len(got) != 49 {
		t.Fatalf("%d aliases, want 49", len(got))
	}
}

func TestInstanceFor(t *testing.T) {
	defaults := []string{"fake", "kind"} // the controller's --fake-provider-schemes
	for _, tc := range []struct {
		name       string
		schemes    []string
		noAutoReg  bool
		providerID string
		node       string
		want       string // instance name; "" = ErrInstanceNotFound
		wantErr    string // in the error, when want is ""
	}{
		{name: "empty providerID auto-registers", schemes: defaults, providerID: "", node: "node-1", want: "node-1"},
		// kind's form: kind://docker/<cluster>/<node>.
		{name: "kind node auto-registers", schemes: defaults, providerID: "kind://docker/aliasip/kind-worker", node: "kind-worker", want: "kind-worker"},
		{name: "instance named by the providerID, not the node", schemes: defaults, providerID: "kind://docker/aliasip/vm-9", node: "node-9", want: "vm-9"},
		{name: "fake scheme auto-registers", schemes: defaults, providerID: "fake://vm-8", node: "node-8", want: "vm-8"},
		{name: "schemes compare without case", schemes: defaults, providerID: "KIND://docker/aliasip/w-7", node: "w-7", want: "w-7"},
		{name: "registered instance under a foreign scheme", schemes: defaults, providerID: "gce://p/z/vm-3", node: "node-3", want: "vm-3"},
		{name: "aws node", schemes: defaults, providerID: "aws:///us-east-1a/i-0abc", node: "node-4",
			wantErr: `--fake-provider-schemes=fake,kind, and providerID "aws:///us-east-1a/i-0abc" has scheme "aws"`},
		{name: "gce node unknown to the fake", schemes: defaults, providerID: "gce://p/z/vm-5", node: "node-5",
			wantErr: `--fake-provider-schemes=fake,kind, and providerID "gce://p/z/vm-5" has scheme "gce"`},
		{name: "no scheme at all", schemes: defaults, providerID: "racks/r1/host-6", node: "host-6", wantErr: "has no scheme"},
		{name: "scheme not configured", schemes: []string{"kind"}, providerID: "fake://ghost", node: "node-2",
			wantErr: `--fake-provider-schemes=kind, and providerID "fake://ghost" has scheme "fake"`},
		{name: "no schemes: only empty providerIDs", schemes: nil, providerID: "kind://docker/aliasip/w", node: "w", wantErr: `--fake-provider-schemes=, and`},
		{name: "owned scheme without auto-register", schemes: defaults, noAutoReg: true, providerID: "kind://docker/aliasip/w", node: "w", wantErr: "auto-registration is off"},
		{name: "empty providerID without auto-register", schemes: defaults, noAutoReg: true, providerID: "", node: "n", wantErr: "auto-registration is off"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := mustNew(t, Options{AutoRegister: !tc.noAutoReg, ProviderSchemes: tc.schemes})
			if err := c.RegisterInstance("vm-3"); err != nil {
				t.Fatal(err)
			}
			r, err := c.InstanceFor(ctx, tc.providerID, tc.node)
			if tc.want == "" {
				if !errors.Is(err, cloud.ErrInstanceNotFound) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %v, %v; want ErrInstanceNotFound saying %q", r, err, tc.wantErr)
				}
				if insts, err := c.ListInstances(ctx); err != nil || len(insts) != 1 {
					t.Errorf("instances after a failed lookup: %v, %v; want only vm-3", insts, err)
				}
				return
			}
			if err != nil || r.Name != tc.want {
				t.Fatalf("got %v, %v; want instance %s", r, err, tc.want)
			}
			if _, _, err := c.GetInterface(ctx, tc.want); err != nil {
				t.Errorf("instance %s not created: %v", tc.want, err)
			}
		})
	}
}

func TestInjectedFaults(t *testing.T) {
	c := mustNew(t, Options{ErrorRate: 1})
	if _, err := c.ListInstances(ctx); !errors.Is(err, cloud.ErrUnavailable) {
		t.Fatalf("error rate 1: got %v", err)
	}
	c = mustNew(t, Options{RateLimit: 1, RateBurst: 2})
	var limited int
	for i := 0; i < 10; i++ {
		if _, err := c.ListInstances(ctx); errors.Is(err, cloud.ErrRateLimited) {
			limited++
		}
	}
	if limited < 7 {
		t.Fatalf("rate limit 1/s burst 2: only %d of 10 calls limited", limited)
	}
	c = mustNew(t, Options{Latency: 200 * time.Millisecond})
	c.RegisterInstance("a")
	start := time.Now()
	if err := c.AddAlias(ctx, ref("a"), cloud.AliasRange{CIDR: netip.MustParsePrefix("10.0.0.0/24"), RangeName: "pods"}); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Fatalf("write took %v with 200ms latency", d)
	}
	cctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if err := c.AddAlias(cctx, ref("a"), cloud.AliasRange{CIDR: netip.MustParsePrefix("10.0.1.0/24"), RangeName: "pods"}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("canceled write: got %v", err)
	}
	if got, _ := c.Aliases(ctx, ref("a")); len(got) != 1 {
		t.Fatalf("canceled write was applied: %v", got)
	}
}

func TestStateFileSharedBetweenInstances(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cloud.json")
	a := mustNew(t, Options{StatePath: path})
	b := mustNew(t, Options{StatePath: path})
	a.RegisterInstance("vm")
	if err := a.AddAlias(ctx, ref("vm"), cloud.AliasRange{CIDR: netip.MustParsePrefix("10.0.3.0/24"), RangeName: "pods"}); err != nil {
		t.Fatal(err)
	}
	got, err := b.Aliases(ctx, ref("vm"))
	if err != nil || len(got) != 1 || got[0].CIDR.String() != "10.0.3.0/24" {
		t.Fatalf("second handle sees %v, %v", got, err)
	}
	b.RegisterInstance("other")
	if err := b.AddAlias(ctx, ref("other"), cloud.AliasRange{CIDR: netip.MustParsePrefix("10.0.3.0/25"), RangeName: "pods"}); !errors.Is(err, cloud.ErrRangeConflict) {
		t.Fatalf("overlap across handles: got %v", err)
	}
}

// Injected faults apply in order, to the instance named, for the number of
// calls given; delays end with the call's context; the log records calls;
// a seed makes the error rate's failures repeatable.
func TestInjectedFaultsPerCall(t *testing.T) {
	c, err := New(Options{PodRange: netip.MustParsePrefix("10.0.0.0/16"), AutoRegister: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"a", "b"} {
		c.RegisterInstance(n)
	}
	p := netip.MustParsePrefix("10.0.1.0/24")
	c.Inject("AddAlias", Fault{Err: cloud.ErrUnavailable, Instance: "a", Times: 2})
	c.Inject("AddAlias", Fault{Err: cloud.ErrQuotaExceeded, Times: 1})
	if err := c.AddAlias(ctx, ref("b"), cloud.AliasRange{CIDR: netip.MustParsePrefix("10.0.2.0/24"), RangeName: "pods"}); !errors.Is(err, cloud.ErrQuotaExceeded) {
		t.Errorf("b: %v, want the fault not limited to a", err)
	}
	for i := 0; i < 2; i++ {
		if err := c.AddAlias(ctx, ref("a"), cloud.AliasRange{CIDR: p, RangeName: "pods"}); !errors.Is(err, cloud.ErrUnavailable) {
			t.Errorf("a, call %d: %v", i, err)
		}
	}
	if err := c.AddAlias(ctx, ref("a"), cloud.AliasRange{CIDR: p, RangeName: "pods"}); err != nil {
		t.Errorf("a after its two faults: %v", err)
	}
	var log []string
	for _, call := range c.Log() {
		log = append(log, fmt.Sprintf("%s %s %v %v", call.Method, call.Instance, call.CIDR, call.Err != nil))
	}
	if want := "AddAlias b 10.0.2.0/24 true|AddAlias a 10.0.1.0/24 true|AddAlias a 10.0.1.0/24 true|AddAlias a 10.0.1.0/24 false"; strings.Join(log, "|") != want {
		t.Errorf("log %q, want %q", strings.Join(log, "|"), want)
	}
	c.Inject("Aliases", Fault{Delay: time.Hour})
	dctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := c.Aliases(dctx, ref("a")); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("delayed call: %v, want the context's deadline", err)
	}
	c.ClearFaults()
	if _, err := c.Aliases(ctx, ref("a")); err != nil {
		t.Errorf("after ClearFaults: %v", err)
	}
	seq := func() string {
		s, _ := New(Options{PodRange: netip.MustParsePrefix("10.0.0.0/16"), ErrorRate: 0.5, Seed: 42})
		s.RegisterInstance("x")
		var out []byte
		for i := 0; i < 32; i++ {
			if _, err := s.Aliases(ctx, ref("x")); err != nil {
				out = append(out, '1')
			} else {
				out = append(out, '0')
			}
		}
		return string(out)
	}
	if a, b := seq(), seq(); a != b || !strings.Contains(a, "1") || !strings.Contains(a, "0") {
		t.Errorf("seeded failures %s and %s: want the same mix twice", a, b)
	}
}

// AddRangeAlias adds ranges of other secondary ranges beside the pod
// range's, with the same rules: never inside the pod range under another
// name, never overlapping a range anywhere, idempotent; RemoveAlias takes
// them off by CIDR.
func TestAddRangeAlias(t *testing.T) {
	c, err := New(Options{PodRange: netip.MustParsePrefix("10.0.0.0/16"), AutoRegister: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"a", "b"} {
		if err := c.RegisterInstance(n); err != nil {
			t.Fatal(err)
		}
	}
	a, b := cloud.InstanceRef{Name: "a"}, cloud.InstanceRef{Name: "b"}
	pool := func(cidr string) cloud.AliasRange {
		return cloud.AliasRange{CIDR: netip.MustParsePrefix(cidr), RangeName: "pool-b"}
	}
	if err := c.AddAlias(ctx, a, cloud.AliasRange{CIDR: netip.MustParsePrefix("10.0.1.0/24"), RangeName: "pods"}); err != nil {
		t.Fatal(err)
	}
	for _, step := range []struct {
		inst cloud.InstanceRef
		a    cloud.AliasRange
		want error
	}{
		{a, pool("10.1.0.0/26"), nil},
		{a, pool("10.1.0.0/26"), nil}, // idempotent
		{b, pool("10.1.0.0/26"), cloud.ErrRangeConflict},
		{b, pool("10.0.2.0/24"), cloud.ErrInvalid}, // inside the pod range under another name
		{b, cloud.AliasRange{CIDR: netip.MustParsePrefix("10.1.1.0/26")}, cloud.ErrInvalid},
		{b, pool("10.1.0.64/26"), nil},
	} {
		err := c.AddAlias(ctx, step.inst, step.a)
		if (step.want == nil) != (err == nil) || (step.want != nil && !errors.Is(err, step.want)) {
			t.Errorf("AddRangeAlias(%s, %v) = %v, want %v", step.inst, step.a, err, step.want)
		}
	}
	got, err := c.Aliases(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	want := []cloud.AliasRange{{CIDR: netip.MustParsePrefix("10.0.1.0/24"), RangeName: "pods"}, pool("10.1.0.0/26")}
	if !slices.Equal(want, got) {
		t.Errorf("aliases of a: %v, want %v", got, want)
	}
	if err := c.RemoveAlias(ctx, a, netip.MustParsePrefix("10.1.0.0/26")); err != nil {
		t.Fatal(err)
	}
	if got, _ := c.Aliases(ctx, a); len(got) != 1 {
		t.Errorf("after RemoveAlias: %v", got)
	}
}

// Each instance gets the next /96 of the IPv6 range, in creation order,
// and keeps it; the state file carries the ranges and the counter, so a
// second process (a restarted controller) neither moves nor reuses one.
// The goldens are written out.
func TestIPv6RangePerInstance(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cloud.json")
	opts := Options{StatePath: path, IPv6Range: netip.MustParsePrefix("fd20:0:0:1::/64"), AutoRegister: true, ProviderSchemes: []string{"kind"}}
	a := mustNew(t, opts)
	if err := a.RegisterInstance("vm-a"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.InstanceFor(ctx, "kind://docker/c/vm-b", "vm-b"); err != nil {
		t.Fatal(err)
	}
	b := mustNew(t, opts) // another process on the same state
	if err := b.RegisterInstance("vm-c"); err != nil {
		t.Fatal(err)
	}
	if err := b.DeleteInstance("vm-a"); err != nil {
		t.Fatal(err)
	}
	if err := a.RegisterInstance("vm-d"); err != nil {
		t.Fatal(err)
	}
	want := map[string]netip.Prefix{
		"vm-b": netip.MustParsePrefix("fd20:0:0:1:0:1::/96"),
		"vm-c": netip.MustParsePrefix("fd20:0:0:1:0:2::/96"),
		"vm-d": netip.MustParsePrefix("fd20:0:0:1:0:3::/96"), // vm-a's fd20:0:0:1::/96 is not reused
	}
	for _, c := range []*Cloud{a, b} {
		list, err := c.ListInstances(ctx)
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]netip.Prefix{}
		for _, in := range list {
			got[in.Ref.Name] = in.IPv6
			if p, err := c.IPv6Range(ctx, in.Ref); err != nil || p != in.IPv6 {
				t.Errorf("IPv6Range(%s) = %v, %v, want %v as listed", in.Ref.Name, p, err, in.IPv6)
			}
		}
		if !maps.Equal(got, want) {
			t.Errorf("ListInstances ranges = %v, want %v", got, want)
		}
	}

	// A range taken away and given again: the next /96.
	if err := a.SetIPv6("vm-b", netip.Prefix{}); err != nil {
		t.Fatal(err)
	}
	if p, err := b.IPv6Range(ctx, ref("vm-b")); err != nil || p.IsValid() {
		t.Fatalf("IPv6Range(vm-b) after SetIPv6(none) = %v, %v, want none", p, err)
	}
	if p, err := b.AssignIPv6("vm-b"); err != nil || p != netip.MustParsePrefix("fd20:0:0:1:0:4::/96") {
		t.Fatalf("AssignIPv6(vm-b) = %v, %v, want fd20:0:0:1:0:4::/96", p, err)
	}
	if p, err := a.IPv6Range(ctx, ref("vm-b")); err != nil || p != netip.MustParsePrefix("fd20:0:0:1:0:4::/96") {
		t.Fatalf("IPv6Range(vm-b) = %v, %v, want fd20:0:0:1:0:4::/96", p, err)
	}
	if _, err := a.IPv6Range(ctx, ref("vm-a")); !errors.Is(err, cloud.ErrInstanceNotFound) {
		t.Fatalf("IPv6Range(vm-a) after delete = %v, want ErrInstanceNotFound", err)
	}
}

// Without a range every instance is IPv4-only; a range that is used up
// leaves new instances IPv4-only; a range that is not IPv6, or too small
// for a /96, is refused.
func TestIPv6RangeLimits(t *testing.T) {
	c := mustNew(t, Options{})
	c.RegisterInstance("vm")
	if p, err := c.IPv6Range(ctx, ref("vm")); err != nil || p.IsValid() {
		t.Fatalf("IPv6Range without a range = %v, %v, want none", p, err)
	}
	if _, err := c.AssignIPv6("vm"); err == nil {
		t.Fatal("AssignIPv6 without a range succeeded")
	}

	small := mustNew(t, Options{IPv6Range: netip.MustParsePrefix("fd20:0:0:1::/95")})
	for _, name := range []string{"a", "b", "c"} {
		small.RegisterInstance(name)
	}
	want := map[string]netip.Prefix{"a": netip.MustParsePrefix("fd20:0:0:1::/96"), "b": netip.MustParsePrefix("fd20:0:0:1:0:1::/96"), "c": {}}
	for name, w := range want {
		if p, err := small.IPv6Range(ctx, ref(name)); err != nil || p != w {
			t.Errorf("IPv6Range(%s) = %v, %v, want %s", name, p, err, w)
		}
	}

	for _, r := range []string{"10.0.0.0/8", "::ffff:10.0.0.0/104", "fd20:0:0:1::/112"} {
		if _, err := New(Options{PodRange: netip.MustParsePrefix("10.0.0.0/16"), IPv6Range: netip.MustParsePrefix(r)}); err == nil {
			t.Errorf("New with IPv6 range %s succeeded", r)
		}
	}
}
