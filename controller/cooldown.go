package controller

import (
	"context"
	"time"

	"k8s.io/klog/v2"
)

// saveCooling persists the cooling set. Writes are serialized so an older
// set never overwrites a newer one; a failure is logged and retried by
// runCooldown every coolingRetry until a save lands.
func (c *Controller) saveCooling(ctx context.Context) {
	if c.cfg.Cooling == nil {
		return
	}
	c.saveMu.Lock()
	defer c.saveMu.Unlock()
	err := c.cfg.Cooling.Save(ctx, c.blocks.coolingSnapshot())
	wasDirty := c.blocks.setDirty(err != nil)
	if err != nil {
		klog.FromContext(ctx).Error(err, "Persisting the cooling blocks failed; retrying", "every", coolingRetry)
		if !wasDirty {
			c.wake() // runCooldown shortens its timer to the retry interval
		}
	}
}

func (c *Controller) wake() {
	select {
	case c.wakeCh <- struct{}{}:
	default:
	}
}

// runCooldown returns cooled-down blocks to the pool, wakes the nodes that
// wait for one, and retries a failed save of the cooling set.
func (c *Controller) runCooldown(ctx context.Context) {
	logger := klog.FromContext(ctx)
	t := time.NewTimer(time.Second)
	defer t.Stop()
	for {
		now := time.Now()
		expired, freed, next, woken, err := c.blocks.expire(now, now.Add(time.Minute))
		if err != nil {
			logger.Error(err, "Returning cooled-down blocks to the pool")
		}
		c.metrics.Releases.Add(float64(freed))
		dirty := c.blocks.isDirty()
		if dirty && next.After(now.Add(coolingRetry)) {
			next = now.Add(coolingRetry)
		}
		if expired > 0 || dirty {
			c.saveCooling(ctx)
		}
		for _, n := range woken {
			c.queue.Add(n)
		}
		t.Reset(time.Until(next))
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-c.wakeCh:
		}
	}
}
