package controller

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	aliasipv1 "github.com/aliasip/aliasip/controller/apis/aliasip/v1alpha1"
)

// writeRangeStatus writes the PodRange's status when it changed: the
// Ready condition given, and (for an active pool) the block counts and the
// Exhausted condition. Crossing 80 % or 100 % used, or becoming not ready,
// records a Warning event on the PodRange.
func (c *Controller) writeRangeStatus(ctx context.Context, pr *aliasipv1.PodRange, active bool, ready metav1.ConditionStatus, reason, msg string) error {
	st := pr.Status.DeepCopy()
	st.ObservedGeneration = pr.Generation
	// Events about a cluster-scoped object go to the "default" namespace
	// (client-go tools/record: an empty namespace is metav1.NamespaceDefault).
	ref := &corev1.ObjectReference{APIVersion: aliasipv1.SchemeGroupVersion.String(), Kind: "PodRange", Name: pr.Name, UID: pr.UID}
	prevReady := meta.FindStatusCondition(pr.Status.Conditions, aliasipv1.ConditionReady)
	meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: aliasipv1.ConditionReady, Status: ready, Reason: reason,
		Message: msg, ObservedGeneration: pr.Generation})
	if ready == metav1.ConditionFalse && (prevReady == nil || prevReady.Reason != reason) {
		c.recorder.Eventf(ref, corev1.EventTypeWarning, EventPodRangeNotReady, "%s: %s", reason, msg)
	}
	stats, ok := c.blocks.poolStats(pr.Name)
	if active && ok {
		pl, _ := c.blocks.pool(pr.Name)
		st.CIDR, st.MaskSize = pl.cidr.String(), int32(pl.maskSize)
		st.BlocksTotal, st.BlocksUsed, st.BlocksFree, st.Nodes = int64(stats.Total), int64(stats.Used), int64(stats.Free), int64(stats.Nodes)
		level, cond := exhaustion(stats)
		prev := meta.FindStatusCondition(pr.Status.Conditions, aliasipv1.ConditionExhausted)
		prevLevel := 0
		if prev != nil {
			prevLevel = map[string]int{aliasipv1.ReasonNearlyExhausted: 1, aliasipv1.ReasonExhausted: 2}[prev.Reason]
		}
		cond.ObservedGeneration = pr.Generation
		meta.SetStatusCondition(&st.Conditions, cond)
		switch {
		case level == 2 && prevLevel < 2:
			c.recorder.Eventf(ref, corev1.EventTypeWarning, EventPodRangeExhausted, "%s", cond.Message)
		case level == 1 && prevLevel < 1:
			c.recorder.Eventf(ref, corev1.EventTypeWarning, EventPodRangeNearlyExhausted, "%s", cond.Message)
		}
	} else {
		st.CIDR, st.MaskSize = pr.Spec.CIDR, 0
		st.BlocksTotal, st.BlocksUsed, st.BlocksFree, st.Nodes = 0, 0, 0, 0
		meta.RemoveStatusCondition(&st.Conditions, aliasipv1.ConditionExhausted)
	}
	if equality.Semantic.DeepEqual(&pr.Status, st) {
		return nil
	}
	pr = pr.DeepCopy()
	pr.Status = *st
	if _, err := c.ranges.client.AliasipV1alpha1().PodRanges().UpdateStatus(ctx, pr, metav1.UpdateOptions{FieldManager: fieldManager}); err != nil {
		return fmt.Errorf("update status of PodRange %s: %w", pr.Name, err)
	}
	return nil
}

// exhaustion returns the Exhausted condition for a pool's counts and its
// level: 0 blocks available, 1 nearly exhausted (≥ 80 % used), 2 exhausted.
func exhaustion(s PoolStats) (int, metav1.Condition) {
	c := metav1.Condition{Type: aliasipv1.ConditionExhausted}
	pct := 0
	if s.Total > 0 {
		pct = s.Used * 100 / s.Total
	}
	switch {
	case s.Free == 0:
		c.Status, c.Reason = metav1.ConditionTrue, aliasipv1.ReasonExhausted
		c.Message = fmt.Sprintf("all %d blocks are used (%d cooling down); nodes it selects wait for one to be released", s.Total, s.Cooling)
		return 2, c
	case pct >= nearlyExhaustedPercent:
		c.Status, c.Reason = metav1.ConditionFalse, aliasipv1.ReasonNearlyExhausted
		c.Message = fmt.Sprintf("%d of %d blocks used (%d%%), %d free", s.Used, s.Total, pct, s.Free)
		return 1, c
	default:
		c.Status, c.Reason = metav1.ConditionFalse, aliasipv1.ReasonBlocksAvailable
		c.Message = fmt.Sprintf("%d of %d blocks used (%d%%), %d free", s.Used, s.Total, pct, s.Free)
		return 0, c
	}
}

// alertDefaultRange records a Warning event when the default range (the
// flags', which has no PodRange object) crosses 80 % or 100 % used, as a
// PodRange's status does: on the cooling ConfigMap, the object that holds
// its state (kubectl -n NAMESPACE get events --field-selector
// reason=PodRangeNearlyExhausted finds either). It returns the level now
// reached; going back down re-arms it. Without a cooling store (tests,
// embedders) the metric aliasip_pool_blocks alone tells.
func (c *Controller) alertDefaultRange(prevLevel int) int {
	stats, ok := c.blocks.poolStats(aliasipv1.DefaultRangeName)
	if !ok {
		return prevLevel
	}
	level, cond := exhaustion(stats)
	r, hasRef := c.cfg.Cooling.(interface {
		Ref() *corev1.ObjectReference
	})
	if level > prevLevel && hasRef {
		reason := EventPodRangeNearlyExhausted
		if level == 2 {
			reason = EventPodRangeExhausted
		}
		c.recorder.Eventf(r.Ref(), corev1.EventTypeWarning, reason, "range %s (%v, the flags'): %s", aliasipv1.DefaultRangeName, c.podRange, cond.Message)
	}
	return level
}
