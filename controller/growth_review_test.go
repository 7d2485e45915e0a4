package controller

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"

	"github.com/aliasip/aliasip/cloud"
	aliasipv1 "github.com/aliasip/aliasip/controller/apis/aliasip/v1alpha1"
	"github.com/aliasip/aliasip/fake"
)

// Defects an adversarial review of the growth rows showed, each a test
// that failed before its fix. Shared setup: the growable range "grow" of
// TestGrowthRows (/28 blocks of 10.241.0.0/24, maxBlocksPerNode 3).
func attackRange() *aliasipv1.PodRange {
	return &aliasipv1.PodRange{ObjectMeta: metav1.ObjectMeta{Name: "grow", CreationTimestamp: metav1.NewTime(time.Unix(1, 0))},
		Spec: aliasipv1.PodRangeSpec{CIDR: "10.241.0.0/24", MaskSize: func() *int32 { v := int32(28); return &v }(),
			NodeSelector: metav1.LabelSelector{MatchLabels: map[string]string{"pool": "grow"}},
			Growth:       &aliasipv1.GrowthSpec{MaxBlocksPerNode: 3, LowWater: 4}}}
}

func attackNode(name, podCIDR string, created int64) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, UID: types.UID(name + "-uid"), CreationTimestamp: metav1.NewTime(time.Unix(created, 0)),
		Labels: map[string]string{"pool": "grow", aliasipv1.NodeLabel: "grow"}},
		Spec: corev1.NodeSpec{PodCIDR: podCIDR, PodCIDRs: []string{podCIDR}}}
}

func attackOnNIC(t *testing.T, fc *fake.Cloud, inst string, cidrs ...string) {
	t.Helper()
	ctx := context.Background()
	ref, err := fc.InstanceFor(ctx, "", inst)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cidrs {
		if err := fc.AddAlias(ctx, ref, cloud.AliasRange{CIDR: netip.MustParsePrefix(c), RangeName: "podrange-grow"}); err != nil {
			t.Fatal(err)
		}
	}
}

