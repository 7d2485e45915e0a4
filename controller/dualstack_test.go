package controller

import (
	"strings"
	"testing"

	aliasipv1 "github.com/aliasip/aliasip/controller/apis/aliasip/v1alpha1"
)

// TestDualStackRefusesIPv6PodRanges: with --dual-stack the pod ranges are
// the IPv4 side (the flags refuse an IPv6 --cluster-cidr, controller/app
// TestOptionsValidate); a PodRange of an IPv6 cidr is Unsupported, with a
// message saying why, and an IPv4 one is a pool as before. Single-stack
// (the fake cloud), an IPv6 PodRange stays allowed.
func TestDualStackRefusesIPv6PodRanges(t *testing.T) {
	h := startHarness(t, harnessConfig{cluster: "10.0.0.0/16", podRanges: true, dualStack: true})
	pl, reason, msg, err := h.ctrl.resolve(h.ctx, podRange("v6", "fd00:10::/48", 64, nil))
	if err != nil || pl != nil || reason != aliasipv1.ReasonUnsupported || !strings.Contains(msg, "a PodRange is the IPv4 side") {
		t.Errorf("dual-stack, IPv6 PodRange: pool %v, %q %q, %v; want Unsupported", pl, reason, msg, err)
	}
	if pl, _, _, err := h.ctrl.resolve(h.ctx, podRange("v4", "10.7.0.0/16", 24, nil)); err != nil || pl == nil {
		t.Errorf("dual-stack, IPv4 PodRange: %v, %v; want a pool", pl, err)
	}
	h.ctrl.cfg.DualStack = false
	if pl, _, _, err := h.ctrl.resolve(h.ctx, podRange("v6", "fd00:10::/48", 64, nil)); err != nil || pl == nil {
		t.Errorf("single-stack, IPv6 PodRange: %v, %v; want a pool", pl, err)
	}
}
