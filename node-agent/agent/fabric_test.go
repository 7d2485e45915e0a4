package agent

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/aliasip/aliasip/node-agent/datapath"
)

// Which other nodes' blocks the fabric routes: a kubelet writes its own
// Node's spec.podCIDRs (NodeRestriction allows any value at creation), so
// only blocks the controller could have handed out are routed, and of two
// overlapping claims only the older Node's.
func TestTrustedFabricRoutes(t *testing.T) {
	t0 := time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC)
	node := func(name string, age time.Duration) *corev1.Node {
		return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, CreationTimestamp: metav1.NewTime(t0.Add(-age))}}
	}
	old, mid, young, twin := node("old", 3*time.Hour), node("mid", 2*time.Hour), node("young", time.Hour), node("twin", time.Hour)
	claim := func(n *corev1.Node, block, via string) fabricClaim {
		return fabricClaim{node: n, route: datapath.FabricRoute{PodCIDR: netip.MustParsePrefix(block), Via: netip.MustParseAddr(via)}}
	}
	own := []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:10:244::1:0/112")}
	ranges4 := []podRange{
		{cidr: netip.MustParsePrefix("10.244.0.0/16"), maskSize: 24}, // the default range, --node-cidr-mask-size=24
		{cidr: netip.MustParsePrefix("10.250.0.0/16"), maskSize: 26}, // a PodRange's status
		{cidr: netip.MustParsePrefix("10.251.0.0/16")},               // a PodRange being removed: size unknown
	}
	ranges6 := []podRange{{cidr: netip.MustParsePrefix("fd00:10:244::/64"), maskSize: fabricIPv6Bits}}
	for _, tc := range []struct {
		name   string
		claims []fabricClaim
		want   []string // routed blocks
	}{
		{"genuine blocks of every range", []fabricClaim{
			claim(old, "10.244.2.0/24", "192.168.0.2"), claim(old, "fd00:10:244::2:0/112", "fd00::2"),
			claim(mid, "10.250.0.64/26", "192.168.0.3"), claim(young, "10.251.7.0/25", "192.168.0.4"),
		}, []string{"10.244.2.0/24", "fd00:10:244::2:0/112", "10.250.0.64/26", "10.251.7.0/25"}},
		{"outside every IPv4 range", []fabricClaim{
			claim(old, "11.0.0.0/8", "192.168.0.2"), claim(old, "0.0.0.0/1", "192.168.0.2"), claim(old, "10.0.0.0/8", "192.168.0.2"),
			claim(old, "10.244.0.0/15", "192.168.0.2"), claim(old, "192.168.0.0/24", "10.9.9.9"),
		}, nil},
		{"not a block of its range's size", []fabricClaim{
			claim(old, "10.244.3.0/25", "192.168.0.2"), claim(old, "10.244.4.0/23", "192.168.0.2"), claim(old, "10.250.1.0/24", "192.168.0.2"),
		}, nil},
		{"the node's own blocks and its next hop", []fabricClaim{
			claim(old, "10.244.1.0/24", "192.168.0.2"), claim(old, "fd00:10:244::1:0/112", "fd00::2"), claim(old, "10.244.5.0/24", "10.244.5.1"),
		}, nil},
		{"IPv6 outside the range or not a /112", []fabricClaim{
			claim(old, "8000::/1", "fd00::2"), claim(old, "2001:db8::/112", "fd00::2"), claim(old, "fd00:10:244::/96", "fd00::2"),
		}, nil},
		{"the older of two equal claims keeps it", []fabricClaim{
			claim(young, "10.244.6.0/24", "192.168.0.4"), claim(old, "10.244.6.0/24", "192.168.0.2"),
		}, []string{"10.244.6.0/24"}},
		{"nested claims in a range of unknown size: the older keeps it, either way round", []fabricClaim{
			claim(young, "10.251.8.0/25", "192.168.0.4"), claim(old, "10.251.8.0/24", "192.168.0.2"),
			claim(old, "10.251.9.128/25", "192.168.0.2"), claim(young, "10.251.9.0/24", "192.168.0.4"),
		}, []string{"10.251.8.0/24", "10.251.9.128/25"}},
		{"claims of equal age both go", []fabricClaim{
			claim(young, "10.244.7.0/24", "192.168.0.4"), claim(twin, "10.244.7.0/24", "192.168.0.5"),
			claim(young, "10.251.10.0/24", "192.168.0.4"), claim(twin, "10.251.10.0/26", "192.168.0.5"),
		}, nil},
		{"a granted extra block beats an older Node's podCIDR naming it", []fabricClaim{
			claim(old, "10.250.0.64/26", "192.168.0.66"),
			{node: young, granted: true, route: datapath.FabricRoute{PodCIDR: netip.MustParsePrefix("10.250.0.64/26"), Via: netip.MustParseAddr("192.168.0.4")}},
		}, []string{"10.250.0.64/26"}},
		{"no IPv4 range known: nothing IPv4 is routed", nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r4 := ranges4
			claims := tc.claims
			if tc.claims == nil {
				r4 = nil
				claims = []fabricClaim{claim(old, "10.244.2.0/24", "192.168.0.2")}
			}
			var got []string
			for _, r := range trustedFabricRoutes(context.Background(), claims, own, r4, ranges6) {
				got = append(got, r.PodCIDR.String())
				if r.PodCIDR.String() == "10.250.0.64/26" && r.Via.String() != "192.168.0.4" && strings.HasPrefix(tc.name, "a granted") {
					t.Errorf("%v routed via %v, not via the node its NodeBlocks grants it to", r.PodCIDR, r.Via)
				}
			}
			want := slices.Clone(tc.want)
			slices.Sort(got)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Errorf("routed %q, want %q", got, want)
			}
		})
	}
}

