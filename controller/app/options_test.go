package app

import (
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		args []string
		err  string // substring; "" means valid
	}{
		{[]string{"--cloud=fake", "--cluster-cidr=10.0.0.0/8"}, ""},
		{[]string{"--cloud=fake", "--cluster-cidr=fd00::/48", "--node-cidr-mask-size=64"}, ""},
		{[]string{"--cloud=fake"}, "--cluster-cidr is required"},
		{[]string{"--cloud=azure"}, `want gce or fake`},
		{[]string{"--cloud=fake", "--cluster-cidr=10.0.0.0"}, "--cluster-cidr"},
		{[]string{"--cloud=fake", "--cluster-cidr=10.1.2.0/8"}, "host bits"},
		{[]string{"--cloud=fake", "--cluster-cidr=10.0.0.0/16", "--node-cidr-mask-size=12"}, "--node-cidr-mask-size"},
		// The agent's rule (internal/blocksize): no /31 or /32 blocks, none past /126.
		{[]string{"--cloud=fake", "--cluster-cidr=10.0.0.0/16", "--node-cidr-mask-size=30"}, ""},
		{[]string{"--cloud=fake", "--cluster-cidr=10.0.0.0/16", "--node-cidr-mask-size=31"}, "/30 or larger"},
		{[]string{"--cloud=gce", "--node-cidr-mask-size=32"}, "/30 or larger"},
		{[]string{"--cloud=fake", "--cluster-cidr=fd00::/112", "--node-cidr-mask-size=127"}, "/126 or larger"},
		{[]string{"--cloud=fake", "--cluster-cidr=10.0.0.0/16", "--cloud-qps=0"}, "--cloud-qps"},
		{[]string{"--cloud=fake", "--cluster-cidr=10.0.0.0/16", "--leader-elect-renew-deadline=20s"}, "lease-duration"},
		{[]string{"--cloud=fake", "--cluster-cidr=10.0.0.0/16", "--fake-error-rate=2"}, "--fake-error-rate"},
		{[]string{"--cloud=fake", "--cluster-cidr=10.0.0.0/16", "--metrics-addr=9090"}, "--metrics-addr"},
		{[]string{"--cloud=fake", "--cluster-cidr=10.0.0.0/16", "--fake-provider-schemes=kind,fake"}, ""},
		{[]string{"--cloud=fake", "--cluster-cidr=10.0.0.0/16", "--fake-provider-schemes=kind://"}, `"kind://" is not a URI scheme`},
		{[]string{"--cloud=fake", "--cluster-cidr=10.0.0.0/16", "--fake-provider-schemes=kind,,fake"}, `"" is not a URI scheme`},
		{[]string{"--cloud=fake", "--cluster-cidr=10.0.0.0/16", "--fake-provider-schemes=kind docker"}, `"kind docker" is not a URI scheme`},
		{[]string{"--cloud=fake", "--cluster-cidr=10.0.0.0/16", "--fake-provider-schemes=9p"}, `"9p" is not a URI scheme`},
		{[]string{"--cloud=gce", "--fake-provider-schemes=kind/"}, "--fake-provider-schemes"},
		{[]string{"--cloud=gce", "--cluster-cidr=fd00:10::/48", "--node-cidr-mask-size=64"}, "IPv6 pod ranges are not supported with --cloud=gce"},
		// An empty list: only nodes without a providerID are instances.
		{[]string{"--cloud=fake", "--cluster-cidr=10.0.0.0/16", "--fake-provider-schemes="}, ""},
	} {
		o := NewOptions()
		fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
		o.AddFlags(fs)
		if err := fs.Parse(tc.args); err != nil {
			t.Fatalf("%v: parse: %v", tc.args, err)
		}
		err := o.Validate()
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("%v: unexpected error %v", tc.args, err)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%v: error %v, want one mentioning %q", tc.args, err, tc.err)
		case err != nil && strings.Contains(err.Error(), "\n"):
			t.Errorf("%v: error spans lines: %q", tc.args, err)
		}
	}
}

func TestFakeProviderSchemesDefault(t *testing.T) {
	o := NewOptions()
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	o.AddFlags(fs)
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	if want := []string{"fake", "kind"}; !slices.Equal(o.FakeSchemes, want) {
		t.Errorf("default --fake-provider-schemes %v, want %v", o.FakeSchemes, want)
	}
	if err := fs.Parse([]string{"--fake-provider-schemes=kind"}); err != nil || !slices.Equal(o.FakeSchemes, []string{"kind"}) {
		t.Errorf("--fake-provider-schemes=kind: %v, %v; want [kind] (the flag replaces the default)", o.FakeSchemes, err)
	}
}

// GCE moves an alias range between VMs in up to a minute: the release
// cooldown defaults to 60 s there, and a value the user gives is kept.
func TestReleaseCooldownDefaults(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want time.Duration
	}{
		{[]string{"--cloud=fake", "--cluster-cidr=10.0.0.0/8"}, 30 * time.Second},
		{[]string{"--cloud=gce"}, time.Minute},
		{[]string{"--cloud=gce", "--release-cooldown=10s"}, 10 * time.Second},
		{[]string{"--cloud=gce", "--release-cooldown=2m"}, 2 * time.Minute},
	} {
		o := NewOptions()
		fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
		o.AddFlags(fs)
		if err := fs.Parse(tc.args); err != nil {
			t.Fatal(err)
		}
		if err := o.Validate(); err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		if o.ReleaseCooldown != tc.want {
			t.Errorf("%v: release cooldown %v, want %v", tc.args, o.ReleaseCooldown, tc.want)
		}
	}
}

// The fake cloud has no client-side budget unless one is asked for; GCE
// keeps its 20 calls/s.
func TestFakeCloudUnbudgetedByDefault(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want float64
	}{
		{[]string{"--cloud=fake", "--cluster-cidr=10.0.0.0/16"}, math.Inf(1)},
		{[]string{"--cloud=fake", "--cluster-cidr=10.0.0.0/16", "--cloud-qps=5"}, 5},
		{[]string{"--cloud=gce"}, 20},
	} {
		o := NewOptions()
		fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
		o.AddFlags(fs)
		if err := fs.Parse(tc.args); err != nil {
			t.Fatal(err)
		}
		if err := o.Validate(); err != nil {
			t.Fatal(err)
		}
		if o.CloudQPS != tc.want {
			t.Errorf("%v: cloud QPS %v, want %v", tc.args, o.CloudQPS, tc.want)
		}
	}
}
