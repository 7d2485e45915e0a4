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

// fabricLoop routes other nodes' podCIDRs via their InternalIPs.
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
		p, err := netip.ParsePrefix(n.Spec.PodCIDR)
		if err != nil {
			continue
		}
		for _, ad := range n.Status.Addresses {
			if ad.Type != corev1.NodeInternalIP {
				continue
			}
			if ip, err := netip.ParseAddr(ad.Address); err == nil && ip.Is4() {
				want = append(want, datapath.FabricRoute{PodCIDR: p.Masked(), Via: ip})
				break
			}
		}
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
