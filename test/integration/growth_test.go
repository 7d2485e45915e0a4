package integration

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/aliasip/aliasip/cloud"
	"github.com/aliasip/aliasip/cloud/gce/gcetest"
	"github.com/aliasip/aliasip/controller"
	"github.com/aliasip/aliasip/controller/apis/aliasip/v1alpha1"
	"github.com/aliasip/aliasip/test/framework"
)

// growEnv is a rangeEnv with one growable PodRange and the NodeBlocks
// client a test plays the node agent with.
type growEnv struct {
	*rangeEnv
	nbs interface {
		Get(context.Context, string, metav1.GetOptions) (*v1alpha1.NodeBlocks, error)
		Update(context.Context, *v1alpha1.NodeBlocks, metav1.UpdateOptions) (*v1alpha1.NodeBlocks, error)
		Delete(context.Context, string, metav1.DeleteOptions) error
		List(context.Context, metav1.ListOptions) (*v1alpha1.NodeBlocksList, error)
	}
}

func newGrowEnv(t *testing.T, growth v1alpha1.GrowthSpec) *growEnv {
	e := &growEnv{rangeEnv: newRangeEnv(t, "10.240.0.0/16"), nbs: podRangeClient(t).AliasipV1alpha1().NodeBlocks()}
	cleanup := func() {
		l, err := e.nbs.List(context.Background(), metav1.ListOptions{})
		if err != nil {
			t.Errorf("cleanup: %v", err)
			return
		}
		for _, nb := range l.Items {
			if err := e.nbs.Delete(context.Background(), nb.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
				t.Errorf("cleanup: %v", err)
			}
		}
	}
	cleanup()
	t.Cleanup(cleanup)
	// /28 blocks (13 pod addresses each, as the agent's IPAM counts them)
	// of a /24: 16 blocks.
	pr := &v1alpha1.PodRange{ObjectMeta: metav1.ObjectMeta{Name: "grow"}, Spec: v1alpha1.PodRangeSpec{
		CIDR: "10.241.0.0/24", MaskSize: i32(28), Growth: &growth,
		NodeSelector: metav1.LabelSelector{MatchLabels: map[string]string{"pool": "grow"}}}}
	if _, err := e.prs.Create(e.ctx, pr, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return e
}

// report writes the node's NodeBlocks spec as its agent would: each
// block's capacity (13 for a /28) and allocated count, and the ADDs
// waiting; drained lists the draining blocks it no longer uses.
func (e *growEnv) report(node string, allocated map[string]int32, waiting int32, drained ...v1alpha1.DrainedBlock) {
	e.t.Helper()
	if err := framework.Eventually(e.ctx, 10*time.Second, func() (bool, error) {
		nb, err := e.nbs.Get(e.ctx, node, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		nb.Spec = v1alpha1.NodeBlocksSpec{Waiting: waiting, Drained: drained}
		var cidrs []string
		for c := range allocated {
			cidrs = append(cidrs, c)
		}
		slices.Sort(cidrs)
		for _, c := range cidrs {
			nb.Spec.Blocks = append(nb.Spec.Blocks, v1alpha1.BlockUsage{CIDR: c, Capacity: 13, Allocated: allocated[c]})
			nb.Spec.Allocated += allocated[c]
		}
		_, err = e.nbs.Update(e.ctx, nb, metav1.UpdateOptions{})
		return err == nil, nil
	}); err != nil {
		e.t.Fatalf("could not write %s's report: %v", node, err)
	}
}

// waitBlocks waits until the node's NodeBlocks status satisfies cond.
func (e *growEnv) waitBlocks(node, what string, cond func(*v1alpha1.NodeBlocks) bool) *v1alpha1.NodeBlocks {
	e.t.Helper()
	var nb *v1alpha1.NodeBlocks
	if err := framework.Eventually(e.ctx, 30*time.Second, func() (bool, error) {
		var err error
		nb, err = e.nbs.Get(e.ctx, node, metav1.GetOptions{})
		return err == nil && cond(nb), nil
	}); err != nil {
		e.t.Fatalf("NodeBlocks %s never %s: %+v", node, what, nb)
	}
	return nb
}

// aliasesOf returns the CIDRs on the node's NIC, sorted.
func (e *growEnv) aliasesOf(node string) []string {
	_, _, aliases := e.nodesState()
	var out []string
	for _, a := range aliases[node] {
		out = append(out, a.CIDR.String())
	}
	slices.Sort(out)
	return out
}

func states(nb *v1alpha1.NodeBlocks) map[string]string {
	out := map[string]string{}
	for _, b := range nb.Status.Blocks {
		out[b.CIDR] = b.State
	}
	return out
}

// A node of a growable PodRange starts with one /28 and takes another when
// its agent reports fewer free addresses than the low-water mark: the
// block is attached to its NIC first, then recorded Active in its
// NodeBlocks. A block left empty for returnAfter is drained (recorded
// Draining) only while the node keeps the low-water mark without it, and
// is removed from the NIC only once the agent reports it drained for that
// drain; it then cools down. A node at maxBlocksPerNode that runs low gets
// a CapReached condition and a Warning, not a block.
func TestGrowthGrantDrainReturnAndCap(t *testing.T) {
	e := newGrowEnv(t, v1alpha1.GrowthSpec{MaxBlocksPerNode: 3, LowWater: 4, ReturnAfterSeconds: 2})
	c := e.startController("controller", "--leader-elect=false", "--release-cooldown", "1h")
	e.waitRange("grow", "Ready", ready)
	if err := framework.CreateNodes(e.ctx, e.client, []string{"g-1"}, labelled(map[string]string{"pool": "grow"})); err != nil {
		t.Fatal(err)
	}
	podCIDRs, _, _ := e.waitAssigned("g-1")
	first := podCIDRs["g-1"]
	e.waitBlocks("g-1", "created", func(nb *v1alpha1.NodeBlocks) bool { return nb.Status.PodRange == "grow" })
	if got := e.aliasesOf("g-1"); !slices.Equal(got, []string{first}) {
		t.Fatalf("g-1's NIC %v before any report, want only its podCIDR %s", got, first)
	}

	// 13 − 10 = 3 free < 4: one more block, on the NIC and recorded.
	e.report("g-1", map[string]int32{first: 10}, 0)
	nb := e.waitBlocks("g-1", "granted a block", func(nb *v1alpha1.NodeBlocks) bool { return len(nb.Status.Blocks) == 1 })
	second := nb.Status.Blocks[0].CIDR
	if nb.Status.Blocks[0].State != v1alpha1.BlockActive || second == first || nb.Status.ActiveBlocks != 2 {
		t.Fatalf("grant: %+v", nb.Status)
	}
	if p := netip.MustParsePrefix(second); p.Bits() != 28 || !netip.MustParsePrefix("10.241.0.0/24").Contains(p.Addr()) {
		t.Fatalf("granted %s: not a /28 of the range", second)
	}
	if got, want := e.aliasesOf("g-1"), sorted(first, second); !slices.Equal(got, want) {
		t.Fatalf("g-1's NIC %v, want %v", got, want)
	}
	// The report has not seen the new block yet: no second grant for it.
	// With the new block reported empty, 3 + 13 free: nothing more, and
	// nothing drained while without it the node would be short (3 < 4).
	e.report("g-1", map[string]int32{first: 10, second: 0}, 0)
	e.waitCapMessage("g-1", "2 of 3 blocks held, 16 addresses free")
	if passes, _ := c.metric("aliasip_growth_blocks_total", `event="granted"`); passes != 1 {
		t.Errorf("aliasip_growth_blocks_total{event=granted} = %v, want 1", passes)
	}

	// Now the first block empties too: 26 free, the second block can go
	// (13 ≥ 4 without it). After returnAfter it is Draining, and still on
	// the NIC: the agent has not said it is drained.
	e.report("g-1", map[string]int32{first: 0, second: 0}, 0)
	nb = e.waitBlocks("g-1", "draining the extra block", func(nb *v1alpha1.NodeBlocks) bool { return states(nb)[second] == v1alpha1.BlockDraining })
	since := nb.Status.Blocks[0].DrainingSince
	if since == nil || nb.Status.DrainingBlocks != 1 || nb.Status.ActiveBlocks != 1 {
		t.Fatalf("draining: %+v", nb.Status)
	}
	if got, want := e.aliasesOf("g-1"), sorted(first, second); !slices.Equal(got, want) {
		t.Fatalf("g-1's NIC %v while draining, want %v", got, want)
	}
	// An acknowledgement for another drain (a stale one) does nothing.
	stale := metav1.NewTime(since.Add(-time.Hour))
	e.report("g-1", map[string]int32{first: 0}, 0, v1alpha1.DrainedBlock{CIDR: second, DrainingSince: stale})
	e.report("g-1", map[string]int32{first: 1}, 0, v1alpha1.DrainedBlock{CIDR: second, DrainingSince: stale})
	e.waitCapMessage("g-1", "2 of 3 blocks held, 12 addresses free") // the draining block counts as held
	if got := states(e.waitBlocks("g-1", "read", func(*v1alpha1.NodeBlocks) bool { return true })); got[second] != v1alpha1.BlockDraining {
		t.Fatalf("a stale drained acknowledgement moved block %s: %v", second, got)
	}
	// The real acknowledgement: removed from the NIC and the record, cooling.
	e.report("g-1", map[string]int32{first: 1}, 0, v1alpha1.DrainedBlock{CIDR: second, DrainingSince: *since})
	e.waitBlocks("g-1", "giving the block back", func(nb *v1alpha1.NodeBlocks) bool { return len(nb.Status.Blocks) == 0 })
	waitFor(t, e.ctx, "the alias removed", func() bool { return slices.Equal(e.aliasesOf("g-1"), []string{first}) })
	e.event("g-1", corev1.EventTypeNormal, controller.EventBlockReturned)
	pr := e.waitRange("grow", "counting the cooling block", func(pr *v1alpha1.PodRange) bool { return pr.Status.BlocksUsed == 2 })
	if pr.Status.BlocksFree != 14 {
		t.Errorf("after the return: %+v (the returned block cools down: used, not free)", pr.Status)
	}

	// Up to the cap: an ADD waiting earns a block at once, whatever the
	// free count; at 3 blocks a node still short gets CapReached.
	e.report("g-1", map[string]int32{first: 13}, 1)
	nb = e.waitBlocks("g-1", "granted for a waiting ADD", func(nb *v1alpha1.NodeBlocks) bool { return len(nb.Status.Blocks) == 1 })
	third := nb.Status.Blocks[0].CIDR
	if third == second {
		t.Errorf("the cooling block %s was granted again", second)
	}
	e.report("g-1", map[string]int32{first: 13, third: 13}, 1)
	nb = e.waitBlocks("g-1", "granted a third block", func(nb *v1alpha1.NodeBlocks) bool { return len(nb.Status.Blocks) == 2 })
	fourth := nb.Status.Blocks[1].CIDR
	e.report("g-1", map[string]int32{first: 13, third: 13, fourth: 13}, 2)
	nb = e.waitBlocks("g-1", "at its cap", func(nb *v1alpha1.NodeBlocks) bool {
		return meta.IsStatusConditionTrue(nb.Status.Conditions, v1alpha1.ConditionCapReached)
	})
	if len(nb.Status.Blocks) != 2 || nb.Status.ActiveBlocks != 3 {
		t.Errorf("at the cap: %+v", nb.Status)
	}
	e.event("g-1", corev1.EventTypeWarning, controller.EventBlockCapReached)
	if got, want := e.aliasesOf("g-1"), sorted(first, third, fourth); !slices.Equal(got, want) {
		t.Fatalf("g-1's NIC %v at the cap, want %v", got, want)
	}
}

// The controller SIGKILLed and restarted keeps every granted block as the
// node's (its NodeBlocks record them): none is removed from the NIC as a
// leftover nor handed to a new node; an alias of the range on the NIC that
// no record names (a grant whose record never landed) is removed as a
// leftover. A deleted node's extra blocks leave its NIC with its podCIDR,
// and its NodeBlocks goes.
func TestGrowthSurvivesRestartAndRelease(t *testing.T) {
	e := newGrowEnv(t, v1alpha1.GrowthSpec{MaxBlocksPerNode: 4, LowWater: 4, ReturnAfterSeconds: 3600})
	c1 := e.startController("controller-1", "--leader-elect=false")
	e.waitRange("grow", "Ready", ready)
	if err := framework.CreateNodes(e.ctx, e.client, []string{"g-1"}, labelled(map[string]string{"pool": "grow"})); err != nil {
		t.Fatal(err)
	}
	podCIDRs, _, _ := e.waitAssigned("g-1")
	first := podCIDRs["g-1"]
	e.waitBlocks("g-1", "created", func(nb *v1alpha1.NodeBlocks) bool { return nb.Status.PodRange == "grow" })
	e.report("g-1", map[string]int32{first: 13}, 0)
	nb := e.waitBlocks("g-1", "granted", func(nb *v1alpha1.NodeBlocks) bool { return len(nb.Status.Blocks) == 1 })
	second := nb.Status.Blocks[0].CIDR
	e.report("g-1", map[string]int32{first: 13, second: 12}, 0)
	nb = e.waitBlocks("g-1", "granted again", func(nb *v1alpha1.NodeBlocks) bool { return len(nb.Status.Blocks) == 2 })
	third := nb.Status.Blocks[1].CIDR
	e.report("g-1", map[string]int32{first: 13, second: 12, third: 2}, 0)
	c1.Kill()

	// A leftover: an alias of the range on g-1's NIC no record names.
	leftover := ""
	for i := 0; i < 16; i++ {
		p := fmt.Sprintf("10.241.0.%d/28", 16*i)
		if p != first && p != second && p != third {
			leftover = p
			break
		}
	}
	inst, err := e.cloud.InstanceFor(e.ctx, "", "g-1")
	if err != nil {
		t.Fatal(err)
	}
	if err := e.cloud.AddAlias(e.ctx, inst, cloud.AliasRange{CIDR: netip.MustParsePrefix(leftover), RangeName: "podrange-grow"}); err != nil {
		t.Fatal(err)
	}
	c2 := e.startController("controller-2", "--leader-elect=false")
	defer func() {
		if t.Failed() {
			b, _ := os.ReadFile(c2.Log)
			t.Logf("controller-2:\n%s", b)
		}
	}()
	waitFor(t, e.ctx, "the leftover removed", func() bool {
		return slices.Equal(e.aliasesOf("g-1"), sorted(first, second, third))
	})
	e.event("g-1", corev1.EventTypeWarning, controller.EventExtraAliasRemoved)
	// New nodes take the remaining blocks; none gets g-1's.
	names := framework.NodeNames("n", 10)
	if err := framework.CreateNodes(e.ctx, e.client, names, labelled(map[string]string{"pool": "grow"})); err != nil {
		t.Fatal(err)
	}
	after, _, _ := e.waitAssigned(names...)
	for _, n := range names {
		if p := after[n]; p == first || p == second || p == third || p == leftover {
			t.Errorf("node %s got %s, a block of g-1 or one cooling down", n, p)
		}
	}
	if got := states(e.waitBlocks("g-1", "read", func(*v1alpha1.NodeBlocks) bool { return true })); len(got) != 2 {
		t.Errorf("g-1's records after the restart: %v", got)
	}

	// Deleting g-1 removes all three blocks from its NIC and its record.
	if err := e.client.CoreV1().Nodes().Delete(e.ctx, "g-1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, e.ctx, "g-1's blocks removed", func() bool { return len(e.aliasesOf("g-1")) == 0 })
	waitFor(t, e.ctx, "g-1's NodeBlocks deleted", func() bool {
		_, err := e.nbs.Get(e.ctx, "g-1", metav1.GetOptions{})
		return apierrors.IsNotFound(err)
	})
}

// waitCapMessage waits until the node's CapReached condition says msg
// (each report's sync writes it): the report was acted on.
func (e *growEnv) waitCapMessage(node, msg string) {
	e.t.Helper()
	e.waitBlocks(node, "saying "+msg, func(nb *v1alpha1.NodeBlocks) bool {
		c := meta.FindStatusCondition(nb.Status.Conditions, v1alpha1.ConditionCapReached)
		return c != nil && c.Message == msg
	})
}

func sorted(s ...string) []string {
	out := slices.Clone(s)
	slices.Sort(out)
	return out
}

// waitFor waits up to 30 s for a fact.
func waitFor(t *testing.T, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	if err := framework.Eventually(ctx, 30*time.Second, func() (bool, error) { return cond(), nil }); err != nil {
		t.Fatalf("never: %s: %v", what, err)
	}
}

// event waits for an event on a node.
func (e *growEnv) event(node, eventType, reason string) {
	e.t.Helper()
	waitFor(e.t, e.ctx, fmt.Sprintf("%s %s event on %s", eventType, reason, node), func() bool {
		evs, _ := framework.Events(e.ctx, e.client, node)
		for _, ev := range evs {
			if ev.Type == eventType && ev.Reason == reason {
				return true
			}
		}
		return false
	})
}

// On GCE each extra block is one more alias range of the PodRange's
// secondary range on the node's NIC, written through the real compute
// client against the GCE test server with 200 ms operations (the
// instance's full alias list, podCIDR kept): granted when the report says
// short, removed when drained, and a deleted node's go with it.
func TestGrowthOnGCE(t *testing.T) {
	ge, s := newGCEEnv(t, "10.64.0.0/16", gcetest.Options{OpDelay: 200 * time.Millisecond, SecondaryRanges: map[string]netip.Prefix{
		"pods-g": netip.MustParsePrefix("10.82.0.0/24"),
	}})
	e := &growEnv{rangeEnv: &rangeEnv{env: ge, prs: podRangeClient(t).AliasipV1alpha1().PodRanges()}, nbs: podRangeClient(t).AliasipV1alpha1().NodeBlocks()}
	e.deleteAllRanges()
	t.Cleanup(e.deleteAllRanges)
	for _, nb := range []string{"g-1"} {
		e.nbs.Delete(e.ctx, nb, metav1.DeleteOptions{})
		t.Cleanup(func() { e.nbs.Delete(context.Background(), nb, metav1.DeleteOptions{}) })
	}
	e.startController("controller", "--release-cooldown", "1m")
	if _, err := e.prs.Create(e.ctx, &v1alpha1.PodRange{ObjectMeta: metav1.ObjectMeta{Name: "grow-gce"}, Spec: v1alpha1.PodRangeSpec{
		SecondaryRangeName: "pods-g", MaskSize: i32(28), Growth: &v1alpha1.GrowthSpec{MaxBlocksPerNode: 3, LowWater: 4, ReturnAfterSeconds: 1},
		NodeSelector: metav1.LabelSelector{MatchLabels: map[string]string{"pool": "g"}}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitRange("grow-gce", "Ready", ready)
	s.AddInstance(gceZone, "g-1")
	if err := framework.CreateNodes(e.ctx, e.client, []string{"g-1"}, func(n *corev1.Node) {
		n.Spec.ProviderID = fmt.Sprintf("gce://%s/%s/%s", gceProject, gceZone, n.Name)
		n.Labels = map[string]string{"pool": "g"}
	}); err != nil {
		t.Fatal(err)
	}
	podCIDRs, _, _ := e.waitAssigned("g-1")
	first := podCIDRs["g-1"]
	e.waitBlocks("g-1", "created", func(nb *v1alpha1.NodeBlocks) bool { return nb.Status.PodRange == "grow-gce" })
	nic := func() []string {
		var out []string
		for _, a := range s.Aliases()["g-1"] {
			if a.SubnetworkRangeName != "pods-g" {
				t.Errorf("g-1 carries %s of %q, want only ranges of pods-g", a.IpCidrRange, a.SubnetworkRangeName)
			}
			out = append(out, a.IpCidrRange)
		}
		slices.Sort(out)
		return out
	}
	e.report("g-1", map[string]int32{first: 12}, 0)
	nb := e.waitBlocks("g-1", "granted", func(nb *v1alpha1.NodeBlocks) bool { return len(nb.Status.Blocks) == 1 })
	extra := nb.Status.Blocks[0].CIDR
	if got, want := nic(), sorted(first, extra); !slices.Equal(got, want) {
		t.Fatalf("g-1's NIC on the GCE test server: %v, want %v (the podCIDR kept, the extra block added)", got, want)
	}
	// Emptied and not needed: drained, reported drained, removed from the
	// NIC by the same full-list update.
	e.report("g-1", map[string]int32{first: 0, extra: 0}, 0)
	nb = e.waitBlocks("g-1", "draining", func(nb *v1alpha1.NodeBlocks) bool { return states(nb)[extra] == v1alpha1.BlockDraining })
	e.report("g-1", map[string]int32{first: 0}, 0, v1alpha1.DrainedBlock{CIDR: extra, DrainingSince: *nb.Status.Blocks[0].DrainingSince})
	e.waitBlocks("g-1", "given back", func(nb *v1alpha1.NodeBlocks) bool { return len(nb.Status.Blocks) == 0 })
	waitFor(t, e.ctx, "the extra block off g-1's NIC", func() bool { return slices.Equal(nic(), []string{first}) })
	// Granted again (another block: the returned one cools down), then the
	// node deleted: both its ranges leave its NIC.
	e.report("g-1", map[string]int32{first: 13}, 1)
	nb = e.waitBlocks("g-1", "granted again", func(nb *v1alpha1.NodeBlocks) bool { return len(nb.Status.Blocks) == 1 })
	if nb.Status.Blocks[0].CIDR == extra {
		t.Errorf("the cooling block %s was granted again", extra)
	}
	waitFor(t, e.ctx, "two ranges on g-1's NIC", func() bool { return len(nic()) == 2 })
	if err := e.client.CoreV1().Nodes().Delete(e.ctx, "g-1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, e.ctx, "g-1's ranges removed", func() bool { return len(s.Aliases()["g-1"]) == 0 })
}

// The controller SIGKILLed while a grant's alias operation runs on GCE
// (3 s operations on the test server: the kill lands after the
// updateNetworkInterface call, before its record): the operation finishes
// on its own, so the NIC carries a block no record names. The restarted
// controller removes it as a leftover and cools it down, and grants the
// still-short node another block; neither the leftover nor the new block
// goes to a node created meanwhile.
func TestGrowthSIGKILLDuringGrantOnGCE(t *testing.T) {
	ge, s := newGCEEnv(t, "10.64.0.0/16", gcetest.Options{OpDelay: 3 * time.Second, SecondaryRanges: map[string]netip.Prefix{
		"pods-k": netip.MustParsePrefix("10.83.0.0/26"),
	}})
	e := &growEnv{rangeEnv: &rangeEnv{env: ge, prs: podRangeClient(t).AliasipV1alpha1().PodRanges()}, nbs: podRangeClient(t).AliasipV1alpha1().NodeBlocks()}
	e.deleteAllRanges()
	t.Cleanup(e.deleteAllRanges)
	for _, nb := range []string{"k-1", "k-2"} {
		e.nbs.Delete(e.ctx, nb, metav1.DeleteOptions{})
		t.Cleanup(func() { e.nbs.Delete(context.Background(), nb, metav1.DeleteOptions{}) })
	}
	c1 := e.startController("controller-1", "--release-cooldown", "1h")
	if _, err := e.prs.Create(e.ctx, &v1alpha1.PodRange{ObjectMeta: metav1.ObjectMeta{Name: "grow-kill"}, Spec: v1alpha1.PodRangeSpec{
		SecondaryRangeName: "pods-k", MaskSize: i32(28), Growth: &v1alpha1.GrowthSpec{MaxBlocksPerNode: 3, LowWater: 4, ReturnAfterSeconds: 3600},
		NodeSelector: metav1.LabelSelector{MatchLabels: map[string]string{"pool": "k"}}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitRange("grow-kill", "Ready", ready)
	addNode := func(name string) {
		s.AddInstance(gceZone, name)
		if err := framework.CreateNodes(e.ctx, e.client, []string{name}, func(n *corev1.Node) {
			n.Spec.ProviderID = fmt.Sprintf("gce://%s/%s/%s", gceProject, gceZone, n.Name)
			n.Labels = map[string]string{"pool": "k"}
		}); err != nil {
			t.Fatal(err)
		}
	}
	addNode("k-1")
	podCIDRs, _, _ := e.waitAssigned("k-1")
	first := podCIDRs["k-1"]
	e.waitBlocks("k-1", "created", func(nb *v1alpha1.NodeBlocks) bool { return nb.Status.PodRange == "grow-kill" })
	writes := s.Count("instances.updateNetworkInterface")
	e.report("k-1", map[string]int32{first: 13}, 1)
	waitFor(t, e.ctx, "the grant's alias write", func() bool { return s.Count("instances.updateNetworkInterface") > writes })
	c1.Kill()
	// The killed process's operation finishes on its own schedule.
	var leftover string
	waitFor(t, e.ctx, "the killed grant's operation done", func() bool {
		for _, a := range s.Aliases()["k-1"] {
			if a.IpCidrRange != first {
				leftover = a.IpCidrRange
				return true
			}
		}
		return false
	})
	if nb, _ := e.nbs.Get(e.ctx, "k-1", metav1.GetOptions{}); len(nb.Status.Blocks) != 0 {
		t.Fatalf("the grant was recorded before the kill: %+v (the test needs the kill between the write and the record)", nb.Status)
	}
	e.startController("controller-2", "--release-cooldown", "1h")
	nb := e.waitBlocks("k-1", "granted by the new process", func(nb *v1alpha1.NodeBlocks) bool { return len(nb.Status.Blocks) == 1 })
	granted := nb.Status.Blocks[0].CIDR
	if granted == leftover {
		t.Errorf("the new process recorded %s, the killed one's unrecorded block: it must be removed and cooled, not adopted", leftover)
	}
	waitFor(t, e.ctx, "k-1's NIC: its podCIDR and the new grant only", func() bool {
		var got []string
		for _, a := range s.Aliases()["k-1"] {
			got = append(got, a.IpCidrRange)
		}
		slices.Sort(got)
		return slices.Equal(got, sorted(first, granted))
	})
	// A node created now gets neither.
	addNode("k-2")
	after, _, _ := e.waitAssigned("k-2")
	if p := after["k-2"]; p == leftover || p == granted || p == first {
		t.Errorf("k-2 got %s (k-1's %s, granted %s, leftover %s)", p, first, granted, leftover)
	}
}
