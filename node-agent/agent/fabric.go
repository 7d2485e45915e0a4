package agent

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
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
	a.mu.Lock()
	own := []netip.Prefix{a.podCIDR, a.podCIDR6}
	store := a.store
	a.mu.Unlock()
	if store != nil {
		for _, b := range store.ExtraBlocks() {
			own = append(own, b.CIDR) // this node's extra blocks are its own too
		}
	}
	var claims []fabricClaim
	for _, n := range nodes {
		if n.Name == a.cfg.NodeName || n.DeletionTimestamp != nil {
			continue
		}
		routes := fabricRoutes(ctx, n)
		for _, r := range routes {
			claims = append(claims, fabricClaim{route: r, node: n})
		}
		// Its extra blocks of a growable range, as its NodeBlocks status
		// grants them (the controller's: trusted), via the same next hop
		// as its podCIDR.
		for _, r := range routes {
			if r.PodCIDR.Addr().Is4() {
				for _, x := range a.extraFabricRoutes(n, r.Via) {
					claims = append(claims, fabricClaim{route: x, node: n, granted: true})
				}
				break
			}
		}
	}
	ranges4, ranges6 := a.fabricRanges()
	want := trustedFabricRoutes(ctx, claims, own, ranges4, ranges6)
	var changed, removed int
	err = a.inHost(func() error {
		var err error
		changed, removed, err = datapath.SyncFabric(want)
		return err
	})
	a.metrics.FabricRoutes.Set(float64(len(want)))
	a.metrics.FabricRefused.Set(float64(len(claims) - len(want)))
	a.metrics.FabricPasses.Inc()
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

// fabricClaim is a route another Node's object asks for.
type fabricClaim struct {
	route datapath.FabricRoute
	node  *corev1.Node
	// granted: an extra block from the node's NodeBlocks status, which
	// only the controller writes; a podCIDR (which a kubelet may write
	// into its own Node) never wins over it.
	granted bool
}

// fabricIPv6Bits is the length of every node's IPv6 block: the controller
// writes the first /112 of the NIC's IPv6 range (controller/sync.go), and
// the VPC routes no more than that NIC's range to the VM.
const fabricIPv6Bits = 112

// fabricRanges are the ranges other nodes' IPv4 blocks may come from: the
// IPv4 --cluster-cidr (the default range, whose blocks are
// --node-cidr-mask-size long when that is set) and every PodRange in use
// (its status.maskSize), and the IPv6 --cluster-cidr ranges the /112s lie
// in.
func (a *Agent) fabricRanges() (ranges4, ranges6 []podRange) {
	for _, c := range a.cfg.ClusterCIDRs {
		switch {
		case c.Addr().Is4():
			mask := 0
			if len(ranges4) == 0 {
				mask = a.cfg.NodeCIDRMaskSize // the first IPv4 range is the default range
			}
			ranges4 = append(ranges4, podRange{cidr: c.Masked(), maskSize: mask})
		case !c.Addr().Is4In6():
			ranges6 = append(ranges6, podRange{cidr: c.Masked(), maskSize: fabricIPv6Bits})
		}
	}
	for _, r := range a.podRanges() {
		if r.cidr.Addr().Is4() {
			ranges4 = append(ranges4, r)
		}
	}
	return ranges4, ranges6
}

// trustedFabricRoutes keeps the claims the VPC would route. A kubelet can
// create its own Node with any spec.podCIDRs and status.addresses
// (NodeRestriction allows it), so one node's credentials must not steer
// this node's traffic: a claim is dropped when it overlaps this node's own
// blocks, holds its own next hop (::/0 and 0.0.0.0/0 replaced the default
// route), is an IPv4 block that lies outside every IPv4 pod range
// (11.0.0.0/8 took someone else's network) or is not a block of its
// range's size (a /25 inside another node's /24), is an IPv6 block that
// is not a /112 or (with an IPv6 --cluster-cidr) lies outside the IPv6
// pod ranges (8000::/1 took half the Internet), or overlaps an older
// Node's claim: the Node first to hold a block keeps it, as the
// controller never gives one address to two nodes; claims of equal age
// both go. Dropped claims are logged at V(2): they hold on every pass.
func trustedFabricRoutes(ctx context.Context, claims []fabricClaim, own []netip.Prefix, ranges4, ranges6 []podRange) []datapath.FabricRoute {
	logger := klog.FromContext(ctx)
	kept := claims[:0:0]
	for _, c := range claims {
		p := c.route.PodCIDR
		reason := ""
		switch {
		case slices.ContainsFunc(own, func(o netip.Prefix) bool { return o.IsValid() && o.Overlaps(p) }):
			reason = "overlaps this node's own block"
		case p.Contains(c.route.Via):
			reason = "holds its own next hop"
		case p.Addr().Is4():
			reason = blockOfRange(p, ranges4, "IPv4 pod ranges (--cluster-cidr, PodRanges)")
		case p.Bits() != fabricIPv6Bits:
			reason = "an IPv6 block that is not a /112"
		case len(ranges6) > 0:
			reason = blockOfRange(p, ranges6, "IPv6 pod ranges (--cluster-cidr)")
		}
		if reason != "" {
			logger.V(2).Info("Not routing a Node's block", "otherNode", c.node.Name, "block", p, "via", c.route.Via, "reason", reason)
			continue
		}
		kept = append(kept, c)
	}
	// Overlapping claims: every pair is found by looking up each claim's
	// enclosing prefixes (at most 128 map lookups a claim, not a pass over
	// every other claim).
	byBlock := map[netip.Prefix][]int{}
	for i, c := range kept {
		byBlock[c.route.PodCIDR] = append(byBlock[c.route.PodCIDR], i)
	}
	rivals := make([][]int, len(kept))
	for i, c := range kept {
		p := c.route.PodCIDR
		for bits := p.Bits(); bits >= 0; bits-- {
			up, _ := p.Addr().Prefix(bits)
			for _, j := range byBlock[up] {
				if j == i {
					continue
				}
				rivals[i] = append(rivals[i], j)
				if bits < p.Bits() {
					rivals[j] = append(rivals[j], i) // j encloses i: i is j's rival too
				}
			}
		}
	}
	var out []datapath.FabricRoute
	for i, c := range kept {
		older := slices.ContainsFunc(rivals[i], func(j int) bool {
			o := kept[j]
			if o.node == c.node || (c.granted && !o.granted) {
				return false
			}
			return (o.granted && !c.granted) || !c.node.CreationTimestamp.Before(&o.node.CreationTimestamp)
		})
		if older {
			logger.V(2).Info("Not routing a Node's block: an older (or as old) Node claims it or part of it", "otherNode", c.node.Name, "block", c.route.PodCIDR, "via", c.route.Via)
			continue
		}
		out = append(out, c.route)
	}
	return out
}

// blockOfRange returns why p is not a block of one of ranges (named by
// what), or "" when it is: inside a range, and as long as that range's
// blocks when their size is known.
func blockOfRange(p netip.Prefix, ranges []podRange, what string) string {
	reason := "outside the " + what
	for _, r := range ranges {
		if r.cidr.Bits() > p.Bits() || !r.cidr.Contains(p.Addr()) {
			continue
		}
		if r.maskSize == 0 || r.maskSize == p.Bits() {
			return ""
		}
		reason = fmt.Sprintf("not a /%d block of %s", r.maskSize, r.cidr)
	}
	return reason
}
