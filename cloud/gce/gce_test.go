package gce_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	compute "google.golang.org/api/compute/v1"
	"google.golang.org/api/googleapi"
	"google.golang.org/api/option"

	"github.com/aliasip/aliasip/cloud"
	"github.com/aliasip/aliasip/cloud/gce"
	"github.com/aliasip/aliasip/cloud/gce/gcetest"
)

const zone = "us-central1-a"

var ctx = context.Background()

func newServer(t *testing.T, o gcetest.Options) *gcetest.Server {
	t.Helper()
	if o.SecondaryRanges == nil {
		o.SecondaryRanges = map[string]netip.Prefix{
			"pods":     netip.MustParsePrefix("10.64.0.0/14"),
			"services": netip.MustParsePrefix("10.96.0.0/20"),
		}
	}
	s := gcetest.NewServer(o)
	t.Cleanup(s.Close)
	return s
}

// counter records the observer's calls.
type counter struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *counter) observe(method string, code int, _ time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[string]int{}
	}
	c.n[fmt.Sprintf("%s %d", method, code)]++
}

func (c *counter) get(key string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[key]
}

func newCloud(t *testing.T, s *gcetest.Server, obs *counter, opts ...func(*gce.Config)) *gce.Cloud {
	t.Helper()
	cfg := gce.Config{
		Project: "test-project", Region: "us-central1", Zone: zone,
		Subnetwork: "nodes", SecondaryRange: "pods",
		Endpoint: s.Endpoint(), QPS: 1000, Burst: 1000, BaseBackoff: 5 * time.Millisecond, MaxAttempts: 12,
		PollInterval: 20 * time.Millisecond, MissWindow: 20 * time.Millisecond,
		Logf: t.Logf,
	}
	if obs != nil {
		cfg.Observe = obs.observe
	}
	for _, o := range opts {
		o(&cfg)
	}
	c, err := gce.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func ref(name string) cloud.InstanceRef {
	return cloud.InstanceRef{Project: "test-project", Zone: zone, Name: name}
}

func prefixes(as []cloud.AliasRange) string {
	var out []string
	for _, a := range as {
		out = append(out, a.RangeName+":"+a.CIDR.String())
	}
	sort.Strings(out)
	return strings.Join(out, " ")
}

func TestPodRangeFromSubnetwork(t *testing.T) {
	s := newServer(t, gcetest.Options{})
	c := newCloud(t, s, nil)
	p, name, err := c.PodRange(ctx)
	if err != nil || p.String() != "10.64.0.0/14" || name != "pods" {
		t.Fatalf("PodRange = %v %q %v", p, name, err)
	}
	bad, _ := gce.New(ctx, gce.Config{Project: "test-project", Region: "us-central1", Subnetwork: "nodes", SecondaryRange: "nope", Endpoint: s.Endpoint()})
	if _, _, err := bad.PodRange(ctx); err == nil || !strings.Contains(err.Error(), `no secondary range "nope"`) {
		t.Fatalf("unknown range: %v", err)
	}
}

// serverPrefixes is what the server holds on an instance's NIC, read
// around the API.
func serverPrefixes(s *gcetest.Server, name string) string {
	var out []string
	for _, a := range s.Aliases()[name] {
		out = append(out, a.SubnetworkRangeName+":"+a.IpCidrRange)
	}
	sort.Strings(out)
	return strings.Join(out, " ")
}

// Our writes keep a range from another secondary range, and wait through
// operations polled in bulk (zoneOperations.wait may return at once).
func TestAddRemoveKeepsForeignRanges(t *testing.T) {
	s := newServer(t, gcetest.Options{OpDelay: 300 * time.Millisecond, Faults: gcetest.Faults{WaitAtOnce: true}})
	s.AddInstance(zone, "vm-1", &compute.AliasIpRange{IpCidrRange: "10.96.1.0/24", SubnetworkRangeName: "services"})
	var obs counter
	c := newCloud(t, s, &obs)
	p := netip.MustParsePrefix("10.64.5.0/24")
	if err := c.AddAlias(ctx, ref("vm-1"), cloud.AliasRange{CIDR: p, RangeName: "pods"}); err != nil {
		t.Fatal(err)
	}
	got, err := c.Aliases(ctx, ref("vm-1"))
	if err != nil {
		t.Fatal(err)
	}
	if want := "pods:10.64.5.0/24 services:10.96.1.0/24"; prefixes(got) != want || serverPrefixes(s, "vm-1") != want {
		t.Fatalf("aliases %q (server %q), want %q", prefixes(got), serverPrefixes(s, "vm-1"), want)
	}
	if n := s.Count("zoneOperations.list"); n < 1 {
		t.Errorf("%d operation polls for a 300ms operation", n)
	}
	if err := c.AddAlias(ctx, ref("vm-1"), cloud.AliasRange{CIDR: p, RangeName: "pods"}); err != nil {
		t.Fatal(err)
	}
	if n := s.Count("instances.updateNetworkInterface"); n != 1 {
		t.Errorf("re-adding a present alias wrote %d times, want 1 in all", n)
	}
	if err := c.RemoveAlias(ctx, ref("vm-1"), p); err != nil {
		t.Fatal(err)
	}
	got, _ = c.Aliases(ctx, ref("vm-1"))
	if want := "services:10.96.1.0/24"; prefixes(got) != want || serverPrefixes(s, "vm-1") != want {
		t.Fatalf("after remove %q (server %q), want %q", prefixes(got), serverPrefixes(s, "vm-1"), want)
	}
	// Removing the last range sends an empty list.
	s.AddInstance(zone, "vm-2")
	if err := c.AddAlias(ctx, ref("vm-2"), cloud.AliasRange{CIDR: p, RangeName: "pods"}); err != nil {
		t.Fatal(err)
	}
	if err := c.RemoveAlias(ctx, ref("vm-2"), p); err != nil {
		t.Fatal(err)
	}
	if got, _ := c.Aliases(ctx, ref("vm-2")); len(got) != 0 || serverPrefixes(s, "vm-2") != "" {
		t.Fatalf("last alias not removed: %v (server %q)", got, serverPrefixes(s, "vm-2"))
	}
	if obs.get("instances.updateNetworkInterface 200") != 4 || obs.get("instances.get 200") == 0 {
		t.Errorf("observer counts %v", obs.n)
	}
}

func TestRejections(t *testing.T) {
	s := newServer(t, gcetest.Options{})
	s.AddInstance(zone, "a", &compute.AliasIpRange{IpCidrRange: "10.64.1.0/24", SubnetworkRangeName: "pods"})
	s.AddInstance(zone, "b")
	var many []*compute.AliasIpRange
	for i := 0; i < gcetest.MaxAliasRanges; i++ {
		many = append(many, &compute.AliasIpRange{IpCidrRange: fmt.Sprintf("10.65.%d.0/24", i), SubnetworkRangeName: "pods"})
	}
	s.AddInstance(zone, "full", many...)
	c := newCloud(t, s, nil)
	for _, tc := range []struct {
		inst string
		cidr string
		want error
	}{
		{"b", "10.64.1.128/25", cloud.ErrRangeConflict}, // overlaps a's: IP_IN_USE_BY_ANOTHER_RESOURCE in the operation
		{"b", "10.70.0.0/24", cloud.ErrInvalid},         // outside the secondary range: 400
		{"full", "10.66.0.0/24", cloud.ErrTooManyAliases},
		{"ghost", "10.64.9.0/24", cloud.ErrInstanceNotFound},
	} {
		err := c.AddAlias(ctx, ref(tc.inst), cloud.AliasRange{CIDR: netip.MustParsePrefix(tc.cidr), RangeName: "pods"})
		if !errors.Is(err, tc.want) {
			t.Errorf("add %s to %s: %v, want %v", tc.cidr, tc.inst, err, tc.want)
		}
	}
	if err := c.RemoveAlias(ctx, ref("ghost"), netip.MustParsePrefix("10.64.9.0/24")); err != nil {
		t.Errorf("remove from a vanished instance: %v", err)
	}
	if got, _ := c.Aliases(ctx, ref("b")); len(got) != 0 || serverPrefixes(s, "b") != "" {
		t.Errorf("rejected writes left %v (server %q) on b", got, serverPrefixes(s, "b"))
	}
}

// Concurrent writers on one NIC race on the fingerprint: 412s re-read and
// retry. A writer whose re-read shows a range of the pod range that was not
// there when it chose its own adds nothing and says so
// (ErrStaleFingerprint): the caller decides again. Asked again, it adds;
// no write is lost and none is doubled.
func TestConcurrentWritersOneNIC(t *testing.T) {
	s := newServer(t, gcetest.Options{OpDelay: 5 * time.Millisecond})
	s.AddInstance(zone, "vm")
	c := newCloud(t, s, nil)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var again []netip.Prefix
	for i := 0; i < 8; i++ {
		wg.Go(func() {
			p := netip.MustParsePrefix(fmt.Sprintf("10.64.%d.0/24", i))
			err := c.AddAlias(ctx, ref("vm"), cloud.AliasRange{CIDR: p, RangeName: "pods"})
			switch {
			case errors.Is(err, cloud.ErrStaleFingerprint):
				mu.Lock()
				again = append(again, p)
				mu.Unlock()
			case err != nil:
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if len(again) == 0 {
		t.Error("no writer saw another's range appear; the race was not exercised")
	}
	if n := len(s.Aliases()["vm"]); n != 8-len(again) {
		t.Errorf("%d ranges on the NIC, want %d (8 minus the %d deferred to the caller)", n, 8-len(again), len(again))
	}
	for _, p := range again {
		if err := c.AddAlias(ctx, ref("vm"), cloud.AliasRange{CIDR: p, RangeName: "pods"}); err != nil {
			t.Fatalf("asked again, %v: %v", p, err)
		}
	}
	if got, _ := c.Aliases(ctx, ref("vm")); len(got) != 8 || len(s.Aliases()["vm"]) != 8 {
		t.Fatalf("%d aliases (server %d) after 8 adds: %v", len(got), len(s.Aliases()["vm"]), got)
	}
}

func TestFaultsAreRetried(t *testing.T) {
	for _, tc := range []struct {
		name   string
		faults gcetest.Faults
		code   string
	}{
		{"503s", gcetest.Faults{Rate5xx: 0.4}, "503"},
		{"forced 412s", gcetest.Faults{Force412: 0.5}, "412"},
		{"rate limit 403s", gcetest.Faults{RateLimit: 3, RateWindow: 100 * time.Millisecond}, "403"},
		{"failing operations", gcetest.Faults{FailOps: 0.5}, ""},
		{"operations not ready", gcetest.Faults{OpNotReady: 0.5}, ""},
		{"operation list refused: read one by one", gcetest.Faults{RefuseOperationList: true}, "400"},
		{"operations with a stale fingerprint", gcetest.Faults{OpStaleFingerprint: 0.5}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Operations outlast a wait call, so waits are retried too.
			s := newServer(t, gcetest.Options{Faults: tc.faults, OpDelay: 30 * time.Millisecond})
			for i := 0; i < 10; i++ {
				s.AddInstance(zone, fmt.Sprintf("vm-%d", i))
			}
			var obs counter
			c := newCloud(t, s, &obs, func(c *gce.Config) { c.RateLimitWindow = 100 * time.Millisecond })
			for i := 0; i < 10; i++ {
				if err := c.AddAlias(ctx, ref(fmt.Sprintf("vm-%d", i)), cloud.AliasRange{CIDR: netip.MustParsePrefix(fmt.Sprintf("10.64.%d.0/24", i)), RangeName: "pods"}); err != nil {
					t.Fatalf("vm-%d: %v", i, err)
				}
			}
			s.SetFaults(gcetest.Faults{})
			for i := 0; i < 10; i++ {
				name := fmt.Sprintf("vm-%d", i)
				got, err := c.Aliases(ctx, ref(name))
				if err != nil || len(got) != 1 || serverPrefixes(s, name) != fmt.Sprintf("pods:10.64.%d.0/24", i) {
					t.Fatalf("%s: %v %v (server %q)", name, got, err, serverPrefixes(s, name))
				}
			}
			if tc.code != "" {
				seen := 0
				for k, v := range obs.n {
					if strings.HasSuffix(k, " "+tc.code) {
						seen += v
					}
				}
				if seen == 0 {
					t.Errorf("no %s was observed; the fault was not exercised (%v)", tc.code, obs.n)
				}
			}
		})
	}
}

func TestOperationErrorSurfaces(t *testing.T) {
	s := newServer(t, gcetest.Options{Faults: gcetest.Faults{FailOps: 1}})
	s.AddInstance(zone, "vm")
	c := newCloud(t, s, nil)
	err := c.AddAlias(ctx, ref("vm"), cloud.AliasRange{CIDR: netip.MustParsePrefix("10.64.0.0/24"), RangeName: "pods"})
	if err == nil || !strings.Contains(err.Error(), "INTERNAL_ERROR") {
		t.Fatalf("operation error not surfaced: %v", err)
	}
}

// The server side of the contract, through the raw compute client.
func TestServerUpdateContract(t *testing.T) {
	s := newServer(t, gcetest.Options{})
	s.AddInstance(zone, "vm")
	svc, err := compute.NewService(ctx, option.WithEndpoint(s.Endpoint()), option.WithoutAuthentication())
	if err != nil {
		t.Fatal(err)
	}
	in, err := svc.Instances.Get("test-project", zone, "vm").Do()
	if err != nil {
		t.Fatal(err)
	}
	fp := in.NetworkInterfaces[0].Fingerprint
	list := []*compute.AliasIpRange{{IpCidrRange: "10.64.3.0/24", SubnetworkRangeName: "pods"}}
	code := func(err error) int {
		var g *googleapi.Error
		if errors.As(err, &g) {
			return g.Code
		}
		return 0
	}
	_, err = svc.Instances.UpdateNetworkInterface("test-project", zone, "vm", "nic0", &compute.NetworkInterface{AliasIpRanges: list}).Do()
	if code(err) != 400 {
		t.Errorf("no fingerprint: %v, want 400", err)
	}
	op1, err := svc.Instances.UpdateNetworkInterface("test-project", zone, "vm", "nic0", &compute.NetworkInterface{AliasIpRanges: list, Fingerprint: fp}).RequestId("req-1").Do()
	if err != nil {
		t.Fatal(err)
	}
	op2, err := svc.Instances.UpdateNetworkInterface("test-project", zone, "vm", "nic0", &compute.NetworkInterface{AliasIpRanges: list, Fingerprint: fp}).RequestId("req-1").Do()
	if err != nil || op2.Name != op1.Name {
		t.Errorf("retried requestId: %v, op %s vs %s; want the same operation", err, op2.Name, op1.Name)
	}
	_, err = svc.Instances.UpdateNetworkInterface("test-project", zone, "vm", "nic0", &compute.NetworkInterface{AliasIpRanges: nil, Fingerprint: fp}).RequestId("req-2").Do()
	if code(err) != 412 {
		t.Errorf("stale fingerprint: %v, want 412", err)
	}
	in, _ = svc.Instances.Get("test-project", zone, "vm").Do()
	if got := in.NetworkInterfaces[0].AliasIpRanges; len(got) != 1 || got[0].IpCidrRange != "10.64.3.0/24" {
		t.Errorf("aliases %v", got)
	}
	// The metadata server insists on its header.
	resp, err := http.Get(s.URL + "/computeMetadata/v1/project/project-id")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("metadata without Metadata-Flavor: %d, want 403", resp.StatusCode)
	}
}

func TestListInstancesPagesAndFilters(t *testing.T) {
	s := newServer(t, gcetest.Options{})
	for i := 0; i < 250; i++ {
		s.AddInstance([]string{"us-central1-a", "us-central1-b"}[i%2], fmt.Sprintf("vm-%03d", i))
	}
	c := newCloud(t, s, nil)
	if err := c.AddAlias(ctx, cloud.InstanceRef{Project: "test-project", Zone: "us-central1-b", Name: "vm-007"}, cloud.AliasRange{CIDR: netip.MustParsePrefix("10.64.7.0/24"), RangeName: "pods"}); err != nil {
		t.Fatal(err)
	}
	insts, err := c.ListInstances(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(insts) != 250 {
		t.Fatalf("%d instances, want 250 (over 3 pages)", len(insts))
	}
	for _, in := range insts {
		if in.Ref.Name == "vm-007" && (in.Ref.Zone != "us-central1-b" || len(in.Aliases) != 1) {
			t.Errorf("vm-007: %+v", in)
		}
	}
}

func TestFillFromMetadata(t *testing.T) {
	s := newServer(t, gcetest.Options{
		SecondaryRanges: map[string]netip.Prefix{"gke-pods": netip.MustParsePrefix("10.8.0.0/14")},
		Metadata:        gcetest.Metadata{Project: "test-project", NumericProject: "123", Zone: zone, InstanceName: "controller-vm"},
	})
	s.AddInstance(zone, "controller-vm")
	t.Setenv("GCE_METADATA_HOST", s.MetadataHost())
	cfg := gce.Config{Endpoint: s.Endpoint()}
	if err := gce.FillFromMetadata(ctx, &cfg); err != nil {
		t.Fatal(err)
	}
	// The NIC's full subnetwork URL is kept (in a Shared VPC it names the
	// host project).
	if cfg.Project != "test-project" || cfg.Zone != zone || cfg.Region != "us-central1" ||
		cfg.Subnetwork != "https://www.googleapis.com/compute/v1/projects/test-project/regions/us-central1/subnetworks/nodes" || cfg.SecondaryRange != "gke-pods" {
		t.Fatalf("filled %+v", cfg)
	}
	// Flags win over metadata.
	cfg = gce.Config{Endpoint: s.Endpoint(), Project: "other", Zone: "europe-west1-b", Subnetwork: "x", SecondaryRange: "y"}
	if err := gce.FillFromMetadata(ctx, &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.Project != "other" || cfg.Region != "europe-west1" || cfg.Subnetwork != "x" || cfg.SecondaryRange != "y" {
		t.Fatalf("flags overridden: %+v", cfg)
	}
}

func TestMethodName(t *testing.T) {
	for path, want := range map[string]string{
		"/compute/v1/projects/p/zones/z/instances/vm":                        "instances.get",
		"/compute/v1/projects/p/zones/z/instances/vm/updateNetworkInterface": "instances.updateNetworkInterface",
		"/compute/v1/projects/p/aggregated/instances":                        "instances.aggregatedList",
		"/compute/v1/projects/p/zones/z/operations/op-1/wait":                "zoneOperations.wait",
		"/compute/v1/projects/p/zones/z/operations":                          "zoneOperations.list",
		"/compute/v1/projects/p/regions/r/subnetworks/s":                     "subnetworks.get",
	} {
		if got := gce.MethodName("GET", path); got != want {
			t.Errorf("MethodName(%s) = %s, want %s", path, got, want)
		}
	}
}

// Shared VPC: the instances are in a service project, the subnetwork in a
// host project. The controller reads the pod range from the host project,
// keeps the NIC's full subnetwork URL from the metadata path, and lists
// only instances on that exact subnetwork (a same-named subnetwork of
// another project does not match).
func TestSharedVPC(t *testing.T) {
	s := newServer(t, gcetest.Options{
		SubnetProject: "host-project",
		Metadata:      gcetest.Metadata{Project: "test-project", NumericProject: "123", Zone: zone, InstanceName: "controller-vm"},
	})
	s.AddInstance(zone, "controller-vm")
	s.AddInstance(zone, "vm-1")
	t.Setenv("GCE_METADATA_HOST", s.MetadataHost())
	cfg := gce.Config{Endpoint: s.Endpoint(), SecondaryRange: "pods", QPS: 1000, Burst: 1000}
	if err := gce.FillFromMetadata(ctx, &cfg); err != nil {
		t.Fatal(err)
	}
	if want := "https://www.googleapis.com/compute/v1/projects/host-project/regions/us-central1/subnetworks/nodes"; cfg.Subnetwork != want {
		t.Fatalf("subnetwork %q, want the host project's %q", cfg.Subnetwork, want)
	}
	for _, sub := range []string{cfg.Subnetwork, "projects/host-project/regions/us-central1/subnetworks/nodes"} {
		cfg.Subnetwork = sub
		c, err := gce.New(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		r, name, err := c.PodRange(ctx)
		if err != nil || r.String() != "10.64.0.0/14" || name != "pods" {
			t.Fatalf("%s: pod range %v %q %v", sub, r, name, err)
		}
		insts, err := c.ListInstances(ctx)
		if err != nil || len(insts) != 2 {
			t.Fatalf("%s: %d instances, %v; want 2", sub, len(insts), err)
		}
		if err := c.AddAlias(ctx, cloud.InstanceRef{Project: "test-project", Zone: zone, Name: "vm-1"}, cloud.AliasRange{CIDR: netip.MustParsePrefix("10.64.1.0/24"), RangeName: "pods"}); err != nil {
			t.Fatalf("%s: add alias: %v", sub, err)
		}
		c.RemoveAlias(ctx, cloud.InstanceRef{Project: "test-project", Zone: zone, Name: "vm-1"}, netip.MustParsePrefix("10.64.1.0/24"))
	}
	// A bare name means the instances' project: the host's subnetwork is
	// not found there, and instances on it are not ours.
	cfg.Subnetwork = "nodes"
	c, err := gce.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.PodRange(ctx); err == nil {
		t.Errorf("subnetwork %q resolved in the service project", cfg.Subnetwork)
	}
	if insts, _ := c.ListInstances(ctx); len(insts) != 0 {
		t.Errorf("%d instances matched a subnetwork of another project", len(insts))
	}
	for _, bad := range []string{"projects/p/regions/r", "https://x/projects//regions/r/subnetworks/n", "a/b"} {
		if _, err := gce.ParseSubnetwork(bad, "p", "r"); err == nil {
			t.Errorf("ParseSubnetwork(%q) accepted", bad)
		}
	}
}

// A PodRange's secondary range: its CIDR read from the subnetwork, an
// unknown name reported as such, and its aliases added under its name
// beside the pod range's (the server refuses a CIDR outside the range).
func TestSecondaryRangeAndRangeAlias(t *testing.T) {
	s := newServer(t, gcetest.Options{SecondaryRanges: map[string]netip.Prefix{
		"pods":   netip.MustParsePrefix("10.64.0.0/14"),
		"pods-b": netip.MustParsePrefix("10.80.0.0/20"),
	}})
	s.AddInstance(zone, "vm-1")
	c := newCloud(t, s, nil)
	if p, err := c.SecondaryRange(ctx, "pods-b"); err != nil || p.String() != "10.80.0.0/20" {
		t.Fatalf("SecondaryRange(pods-b) = %v, %v", p, err)
	}
	if _, err := c.SecondaryRange(ctx, "nope"); !errors.Is(err, cloud.ErrNoSecondaryRange) {
		t.Fatalf("SecondaryRange(nope) = %v, want ErrNoSecondaryRange", err)
	}
	if err := c.AddAlias(ctx, ref("vm-1"), cloud.AliasRange{CIDR: netip.MustParsePrefix("10.64.1.0/24"), RangeName: "pods"}); err != nil {
		t.Fatal(err)
	}
	if err := c.AddAlias(ctx, ref("vm-1"), cloud.AliasRange{CIDR: netip.MustParsePrefix("10.80.0.64/26"), RangeName: "pods-b"}); err != nil {
		t.Fatal(err)
	}
	if err := c.AddAlias(ctx, ref("vm-1"), cloud.AliasRange{CIDR: netip.MustParsePrefix("10.81.0.0/26"), RangeName: "pods-b"}); !errors.Is(err, cloud.ErrInvalid) {
		t.Errorf("alias outside its secondary range: %v, want ErrInvalid", err)
	}
	if got, want := serverPrefixes(s, "vm-1"), "pods-b:10.80.0.64/26 pods:10.64.1.0/24"; got != want {
		t.Errorf("NIC holds %q, want %q", got, want)
	}
	if err := c.RemoveAlias(ctx, ref("vm-1"), netip.MustParsePrefix("10.80.0.64/26")); err != nil {
		t.Fatal(err)
	}
	if got, want := serverPrefixes(s, "vm-1"), "pods:10.64.1.0/24"; got != want {
		t.Errorf("after removal the NIC holds %q, want %q", got, want)
	}
}
