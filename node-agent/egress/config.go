// Package egress is the agent's pod egress masquerade: traffic from this
// node's pods to destinations outside the non-masquerade set leaves SNATed
// to the node's address, with fully random source ports. The rules live in
// one nftables table owned by aliasip (table ip aliasip), programmed through
// netlink (github.com/google/nftables: no nft binary in the image),
// replaced atomically when they change, and left in place when the agent
// stops so egress never blips across a restart.
//
// The non-masquerade set is configured in ip-masq-agent's format (a
// ConfigMap key "config" holding YAML or JSON with nonMasqueradeCIDRs,
// masqLinkLocal, masqLinkLocalIPv6, resyncInterval), so a GKE user's
// ConfigMap works unchanged. A dual-stack node also masquerades its IPv6
// block in a second table, ip6 aliasip, from the same configuration's
// IPv6 entries, as ip-masq-agent --enable-ipv6 does in ip6tables.
package egress

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"sigs.k8s.io/yaml"
)

// ConfigKey is the ConfigMap key ip-masq-agent reads its configuration
// from: its DaemonSet mounts the ConfigMap item "config" at
// /etc/config/ip-masq-agent (kubernetes-sigs/ip-masq-agent
// ip-masq-agent.yaml; https://kubernetes.io/docs/tasks/administer-cluster/ip-masq-agent/).
const ConfigKey = "config"

// LinkLocal is 169.254.0.0/16: not masqueraded unless masqLinkLocal is
// true, as ip-masq-agent does (its linkLocalCIDR, RFC 3927).
var LinkLocal = netip.MustParsePrefix("169.254.0.0/16")

// LinkLocalIPv6 is fe80::/10: not masqueraded unless masqLinkLocalIPv6
// is true, as ip-masq-agent does (its linkLocalCIDRIPv6, RFC 4291).
var LinkLocalIPv6 = netip.MustParsePrefix("fe80::/10")

// cidrLimit is ip-masq-agent's default cidrLimit: "limit to 64 CIDRs
// (excluding link-local) to protect against really bad mistakes"
// (kubernetes-sigs/ip-masq-agent cmd/ip-masq-agent/ip-masq-agent.go
// NewMasqConfig and validate).
const cidrLimit = 64

// DefaultResyncInterval is ip-masq-agent's default resyncInterval (60s).
const DefaultResyncInterval = 60 * time.Second

// MinResyncInterval is the shortest resyncInterval the agent uses: a
// shorter one (ip-masq-agent accepts any positive duration, even 1ns)
// is raised to it, so the loop never re-reads the table without pause.
const MinResyncInterval = time.Second

// Config is the masquerade configuration: ip-masq-agent's fields, parsed.
type Config struct {
	// NonMasqueradeCIDRs are destinations pods reach with their own
	// addresses, of either family: the IPv4 entries go to the ip table,
	// the IPv6 ones to a dual-stack node's ip6 table (ip-masq-agent
	// splits its one list the same way, isIPv6CIDR). A single-stack
	// node has no use for the IPv6 entries.
	NonMasqueradeCIDRs []netip.Prefix
	// MasqLinkLocal: masquerade traffic to 169.254.0.0/16 too.
	MasqLinkLocal bool
	// MasqLinkLocalIPv6: masquerade traffic to fe80::/10 too.
	MasqLinkLocalIPv6 bool
	// ResyncInterval is how often the rules are checked and repaired.
	ResyncInterval time.Duration
}

// GCEDefaults is GKE's default list of non-masquerade destinations: the
// ranges ip-masq-agent leaves alone when run with
// --nomasq-all-reserved-ranges, as GKE runs it — RFC 1918, RFC 6598,
// RFC 6890, RFC 5737, RFC 7526, RFC 6815 and the former class E
// (https://cloud.google.com/kubernetes-engine/docs/concepts/ip-masquerade-agent,
// "Default non-masquerade destinations"; kubernetes-sigs/ip-masq-agent
// cmd/ip-masq-agent/ip-masq-agent.go NewMasqConfig). Destinations in the
// VPC therefore see pods' own addresses.
//
// There are no IPv6 defaults: ip-masq-agent's default list has IPv4
// ranges only (NewMasqConfig), and GKE's page lists no IPv6 default
// destinations, so a dual-stack pod's IPv6 traffic keeps its address only
// to link-local, the node's own block and subnet, the IPv6 --cluster-cidr
// and PodRanges, and nonMasqueradeCIDRs' IPv6 entries.
func GCEDefaults() Config {
	return Config{NonMasqueradeCIDRs: mustPrefixes(
		"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", // RFC 1918
		"100.64.0.0/10",   // RFC 6598
		"192.0.0.0/24",    // RFC 6890
		"192.0.2.0/24",    // RFC 5737
		"192.88.99.0/24",  // RFC 7526
		"198.18.0.0/15",   // RFC 6815
		"198.51.100.0/24", // RFC 5737
		"203.0.113.0/24",  // RFC 5737
		"240.0.0.0/4",     // RFC 5735, former class E
	), ResyncInterval: DefaultResyncInterval}
}

