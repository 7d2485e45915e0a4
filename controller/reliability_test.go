package controller

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/aliasip/aliasip/cloud"
	aliasipv1 "github.com/aliasip/aliasip/controller/apis/aliasip/v1alpha1"
	"github.com/aliasip/aliasip/fake"
)

// memCooling is a CoolingStore in memory.
type memCooling struct{ saved map[netip.Prefix]time.Time }

func (m *memCooling) Load(context.Context) (map[netip.Prefix]time.Time, error) {
	out := map[netip.Prefix]time.Time{}
	for k, v := range m.saved {
		out[k] = v
	}
	return out, nil
}

func (m *memCooling) Save(_ context.Context, c map[netip.Prefix]time.Time) error {
	m.saved = c
	return nil
}

// A block of a range removed before a restart, still cooling, cools on
// across the rebuild (issue 21, defect 5): re-created, the range does not
// hand it out before its time. Before, the rebuild dropped saved entries
// of no current pool.
func TestRebuildKeepsCoolingOfRemovedRange(t *testing.T) {
	h := newRangeHarness(t, "10.0.0.0/16", nil)
	gone := netip.MustParsePrefix("10.9.0.0/28")
	store := &memCooling{saved: map[netip.Prefix]time.Time{gone: time.Now().Add(time.Hour)}}
	h.ctrl.cfg.Cooling = store
	if err := h.ctrl.rebuild(h.ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := h.ctrl.blocks.coolingUntil(gone); !ok {
		t.Fatalf("the rebuild dropped the cooling block %v of a removed range", gone)
	}
	// The range comes back: the block is not free.
	h.createRange(podRange("again", "10.9.0.0/24", 28, map[string]string{"pool": "a"}))
	if err := h.ctrl.syncRange(h.ctx, "again"); err != nil {
		t.Fatal(err)
	}
	if !h.ctrl.blocks.inUse(gone) {
		t.Errorf("%v, still cooling, is free in the re-created range", gone)
	}
	h.ctrl.saveCooling(h.ctx)
	if _, ok := store.saved[gone]; !ok {
		t.Errorf("the cooling block %v was not saved again: %v", gone, store.saved)
	}
}

// Two Nodes with one podCIDR at a rebuild (suspected in issue 21): the
// older holds it; when the older is deleted the block passes to the
// younger, which still uses it, rather than cooling and going back to the
// pool under it.
func TestSharedBlockPassesToTheSurvivor(t *testing.T) {
	shared := netip.MustParsePrefix("10.0.5.0/24")
	old := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "old", CreationTimestamp: metav1.NewTime(time.Unix(1, 0))},
		Spec: corev1.NodeSpec{PodCIDR: shared.String(), PodCIDRs: []string{shared.String()}}}
	young := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "young", CreationTimestamp: metav1.NewTime(time.Unix(2, 0))},
		Spec: corev1.NodeSpec{PodCIDR: shared.String(), PodCIDRs: []string{shared.String()}}}
	h := newRangeHarness(t, "10.0.0.0/16", []*corev1.Node{old, young})
	if err := h.cloud.AddAlias(h.ctx, cloud.InstanceRef{Name: "old"}, cloud.AliasRange{CIDR: shared, RangeName: "pods"}); err != nil {
		t.Fatal(err)
	}
	h.deleteNode("old")
	if err := h.ctrl.safeSync(h.ctx, "old"); err != nil {
		t.Fatal(err)
	}
	if _, cooling := h.ctrl.blocks.coolingUntil(shared); cooling {
		t.Errorf("%v cools down (and would go back to the pool) while young's podCIDR is it", shared)
	}
	// Far past any cooldown, it is still not free.
	h.ctrl.blocks.expire(time.Now().Add(24*time.Hour), time.Now().Add(48*time.Hour))
	if !h.ctrl.blocks.inUse(shared) {
		t.Fatalf("%v is free while young's podCIDR is it", shared)
	}
	// young's sync takes it and puts the alias on its NIC.
	if err := h.ctrl.safeSync(h.ctx, "young"); err != nil {
		t.Fatal(err)
	}
	got, _ := h.cloud.Aliases(h.ctx, cloud.InstanceRef{Name: "young"})
	if len(got) != 1 || got[0].CIDR != shared {
		t.Errorf("young's NIC holds %v, want %v", got, shared)
	}
	if a, _ := h.cloud.Aliases(h.ctx, cloud.InstanceRef{Name: "old"}); len(a) != 0 {
		t.Errorf("old's NIC still holds %v", a)
	}
}

