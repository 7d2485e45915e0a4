package bench

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/aliasip/aliasip/node-agent/datapath"
	"github.com/aliasip/aliasip/test/framework"
)

// The dual-stack contenders of BenchmarkDataPlane's IPv6 rows (issue 23),
// on nodes added after the fabric's EnableIPv6: each node's eth0 also has
// an IPv6 address on the fabric's link (Node.IPv6).

// dpAliasipDualStack starts two dual-stack aliasip nodes: each Node's
// podCIDRs are [IPv4 block, IPv6 /112], as the controller's --dual-stack
// writes them, and it lists the node's IPv6 address as a second
// InternalIP, as the kubelet does, so --fabric=routes routes the other
// node's /112 via it.
func dpAliasipDualStack(ctx context.Context, fabric *framework.Fabric, cp *framework.ControlPlane, dir, agentBin, pluginBin string) (*dpContender, error) {
	return dpAliasipNodes(ctx, &dpContender{name: "aliasip, dual-stack"}, "aliasip6", fabric, cp, dir, agentBin, pluginBin, func(i int, n *framework.Node) error {
		if !n.IPv6.IsValid() {
			return fmt.Errorf("%s: no IPv6 address (fabric.EnableIPv6 first)", n.Name)
		}
		v4, v6 := fmt.Sprintf("10.232.%d.0/24", i+1), fmt.Sprintf("fd00:232:%d::/112", i+1)
		obj := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.Name}, Spec: corev1.NodeSpec{PodCIDR: v4, PodCIDRs: []string{v4, v6}}}
		if _, err := cp.Client(0).CoreV1().Nodes().Create(ctx, obj, metav1.CreateOptions{}); err != nil {
			return err
		}
		patch := fmt.Sprintf(`{"status":{"addresses":[{"type":"InternalIP","address":%q},{"type":"InternalIP","address":%q},{"type":"Hostname","address":%q}]}}`,
			n.IP, n.IPv6, n.Name)
		_, err := cp.Client(0).CoreV1().Nodes().PatchStatus(ctx, n.Name, []byte(patch))
		return err
	})
}

// dpBridgeDualStack starts two nodes with the bridge plugin and host-local
// given an IPv4 and an IPv6 range (one address of each per pod, the
// bridge the gateway of both, a default route of each family), each node
// routing the other's two pod ranges via its two fabric addresses.
func dpBridgeDualStack(fabric *framework.Fabric, dir string, mtu int) (*dpContender, error) {
	return dpBridgeNodes(&dpContender{name: "bridge + host-local (Debian), dual-stack"}, "bridge6", fabric, dir, mtu,
		func(i int, n *framework.Node) (string, []datapath.FabricRoute, error) {
			if !n.IPv6.IsValid() {
				return "", nil, fmt.Errorf("%s: no IPv6 address (fabric.EnableIPv6 first)", n.Name)
			}
			v4, v6 := fmt.Sprintf("10.233.%d.0/24", i+1), fmt.Sprintf("fd00:233:%d::/112", i+1)
			ipam := fmt.Sprintf(`{"type":"host-local","ranges":[[{"subnet":%q}],[{"subnet":%q}]],"routes":[{"dst":"0.0.0.0/0"},{"dst":"::/0"}],"dataDir":%q}`,
				v4, v6, filepath.Join(n.Dir, "host-local"))
			return ipam, []datapath.FabricRoute{
				{PodCIDR: netip.MustParsePrefix(v4), Via: n.IP},
				{PodCIDR: netip.MustParsePrefix(v6), Via: n.IPv6},
			}, nil
		})
}

// dpConditions6 describes the dual-stack set-ups as dpConditions does the
// IPv4 ones (IPv6 has no rp_filter).
func dpConditions6(alias, bridge *dpContender, aPod, bPod *framework.Pod) (string, error) {
	aMTU, err := dpLinkMTU(aPod.NS, "eth0")
	if err != nil {
		return "", err
	}
	bMTU, err := dpLinkMTU(bPod.NS, "eth0")
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("IPv6 rows: pod MTU: aliasip %d, bridge %d; IPv6 forwarding on the nodes: aliasip %s, bridge %s; bridge-nf-call-ip6tables on the bridge nodes: %s",
		aMTU, bMTU, dpSysctl(alias.nodes[0].NS, "net/ipv6/conf/all/forwarding"), dpSysctl(bridge.nodes[0].NS, "net/ipv6/conf/all/forwarding"),
		dpSysctl(bridge.nodes[0].NS, "net/bridge/bridge-nf-call-ip6tables")), nil
}