// FakeDefaults is the fake cloud's (kind, local clusters) default: no
// configured destination at all, so only the node subnet and the pod
// ranges (which the agent always adds) keep pods' addresses and everything
// else is masqueraded, as kindnet does (kubernetes-sigs/kindnet
// pkg/masq/masq.go: every Node's podCIDRs are left alone, all other
// traffic is masqueraded).
func FakeDefaults() Config {
	return Config{ResyncInterval: DefaultResyncInterval}
}

// Defaults returns the defaults of a cloud (gce or fake).
func Defaults(cloud string) Config {
	if cloud == "gce" {
		return GCEDefaults()
	}
	return FakeDefaults()
}

// fileConfig is ip-masq-agent's MasqConfig as it reads it from YAML or
// JSON (kubernetes-sigs/ip-masq-agent cmd/ip-masq-agent/ip-masq-agent.go):
// nonMasqueradeCIDRs, cidrLimit, masqLinkLocal, masqLinkLocalIPv6,
// resyncInterval (a Go duration string). Fields not given keep the
// defaults, as there.
type fileConfig struct {
	NonMasqueradeCIDRs *[]string `json:"nonMasqueradeCIDRs"`
	CIDRLimit          *int      `json:"cidrLimit"`
	MasqLinkLocal      *bool     `json:"masqLinkLocal"`
	MasqLinkLocalIPv6  *bool     `json:"masqLinkLocalIPv6"`
	ResyncInterval     *string   `json:"resyncInterval"`
}

// Parse reads a configuration in ip-masq-agent's format over the defaults
// def: fields not given keep def's values. Unknown fields are refused (a
// misspelt nonMasqueradeCIDRs would otherwise silently masquerade
// everything), as are CIDRs that do not parse or have host bits set, more
// than cidrLimit CIDRs, and a resyncInterval that is not a positive
// duration (one below MinResyncInterval is raised to it). The error names
// the field.
func Parse(data []byte, def Config) (Config, error) {
	var f fileConfig
	if len(bytes.TrimSpace(data)) == 0 {
		return def, nil
	}
	j, err := yaml.YAMLToJSON(data)
	if err != nil {
		return Config{}, fmt.Errorf("not YAML or JSON: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return Config{}, fmt.Errorf("want nonMasqueradeCIDRs, masqLinkLocal, masqLinkLocalIPv6, resyncInterval, cidrLimit: %w", err)
	}
	c := def
	c.NonMasqueradeCIDRs = slices.Clone(def.NonMasqueradeCIDRs)
	limit := cidrLimit
	if f.CIDRLimit != nil {
		limit = *f.CIDRLimit
	}
	if f.NonMasqueradeCIDRs != nil {
		c.NonMasqueradeCIDRs = nil
		if len(*f.NonMasqueradeCIDRs) > limit {
			return Config{}, fmt.Errorf("nonMasqueradeCIDRs: %d CIDRs, more than cidrLimit %d", len(*f.NonMasqueradeCIDRs), limit)
		}
		for _, s := range *f.NonMasqueradeCIDRs {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				return Config{}, fmt.Errorf("nonMasqueradeCIDRs: %q is not a CIDR: %w", s, err)
			}
			if p.Masked() != p {
				return Config{}, fmt.Errorf("nonMasqueradeCIDRs: %q has host bits set (the network is %s)", s, p.Masked())
			}
			c.NonMasqueradeCIDRs = append(c.NonMasqueradeCIDRs, p)
		}
	}
	if f.MasqLinkLocal != nil {
		c.MasqLinkLocal = *f.MasqLinkLocal
	}
	if f.MasqLinkLocalIPv6 != nil {
		c.MasqLinkLocalIPv6 = *f.MasqLinkLocalIPv6
	}
	if f.ResyncInterval != nil {
		d, err := time.ParseDuration(*f.ResyncInterval)
		if err != nil || d <= 0 {
			return Config{}, fmt.Errorf("resyncInterval: %q is not a positive duration such as 60s", *f.ResyncInterval)
		}
		c.ResyncInterval = max(d, MinResyncInterval)
	}
	return c, nil
}

func mustPrefixes(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}
