package kubelet

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The outside host's IPv6 address (hack/cluster.sh outside_ip6: RFC 5180's
// 2001:2::/48); it routes back only to the nodes' IPv6 subnet.
var outsideURL6 = "http://" + net.JoinHostPort("2001:2::10", "80") + "/"

// nodeInternalIPv6 returns the node's IPv6 InternalIP (the kubelet's
// second --node-ip).
func nodeInternalIPv6(t *testing.T, ctx context.Context, e *clusterEnv, node string) string {
	t.Helper()
	n, err := e.Client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range n.Status.Addresses {
		if ip, err := netip.ParseAddr(a.Address); a.Type == corev1.NodeInternalIP && err == nil && ip.Is6() {
			return ip.String()
		}
	}
	t.Fatalf("node %s has no IPv6 InternalIP: %v", node, n.Status.Addresses)
	return ""
}

// TestEgressIPv6: on the dual-stack cluster every node's agent keeps an
// ip6 table masquerading its IPv6 block; a pod on every node, both pools,
// reaches the outside over IPv6 as its node's IPv6 InternalIP, and reaches
// a pod on the next node over IPv6 with its own IPv6 address.
func TestEgressIPv6(t *testing.T) {
	e, ctx := setup(t, 10*time.Minute)
	byNode := ensureProbes(t, ctx, e)
	for _, node := range e.Nodes {
		block := nodePodCIDRs(t, ctx, e, node)[1]
		eventually(t, ctx, 30*time.Second, "the ip6 table of "+node+" masquerades "+block.String(), func() (bool, error) {
			tbl := nodeNFTOf(t, node, "ip6")
			return strings.Contains(tbl, block.String()) && strings.Contains(tbl, "masquerade fully-random"), nil
		})
	}
	for i, node := range e.Nodes {
		p := byNode[node]
		want := nodeInternalIPv6(t, ctx, e, node)
		eventually(t, ctx, 30*time.Second, "pod on "+node+" reaches the outside over IPv6", func() (bool, error) {
			peer, err := peerOf(e, p.Name, outsideURL6)
			if err != nil {
				return false, nil
			}
			if peer != want {
				return false, fmt.Errorf("the outside saw the pod on %s as %s; want the node's IPv6 address %s", node, peer, want)
			}
			return true, nil
		})
		to := byNode[e.Nodes[(i+1)%len(e.Nodes)]]
		from6, ok1 := podIPv6(p)
		to6, ok2 := podIPv6(to)
		if !ok1 || !ok2 {
			t.Fatalf("pods %s, %s: podIPs %v, %v; want an IPv6 address each", p.Name, to.Name, p.Status.PodIPs, to.Status.PodIPs)
		}
		url := fmt.Sprintf("http://%s/", net.JoinHostPort(to6.String(), "8080"))
		if peer, err := peerOf(e, p.Name, url); err != nil || peer != from6.String() {
			t.Errorf("%s -> %s over IPv6 seen as %q (%v); want its own %s", p.Name, to.Name, peer, err, from6)
		}
	}
}
