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

// Review (issue 21 follow-up): the restart race with two nodes whose
// blocks crossed. The killed process gave n the block A and m the block B
// (operations still running). The new process rebuilt before they landed
// and reserved A for m and B for n ... or in the other order: it reserves
// in its own queue order, so the two processes' orders may differ. Each
// new add fails transiently (on GCE: the NIC's fingerprint went stale as
// the old operation landed, or "the NIC gained X meanwhile" →
// ErrStaleFingerprint): both reservations are kept. Then the old
// operations land: n's NIC carries m's reservation and m's NIC carries
// n's. Each node now takes the adopt row, and each claim finds the block
// reserved by the other (holderReserving) → errPending. Neither ever
// calls AddAlias again (its NIC has a block), so neither gives its
// reservation up: the two wait on each other forever.
func TestReviewCrossedReservationsDeadlock(t *testing.T) {
	h := newHarness(t, "10.0.0.0/16", "n", "m")
	stale := fmt.Errorf("the NIC gained another alias meanwhile: %w", cloud.ErrStaleFingerprint)
	h.cloud.Inject("AddAlias", fake.Fault{Err: stale, Times: 2})
	if err := h.syncNode("n"); !errors.Is(err, cloud.ErrStaleFingerprint) {
		t.Fatalf("sync n: %v", err)
	}
	if err := h.syncNode("m"); !errors.Is(err, cloud.ErrStaleFingerprint) {
		t.Fatalf("sync m: %v", err)
	}
	h.ctrl.blocks.mu.Lock()
	rn, rm := h.ctrl.blocks.owned["n"].cidr, h.ctrl.blocks.owned["m"].cidr
	h.ctrl.blocks.mu.Unlock()
	if !rn.IsValid() || !rm.IsValid() {
		t.Fatalf("reservations n=%v m=%v, want both kept", rn, rm)
	}
	// The killed process's operations land, crossed.
	if err := h.cloud.AddAlias(h.ctx, cloud.InstanceRef{Name: "n"}, cloud.AliasRange{CIDR: rm, RangeName: "pods"}); err != nil {
		t.Fatal(err)
	}
	if err := h.cloud.AddAlias(h.ctx, cloud.InstanceRef{Name: "m"}, cloud.AliasRange{CIDR: rn, RangeName: "pods"}); err != nil {
		t.Fatal(err)
	}
	var errN, errM error
	for round := 0; round < 30; round++ {
		h.ctrl.collectLeaks(h.ctx) // the drift re-queue, for good measure
		h.drain()
		if h.podCIDR("n") == "" {
			errN = h.syncNode("n")
		}
		if h.podCIDR("m") == "" {
			errM = h.syncNode("m")
		}
	}
	if h.podCIDR("n") == "" || h.podCIDR("m") == "" {
		t.Fatalf("after 30 rounds n podCIDR %q (last sync: %v), m podCIDR %q (last sync: %v): the two nodes wait on each other's reservation forever",
			h.podCIDR("n"), errN, h.podCIDR("m"), errM)
	}
}

// Review: a node that shares its podCIDR with an older node (a kubelet
// may create its Node with any podCIDR) but still holds its own earlier
// block C (its Node was deleted and re-created under the same name before
// the controller handled the deletion: the sync sees only the new Node).
// When the older node goes, handOver overwrites owned[heir] with the
// shared block but leaves owner[C] = heir. When the heir is deleted (its
// VM too), its release frees only the shared block: C stays used, owned
// by a node that no longer exists, forever.
func TestReviewHandOverLeaksHeirsOtherBlock(t *testing.T) {
	shared := netip.MustParsePrefix("10.0.5.0/24")
	old := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "old", CreationTimestamp: metav1.NewTime(time.Unix(1, 0))},
		Spec: corev1.NodeSpec{PodCIDR: shared.String(), PodCIDRs: []string{shared.String()}}}
	x := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "x", CreationTimestamp: metav1.NewTime(time.Unix(2, 0))}}
	h := newRangeHarness(t, "10.0.0.0/16", []*corev1.Node{old, x})
	if err := h.cloud.AddAlias(h.ctx, cloud.InstanceRef{Name: "old"}, cloud.AliasRange{CIDR: shared, RangeName: "pods"}); err != nil {
		t.Fatal(err)
	}
	// x gets its own block the ordinary way.
	if err := h.syncNode("x"); err != nil {
		t.Fatal(err)
	}
	own := netip.MustParsePrefix(h.podCIDR("x"))
	// x's kubelet deletes and re-creates its Node with the shared podCIDR;
	// the controller sees only the new object.
	h.deleteNode("x")
	h.createNode(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "x", CreationTimestamp: metav1.NewTime(time.Unix(3, 0))},
		Spec: corev1.NodeSpec{PodCIDR: shared.String(), PodCIDRs: []string{shared.String()}}})
	if err := h.syncNode("x"); err != nil {
		t.Fatal(err) // CIDRMismatch: nothing changes
	}
	// old goes: the block passes to x.
	h.deleteNode("old")
	if err := h.ctrl.safeSync(h.ctx, "old"); err != nil {
		t.Fatal(err)
	}
	// x goes, VM and all (GCE drops its aliases with it).
	if err := h.cloud.DeleteInstance("x"); err != nil {
		t.Fatal(err)
	}
	h.deleteNode("x")
	if err := h.ctrl.safeSync(h.ctx, "x"); err != nil {
		t.Fatal(err)
	}
	h.ctrl.collectLeaks(h.ctx)
	far := time.Now().Add(24 * time.Hour)
	h.ctrl.blocks.expire(far, far.Add(time.Hour))
	h.ctrl.blocks.mu.Lock()
	holder, held := h.ctrl.blocks.owner[own]
	h.ctrl.blocks.mu.Unlock()
	if held || h.ctrl.blocks.inUse(own) {
		t.Fatalf("no Node and no instance left, yet %v stays used (owner %q, held %v): leaked forever", own, holder, held)
	}
}

