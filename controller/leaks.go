package controller

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/klog/v2"

	"github.com/aliasip/aliasip/cloud"
)

// collectLeaks removes aliases from the pod range that sit on instances with
// no Node for longer than the grace period, and cools their blocks down.
func (c *Controller) collectLeaks(ctx context.Context) {
	logger := klog.FromContext(ctx)
	instances, err := c.cloud.ListInstances(ctx)
	if errors.Is(err, cloud.ErrPartialList) {
		// Only what was read is acted on; the missing zones are unknown,
		// not alias-free, and wait for the next round.
		logger.Error(err, "Leak collection: instance list incomplete; collecting in the zones read")
		c.metrics.PartialLists.Inc()
	} else if err != nil {
		logger.Error(err, "Leak collection: list instances")
		return
	}
	nodeOf, err := c.instanceNodes(ctx)
	if err != nil {
		logger.Error(err, "Leak collection: list nodes")
		return
	}
	now := time.Now()
	seen := map[string]bool{}
	for _, in := range instances {
		if n := nodeOf[in.Ref.String()]; n != "" {
			c.requeueIfDrifted(ctx, n, in)
			continue
		}
		for _, a := range in.Aliases {
			if !c.blocks.ours(a) {
				continue
			}
			key := in.Ref.String() + "|" + a.CIDR.String()
			seen[key] = true
			c.mu.Lock()
			first, ok := c.leakSeen[key]
			if !ok {
				c.leakSeen[key] = now
				first = now
			}
			c.mu.Unlock()
			if now.Sub(first) < c.cfg.LeakGracePeriod {
				continue
			}
			if err := c.removeLeak(ctx, in.Ref, a.CIDR, now); err != nil {
				logger.Error(err, "Leak collection", "instance", in.Ref, "cidr", a.CIDR)
			}
		}
	}
	c.mu.Lock()
	for key := range c.leakSeen {
		if !seen[key] {
			delete(c.leakSeen, key)
		}
	}
	c.mu.Unlock()
}

// requeueIfDrifted queues a node whose NIC, as this list shows it,
// disagrees with what its last sync left: an alias of ours without a
// podCIDR, a block of ours the state does not count as used, more than one
// alias of ours, or none while the podCIDR is a block. That is how a
// change made out of this process's sight — an operation a killed process
// started that finished after the rebuild, an alias edited by hand — is
// seen within one collection interval even if no Node event follows. A
// node whose podCIDR and alias simply differ (CIDRMismatch, reported by
// its sync) is not queued again for it.
func (c *Controller) requeueIfDrifted(ctx context.Context, name string, in cloud.Instance) {
	node, err := c.nodes.Get(name)
	if err != nil {
		return
	}
	var ours []netip.Prefix
	unrecorded, othersOnly := false, true
	extras := c.blocks.extrasOf(name)
	for _, a := range in.Aliases {
		if c.blocks.ours(a) && containsPrefix(extras, a.CIDR) {
			continue // an extra block of a growable range, recorded as the node's
		}
		if c.blocks.ours(a) {
			ours = append(ours, a.CIDR)
			unrecorded = unrecorded || !c.blocks.inUse(a.CIDR)
			if h := c.blocks.holder(a.CIDR); h == "" || h == name {
				othersOnly = false
			}
		}
	}
	podCIDR, perr := netip.ParsePrefix(node.Spec.PodCIDR)
	_, _, isBlock := c.blocks.rangeOf(podCIDR)
	// A claim conflict (the podCIDR, or every block on the NIC, is another
	// node's) was reported by the node's sync and stays as it is until a
	// Node event: it is not queued again every interval.
	ownPodCIDR := perr == nil && isBlock && c.blocks.holder(podCIDR) == name
	c.mu.Lock()
	ipv6Came := c.ipv6Waiting[name] && in.IPv6.IsValid()
	c.mu.Unlock()
	drifted := ipv6Came || unrecorded ||
		(ownPodCIDR && len(ours) > 1) ||
		(node.Spec.PodCIDR == "" && len(ours) > 0 && !othersOnly) ||
		(ownPodCIDR && len(ours) == 0)
	if !drifted {
		return
	}
	klog.FromContext(ctx).V(2).Info("NIC disagrees with the node's state; queued", "node", name, "instance", in.Ref,
		"podCIDR", node.Spec.PodCIDR, "aliases", ours)
	c.metrics.Requeued.Inc()
	c.queue.Add(name)
}

// removeLeak removes a leaked alias from an instance without a Node, frees
// its block from a deleted node's ownership and cools it down.
func (c *Controller) removeLeak(ctx context.Context, ref cloud.InstanceRef, cidr netip.Prefix, now time.Time) error {
	if err := c.cloud.RemoveAlias(ctx, ref, cidr); err != nil {
		return fmt.Errorf("remove alias: %w", err)
	}
	c.metrics.LeakedRemoved.Inc()
	klog.FromContext(ctx).Info("Removed leaked alias from instance without a Node", "instance", ref, "cidr", cidr)
	c.mu.Lock()
	delete(c.leakSeen, ref.String()+"|"+cidr.String())
	c.mu.Unlock()
	// A block held by a deleted node whose release never succeeded is no
	// longer its; one a live node holds stays its.
	alive := func(n string) bool { _, err := c.nodes.Get(n); return !apierrors.IsNotFound(err) }
	cooled, err := c.blocks.leaked(cidr, now.Add(c.cfg.ReleaseCooldown), alive)
	if err != nil {
		return err
	}
	if cooled {
		c.saveCooling(ctx)
		c.wake()
	}
	return nil
}

// instanceNodes maps each instance (by InstanceRef.String) that a Node
// resolves to, to that Node's name.
func (c *Controller) instanceNodes(ctx context.Context) (map[string]string, error) {
	nodes, err := c.nodes.List(everything)
	if err != nil {
		return nil, err
	}
	out := make(map[string]string, len(nodes))
	for _, n := range nodes {
		// Only a node's own instance (instanceOfNode): a Node naming
		// another VM must not shield that VM's aliases.
		if inst, err := c.cloud.InstanceFor(ctx, n.Spec.ProviderID, n.Name); err == nil && instanceOfNode(inst, n.Name) {
			out[inst.String()] = n.Name
		}
	}
	return out, nil
}
