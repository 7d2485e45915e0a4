package gcetest

import (
	"net/netip"
	"testing"

	compute "google.golang.org/api/compute/v1"
	"google.golang.org/api/option"
)

// TestDualStackWire reads a dual-stack subnetwork and its instances with
// the real compute client: the fields and values are those of the compute
// v1 schema (see render and getSubnet), written out here.
func TestDualStackWire(t *testing.T) {
	s := NewServer(Options{IPv6Range: netip.MustParsePrefix("fd20:1:2:3::/64")})
	defer s.Close()
	svc, err := compute.NewService(t.Context(), option.WithEndpoint(s.Endpoint()), option.WithoutAuthentication())
	if err != nil {
		t.Fatal(err)
	}
	s.AddInstance("us-central1-a", "v4")
	if p := s.AddInstanceDualStack("us-central1-a", "ds"); p != netip.MustParsePrefix("fd20:1:2:3::/96") {
		t.Fatalf("AddInstanceDualStack = %v, want fd20:1:2:3::/96", p)
	}
	if p := s.NextIPv6(); p != netip.MustParsePrefix("fd20:1:2:3:0:1::/96") {
		t.Fatalf("NextIPv6 = %v, want fd20:1:2:3:0:1::/96", p)
	}

	sub, err := svc.Subnetworks.Get("test-project", "us-central1", "nodes").Context(t.Context()).Do()
	if err != nil {
		t.Fatal(err)
	}
	if sub.StackType != "IPV4_IPV6" || sub.Ipv6AccessType != "INTERNAL" || sub.InternalIpv6Prefix != "fd20:1:2:3::/64" {
		t.Errorf("subnetwork = stackType %q, ipv6AccessType %q, internalIpv6Prefix %q", sub.StackType, sub.Ipv6AccessType, sub.InternalIpv6Prefix)
	}

	type nic struct {
		stack, access, addr string
		length              int64
	}
	want := map[string]nic{
		"v4": {stack: "IPV4_ONLY"},
		"ds": {"IPV4_IPV6", "INTERNAL", "fd20:1:2:3::", 96},
	}
	list, err := svc.Instances.AggregatedList("test-project").Context(t.Context()).Do()
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range list.Items["zones/us-central1-a"].Instances {
		got, err := svc.Instances.Get("test-project", "us-central1-a", in.Name).Context(t.Context()).Do()
		if err != nil {
			t.Fatal(err)
		}
		for _, i := range []*compute.Instance{in, got} {
			n := i.NetworkInterfaces[0]
			if g := (nic{n.StackType, n.Ipv6AccessType, n.Ipv6Address, n.InternalIpv6PrefixLength}); g != want[in.Name] {
				t.Errorf("%s nic0 = %+v, want %+v", in.Name, g, want[in.Name])
			}
		}
	}
	if n := len(list.Items["zones/us-central1-a"].Instances); n != 2 {
		t.Fatalf("aggregatedList has %d instances, want 2", n)
	}

	// The range arrives later, then goes.
	s.SetIPv6("us-central1-a", "v4", netip.MustParsePrefix("fd20:1:2:3:0:1::/96"))
	got, err := svc.Instances.Get("test-project", "us-central1-a", "v4").Context(t.Context()).Do()
	if err != nil {
		t.Fatal(err)
	}
	if n := got.NetworkInterfaces[0]; n.StackType != "IPV4_IPV6" || n.Ipv6Address != "fd20:1:2:3:0:1::" || n.InternalIpv6PrefixLength != 96 {
		t.Errorf("v4 nic0 after SetIPv6 = %q %q /%d", n.StackType, n.Ipv6Address, n.InternalIpv6PrefixLength)
	}
	s.SetIPv6("us-central1-a", "v4", netip.Prefix{})
	if got, err = svc.Instances.Get("test-project", "us-central1-a", "v4").Context(t.Context()).Do(); err != nil {
		t.Fatal(err)
	}
	if n := got.NetworkInterfaces[0]; n.StackType != "IPV4_ONLY" || n.Ipv6Address != "" {
		t.Errorf("v4 nic0 after SetIPv6(none) = %q %q", n.StackType, n.Ipv6Address)
	}
}