// Review: requeueIfDrifted queues, every collection interval, a node
// whose podCIDR is another live node's block (claim conflict) and whose
// NIC has no alias: "isBlock && len(ours)==0". Its sync reports
// CIDRMismatch again each time: a Warning and a metric per interval,
// forever, although the package doc says a mismatch is not re-queued.
func TestReviewDriftRequeuesClaimConflictForever(t *testing.T) {
	shared := netip.MustParsePrefix("10.0.5.0/24")
	a := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "a", CreationTimestamp: metav1.NewTime(time.Unix(1, 0))},
		Spec: corev1.NodeSpec{PodCIDR: shared.String(), PodCIDRs: []string{shared.String()}}}
	b := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "b", CreationTimestamp: metav1.NewTime(time.Unix(2, 0))},
		Spec: corev1.NodeSpec{PodCIDR: shared.String(), PodCIDRs: []string{shared.String()}}}
	h := newRangeHarnessCloud(t, "10.0.0.0/16", func(fc *fake.Cloud) {
		fc.RegisterInstance("a")
		fc.RegisterInstance("b")
		fc.AddAlias(t.Context(), cloud.InstanceRef{Name: "a"}, cloud.AliasRange{CIDR: shared, RangeName: "pods"})
	}, []*corev1.Node{a, b})
	h.events()
	mismatches := 0
	for round := 0; round < 5; round++ {
		h.drain()
		h.ctrl.collectLeaks(h.ctx)
		q := h.drain()
		for _, n := range q {
			_ = h.ctrl.safeSync(h.ctx, n)
		}
		mismatches += strings.Count(h.events(), EventCIDRMismatch)
	}
	if mismatches > 1 {
		t.Fatalf("%d CIDRMismatch warnings for one unchanged claim conflict over 5 collection intervals: re-queued every interval", mismatches)
	}
}

// Review: the cooling wait in sync ("podCIDR B is a block that cools down
// until T; it is repaired then"). At T the cooldown ends and expire puts B
// back in the pool without giving it to the waiting node, which is not
// woken (it sits in the rate limiter's backoff, up to a minute) while the
// nodes waiting for a block are. One of them gets B, its alias and its
// podCIDR: two Nodes with podCIDR B, and the first is then told
// CIDRMismatch instead of being "repaired".
func TestReviewCoolingWaitLosesTheBlockToAnother(t *testing.T) {
	b := netip.MustParsePrefix("10.0.0.0/24") // the whole pool: one block
	d := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "d", CreationTimestamp: metav1.NewTime(time.Unix(1, 0))},
		Spec: corev1.NodeSpec{PodCIDR: b.String(), PodCIDRs: []string{b.String()}}}
	m := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "m", CreationTimestamp: metav1.NewTime(time.Unix(2, 0))}}
	h := newRangeHarnessCloud(t, "10.0.0.0/24", func(fc *fake.Cloud) {
		fc.RegisterInstance("d")
		fc.AddAlias(t.Context(), cloud.InstanceRef{Name: "d"}, cloud.AliasRange{CIDR: b, RangeName: "pods"})
	}, []*corev1.Node{d, m})
	h.ctrl.cfg.ReleaseCooldown = time.Hour
	if err := h.syncNode("m"); !errors.Is(err, errExhausted) {
		t.Fatalf("sync m: %v, want it waiting", err)
	}
	// d goes: b cools down.
	h.deleteNode("d")
	if err := h.ctrl.safeSync(h.ctx, "d"); err != nil {
		t.Fatal(err)
	}
	// A kubelet registers n with podCIDR b: it waits for the cooldown.
	h.createNode(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n"}, Spec: corev1.NodeSpec{PodCIDR: b.String(), PodCIDRs: []string{b.String()}}})
	if err := h.syncNode("n"); !errors.Is(err, errExhausted) {
		t.Fatalf("sync n: %v, want it waiting for the cooldown", err)
	}
	// The cooldown ends; the woken nodes sync first (n is in backoff).
	later := time.Now().Add(2 * time.Hour)
	_, _, _, woken, _ := h.ctrl.blocks.expire(later, later.Add(time.Minute))
	for _, w := range woken {
		_ = h.syncNode(w)
	}
	_ = h.syncNode("n")
	if h.podCIDR("m") == b.String() {
		t.Fatalf("n's podCIDR is %v (told it is repaired after the cooldown), and the controller gave %v to m as well (woken: %v); events:\n%s",
			b, h.podCIDR("m"), woken, h.events())
	}
}