// podRangeInUse takes status.cidr and status.maskSize (the controller's),
// never spec, and only for a range in use.
func TestPodRangeInUse(t *testing.T) {
	for _, tc := range []struct {
		name   string
		status map[string]any
		want   podRange
		inUse  bool
		growth map[string]any // spec.growth, when set
	}{
		{"ready", map[string]any{"cidr": "10.250.0.0/16", "maskSize": int64(26),
			"conditions": []any{map[string]any{"type": "Ready", "status": "True"}}},
			podRange{cidr: netip.MustParsePrefix("10.250.0.0/16"), maskSize: 26}, true, nil},
		{"being removed, nodes left, no size", map[string]any{"cidr": "10.250.0.0/16", "nodes": int64(2)},
			podRange{cidr: netip.MustParsePrefix("10.250.0.0/16")}, true, nil},
		{"a nonsense size is unknown", map[string]any{"cidr": "10.250.0.0/16", "maskSize": int64(8), "blocksUsed": int64(1)},
			podRange{cidr: netip.MustParsePrefix("10.250.0.0/16")}, true, nil},
		{"not ready, unused", map[string]any{"cidr": "10.250.0.0/16", "maskSize": int64(26),
			"conditions": []any{map[string]any{"type": "Ready", "status": "False"}}},
			podRange{cidr: netip.MustParsePrefix("10.250.0.0/16"), maskSize: 26}, false, nil},
		{"no status", nil, podRange{}, false, nil},
		// A growable range: its nodes may hold maxBlocksPerNode blocks
		// (the CRD's default, 8, when the field is absent).
		{"growable", map[string]any{"cidr": "10.250.0.0/16", "maskSize": int64(28), "blocksUsed": int64(1)},
			podRange{cidr: netip.MustParsePrefix("10.250.0.0/16"), maskSize: 28, maxBlocks: 20}, true, map[string]any{"maxBlocksPerNode": int64(20)}},
		{"growable, default cap", map[string]any{"cidr": "10.250.0.0/16", "maskSize": int64(28), "blocksUsed": int64(1)},
			podRange{cidr: netip.MustParsePrefix("10.250.0.0/16"), maskSize: 28, maxBlocks: 8}, true, map[string]any{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			obj := map[string]any{"spec": map[string]any{"cidr": "0.0.0.0/1"}}
			if tc.growth != nil {
				obj["spec"].(map[string]any)["growth"] = tc.growth
			}
			if tc.status != nil {
				obj["status"] = tc.status
			}
			got, inUse := podRangeInUse(&unstructured.Unstructured{Object: obj})
			if got != tc.want || inUse != tc.inUse {
				t.Errorf("podRangeInUse = %+v, %v; want %+v, %v", got, inUse, tc.want, tc.inUse)
			}
		})
	}
}
