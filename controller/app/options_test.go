package app

import (
	"fmt"
	"math"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/spf13/pflag"
	"k8s.io/apimachinery/pkg/types"

	"github.com/aliasip/aliasip/cloud/gce"
	"github.com/aliasip/aliasip/controller"
	"github.com/aliasip/aliasip/fake"
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
		// Dual-stack: the IPv6 side comes from the NICs.
		{[]string{"--cloud=fake", "--cluster-cidr=10.0.0.0/16", "--dual-stack", "--fake-ipv6-range=fd20:0:0:1::/64"}, ""},
		{[]string{"--cloud=gce", "--dual-stack"}, ""},
		{[]string{"--cloud=fake", "--cluster-cidr=10.0.0.0/16", "--dual-stack"}, "needs --fake-ipv6-range"},
		{[]string{"--cloud=fake", "--cluster-cidr=fd00::/48", "--node-cidr-mask-size=64", "--dual-stack", "--fake-ipv6-range=fd20::/64"}, "the pod range is the IPv4 side"},
		{[]string{"--cloud=fake", "--cluster-cidr=10.0.0.0/16", "--fake-ipv6-range=10.0.0.0/8"}, "--fake-ipv6-range"},
		{[]string{"--cloud=fake", "--cluster-cidr=10.0.0.0/16", "--fake-ipv6-range=fd20::/112"}, "--fake-ipv6-range"},
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

// parse registers the flags on a fresh flag set and parses args.
func parse(t *testing.T, args ...string) *Options {
	t.Helper()
	o := NewOptions()
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	o.AddFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatalf("%v: parse: %v", args, err)
	}
	return o
}

// prefixes compares netip.Prefix values (no exported fields, no Equal).
var prefixes = cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })

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
		c, err := parse(t, tc.args...).Config()
		if err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		if got := c.Controller.ReleaseCooldown; got != tc.want {
			t.Errorf("%v: release cooldown %v, want %v", tc.args, got, tc.want)
		}
	}
}

// The cloud budget is applied in one place: by the GCE client itself (per
// HTTP call), or by the controller for the fake, which has no budget
// unless one is asked for; GCE keeps its 20 calls/s.
func TestCloudBudgetAppliedOnce(t *testing.T) {
	for _, tc := range []struct {
		args      []string
		qps       float64
		burst     int
		byGCE     bool
		wantCloud string
	}{
		{[]string{"--cloud=fake", "--cluster-cidr=10.0.0.0/16"}, math.Inf(1), 40, false, "fake"},
		{[]string{"--cloud=fake", "--cluster-cidr=10.0.0.0/16", "--cloud-qps=5", "--cloud-burst=7"}, 5, 7, false, "fake"},
		{[]string{"--cloud=gce"}, 20, 40, true, "gce"},
		{[]string{"--cloud=gce", "--cloud-qps=3", "--cloud-burst=4"}, 3, 4, true, "gce"},
	} {
		c, err := parse(t, tc.args...).Config()
		if err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		var qps float64
		var burst int
		switch {
		case c.Cloud.GCE != nil && c.Cloud.Fake != nil:
			t.Fatalf("%v: both clouds configured", tc.args)
		case c.Cloud.GCE != nil:
			if c.Controller.CloudQPS != 0 || c.Controller.CloudBurst != 0 || !c.Controller.CloudBudgeted {
				t.Errorf("%v: GCE budgets itself, but the controller has a budget too: %+v", tc.args, c.Controller)
			}
			qps, burst = c.Cloud.GCE.QPS, c.Cloud.GCE.Burst
		case c.Cloud.Fake != nil:
			if c.Controller.CloudBudgeted {
				t.Errorf("%v: the fake has no budget of its own, but the controller applies none", tc.args)
			}
			qps, burst = c.Controller.CloudQPS, c.Controller.CloudBurst
		default:
			t.Fatalf("%v: no cloud configured", tc.args)
		}
		if got := map[bool]string{true: "gce", false: "fake"}[c.Cloud.GCE != nil]; got != tc.wantCloud {
			t.Errorf("%v: cloud %s, want %s", tc.args, got, tc.wantCloud)
		}
		if qps != tc.qps || burst != tc.burst {
			t.Errorf("%v: cloud budget %v/%d, want %v/%d", tc.args, qps, burst, tc.qps, tc.burst)
		}
	}
}

// Validate and Config change nothing: the options after equal the options
// before, for valid and invalid flags, and for the defaults that depend on
// --cloud.
func TestValidateDoesNotChangeOptions(t *testing.T) {
	for _, args := range [][]string{
		{"--cloud=gce"},
		{"--cloud=gce", "--cluster-cidr=10.0.0.0/16", "--fake-provider-schemes=kind"},
		{"--cloud=fake", "--cluster-cidr=10.0.0.0/16"},
		{"--cloud=fake", "--cluster-cidr=fd00::/48", "--node-cidr-mask-size=64", "--leader-elect=false"},
		{"--cloud=fake"},
		{"--cloud=fake", "--cluster-cidr=10.1.2.0/8"},
		{"--cloud=gce", "--cloud-qps=0"},
	} {
		o := parse(t, args...)
		before := *o
		before.FakeSchemes = slices.Clone(o.FakeSchemes)
		validateErr := o.Validate()
		_, configErr := o.Config()
		if diff := cmp.Diff(&before, o, cmpopts.IgnoreUnexported(Options{})); diff != "" || before.fs != o.fs {
			t.Errorf("%v: Validate or Config changed the options (-before +after):\n%s", args, diff)
		}
		if fmt.Sprint(validateErr) != fmt.Sprint(configErr) {
			t.Errorf("%v: Validate says %v, Config %v", args, validateErr, configErr)
		}
	}
}

