package controller

import (
	"context"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/klog/v2"
)

// collectLeaks removes aliases from the pod range that sit on instances with
// no Node for longer than the grace period, and cools their blocks down.
func (c *Controller) collectLeaks(ctx context.Context) {
	logger := klog.FromContext(ctx)
	instances, err := c.cloud.ListInstances(ctx)
	if err != nil {
		logger.Error(err, "Leak collection: list instances")
		return
	}
	nodes, err := c.nodes.List(everything)
	if err != nil {
		logger.Error(err, "Leak collection: list nodes")
		return
	}
	withNode := map[string]bool{}
	for _, n := range nodes {
		if inst, err := c.cloud.InstanceFor(ctx, n.Spec.ProviderID, n.Name); err == nil {
			withNode[inst.String()] = true
		}
	}
	now := time.Now()
	seen := map[string]bool{}
	for _, in := range instances {
		if withNode[in.Ref.String()] {
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
			if err := c.cloud.RemoveAlias(ctx, in.Ref, a.CIDR); err != nil {
				logger.Error(err, "Leak collection: remove alias", "instance", in.Ref, "cidr", a.CIDR)
				continue
			}
			c.metrics.LeakedRemoved.Inc()
			logger.Info("Removed leaked alias from instance without a Node", "instance", in.Ref, "cidr", a.CIDR)
			c.mu.Lock()
			delete(c.leakSeen, key)
			c.mu.Unlock()
			// A block held by a deleted node whose release never succeeded
			// is no longer its; one a live node holds stays its.
			alive := func(n string) bool { _, err := c.nodes.Get(n); return !apierrors.IsNotFound(err) }
			cooled, err := c.blocks.leaked(a.CIDR, now.Add(c.cfg.ReleaseCooldown), alive)
			if err != nil {
				logger.Error(err, "Leak collection", "instance", in.Ref, "cidr", a.CIDR)
				continue
			}
			if cooled {
				c.saveCooling(ctx)
				c.wake()
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