// One block-size rule for both daemons (issue 21, defect 6): a PodRange
// of /31 blocks is refused with BlockSizeDoesNotFit; the flags
// (controller/app TestOptionsValidate) and the agent's IPAM
// (node-agent/ipam TestStoreRefusesBlocksNoPodFits) refuse by the same rule.
func TestBlocksTheAgentCannotUseAreRefused(t *testing.T) {
	h := newRangeHarness(t, "10.0.0.0/16", nil)
	pl, reason, msg, err := h.ctrl.resolve(h.ctx, podRange("tiny", "10.7.0.0/24", 31, nil))
	if err != nil || pl != nil || reason != aliasipv1.ReasonBlockSizeDoesNotFit || !strings.Contains(msg, "/30 or larger") {
		t.Errorf("resolve /31 blocks: pool %v, %q %q, %v; want BlockSizeDoesNotFit", pl, reason, msg, err)
	}
	if pl, _, _, err := h.ctrl.resolve(h.ctx, podRange("ok", "10.7.0.0/24", 30, nil)); err != nil || pl == nil {
		t.Errorf("resolve /30 blocks: %v, %v; want a pool", pl, err)
	}
}

// A podCIDR is compared as a prefix, not as a string: an IPv6 podCIDR a
// kubelet wrote in another spelling still names the block (hand-over,
// claim).
func TestSamePrefixSpellings(t *testing.T) {
	p := netip.MustParsePrefix("fd00:10::/112")
	for _, s := range []string{"fd00:10::/112", "FD00:10::/112", "fd00:10:0:0:0:0:0:0/112"} {
		if !samePrefix(s, p) {
			t.Errorf("samePrefix(%q, %v) = false", s, p)
		}
	}
	if samePrefix("fd00:10::/120", p) || samePrefix("", p) {
		t.Error("another prefix, or none, matched")
	}
}

// Dual-stack (issue 23): a node whose NIC has no IPv6 range yet gets
// nothing — no block, no alias, no podCIDR — and waits without counting
// as failing; once its NIC has the range, the leak collector's list queues
// it and it gets [IPv4 block, the NIC's first /112] in one patch.
func TestDualStackNodeWaitsForIPv6AndRecovers(t *testing.T) {
	h := startHarness(t, harnessConfig{cluster: "10.0.0.0/16", dualStack: true,
		nodes: []*corev1.Node{{ObjectMeta: metav1.ObjectMeta{Name: "n"}}},
		prep: func(fc *fake.Cloud) {
			fc.RegisterInstance("n")
			if err := fc.SetIPv6("n", netip.Prefix{}); err != nil {
				t.Fatal(err)
			}
		}})
	if err := h.syncNode("n"); !errors.Is(err, errWaitIPv6) {
		t.Fatalf("sync without IPv6: %v, want errWaitIPv6", err)
	}
	if p := h.podCIDR("n"); p != "" {
		t.Fatalf("n got podCIDR %s without its IPv6", p)
	}
	if a, _ := h.cloud.Aliases(h.ctx, cloud.InstanceRef{Name: "n"}); len(a) != 0 {
		t.Fatalf("n's NIC got %v while it waits", a)
	}
	h.ctrl.handleErr(h.ctx, "n", fmt.Errorf("x: %w", errWaitIPv6))
	if h.ctrl.queue.NumRequeues("n") != 0 {
		t.Error("a node waiting for its IPv6 range is retried as a failure")
	}
	h.drain()
	v6, err := h.cloud.AssignIPv6("n")
	if err != nil {
		t.Fatal(err)
	}
	h.ctrl.collectLeaks(h.ctx)
	if q := h.drain(); !slices.Contains(q, "n") {
		t.Fatalf("the list showed n's IPv6 range %v, but n was not queued (queue %v)", v6, q)
	}
	if err := h.syncNode("n"); err != nil {
		t.Fatal(err)
	}
	n, err := h.client.CoreV1().Nodes().Get(h.ctx, "n", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want6 := netip.PrefixFrom(v6.Addr(), 112).String()
	if len(n.Spec.PodCIDRs) != 2 || n.Spec.PodCIDRs[0] != n.Spec.PodCIDR || n.Spec.PodCIDRs[1] != want6 {
		t.Errorf("podCIDRs %v (podCIDR %s), want [the IPv4 block, %s]", n.Spec.PodCIDRs, n.Spec.PodCIDR, want6)
	}
}
