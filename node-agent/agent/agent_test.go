package agent

import (
	"context"
	"net/netip"
	"testing"

	compute "google.golang.org/api/compute/v1"

	"github.com/aliasip/aliasip/cloud/gce/gcetest"
)

func TestGCEAliasCheck(t *testing.T) {
	s := gcetest.NewServer(gcetest.Options{
		SecondaryRanges: map[string]netip.Prefix{"pods": netip.MustParsePrefix("10.64.0.0/14")},
		Metadata:        gcetest.Metadata{Project: "p", NumericProject: "1", Zone: "us-central1-a", InstanceName: "vm-1"},
	})
	defer s.Close()
	// Two ranges: the podCIDR is the second, at ip-aliases/1.
	s.AddInstance("us-central1-a", "vm-1", &compute.AliasIpRange{IpCidrRange: "10.64.9.0/24", SubnetworkRangeName: "pods"},
		&compute.AliasIpRange{IpCidrRange: "10.64.3.0/24", SubnetworkRangeName: "pods"})
	t.Setenv("GCE_METADATA_HOST", s.MetadataHost())
	ctx := context.Background()
	if ok, err := GCEAliasCheck(ctx, netip.MustParsePrefix("10.64.3.0/24")); !ok || err != nil {
		t.Errorf("alias on the NIC: %v %v", ok, err)
	}
	if ok, _ := GCEAliasCheck(ctx, netip.MustParsePrefix("10.64.4.0/24")); ok {
		t.Error("a range not on the NIC passed")
	}
}