// Config returns the flags parsed into typed values: the cluster CIDR as a
// prefix (handed to the cloud), the controller's settings, the clients',
// leader election's and the endpoints'.
func TestConfig(t *testing.T) {
	t.Setenv("POD_NAME", "aliasip-controller-7d9f")
	for _, tc := range []struct {
		name string
		args []string
		want Config
	}{{
		name: "fake",
		args: []string{"--cloud=fake", "--cluster-cidr=10.64.0.0/14", "--node-cidr-mask-size=26", "--workers=3",
			"--kubeconfig=/k", "--kube-api-qps=7", "--kube-api-burst=9", "--events-qps=3", "--resync-period=1m",
			"--fake-latency=2s", "--fake-error-rate=0.5", "--fake-rate-limit=4", "--fake-state-file=/s",
			"--fake-provider-schemes=kind", "--leader-elect-namespace=ns", "--leader-elect-name=le",
			"--metrics-addr=:1", "--health-addr=:2", "--admin-socket=/a.sock"},
		want: Config{
			Controller: controller.Config{MaskSize: 26, Workers: 3, ReleaseCooldown: 30 * time.Second,
				LeakGracePeriod: 5 * time.Minute, GCInterval: time.Minute, CloudQPS: math.Inf(1), CloudBurst: 40,
				SyncTimeout: 3 * time.Minute},
			Cloud: CloudConfig{Fake: &fake.Options{PodRange: netip.MustParsePrefix("10.64.0.0/14"),
				Latency: 2 * time.Second, ErrorRate: 0.5, RateLimit: 4, RateBurst: 5, AutoRegister: true,
				ProviderSchemes: []string{"kind"}, StatePath: "/s"}},
			Kubeconfig: "/k", KubeAPIQPS: 7, KubeAPIBurst: 9, EventsQPS: 3, ResyncPeriod: time.Minute,
			LeaderElection: &LeaderElection{Lease: types.NamespacedName{Namespace: "ns", Name: "le"},
				PodName: "aliasip-controller-7d9f", LeaseDuration: 15 * time.Second, RenewDeadline: 10 * time.Second,
				RetryPeriod: 2 * time.Second},
			CoolingConfigMap: types.NamespacedName{Namespace: "ns", Name: "le-cooling"},
			MetricsAddr:      ":1", HealthAddr: ":2", AdminSocket: "/a.sock",
		},
	}, {
		name: "gce",
		args: []string{"--cloud=gce", "--cluster-cidr=10.64.0.0/14", "--gce-project=p", "--gce-region=r",
			"--gce-zone=z", "--gce-subnetwork=s", "--gce-secondary-range=pods", "--gce-endpoint=http://127.0.0.1:1/compute/v1/",
			"--gce-quota-window=30s", "--gce-poll-interval=1s", "--leader-elect=false", "--metrics-addr=", "--health-addr="},
		want: Config{
			Controller: controller.Config{MaskSize: 24, Workers: 10, ReleaseCooldown: time.Minute,
				LeakGracePeriod: 5 * time.Minute, GCInterval: time.Minute, CloudBudgeted: true,
				SyncTimeout: 3 * time.Minute},
			Cloud: CloudConfig{GCE: &gce.Config{Project: "p", Region: "r", Zone: "z", Subnetwork: "s",
				SecondaryRange: "pods", PodRange: netip.MustParsePrefix("10.64.0.0/14"),
				Endpoint: "http://127.0.0.1:1/compute/v1/", QPS: 20, Burst: 40,
				RateLimitWindow: 30 * time.Second, PollInterval: time.Second}},
			KubeAPIQPS: 50, KubeAPIBurst: 100, EventsQPS: 20, ResyncPeriod: 5 * time.Minute,
			CoolingConfigMap: types.NamespacedName{Namespace: "kube-system", Name: "aliasip-controller-cooling"},
		},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parse(t, tc.args...).Config()
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got, prefixes); diff != "" {
				t.Errorf("Config() (-want +got):\n%s", diff)
			}
		})
	}
}

// --pod-name's default is read from the environment when the options are
// made, before the flags are parsed ($POD_NAME, else the hostname); the
// flag wins; an empty one is refused while leader election needs it.
func TestPodName(t *testing.T) {
	t.Setenv("POD_NAME", "aliasip-controller-abc")
	if got := parse(t).PodName; got != "aliasip-controller-abc" {
		t.Errorf("with $POD_NAME: pod name %q", got)
	}
	c, err := parse(t, "--cloud=gce", "--pod-name=p1").Config()
	if err != nil || c.LeaderElection == nil || c.LeaderElection.PodName != "p1" {
		t.Errorf("--pod-name=p1: %+v, %v", c.LeaderElection, err)
	}
	if err := parse(t, "--cloud=gce", "--pod-name=").Validate(); err == nil || !strings.Contains(err.Error(), "--pod-name") {
		t.Errorf("--pod-name= with leader election: %v, want an error naming --pod-name", err)
	}
	if err := parse(t, "--cloud=gce", "--pod-name=", "--leader-elect=false").Validate(); err != nil {
		t.Errorf("--pod-name= without leader election: %v", err)
	}
	t.Setenv("POD_NAME", "")
	if host, err := os.Hostname(); err == nil && host != "" {
		if got := parse(t).PodName; got != host {
			t.Errorf("without $POD_NAME: pod name %q, want the hostname %q", got, host)
		}
	}
}
