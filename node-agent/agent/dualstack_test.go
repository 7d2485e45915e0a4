package agent

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/aliasip/aliasip/node-agent/datapath"
	"github.com/aliasip/aliasip/node-agent/ipam"
)

func nodeWith(podCIDRs []string, addrs ...string) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n"}}
	if len(podCIDRs) > 0 {
		n.Spec.PodCIDR, n.Spec.PodCIDRs = podCIDRs[0], podCIDRs
	}
	for _, a := range addrs {
		n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: a})
	}
	n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeHostName, Address: "n"})
	return n
}

// The node's IPv6 block is the IPv6 entry of spec.podCIDRs, whatever its
// position; none: single-stack.
func TestNodeIPv6Block(t *testing.T) {
	for _, tc := range []struct {
		name     string
		podCIDRs []string
		want     string
		err      bool
	}{
		{"single-stack", []string{"10.1.0.0/24"}, "", false},
		{"no podCIDRs", nil, "", false},
		{"dual-stack", []string{"10.1.0.0/24", "fd00:1::/112"}, "fd00:1::/112", false},
		{"IPv6 first", []string{"fd00:1::/112", "10.1.0.0/24"}, "fd00:1::/112", false},
		{"host bits masked", []string{"10.1.0.0/24", "fd00:1::7/112"}, "fd00:1::/112", false},
		{"malformed", []string{"10.1.0.0/24", "fd00:1::/abc"}, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := nodeIPv6Block(nodeWith(tc.podCIDRs))
			if (err != nil) != tc.err {
				t.Fatalf("err %v, want error %v", err, tc.err)
			}
			want := netip.Prefix{}
			if tc.want != "" {
				want = netip.MustParsePrefix(tc.want)
			}
			if got != want {
				t.Errorf("got %v, want %v", got, want)
			}
		})
	}
}

// Another node's blocks are routed via its InternalIP of the same family;
// an IPv6 block without an IPv6 InternalIP gets no route.
func TestFabricRoutes(t *testing.T) {
	r := func(p, via string) datapath.FabricRoute {
		return datapath.FabricRoute{PodCIDR: netip.MustParsePrefix(p), Via: netip.MustParseAddr(via)}
	}
	for _, tc := range []struct {
		name string
		node *corev1.Node
		want []datapath.FabricRoute
	}{
		{"single-stack", nodeWith([]string{"10.1.0.0/24"}, "192.168.1.2"), []datapath.FabricRoute{r("10.1.0.0/24", "192.168.1.2")}},
		{"dual-stack", nodeWith([]string{"10.1.0.0/24", "fd00:1::/112"}, "192.168.1.2", "fd00:50::2"),
			[]datapath.FabricRoute{r("10.1.0.0/24", "192.168.1.2"), r("fd00:1::/112", "fd00:50::2")}},
		{"IPv6 address listed first", nodeWith([]string{"10.1.0.0/24", "fd00:1::/112"}, "fd00:50::2", "192.168.1.2"),
			[]datapath.FabricRoute{r("10.1.0.0/24", "192.168.1.2"), r("fd00:1::/112", "fd00:50::2")}},
		{"dual-stack node without an IPv6 address", nodeWith([]string{"10.1.0.0/24", "fd00:1::/112"}, "192.168.1.2"),
			[]datapath.FabricRoute{r("10.1.0.0/24", "192.168.1.2")}},
		{"IPv6 address, single-stack node", nodeWith([]string{"10.1.0.0/24"}, "192.168.1.2", "fd00:50::2"),
			[]datapath.FabricRoute{r("10.1.0.0/24", "192.168.1.2")}},
		{"no podCIDR", nodeWith(nil, "192.168.1.2", "fd00:50::2"), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := fabricRoutes(context.Background(), tc.node)
			if diff := cmp.Diff(tc.want, got, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }), cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
				t.Errorf("routes (-want +got):\n%s", diff)
			}
		})
	}
}

// aliasip_pod_ips keeps its name and state label; family tells the
// blocks apart, and a single-stack node has only the ipv4 series.
func TestPodIPsMetricByFamily(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	const header = `
		# HELP aliasip_pod_ips Addresses of the node's podCIDR by state (and family: ipv4 the podCIDR, ipv6 the IPv6 block of a dual-stack node).
		# TYPE aliasip_pod_ips gauge
	`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(header+`
		aliasip_pod_ips{family="ipv4",state="cooling"} 0
		aliasip_pod_ips{family="ipv4",state="free"} 0
		aliasip_pod_ips{family="ipv4",state="used"} 0
	`), "aliasip_pod_ips"); err != nil {
		t.Errorf("before the store opens: %v", err)
	}
	m.ipSource = func() []ipam.FamilyStats {
		return []ipam.FamilyStats{{Block: netip.MustParsePrefix("10.1.0.0/24"), Used: 2, Free: 250, Cooling: 1}}
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(header+`
		aliasip_pod_ips{family="ipv4",state="cooling"} 1
		aliasip_pod_ips{family="ipv4",state="free"} 250
		aliasip_pod_ips{family="ipv4",state="used"} 2
	`), "aliasip_pod_ips"); err != nil {
		t.Errorf("single-stack: %v", err)
	}
	m.ipSource = func() []ipam.FamilyStats {
		return []ipam.FamilyStats{{Block: netip.MustParsePrefix("10.1.0.0/24"), Used: 2, Free: 250, Cooling: 1},
			{Block: netip.MustParsePrefix("fd00:1::/112"), Used: 2, Free: 65531, Cooling: 2}}
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(header+`
		aliasip_pod_ips{family="ipv4",state="cooling"} 1
		aliasip_pod_ips{family="ipv4",state="free"} 250
		aliasip_pod_ips{family="ipv4",state="used"} 2
		aliasip_pod_ips{family="ipv6",state="cooling"} 2
		aliasip_pod_ips{family="ipv6",state="free"} 65531
		aliasip_pod_ips{family="ipv6",state="used"} 2
	`), "aliasip_pod_ips"); err != nil {
		t.Errorf("dual-stack: %v", err)
	}
}
