package agent

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	compute "google.golang.org/api/compute/v1"

	"github.com/aliasip/aliasip/cloud/gce/gcetest"
	"github.com/spf13/pflag"
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

func TestOptionsValidate(t *testing.T) {
	for _, tc := range []struct {
		args   []string
		err    string
		fabric string
	}{
		{[]string{"--node-name=n", "--cloud=fake"}, "", "routes"},
		{[]string{"--node-name=n", "--cloud=gce"}, "", "none"},
		{[]string{"--node-name=n", "--cloud=fake", "--fabric=none"}, "", "none"},
		{[]string{"--cloud=fake"}, "--node-name", ""},
		{[]string{"--node-name=n", "--cloud=aws"}, "want gce or fake", ""},
		{[]string{"--node-name=n", "--fabric=vxlan"}, "--fabric", ""},
		{[]string{"--node-name=n", "--state-dir=relative"}, "absolute", ""},
		{[]string{"--node-name=n", "--resync-period=0s"}, "positive", ""},
	} {
		o := NewOptions("", "/bin")
		fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
		o.AddFlags(fs)
		if err := fs.Parse(tc.args); err != nil {
			t.Fatal(err)
		}
		err := o.Validate()
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("%v: %v", tc.args, err)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%v: %v, want %q", tc.args, err, tc.err)
		case tc.err == "" && o.Fabric != tc.fabric:
			t.Errorf("%v: fabric %q, want %q", tc.args, o.Fabric, tc.fabric)
		}
	}
}
