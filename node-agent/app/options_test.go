package app

import (
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/spf13/pflag"
)

func TestOptionsValidate(t *testing.T) {
	for _, tc := range []struct {
		args   []string
		err    string
		fabric string
	}{
		{[]string{"--node-name=n", "--cloud=fake", "--cluster-cidr=10.244.0.0/16"}, "", "routes"},
		// Fabric routes are bounded by the pod ranges: without an IPv4
		// one the agent would route any block a Node claims.
		{[]string{"--node-name=n", "--cloud=fake"}, "--fabric=routes needs an IPv4 --cluster-cidr", ""},
		{[]string{"--node-name=n", "--fabric=routes", "--cluster-cidr=fd00::/48"}, "--fabric=routes needs an IPv4 --cluster-cidr", ""},
		{[]string{"--node-name=n", "--cloud=fake", "--cluster-cidr=10.244.0.0/16", "--node-cidr-mask-size=24"}, "", "routes"},
		{[]string{"--node-name=n", "--cloud=fake", "--cluster-cidr=10.244.0.0/16", "--node-cidr-mask-size=12"}, "--node-cidr-mask-size=12", ""},
		{[]string{"--node-name=n", "--cloud=fake", "--cluster-cidr=10.244.0.0/16", "--node-cidr-mask-size=33"}, "--node-cidr-mask-size=33", ""},
		{[]string{"--node-name=n", "--cloud=gce", "--node-cidr-mask-size=24"}, "--node-cidr-mask-size=24", ""},
		{[]string{"--node-name=n", "--cloud=gce"}, "", "none"},
		{[]string{"--node-name=n", "--cloud=fake", "--fabric=none"}, "", "none"},
		{[]string{"--cloud=fake"}, "--node-name", ""},
		{[]string{"--node-name=n", "--cloud=aws"}, "want gce or fake", ""},
		{[]string{"--node-name=n", "--fabric=vxlan"}, "--fabric", ""},
		{[]string{"--node-name=n", "--state-dir=relative"}, "absolute", ""},
		{[]string{"--node-name=n", "--resync-period=0s"}, "positive", ""},
		{[]string{"--node-name=n", "--cluster-cidr=10.1.2.0/16"}, "--cluster-cidr", ""},
		{[]string{"--node-name=n", "--cluster-cidr=10.1.0.0/16,10.2.0.0/16"}, "", "none"},
	} {
		o := parse(t, tc.args...)
		before := *o
		before.ClusterCIDRs = slices.Clone(o.ClusterCIDRs)
		err := o.Validate()
		c, _ := o.Config()
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("%v: %v", tc.args, err)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%v: %v, want %q", tc.args, err, tc.err)
		case tc.err == "" && c.Agent.FabricRoutes != (tc.fabric == "routes"):
			t.Errorf("%v: fabric routes %v, want fabric %q", tc.args, c.Agent.FabricRoutes, tc.fabric)
		}
		if diff := cmp.Diff(&before, o); diff != "" {
			t.Errorf("%v: Validate or Config changed the options (-before +after):\n%s", tc.args, diff)
		}
	}
}

// parse registers the flags on a fresh flag set and parses args.
func parse(t *testing.T, args ...string) *Options {
	t.Helper()
	o := NewOptions("", "/bin")
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	o.AddFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatalf("%v: parse: %v", args, err)
	}
	return o
}

// Config returns the flags parsed into typed values, with the defaults
// that depend on --cloud applied.
func TestConfig(t *testing.T) {
	c, err := parse(t, "--node-name=n", "--cloud=gce", "--cluster-cidr=10.64.0.0/14,fd00::/48",
		"--kubeconfig=/k", "--metrics-addr=:1").Config()
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Prefix{netip.MustParsePrefix("10.64.0.0/14"), netip.MustParsePrefix("fd00::/48")}
	if !slices.Equal(c.Agent.ClusterCIDRs, want) {
		t.Errorf("cluster CIDRs %v, want %v", c.Agent.ClusterCIDRs, want)
	}
	if c.Agent.NodeName != "n" || c.Agent.Cloud != "gce" || c.Agent.FabricRoutes || c.Agent.AliasCheck == nil ||
		c.Agent.GuestAgentConfig != "/etc/default/instance_configs.cfg" || c.Kubeconfig != "/k" || c.MetricsAddr != ":1" {
		t.Errorf("gce: %+v", c)
	}
	c, err = parse(t, "--node-name=n", "--cloud=fake", "--cluster-cidr=10.244.0.0/16", "--node-cidr-mask-size=26").Config()
	if err != nil {
		t.Fatal(err)
	}
	if !c.Agent.FabricRoutes || c.Agent.AliasCheck != nil || c.Agent.GuestAgentConfig != "" || c.Agent.NodeCIDRMaskSize != 26 {
		t.Errorf("fake: %+v", c)
	}
}

// The default ports stay clear of 9090–9100 (Prometheus, Alertmanager,
// Pushgateway, node exporters), since the agent runs on the host network.
func TestDefaultPortClearOfMonitoring(t *testing.T) {
	o := NewOptions("", "/bin")
	_, port, err := net.SplitHostPort(o.MetricsAddr)
	if err != nil {
		t.Fatal(err)
	}
	if port >= "9090" && port <= "9100" && len(port) == 4 {
		t.Errorf("default metrics port %s collides with the monitoring range", port)
	}
}