func attackNIC(t *testing.T, h *harness, inst string) []string {
	t.Helper()
	ref, _ := h.cloud.InstanceFor(h.ctx, "", inst)
	aliases, err := h.cloud.Aliases(h.ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, a := range aliases {
		out = append(out, a.CIDR.String())
	}
	slices.Sort(out)
	return out
}

func activeBlocks(cidrs ...string) []aliasipv1.GrantedBlock {
	var out []aliasipv1.GrantedBlock
	for _, c := range cidrs {
		out = append(out, aliasipv1.GrantedBlock{CIDR: c, State: aliasipv1.BlockActive, GrantedAt: metav1.NewTime(time.Unix(100, 0))})
	}
	return out
}

// A kubelet registers its own Node ("evil", younger than n) with
// spec.podCIDR = n's extra block. At run time the claim is refused (the
// block is n's extra: CIDRMismatch), and so it is after a restart: the
// rebuild restores the extra blocks their holders' NICs carry before any
// podCIDR (it restored every podCIDR first, so evil's won: n's record
// dropped, n's alias removed, the block put on evil's NIC).
func TestGrowthKubeletPodCIDRNeverTakesAnExtraBlock(t *testing.T) {
	const first, extra = "10.241.0.0/28", "10.241.0.32/28"
	for _, restart := range []bool{false, true} {
		name := map[bool]string{false: "evil created at run time", true: "evil present at the rebuild"}[restart]
		t.Run(name, func(t *testing.T) {
			nb := &aliasipv1.NodeBlocks{ObjectMeta: metav1.ObjectMeta{Name: "n"},
				Spec:   aliasipv1.NodeBlocksSpec{Blocks: []aliasipv1.BlockUsage{{CIDR: first, Capacity: 13, Allocated: 10}, {CIDR: extra, Capacity: 13, Allocated: 5}}},
				Status: aliasipv1.NodeBlocksStatus{PodRange: "grow", Blocks: activeBlocks(extra)}}
			nodes := []*corev1.Node{attackNode("n", first, 10)}
			evil := attackNode("evil", extra, 20) // younger than n; kubelet-written podCIDR
			if restart {
				nodes = append(nodes, evil)
			}
			h := startHarness(t, harnessConfig{cluster: "10.0.0.0/16", podRanges: true, nodes: nodes,
				ranges: []*aliasipv1.PodRange{attackRange()}, nodeBlocks: []*aliasipv1.NodeBlocks{nb},
				prep: func(fc *fake.Cloud) {
					attackOnNIC(t, fc, "n", first, extra)
					if _, err := fc.InstanceFor(context.Background(), "", "evil"); err != nil {
						t.Fatal(err)
					}
				}})
			if !restart {
				if err := h.syncNode("n"); err != nil {
					t.Fatal(err)
				}
				h.createNode(evil)
			}
			for _, n := range []string{"n", "evil", "n", "evil"} {
				_ = h.syncNode(n)
			}
			e := netip.MustParsePrefix(extra)
			if got := h.ctrl.blocks.holder(e); got != "n" {
				t.Errorf("n's recorded extra block %s is now held by %q", extra, got)
			}
			if nic := attackNIC(t, h, "n"); !slices.Contains(nic, extra) {
				t.Errorf("n's NIC %v lost its extra block %s", nic, extra)
			}
			if nic := attackNIC(t, h, "evil"); slices.Contains(nic, extra) {
				t.Errorf("evil's NIC %v carries n's extra block %s", nic, extra)
			}
			got, _ := h.prs.AliasipV1alpha1().NodeBlocks().Get(h.ctx, "n", metav1.GetOptions{})
			if !slices.ContainsFunc(got.Status.Blocks, func(b aliasipv1.GrantedBlock) bool { return b.CIDR == extra }) {
				t.Errorf("n's NodeBlocks status %+v no longer records %s", got.Status.Blocks, extra)
			}
		})
	}
}

// An admin edits the NodeBlocks status of the older node n to name m's
// extra block. At run time n's sync drops the record and leaves the block
// with m (TestGrowthRows "a record naming another node's block"), and so
// after a restart: the NIC carrying the block decides, not the age of the
// record's node (which moved the live block to n).
func TestGrowthEditedRecordNeverMovesABlock(t *testing.T) {
	const first, other, mExtra = "10.241.0.0/28", "10.241.0.16/28", "10.241.0.48/28"
	nbN := &aliasipv1.NodeBlocks{ObjectMeta: metav1.ObjectMeta{Name: "n"},
		Spec:   aliasipv1.NodeBlocksSpec{Blocks: []aliasipv1.BlockUsage{{CIDR: first, Capacity: 13, Allocated: 1}}},
		Status: aliasipv1.NodeBlocksStatus{PodRange: "grow", Blocks: activeBlocks(mExtra)}} // the edit
	nbM := &aliasipv1.NodeBlocks{ObjectMeta: metav1.ObjectMeta{Name: "m"},
		Spec:   aliasipv1.NodeBlocksSpec{Blocks: []aliasipv1.BlockUsage{{CIDR: other, Capacity: 13, Allocated: 10}, {CIDR: mExtra, Capacity: 13, Allocated: 5}}},
		Status: aliasipv1.NodeBlocksStatus{PodRange: "grow", Blocks: activeBlocks(mExtra)}}
	h := startHarness(t, harnessConfig{cluster: "10.0.0.0/16", podRanges: true,
		nodes:  []*corev1.Node{attackNode("n", first, 10), attackNode("m", other, 20)},
		ranges: []*aliasipv1.PodRange{attackRange()}, nodeBlocks: []*aliasipv1.NodeBlocks{nbN, nbM},
		prep: func(fc *fake.Cloud) {
			attackOnNIC(t, fc, "n", first)
			attackOnNIC(t, fc, "m", other, mExtra)
		}})
	for _, n := range []string{"m", "n", "m", "n"} {
		_ = h.syncNode(n)
	}
	if got := h.ctrl.blocks.holder(netip.MustParsePrefix(mExtra)); got != "m" {
		t.Errorf("m's extra block %s is held by %q", mExtra, got)
	}
	if nic := attackNIC(t, h, "m"); !slices.Contains(nic, mExtra) {
		t.Errorf("m's NIC %v lost its extra block %s", nic, mExtra)
	}
	if nic := attackNIC(t, h, "n"); slices.Contains(nic, mExtra) {
		t.Errorf("n's NIC %v carries m's block %s", nic, mExtra)
	}
}

// A PodRange being deleted hands out no new block (pool.deleting): not an
// extra block either, to a node of it that runs low.
func TestGrowthNoGrantFromARangeBeingDeleted(t *testing.T) {
	const first = "10.241.0.0/28"
	pr := attackRange()
	now := metav1.Now()
	pr.DeletionTimestamp = &now
	pr.Finalizers = []string{aliasipv1.Finalizer}
	nb := &aliasipv1.NodeBlocks{ObjectMeta: metav1.ObjectMeta{Name: "n"},
		Spec: aliasipv1.NodeBlocksSpec{Blocks: []aliasipv1.BlockUsage{{CIDR: first, Capacity: 13, Allocated: 12}}}}
	h := startHarness(t, harnessConfig{cluster: "10.0.0.0/16", podRanges: true,
		nodes:  []*corev1.Node{attackNode("n", first, 10)},
		ranges: []*aliasipv1.PodRange{pr}, nodeBlocks: []*aliasipv1.NodeBlocks{nb},
		prep: func(fc *fake.Cloud) { attackOnNIC(t, fc, "n", first) }})
	if p, ok := h.ctrl.blocks.pool("grow"); !ok || !p.deleting {
		t.Fatalf("pool grow: %+v %v, want deleting", p, ok)
	}
	if err := h.syncNode("n"); err != nil && !errors.Is(err, errExhausted) {
		t.Fatal(err)
	}
	if ex := h.ctrl.blocks.extrasOf("n"); len(ex) > 0 {
		t.Errorf("range being deleted granted extra blocks %v; NIC now %v", ex, attackNIC(t, h, "n"))
	}
}

// Node n (growable, extra block e) is deleted and its kubelet re-registers
// it at once (the worker only sees the new Node: the queue dedups the
// name, so release never runs) on a new VM, with a podCIDR it wrote in
// the default range. Its old extra block is given back (cooled, then
// free), not held by n forever on no NIC and in no record.
func TestGrowthReRegisteredNodeGivesBackOldExtraBlocks(t *testing.T) {
	const first, extra, def = "10.241.0.0/28", "10.241.0.32/28", "10.0.5.0/24"
	nb := &aliasipv1.NodeBlocks{ObjectMeta: metav1.ObjectMeta{Name: "n", OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "Node", Name: "n", UID: "n-uid"}}},
		Spec:   aliasipv1.NodeBlocksSpec{Blocks: []aliasipv1.BlockUsage{{CIDR: first, Capacity: 13, Allocated: 10}, {CIDR: extra, Capacity: 13, Allocated: 5}}},
		Status: aliasipv1.NodeBlocksStatus{PodRange: "grow", Blocks: activeBlocks(extra)}}
	h := startHarness(t, harnessConfig{cluster: "10.0.0.0/16", podRanges: true,
		nodes:  []*corev1.Node{attackNode("n", first, 10)},
		ranges: []*aliasipv1.PodRange{attackRange()}, nodeBlocks: []*aliasipv1.NodeBlocks{nb},
		prep: func(fc *fake.Cloud) { attackOnNIC(t, fc, "n", first, extra) }})
	if err := h.syncNode("n"); err != nil {
		t.Fatal(err)
	}
	// Deleted and re-registered before the worker looks; the old VM's
	// aliases went with it; the garbage collector deletes the old NodeBlocks.
	if err := h.client.CoreV1().Nodes().Delete(h.ctx, "n", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	re := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n", UID: "n-uid-2", CreationTimestamp: metav1.NewTime(time.Unix(50, 0))},
		Spec: corev1.NodeSpec{PodCIDR: def, PodCIDRs: []string{def}}}
	if _, err := h.client.CoreV1().Nodes().Create(h.ctx, re, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ref, _ := h.cloud.InstanceFor(h.ctx, "", "n")
	for _, c := range []string{first, extra} {
		if err := h.cloud.RemoveAlias(h.ctx, ref, netip.MustParsePrefix(c)); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.prs.AliasipV1alpha1().NodeBlocks().Delete(h.ctx, "n", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if err := h.syncNode("n"); err != nil {
			t.Logf("sync: %v", err)
		}
	}
	h.ctrl.blocks.expire(time.Now().Add(24*time.Hour), time.Now().Add(48*time.Hour))
	e := netip.MustParsePrefix(extra)
	if held := h.ctrl.blocks.holder(e); held != "" || h.ctrl.blocks.inUse(e) {
		t.Errorf("block %s is on no NIC and in no record, yet held by %q (in use %v); n's NIC %v",
			extra, held, h.ctrl.blocks.inUse(e), attackNIC(t, h, "n"))
	}
}

// A node short of an extra block while its range has none free waits like
// a node without a podCIDR: the block freed by a cooldown's end wakes it
// (it was dropped from the queue and waited for its next report).
func TestGrowthExhaustedRangeWakesTheShortNode(t *testing.T) {
	const first, other = "10.241.0.0/28", "10.241.0.16/28"
	pr := attackRange()
	pr.Spec.CIDR = "10.241.0.0/27" // two blocks: both held
	nb := &aliasipv1.NodeBlocks{ObjectMeta: metav1.ObjectMeta{Name: "n"},
		Spec: aliasipv1.NodeBlocksSpec{Blocks: []aliasipv1.BlockUsage{{CIDR: first, Capacity: 13, Allocated: 13}}, Waiting: 1}}
	h := startHarness(t, harnessConfig{cluster: "10.0.0.0/16", podRanges: true,
		nodes:  []*corev1.Node{attackNode("n", first, 10), attackNode("m", other, 20)},
		ranges: []*aliasipv1.PodRange{pr}, nodeBlocks: []*aliasipv1.NodeBlocks{nb},
		prep: func(fc *fake.Cloud) {
			attackOnNIC(t, fc, "n", first)
			attackOnNIC(t, fc, "m", other)
		}})
	if err := h.syncNode("n"); !errors.Is(err, errExhausted) {
		t.Fatalf("sync of a short node in a full range: %v, want errExhausted", err)
	}
	if !h.ctrl.blocks.isWaiting("n") {
		t.Fatal("the short node is not recorded as waiting for a block")
	}
	h.drain()
	// m goes; its block cools down, then is free: n is woken.
	h.deleteNode("m")
	if err := h.ctrl.safeSync(h.ctx, "m"); err != nil {
		t.Fatal(err)
	}
	h.drain()
	_, _, _, woken, err := h.ctrl.blocks.expire(time.Now().Add(time.Hour), time.Now().Add(2*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(woken, "n") {
		t.Fatalf("a freed block woke %v, not the short node n", woken)
	}
	if err := h.syncNode("n"); err != nil {
		t.Fatal(err)
	}
	if ex := h.ctrl.blocks.extrasOf("n"); len(ex) != 1 || ex[0].String() != other {
		t.Errorf("n's extra blocks %v, want the freed %s", ex, other)
	}
	if h.ctrl.blocks.isWaiting("n") {
		t.Error("n still waits after its grant")
	}
}

// The workers sync different growable nodes at once: their drain
// bookkeeping must not race (a concurrent map write is fatal to the whole
// controller, not one node's error). Run with -race to see it.
func TestGrowthConcurrentSyncs(t *testing.T) {
	pr := attackRange()
	var nodes []*corev1.Node
	var nbs []*aliasipv1.NodeBlocks
	var nics [][2]string
	for i := 0; i < 6; i++ {
		name := fmt.Sprintf("n%d", i)
		first := fmt.Sprintf("10.241.0.%d/28", 32*i)
		extra := fmt.Sprintf("10.241.0.%d/28", 32*i+16)
		nodes = append(nodes, attackNode(name, first, int64(10+i)))
		nbs = append(nbs, &aliasipv1.NodeBlocks{ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec:   aliasipv1.NodeBlocksSpec{Blocks: []aliasipv1.BlockUsage{{CIDR: first, Capacity: 13}, {CIDR: extra, Capacity: 16}}},
			Status: aliasipv1.NodeBlocksStatus{PodRange: "grow", Blocks: activeBlocks(extra)}})
		nics = append(nics, [2]string{first, extra})
	}
	h := startHarness(t, harnessConfig{cluster: "10.0.0.0/16", podRanges: true, nodes: nodes,
		ranges: []*aliasipv1.PodRange{pr}, nodeBlocks: nbs,
		prep: func(fc *fake.Cloud) {
			for i, n := range nics {
				attackOnNIC(t, fc, fmt.Sprintf("n%d", i), n[0], n[1])
			}
		}})
	h.caughtUp()
	var wg sync.WaitGroup
	for round := 0; round < 3; round++ {
		for i := range nodes {
			wg.Go(func() {
				if err := h.ctrl.safeSync(h.ctx, fmt.Sprintf("n%d", i)); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
	}
}

// delayRecorder records the delays of a queue's delayed adds.
type delayRecorder struct {
	workqueue.TypedRateLimitingInterface[string]
	mu     sync.Mutex
	delays []time.Duration
}

func (q *delayRecorder) AddAfter(key string, d time.Duration) {
	q.mu.Lock()
	q.delays = append(q.delays, d)
	q.mu.Unlock()
	q.TypedRateLimitingInterface.AddAfter(key, d)
}

func (q *delayRecorder) take() []time.Duration {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := q.delays
	q.delays = nil
	return out
}

// An empty extra block is looked at again when its returnAfter is due,
// every time a sync finds it not due yet. The queue holds one delayed
// entry per node (the earliest): before the fix only the sync that first
// saw the block empty asked for one, so another block's earlier timer on
// the same node could take its place and leave it Active, empty and
// unneeded, until an unrelated event (the growth benchmark measured 6–9 %
// of the reserved address-time so).
func TestGrowthEmptyBlockLookedAtWhenDue(t *testing.T) {
	const first, extra = "10.241.0.0/28", "10.241.0.32/28"
	pr := attackRange()
	pr.Spec.Growth.ReturnAfterSeconds = 60
	nb := &aliasipv1.NodeBlocks{ObjectMeta: metav1.ObjectMeta{Name: "n"},
		Spec: aliasipv1.NodeBlocksSpec{Blocks: []aliasipv1.BlockUsage{
			{CIDR: first, Capacity: 13, Allocated: 0}, {CIDR: extra, Capacity: 16, Allocated: 0}}},
		Status: aliasipv1.NodeBlocksStatus{PodRange: "grow", Blocks: activeBlocks(extra)}}
	h := startHarness(t, harnessConfig{cluster: "10.0.0.0/16", podRanges: true,
		nodes: []*corev1.Node{attackNode("n", first, 10)}, ranges: []*aliasipv1.PodRange{pr}, nodeBlocks: []*aliasipv1.NodeBlocks{nb},
		prep: func(fc *fake.Cloud) { attackOnNIC(t, fc, "n", first, extra) }})
	q := &delayRecorder{TypedRateLimitingInterface: h.ctrl.queue}
	h.ctrl.queue = q
	for i := 1; i <= 3; i++ {
		if err := h.syncNode("n"); err != nil {
			t.Fatal(err)
		}
		ds := q.take()
		if !slices.ContainsFunc(ds, func(d time.Duration) bool { return d > 0 && d <= time.Minute }) {
			t.Fatalf("sync %d found %s empty, not due for 60 s, and asked to be looked at again after %v; want a delay of at most 60 s", i, extra, ds)
		}
	}
}

// The rebuild looks the nodes' instances up in the nodes' order, whether
// or not they grow: the chart's fake cloud is in memory and gives each
// instance, on its first lookup, the next IPv6 range, so looking growable
// nodes up first (for their extra blocks) handed the instances other
// ranges than their Nodes' IPv6 podCIDRs after a controller restart
// (kubectl aliasip check: ipv6-podcidr mismatches; the kubelet suite
// caught it once make cluster had a growable pool).
func TestGrowthRebuildLooksInstancesUpInNodeOrder(t *testing.T) {
	pr := attackRange()
	older := attackNode("a", "10.0.0.0/24", 10)
	older.Labels = nil
	nb := &aliasipv1.NodeBlocks{ObjectMeta: metav1.ObjectMeta{Name: "g"},
		Status: aliasipv1.NodeBlocksStatus{PodRange: "grow", Blocks: activeBlocks("10.241.0.32/28")}}
	h := startHarness(t, harnessConfig{cluster: "10.0.0.0/16", podRanges: true, dualStack: true,
		nodes: []*corev1.Node{older, attackNode("g", "10.241.0.0/28", 20)}, ranges: []*aliasipv1.PodRange{pr},
		nodeBlocks: []*aliasipv1.NodeBlocks{nb}})
	for i, name := range []string{"a", "g"} {
		got, err := h.cloud.IPv6Range(context.Background(), cloud.InstanceRef{Name: name})
		if err != nil {
			t.Fatal(err)
		}
		want, _ := cloud.Subprefix(netip.MustParsePrefix("fd20:0:0:1::/64"), 96, uint64(i))
		if got != want {
			t.Errorf("instance %s (node %d of the rebuild's order) got IPv6 range %v, want %v", name, i+1, got, want)
		}
	}
}