// rangeReader is the fake cloud with GCE-style secondary ranges whose
// read can fail (subnetworks.get answering 403).
type rangeReader struct {
	*fake.Cloud
	fail  bool
	cidrs map[string]netip.Prefix
}

func (r *rangeReader) SecondaryRange(_ context.Context, name string) (netip.Prefix, error) {
	if r.fail {
		return netip.Prefix{}, fmt.Errorf("subnetworks.get: 403: %w", cloud.ErrUnavailable)
	}
	p, ok := r.cidrs[name]
	if !ok {
		return netip.Prefix{}, cloud.ErrNoSecondaryRange
	}
	return p, nil
}

// Review: a PodRange that could not be resolved at the rebuild (it is
// "pending": only its nodes wait) and is deleted meanwhile. deleteRange
// sees no pool, so holders() is empty and the carriers check is skipped
// (if active {...}): the finalizer goes at once, although a live node
// holds a block of it and its VM carries the alias. The range is then
// gone for good: when that node is deleted its release finds nothing
// owned, and the leak collector never counts the alias as ours — the
// alias stays on the VM forever (issue 21 defect 4, by another path).
func TestReviewUnresolvedRangeDeletedDropsFinalizer(t *testing.T) {
	blk := netip.MustParsePrefix("10.8.0.0/24")
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n", Labels: map[string]string{"pool": "b", aliasipv1.NodeLabel: "b"}},
		Spec: corev1.NodeSpec{PodCIDR: blk.String(), PodCIDRs: []string{blk.String()}}}
	mask := int32(24)
	now := metav1.Now()
	pr := &aliasipv1.PodRange{
		ObjectMeta: metav1.ObjectMeta{Name: "b", CreationTimestamp: now, DeletionTimestamp: &now, Finalizers: []string{aliasipv1.Finalizer}},
		Spec: aliasipv1.PodRangeSpec{SecondaryRangeName: "pods-b", MaskSize: &mask,
			NodeSelector: metav1.LabelSelector{MatchLabels: map[string]string{"pool": "b"}}},
	}
	h := startHarness(t, harnessConfig{
		cluster: "10.0.0.0/16", nodes: []*corev1.Node{node}, podRanges: true, ranges: []*aliasipv1.PodRange{pr},
		prep: func(fc *fake.Cloud) {
			fc.RegisterInstance("n")
			if err := fc.AddAlias(t.Context(), cloud.InstanceRef{Name: "n"}, cloud.AliasRange{CIDR: blk, RangeName: "pods-b"}); err != nil {
				t.Fatal(err)
			}
		},
		cloudOf: func(fc *fake.Cloud) cloud.Interface {
			return &rangeReader{Cloud: fc, fail: true, cidrs: map[string]netip.Prefix{"pods-b": netip.MustParsePrefix("10.8.0.0/16")}}
		},
	})
	// The range worker handles the deletion while the range is unresolved.
	if err := h.ctrl.syncRange(h.ctx, "b"); err != nil {
		t.Logf("syncRange: %v", err)
	}
	got, err := h.prs.AliasipV1alpha1().PodRanges().Get(h.ctx, "b", metav1.GetOptions{})
	if err == nil && !slices.Contains(got.Finalizers, aliasipv1.Finalizer) {
		aliases, _ := h.cloud.Aliases(h.ctx, cloud.InstanceRef{Name: "n"})
		t.Fatalf("finalizer of PodRange b removed while node n (podCIDR %v) holds a block of it and its VM carries %v", blk, aliases)
	}
}
