package controller

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"golang.org/x/time/rate"

	"github.com/aliasip/aliasip/cloud"
)

// budgetCloud puts every cloud call under a client-side QPS/burst budget and
// counts it in metrics by method and result code.
type budgetCloud struct {
	inner   cloud.Interface
	limiter *rate.Limiter // nil when the cloud budgets its own requests
	metrics *Metrics
}

var _ cloud.Interface = (*budgetCloud)(nil)

// newBudgetCloud wraps inner. When selfBudgeted, inner applies the budget
// and counts requests itself (per HTTP call), and only interface calls are
// counted here.
func newBudgetCloud(inner cloud.Interface, qps float64, burst int, selfBudgeted bool, m *Metrics) *budgetCloud {
	b := &budgetCloud{inner: inner, metrics: m}
	if !selfBudgeted {
		b.limiter = rate.NewLimiter(rate.Limit(qps), max(burst, 1))
	}
	return b
}

func (b *budgetCloud) call(ctx context.Context, method string, fn func() error) error {
	if b.limiter != nil {
		if err := b.limiter.Wait(ctx); err != nil {
			return err
		}
	}
	start := time.Now()
	err := fn()
	d := time.Since(start)
	b.metrics.CloudCallTime.WithLabelValues(method).Observe(d.Seconds())
	b.metrics.CloudCalls.WithLabelValues(method, cloud.Code(err)).Inc()
	if b.limiter != nil {
		b.metrics.CloudRequests.WithLabelValues(method, cloud.Code(err)).Inc()
		b.metrics.CloudLatency.WithLabelValues(method).Observe(d.Seconds())
	}
	return err
}

func (b *budgetCloud) PodRange(ctx context.Context) (p netip.Prefix, name string, err error) {
	err = b.call(ctx, "PodRange", func() error { p, name, err = b.inner.PodRange(ctx); return err })
	return p, name, err
}

// InstanceFor is local for both clouds (it parses the providerID), so it is
// neither budgeted nor counted.
func (b *budgetCloud) InstanceFor(ctx context.Context, providerID, nodeName string) (cloud.InstanceRef, error) {
	return b.inner.InstanceFor(ctx, providerID, nodeName)
}

func (b *budgetCloud) Aliases(ctx context.Context, inst cloud.InstanceRef) (out []cloud.AliasRange, err error) {
	err = b.call(ctx, "Aliases", func() error { out, err = b.inner.Aliases(ctx, inst); return err })
	return out, err
}

// IPv6Range is budgeted and counted like Aliases: on GCE both are reads
// of the same NIC (from its cache, or instances.get).
func (b *budgetCloud) IPv6Range(ctx context.Context, inst cloud.InstanceRef) (p netip.Prefix, err error) {
	err = b.call(ctx, "IPv6Range", func() error { p, err = b.inner.IPv6Range(ctx, inst); return err })
	return p, err
}

func (b *budgetCloud) AddAlias(ctx context.Context, inst cloud.InstanceRef, a cloud.AliasRange) error {
	return b.call(ctx, "AddAlias", func() error { return b.inner.AddAlias(ctx, inst, a) })
}

// SecondaryRanger is a cloud whose ranges are a subnetwork's named
// secondary ranges, as PodRanges with a secondaryRangeName need (GCE).
type SecondaryRanger interface {
	SecondaryRange(ctx context.Context, name string) (netip.Prefix, error)
}

// secondaryRanges reports whether the cloud's ranges are named secondary ranges.
func (b *budgetCloud) secondaryRanges() bool {
	_, ok := b.inner.(SecondaryRanger)
	return ok
}

// SecondaryRange returns the CIDR of a named secondary range, when the
// cloud has them.
func (b *budgetCloud) SecondaryRange(ctx context.Context, name string) (p netip.Prefix, err error) {
	sr, ok := b.inner.(SecondaryRanger)
	if !ok {
		return netip.Prefix{}, fmt.Errorf("secondary range %s: this cloud has none: %w", name, cloud.ErrNoSecondaryRange)
	}
	err = b.call(ctx, "SecondaryRange", func() error { p, err = sr.SecondaryRange(ctx, name); return err })
	return p, err
}

func (b *budgetCloud) RemoveAlias(ctx context.Context, inst cloud.InstanceRef, cidr netip.Prefix) error {
	return b.call(ctx, "RemoveAlias", func() error { return b.inner.RemoveAlias(ctx, inst, cidr) })
}

func (b *budgetCloud) ListInstances(ctx context.Context) (out []cloud.Instance, err error) {
	err = b.call(ctx, "ListInstances", func() error { out, err = b.inner.ListInstances(ctx); return err })
	return out, err
}
