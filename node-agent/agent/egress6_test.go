package agent

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/aliasip/aliasip/node-agent/egress"
)

func mustPrefixes(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

// TestRules6: the ip6 table's sets on a dual-stack node — the node's IPv6
// block masqueraded; the ConfigMap's IPv6 entries, fe80::/10 (unless
// masqLinkLocalIPv6), the IPv6 --cluster-cidr and PodRanges, the own block
// and the node's IPv6 subnet left alone; IPv4 entries of any input left
// out; no IPv6 default on GCE.
func TestRules6(t *testing.T) {
	block := netip.MustParsePrefix("fd00:10:1::/112")
	parse := func(data string, def egress.Config) egress.Config {
		t.Helper()
		c, err := egress.Parse([]byte(data), def)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	tests := []struct {
		name                     string
		cfg                      egress.Config
		cluster, ranges, subnets []netip.Prefix
		want                     string
	}{{
		name: "fake defaults: link-local and the own block only",
		cfg:  egress.FakeDefaults(),
		want: "[fd00:10:1::/112] [fd00:10:1::/112 fe80::/10]",
	}, {
		name: "gce defaults add no IPv6 destination",
		cfg:  egress.GCEDefaults(),
		want: "[fd00:10:1::/112] [fd00:10:1::/112 fe80::/10]",
	}, {
		name: "the ConfigMap's IPv6 entries, not its IPv4 ones",
		cfg:  parse("nonMasqueradeCIDRs: [10.0.0.0/8, '2001:db8:1::/48', 'fd00::/8']\n", egress.GCEDefaults()),
		want: "[fd00:10:1::/112] [2001:db8:1::/48 fd00:10:1::/112 fd00::/8 fe80::/10]",
	}, {
		name: "masqLinkLocalIPv6 masquerades fe80::/10",
		cfg:  parse("masqLinkLocalIPv6: true\n", egress.FakeDefaults()),
		want: "[fd00:10:1::/112] [fd00:10:1::/112]",
	}, {
		name: "masqLinkLocal (IPv4) leaves fe80::/10 alone",
		cfg:  parse("masqLinkLocal: true\n", egress.FakeDefaults()),
		want: "[fd00:10:1::/112] [fd00:10:1::/112 fe80::/10]",
	}, {
		name:    "cluster CIDRs, PodRanges and subnets by family",
		cfg:     egress.FakeDefaults(),
		cluster: mustPrefixes("10.220.0.0/16", "fd00:10::/48"),
		ranges:  mustPrefixes("10.64.0.0/16", "fd00:64::/48"),
		subnets: mustPrefixes("2001:db8:aa::/64"),
		want:    "[fd00:10:1::/112] [2001:db8:aa::/64 fd00:10:1::/112 fd00:10::/48 fd00:64::/48 fe80::/10]",
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := rules6(tc.cfg, block, tc.cluster, tc.ranges, tc.subnets)
			if got := fmt.Sprint(r.PodBlocks, " ", r.NonMasquerade); got != tc.want {
				t.Errorf("rules6 = %s\nwant     %s", got, tc.want)
			}
		})
	}
}
