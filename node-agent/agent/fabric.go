package agent

import (
	"context"
	"net/netip"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/klog/v2"

	"github.com/aliasip/aliasip/node-agent/datapath"
)

// fabricLoop routes other nodes' podCIDRs via their InternalIPs, and
// their IPv6 blocks via their IPv6 InternalIPs.
func (a *Agent) fabricLoop(ctx context.Context) {
	t := time.NewTicker(a.cfg.ResyncPeriod)
	defer t.Stop()
	for {
		a.syncFabric(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-a.fabricCh:
		}
	}
}

func (a *Agent) syncFabric(ctx context.Context) {
	nodes, err := a.nodes.List(labels.Everything())
	if err != nil {
		return
	}
	var want []datapath.FabricRoute
	for _, n := range nodes {
		if n.Name == a.cfg.NodeName || n.DeletionTimestamp != nil {
			continue
		}
		want = append(want, fabricRoutes(ctx, n)...)
	}
	var changed, removed int
	err = a.inHost(func() error {
		var err error
		changed, removed, err = datapath.SyncFabric(want)
		return err
	})
	a.metrics.FabricRoutes.Set(float64(len(want)))
	if changed+removed > 0 {
		klog.FromContext(ctx).Info("Fabric routes synced", "routes", len(want), "changed", changed, "removed", removed)
	}
	if err != nil {
		klog.FromContext(ctx).Error(err, "Fabric routes")
	}
}

// fabricRoutes are the routes to node's blocks, as the VPC has them: its
// podCIDR via its IPv4 InternalIP and, on a dual-stack node, its IPv6
// block via its IPv6 InternalIP (the VPC routes a NIC's IPv6 range to the
// VM, which the test fabric emulates the same way). A node with an IPv6
// block but no IPv6 InternalIP gets no IPv6 route: there is no next hop
// on the fabric for it (the kubelet reports the addresses it knows; a
// node without an IPv6 address cannot be reached over IPv6 anyway), so
// its pods' IPv6 addresses are reachable from its own node only; this is
// logged (at V(2), as it holds on every pass).
func fabricRoutes(ctx context.Context, n *corev1.Node) []datapath.FabricRoute {
	var via4, via6 netip.Addr
	for _, ad := range n.Status.Addresses {
		if ad.Type != corev1.NodeInternalIP {
			continue
		}
		ip, err := netip.ParseAddr(ad.Address)
		switch {
		case err != nil:
		case ip.Is4() && !via4.IsValid():
			via4 = ip
		case ip.Is6() && !ip.Is4In6() && !via6.IsValid():
			via6 = ip
		}
	}
	var out []datapath.FabricRoute
	p, err := netip.ParsePrefix(n.Spec.PodCIDR)
	if err != nil {
		return nil
	}
	if via4.IsValid() {
		out = append(out, datapath.FabricRoute{PodCIDR: p.Masked(), Via: via4})
	}
	p6, err := nodeIPv6Block(n)
	switch {
	case err != nil || !p6.IsValid():
	case via6.IsValid():
		out = append(out, datapath.FabricRoute{PodCIDR: p6, Via: via6})
	default:
		klog.FromContext(ctx).V(2).Info("Node has an IPv6 block but no IPv6 InternalIP: no fabric route for it", "otherNode", n.Name, "podCIDRIPv6", p6)
	}
	return out
}
