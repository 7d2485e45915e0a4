package egress

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestParse(t *testing.T) {
	many := "nonMasqueradeCIDRs:\n"
	for i := 0; i < 65; i++ {
		many += fmt.Sprintf("  - 10.%d.0.0/16\n", i)
	}
	for _, tc := range []struct {
		name, data string
		want       Config
		err        string
	}{
		{name: "empty keeps the defaults", data: "  \n", want: GCEDefaults()},
		{
			// The example of GKE's "Configuring an IP masquerade agent" page, unchanged.
			name: "GKE's ConfigMap file",
			data: "nonMasqueradeCIDRs:\n  - 10.0.0.0/8\nmasqLinkLocal: false\nresyncInterval: 60s\n",
			want: Config{NonMasqueradeCIDRs: prefixes("10.0.0.0/8"), ResyncInterval: 60 * time.Second},
		},
		{
			name: "JSON, link-local masqueraded",
			data: `{"nonMasqueradeCIDRs": ["198.18.0.0/15", "10.244.0.0/16"], "masqLinkLocal": true, "resyncInterval": "5s"}`,
			want: Config{NonMasqueradeCIDRs: prefixes("198.18.0.0/15", "10.244.0.0/16"), MasqLinkLocal: true, ResyncInterval: 5 * time.Second},
		},
		{
			name: "only resyncInterval: the default list stays",
			data: "resyncInterval: 10s\n",
			want: Config{NonMasqueradeCIDRs: GCEDefaults().NonMasqueradeCIDRs, ResyncInterval: 10 * time.Second},
		},
		{
			name: "an empty list masquerades everything but the pod ranges",
			data: "nonMasqueradeCIDRs: []\n",
			want: Config{ResyncInterval: DefaultResyncInterval},
		},
		{
			name: "ip-masq-agent's other fields are accepted",
			data: "nonMasqueradeCIDRs: [10.0.0.0/8]\nmasqLinkLocalIPv6: true\ncidrLimit: 2\n",
			want: Config{NonMasqueradeCIDRs: prefixes("10.0.0.0/8"), MasqLinkLocalIPv6: true, ResyncInterval: DefaultResyncInterval},
		},
		{name: "misspelt field", data: "nonMasqueradeCIRDs: [10.0.0.0/8]\n", err: `unknown field "nonMasqueradeCIRDs"`},
		{name: "not a CIDR", data: "nonMasqueradeCIDRs: [10.0.0.0]\n", err: `"10.0.0.0" is not a CIDR`},
		{name: "host bits", data: "nonMasqueradeCIDRs: [10.1.2.3/8]\n", err: `"10.1.2.3/8" has host bits set (the network is 10.0.0.0/8)`},
		{name: "over cidrLimit", data: many, err: "65 CIDRs, more than cidrLimit 64"},
		{name: "over a lower cidrLimit", data: "cidrLimit: 1\nnonMasqueradeCIDRs: [10.0.0.0/8, 172.16.0.0/12]\n", err: "more than cidrLimit 1"},
		{name: "bad duration", data: "resyncInterval: 60\n", err: "resyncInterval"},
		{name: "negative duration", data: "resyncInterval: -1s\n", err: `resyncInterval: "-1s" is not a positive duration`},
		{name: "wrong type", data: "masqLinkLocal: maybe\n", err: "masqLinkLocal"},
		{name: "not YAML", data: "nonMasqueradeCIDRs: [10.0.0.0/8\n", err: "not YAML or JSON"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Parse([]byte(tc.data), GCEDefaults())
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("Parse error = %v; want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if diff := cmp.Diff(tc.want, got, cmp.Comparer(func(a, b Config) bool { return fmt.Sprint(a) == fmt.Sprint(b) })); diff != "" {
				t.Errorf("Parse (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDefaults(t *testing.T) {
	if got := len(Defaults("gce").NonMasqueradeCIDRs); got != 11 {
		t.Errorf("gce defaults: %d CIDRs; want GKE's 11", got)
	}
	if got := Defaults("fake").NonMasqueradeCIDRs; len(got) != 0 {
		t.Errorf("fake defaults: %v; want none (node subnet and pod ranges only)", got)
	}
}

// FuzzParse: no input crashes Parse, and what it accepts is masked IPv4/IPv6
// prefixes with a positive interval.
func FuzzParse(f *testing.F) {
	f.Add([]byte("nonMasqueradeCIDRs: [10.0.0.0/8]\nresyncInterval: 1s\n"))
	f.Add([]byte(`{"masqLinkLocal": true}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data, FakeDefaults())
		if err != nil {
			return
		}
		if c.ResyncInterval <= 0 {
			t.Fatalf("accepted a resync interval of %v", c.ResyncInterval)
		}
		for _, p := range c.NonMasqueradeCIDRs {
			if !p.IsValid() || p.Masked() != p {
				t.Fatalf("accepted %v", p)
			}
		}
	})
}
