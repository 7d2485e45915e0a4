package integration

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
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

// rangeEnv is an env with PodRanges: it deletes every PodRange (finalizers
// included) before and after the test.
type rangeEnv struct {
	*env
	prs interface {
		Create(context.Context, *v1alpha1.PodRange, metav1.CreateOptions) (*v1alpha1.PodRange, error)
		Get(context.Context, string, metav1.GetOptions) (*v1alpha1.PodRange, error)
		Delete(context.Context, string, metav1.DeleteOptions) error
		List(context.Context, metav1.ListOptions) (*v1alpha1.PodRangeList, error)
		Update(context.Context, *v1alpha1.PodRange, metav1.UpdateOptions) (*v1alpha1.PodRange, error)
	}
}

func newRangeEnv(t *testing.T, cluster string) *rangeEnv {
	e := &rangeEnv{env: newEnv(t, cluster), prs: podRangeClient(t).AliasipV1alpha1().PodRanges()}
	e.deleteAllRanges()
	t.Cleanup(e.deleteAllRanges)
	return e
}

func (e *rangeEnv) deleteAllRanges() {
	ctx := context.Background()
	list, err := e.prs.List(ctx, metav1.ListOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	for _, pr := range list.Items {
		if len(pr.Finalizers) > 0 {
			pr.Finalizers = nil
			if _, err := e.prs.Update(ctx, &pr, metav1.UpdateOptions{}); err != nil && !apierrors.IsNotFound(err) {
				e.t.Errorf("cleanup: %v", err)
			}
		}
		if err := e.prs.Delete(ctx, pr.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			e.t.Errorf("cleanup: %v", err)
		}
	}
}

func (e *rangeEnv) createRange(name, cidr string, mask, maxPods, prio int32, selector map[string]string) {
	e.t.Helper()
	pr := &v1alpha1.PodRange{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: v1alpha1.PodRangeSpec{
		CIDR: cidr, Priority: prio, NodeSelector: metav1.LabelSelector{MatchLabels: selector}}}
	if mask > 0 {
		pr.Spec.MaskSize = i32(mask)
	} else {
		pr.Spec.MaxPodsPerNode = i32(maxPods)
	}
	if _, err := e.prs.Create(e.ctx, pr, metav1.CreateOptions{}); err != nil {
		e.t.Fatal(err)
	}
}

// waitRange waits until the PodRange's status satisfies cond, and returns it.
func (e *rangeEnv) waitRange(name string, what string, cond func(*v1alpha1.PodRange) bool) *v1alpha1.PodRange {
	e.t.Helper()
	var pr *v1alpha1.PodRange
	err := framework.Eventually(e.ctx, 30*time.Second, func() (bool, error) {
		var err error
		pr, err = e.prs.Get(e.ctx, name, metav1.GetOptions{})
		return err == nil && cond(pr), err
	})
	if err != nil {
		e.t.Fatalf("PodRange %s never %s: %v; status %+v", name, what, err, pr.Status)
	}
	return pr
}

func condition(pr *v1alpha1.PodRange, typ string) metav1.Condition {
	if c := meta.FindStatusCondition(pr.Status.Conditions, typ); c != nil {
		return *c
	}
	return metav1.Condition{}
}

func ready(pr *v1alpha1.PodRange) bool {
	return condition(pr, v1alpha1.ConditionReady).Status == metav1.ConditionTrue
}

// rangeEvent waits for an event on a PodRange.
func (e *rangeEnv) rangeEvent(name, eventType, reason string) corev1.Event {
	e.t.Helper()
	var found corev1.Event
	err := framework.Eventually(e.ctx, 30*time.Second, func() (bool, error) {
		l, err := e.client.CoreV1().Events("default").List(e.ctx, metav1.ListOptions{
			FieldSelector: "involvedObject.kind=PodRange,involvedObject.name=" + name})
		if err != nil {
			return false, err
		}
		for _, ev := range l.Items {
			if ev.Type == eventType && ev.Reason == reason {
				found = ev
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		e.t.Fatalf("no %s %s event on PodRange %s: %v", eventType, reason, name, err)
	}
	return found
}

// nodesState returns every node's podCIDR and pod-range label, and every
// alias on the fake cloud by instance.
func (e *rangeEnv) nodesState() (podCIDR, label map[string]string, aliases map[string][]cloud.AliasRange) {
	e.t.Helper()
	nodes, err := e.client.CoreV1().Nodes().List(e.ctx, metav1.ListOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	podCIDR, label, aliases = map[string]string{}, map[string]string{}, map[string][]cloud.AliasRange{}
	for _, n := range nodes.Items {
		podCIDR[n.Name], label[n.Name] = n.Spec.PodCIDR, n.Labels[v1alpha1.NodeLabel]
	}
	insts, err := e.cloud.ListInstances(e.ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	for _, in := range insts {
		aliases[in.Ref.Name] = in.Aliases
	}
	return podCIDR, label, aliases
}

// waitAssigned waits until every named node has a podCIDR and its label.
func (e *rangeEnv) waitAssigned(names ...string) (podCIDR, label map[string]string, aliases map[string][]cloud.AliasRange) {
	e.t.Helper()
	err := framework.Eventually(e.ctx, 30*time.Second, func() (bool, error) {
		podCIDR, label, aliases = e.nodesState()
		for _, n := range names {
			if podCIDR[n] == "" || label[n] == "" {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		e.t.Fatalf("nodes %v not assigned: %v; podCIDRs %v labels %v", names, err, podCIDR, label)
	}
	return podCIDR, label, aliases
}

func labelled(l map[string]string) func(*corev1.Node) {
	return func(n *corev1.Node) { n.Labels = l }
}

// PodRanges added while the controller runs: a node they select gets a
// block from the highest priority first, then from the one with the most
// free blocks, sized by the range (maxPodsPerNode 8 → /28), labelled with
// the range, attached as an alias of the range; a node no PodRange
// selects gets one from the default range, as before.
func TestPodRangesChooseByPriorityThenMostAvailable(t *testing.T) {
	e := newRangeEnv(t, "10.200.0.0/16")
	c := e.startController("controller")
	if err := framework.CreateNodes(e.ctx, e.client, []string{"before"}, nil); err != nil {
		t.Fatal(err)
	}
	e.waitAssigned("before")

	pool := map[string]string{"pool": "a"}
	e.createRange("hi", "10.201.0.0/27", 28, 0, 10, pool)   // 2 blocks
	e.createRange("big", "10.202.0.0/24", 0, 8, 0, pool)    // maxPodsPerNode 8 → 16 /28s
	e.createRange("small", "10.203.0.0/26", 28, 0, 0, pool) // 4 blocks
	for _, n := range []string{"hi", "big", "small"} {
		pr := e.waitRange(n, "Ready", ready)
		if pr.Status.MaskSize != 28 || !controllerOwnsFinalizer(pr) {
			t.Errorf("%s: maskSize %d finalizers %v", n, pr.Status.MaskSize, pr.Finalizers)
		}
	}
	var names []string
	for i := 1; i <= 4; i++ {
		names = append(names, fmt.Sprintf("a-%d", i))
	}
	if err := framework.CreateNodes(e.ctx, e.client, names, labelled(pool)); err != nil {
		t.Fatal(err)
	}
	if err := framework.CreateNodes(e.ctx, e.client, []string{"plain"}, labelled(map[string]string{"pool": "other"})); err != nil {
		t.Fatal(err)
	}
	podCIDR, label, aliases := e.waitAssigned(append(names, "before", "plain")...)

	count := map[string]int{}
	ranges := map[string]netip.Prefix{"hi": netip.MustParsePrefix("10.201.0.0/27"), "big": netip.MustParsePrefix("10.202.0.0/24"),
		"small": netip.MustParsePrefix("10.203.0.0/26"), "default": netip.MustParsePrefix("10.200.0.0/16")}
	seen := map[string]string{}
	for n, cidr := range podCIDR {
		p := netip.MustParsePrefix(cidr)
		r := label[n]
		count[r]++
		if !ranges[r].Contains(p.Addr()) {
			t.Errorf("node %s: podCIDR %v not in its range %s %v", n, p, r, ranges[r])
		}
		if want := map[bool]int{true: 24, false: 28}[r == "default"]; p.Bits() != want {
			t.Errorf("node %s: podCIDR %v, want a /%d", n, p, want)
		}
		if other, dup := seen[cidr]; dup {
			t.Errorf("nodes %s and %s share %s", n, other, cidr)
		}
		seen[cidr] = n
		wantName := "pods"
		if r != "default" {
			wantName = "podrange-" + r
		}
		if a := aliases[n]; len(a) != 1 || a[0].CIDR != p || a[0].RangeName != wantName {
			t.Errorf("node %s: aliases %v, want [%v from %s]", n, a, p, wantName)
		}
	}
	if count["hi"] != 2 || count["big"] != 2 || count["small"] != 0 || count["default"] != 2 {
		t.Errorf("nodes per range %v, want hi 2 (priority), big 2 (most free), small 0, default 2 (before, plain)", count)
	}
	if label["before"] != "default" || label["plain"] != "default" {
		t.Errorf("labels: before %q, plain %q; want default", label["before"], label["plain"])
	}

	// Status follows: hi is full, big has 14 free.
	hi := e.waitRange("hi", "exhausted", func(pr *v1alpha1.PodRange) bool {
		return pr.Status.BlocksUsed == 2 && condition(pr, v1alpha1.ConditionExhausted).Status == metav1.ConditionTrue
	})
	if hi.Status.BlocksTotal != 2 || hi.Status.BlocksFree != 0 || hi.Status.Nodes != 2 || hi.Status.CIDR != "10.201.0.0/27" {
		t.Errorf("hi status %+v", hi.Status)
	}
	e.rangeEvent("hi", corev1.EventTypeWarning, controller.EventPodRangeExhausted)
	big := e.waitRange("big", "counting 2", func(pr *v1alpha1.PodRange) bool { return pr.Status.BlocksUsed == 2 })
	if big.Status.BlocksTotal != 16 || big.Status.BlocksFree != 14 || condition(big, v1alpha1.ConditionExhausted).Reason != v1alpha1.ReasonBlocksAvailable {
		t.Errorf("big status %+v", big.Status)
	}
	for _, m := range []struct {
		labels string
		want   float64
	}{
		{`range="hi",state="used"`, 2}, {`range="hi",state="free"`, 0},
		{`range="big",state="free"`, 14}, {`range="small",state="free"`, 4},
		{`range="default",state="used"`, 2},
	} {
		if v, ok := c.metric("aliasip_pool_blocks", m.labels); !ok || v != m.want {
			t.Errorf("aliasip_pool_blocks{%s} = %v (found %v), want %v", m.labels, v, ok, m.want)
		}
	}
}

func controllerOwnsFinalizer(pr *v1alpha1.PodRange) bool {
	for _, f := range pr.Finalizers {
		if f == v1alpha1.Finalizer {
			return true
		}
	}
	return false
}

// A PodRange overlapping the default range or an older PodRange is not
// used, and says so in its status; a node only it selects waits (never a
// block from elsewhere, never a partial allocation) and gets one once the
// older range is gone.
func TestPodRangeOverlapReported(t *testing.T) {
	e := newRangeEnv(t, "10.210.0.0/16")
	e.startController("controller")
	e.createRange("first", "10.211.0.0/16", 24, 0, 0, map[string]string{"pool": "f"})
	e.waitRange("first", "Ready", ready)
	e.createRange("inside-default", "10.210.128.0/20", 24, 0, 0, map[string]string{"pool": "x"})
	e.createRange("second", "10.211.4.0/22", 24, 0, 0, map[string]string{"pool": "s"})
	for name, want := range map[string]string{
		"inside-default": "10.210.128.0/20 overlaps range default (10.210.0.0/16), which was there first",
		"second":         "10.211.4.0/22 overlaps range first (10.211.0.0/16), which was there first",
	} {
		pr := e.waitRange(name, "reported as overlapping", func(pr *v1alpha1.PodRange) bool {
			return condition(pr, v1alpha1.ConditionReady).Reason == v1alpha1.ReasonOverlaps
		})
		if c := condition(pr, v1alpha1.ConditionReady); c.Status != metav1.ConditionFalse || !strings.Contains(c.Message, want) {
			t.Errorf("%s: Ready %s %q, want False with %q", name, c.Status, c.Message, want)
		}
		if pr.Status.BlocksTotal != 0 || meta.FindStatusCondition(pr.Status.Conditions, v1alpha1.ConditionExhausted) != nil {
			t.Errorf("%s: an unused range reports blocks: %+v", name, pr.Status)
		}
		e.rangeEvent(name, corev1.EventTypeWarning, controller.EventPodRangeNotReady)
	}
	if err := framework.CreateNodes(e.ctx, e.client, []string{"s-1"}, labelled(map[string]string{"pool": "s"})); err != nil {
		t.Fatal(err)
	}
	e.waitEvent("s-1", corev1.EventTypeWarning, controller.EventCIDRNotAvailable, 30*time.Second)
	if podCIDR, _, aliases := e.nodesState(); podCIDR["s-1"] != "" || len(aliases["s-1"]) != 0 {
		t.Fatalf("a node only an overlapping range selects got %q, aliases %v", podCIDR["s-1"], aliases["s-1"])
	}
	// The older range goes (no node holds a block of it): the other is
	// used, and the waiting node gets its block.
	if err := e.prs.Delete(e.ctx, "first", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitRange("second", "Ready", ready)
	podCIDR, label, _ := e.waitAssigned("s-1")
	if label["s-1"] != "second" || !netip.MustParsePrefix("10.211.4.0/22").Contains(netip.MustParsePrefix(podCIDR["s-1"]).Addr()) {
		t.Errorf("s-1: %s from %q, want a block of second", podCIDR["s-1"], label["s-1"])
	}
	if _, err := e.prs.Get(e.ctx, "first", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("first still there after its deletion: %v", err)
	}
}

// Deleting a PodRange that nodes use waits (finalizer) until they are
// gone; meanwhile it hands out no block and says why. Its status counts
// follow the allocations and releases.
func TestPodRangeFinalizerAndUtilization(t *testing.T) {
	e := newRangeEnv(t, "10.220.0.0/16")
	c := e.startController("controller", "--release-cooldown", "0s")
	pool := map[string]string{"pool": "u"}
	e.createRange("eight", "10.221.0.0/25", 28, 0, 0, pool) // 8 blocks
	e.waitRange("eight", "Ready", ready)
	names := framework.NodeNames("u", 7)
	if err := framework.CreateNodes(e.ctx, e.client, names, labelled(pool)); err != nil {
		t.Fatal(err)
	}
	e.waitAssigned(names...)
	// 7 of 8 (87 %): nearly exhausted, with a Warning; then full.
	pr := e.waitRange("eight", "nearly exhausted", func(pr *v1alpha1.PodRange) bool {
		return condition(pr, v1alpha1.ConditionExhausted).Reason == v1alpha1.ReasonNearlyExhausted
	})
	if pr.Status.BlocksUsed != 7 || pr.Status.BlocksFree != 1 || pr.Status.Nodes != 7 {
		t.Errorf("status at 7 of 8: %+v", pr.Status)
	}
	e.rangeEvent("eight", corev1.EventTypeWarning, controller.EventPodRangeNearlyExhausted)
	if err := framework.CreateNodes(e.ctx, e.client, []string{"u-last"}, labelled(pool)); err != nil {
		t.Fatal(err)
	}
	e.waitRange("eight", "exhausted", func(pr *v1alpha1.PodRange) bool {
		return condition(pr, v1alpha1.ConditionExhausted).Status == metav1.ConditionTrue && pr.Status.BlocksFree == 0
	})
	e.rangeEvent("eight", corev1.EventTypeWarning, controller.EventPodRangeExhausted)
	if v, ok := c.metric("aliasip_pool_blocks", `range="eight",state="used"`); !ok || v != 8 {
		t.Errorf("aliasip_pool_blocks{range=eight,state=used} = %v (%v), want 8", v, ok)
	}

	// Deletion waits for the nodes.
	if err := e.prs.Delete(e.ctx, "eight", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	pr = e.waitRange("eight", "in use", func(pr *v1alpha1.PodRange) bool {
		return condition(pr, v1alpha1.ConditionReady).Reason == v1alpha1.ReasonInUse
	})
	if pr.DeletionTimestamp == nil || !strings.Contains(condition(pr, v1alpha1.ConditionReady).Message, "8 node(s) still hold blocks") {
		t.Errorf("deleting range: %+v %v", pr.Status, pr.DeletionTimestamp)
	}
	for _, n := range append(names[1:], "u-last") {
		if err := e.client.CoreV1().Nodes().Delete(e.ctx, n, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	e.waitRange("eight", "counting the one node left", func(pr *v1alpha1.PodRange) bool { return pr.Status.Nodes == 1 })
	// A new node it selects waits: the range hands out nothing now.
	if err := framework.CreateNodes(e.ctx, e.client, []string{"u-new"}, labelled(pool)); err != nil {
		t.Fatal(err)
	}
	e.waitEvent("u-new", corev1.EventTypeWarning, controller.EventCIDRNotAvailable, 30*time.Second)
	if podCIDR, _, _ := e.nodesState(); podCIDR["u-new"] != "" {
		t.Fatalf("a deleting range handed out %s", podCIDR["u-new"])
	}
	if err := e.client.CoreV1().Nodes().Delete(e.ctx, names[0], metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := framework.Eventually(e.ctx, 30*time.Second, func() (bool, error) {
		_, err := e.prs.Get(e.ctx, "eight", metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	}); err != nil {
		t.Fatalf("PodRange not deleted once its last node went: %v", err)
	}
	// No PodRange selects u-new any more: it gets a default block.
	_, label, _ := e.waitAssigned("u-new")
	if label["u-new"] != "default" {
		t.Errorf("u-new from %q, want default", label["u-new"])
	}
	if _, ok := c.metric("aliasip_pool_blocks", `range="eight"`); ok {
		t.Errorf("metrics still report the deleted range")
	}
}

// A restarted controller rebuilds the PodRanges' pools from the nodes and
// the cloud: nothing moves, no mismatch is reported, and a new node gets
// a block of its range that no other node holds.
func TestPodRangesSurviveRestart(t *testing.T) {
	e := newRangeEnv(t, "10.230.0.0/16")
	c1 := e.startController("controller-1", "--leader-elect=false")
	pool := map[string]string{"pool": "r"}
	e.createRange("restart", "10.231.0.0/26", 28, 0, 0, pool) // 4 blocks
	e.waitRange("restart", "Ready", ready)
	names := framework.NodeNames("r", 3)
	if err := framework.CreateNodes(e.ctx, e.client, names, labelled(pool)); err != nil {
		t.Fatal(err)
	}
	before, _, _ := e.waitAssigned(names...)
	c1.Stop()

	e.startController("controller-2", "--leader-elect=false")
	if err := framework.CreateNodes(e.ctx, e.client, []string{"r-new"}, labelled(pool)); err != nil {
		t.Fatal(err)
	}
	after, label, aliases := e.waitAssigned(append(names, "r-new")...)
	for _, n := range names {
		if after[n] != before[n] || len(aliases[n]) != 1 || aliases[n][0].CIDR.String() != before[n] {
			t.Errorf("node %s: %s → %s, aliases %v", n, before[n], after[n], aliases[n])
		}
		if evs, _ := framework.Events(e.ctx, e.client, n); len(evs) > 0 {
			for _, ev := range evs {
				if ev.Type == corev1.EventTypeWarning {
					t.Errorf("node %s: %s %s: %s", n, ev.Type, ev.Reason, ev.Message)
				}
			}
		}
	}
	if label["r-new"] != "restart" {
		t.Errorf("r-new from %q", label["r-new"])
	}
	for _, n := range names {
		if after[n] == after["r-new"] {
			t.Errorf("r-new got %s, the block of %s", after["r-new"], n)
		}
	}
	pr := e.waitRange("restart", "counting 4", func(pr *v1alpha1.PodRange) bool { return pr.Status.BlocksUsed == 4 })
	if condition(pr, v1alpha1.ConditionExhausted).Status != metav1.ConditionTrue {
		t.Errorf("restart status %+v", pr.Status)
	}
}

// Without the PodRange CRD (a cluster set up without the chart) the
// controller allocates from the default range; once the CRD is installed
// it starts using PodRanges without a restart.
func TestControllerWithoutPodRangeCRD(t *testing.T) {
	e := newRangeEnv(t, "10.240.0.0/16")
	if err := framework.UninstallCRDs(e.ctx, cp.Config, framework.CRDDir()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := framework.InstallCRDs(context.Background(), cp.Config, framework.CRDDir()); err != nil {
			t.Errorf("reinstall the CRDs: %v", err)
		}
	})
	c := e.startController("controller")
	if err := framework.CreateNodes(e.ctx, e.client, []string{"w-1"}, labelled(map[string]string{"pool": "w"})); err != nil {
		t.Fatal(err)
	}
	_, label, _ := e.waitAssigned("w-1")
	if label["w-1"] != "default" {
		t.Errorf("w-1 from %q", label["w-1"])
	}
	if c.get("/readyz") != 200 {
		t.Error("not ready without the CRD")
	}
	if err := framework.InstallCRDs(e.ctx, cp.Config, framework.CRDDir()); err != nil {
		t.Fatal(err)
	}
	e.createRange("later", "10.241.0.0/24", 28, 0, 0, map[string]string{"pool": "w"})
	// The controller looks for the CRD every 30 s.
	if err := framework.Eventually(e.ctx, 90*time.Second, func() (bool, error) {
		pr, err := e.prs.Get(e.ctx, "later", metav1.GetOptions{})
		return err == nil && ready(pr), nil
	}); err != nil {
		t.Fatalf("PodRange not used after the CRD was installed: %v", err)
	}
	if err := framework.CreateNodes(e.ctx, e.client, []string{"w-2"}, labelled(map[string]string{"pool": "w"})); err != nil {
		t.Fatal(err)
	}
	_, label, _ = e.waitAssigned("w-2")
	if label["w-2"] != "later" {
		t.Errorf("w-2 from %q, want later", label["w-2"])
	}
}

// With GCE a PodRange names a secondary range of the nodes' subnetwork:
// its CIDR comes from the subnetwork, its blocks are alias ranges of that
// secondary range (maxPodsPerNode 32 → /26). A name the subnetwork does
// not have, a block larger than the range, or a cidr on GCE are reported
// in the status, and a node only such a range selects waits.
func TestPodRangesOnGCE(t *testing.T) {
	ge, s := newGCEEnv(t, "10.64.0.0/16", gcetest.Options{SecondaryRanges: map[string]netip.Prefix{
		"pods-b": netip.MustParsePrefix("10.80.0.0/20"),
		"tiny":   netip.MustParsePrefix("10.90.0.0/28"),
	}})
	e := &rangeEnv{env: ge, prs: podRangeClient(t).AliasipV1alpha1().PodRanges()}
	e.deleteAllRanges()
	t.Cleanup(e.deleteAllRanges)
	e.startController("controller")
	create := func(name, secondary string, maxPods int32, pool string) {
		t.Helper()
		if _, err := e.prs.Create(e.ctx, &v1alpha1.PodRange{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: v1alpha1.PodRangeSpec{
			SecondaryRangeName: secondary, MaxPodsPerNode: i32(maxPods),
			NodeSelector: metav1.LabelSelector{MatchLabels: map[string]string{"pool": pool}}}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	create("pool-b", "pods-b", 32, "b")
	create("missing", "nope", 32, "m")
	create("too-small", "tiny", 110, "t")
	e.createRange("cidr-on-gce", "10.99.0.0/16", 24, 0, 0, map[string]string{"pool": "c"})
	pr := e.waitRange("pool-b", "Ready", ready)
	if pr.Status.CIDR != "10.80.0.0/20" || pr.Status.MaskSize != 26 || pr.Status.BlocksTotal != 64 {
		t.Errorf("pool-b status %+v", pr.Status)
	}
	for name, want := range map[string]struct{ reason, msg string }{
		"missing":     {v1alpha1.ReasonSecondaryRangeNotFound, `subnetwork nodes has no secondary range "nope"`},
		"too-small":   {v1alpha1.ReasonBlockSizeDoesNotFit, "/24 blocks in 10.90.0.0/28"},
		"cidr-on-gce": {v1alpha1.ReasonUnsupported, "a cidr range needs the fake cloud"},
	} {
		pr := e.waitRange(name, "reported "+want.reason, func(pr *v1alpha1.PodRange) bool {
			return condition(pr, v1alpha1.ConditionReady).Reason == want.reason
		})
		if c := condition(pr, v1alpha1.ConditionReady); c.Status != metav1.ConditionFalse || !strings.Contains(c.Message, want.msg) {
			t.Errorf("%s: Ready %s %q, want False with %q", name, c.Status, c.Message, want.msg)
		}
	}
	for _, n := range []string{"b-1", "b-2", "t-1", "d-1"} {
		s.AddInstance(gceZone, n)
	}
	pools := map[string]string{"b-1": "b", "b-2": "b", "t-1": "t"}
	if err := framework.CreateNodes(e.ctx, e.client, []string{"b-1", "b-2", "t-1", "d-1"}, func(n *corev1.Node) {
		n.Spec.ProviderID = fmt.Sprintf("gce://%s/%s/%s", gceProject, gceZone, n.Name)
		if p, ok := pools[n.Name]; ok {
			n.Labels = map[string]string{"pool": p}
		}
	}); err != nil {
		t.Fatal(err)
	}
	podCIDR, label, _ := e.waitAssigned("b-1", "b-2", "d-1")
	nics := s.Aliases()
	for n, want := range map[string]struct {
		rng, secondary string
		within         string
		bits           int
	}{
		"b-1": {"pool-b", "pods-b", "10.80.0.0/20", 26},
		"b-2": {"pool-b", "pods-b", "10.80.0.0/20", 26},
		"d-1": {"default", "pods", "10.64.0.0/16", 24},
	} {
		p := netip.MustParsePrefix(podCIDR[n])
		if label[n] != want.rng || p.Bits() != want.bits || !netip.MustParsePrefix(want.within).Contains(p.Addr()) {
			t.Errorf("node %s: %v from %q, want a /%d of %s from %s", n, p, label[n], want.bits, want.within, want.rng)
		}
		if a := nics[n]; len(a) != 1 || a[0].IpCidrRange != p.String() || a[0].SubnetworkRangeName != want.secondary {
			t.Errorf("node %s: NIC aliases %+v, want %v from %s", n, a, p, want.secondary)
		}
	}
	e.waitEvent("t-1", corev1.EventTypeWarning, controller.EventCIDRNotAvailable, 30*time.Second)
	if podCIDR, _, _ := e.nodesState(); podCIDR["t-1"] != "" || len(s.Aliases()["t-1"]) != 0 {
		t.Errorf("t-1, selected only by a range that does not fit, got %q", podCIDR["t-1"])
	}

	// A range in use is resolved once: its status follows new nodes
	// without reading the subnetwork again.
	e.waitRange("pool-b", "counting 2", func(pr *v1alpha1.PodRange) bool { return pr.Status.BlocksUsed == 2 })
	reads := s.Count("subnetworks.get")
	s.AddInstance(gceZone, "b-3")
	if err := framework.CreateNodes(e.ctx, e.client, []string{"b-3"}, func(n *corev1.Node) {
		n.Spec.ProviderID = fmt.Sprintf("gce://%s/%s/%s", gceProject, gceZone, n.Name)
		n.Labels = map[string]string{"pool": "b"}
	}); err != nil {
		t.Fatal(err)
	}
	e.waitRange("pool-b", "counting 3", func(pr *v1alpha1.PodRange) bool { return pr.Status.BlocksUsed == 3 })
	if got := s.Count("subnetworks.get"); got != reads {
		t.Errorf("subnetworks.get went from %d to %d while pool-b's status followed a new node", reads, got)
	}
}

// Nodes in sync (podCIDR set, the alias on the NIC equal) whose
// aliasip.io/pod-range label is missing — they got their block before the
// label existed — or names another range get the label of the range that
// holds their podCIDR, in one patch each; a node labelled right, or not
// in sync, is not written, and later syncs write nothing more.
func TestInSyncNodesLabelled(t *testing.T) {
	e := newRangeEnv(t, "10.160.0.0/16")
	e.createRange("legacy", "10.161.0.0/24", 28, 0, 0, map[string]string{"pool": "l"})
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	nodes := map[string]struct {
		podCIDR, alias, rangeName string
		labels                    map[string]string
	}{
		"old-default": {"10.160.3.0/24", "10.160.3.0/24", "pods", nil},
		"old-legacy":  {"10.161.0.16/28", "10.161.0.16/28", "podrange-legacy", map[string]string{"pool": "l"}},
		"wrong":       {"10.160.4.0/24", "10.160.4.0/24", "pods", map[string]string{v1alpha1.NodeLabel: "legacy"}},
		"right":       {"10.160.5.0/24", "10.160.5.0/24", "pods", map[string]string{v1alpha1.NodeLabel: "default"}},
		"mismatch":    {"10.160.6.0/24", "10.160.7.0/24", "pods", nil},
	}
	var names []string
	for n, s := range nodes {
		names = append(names, n)
		must(e.cloud.RegisterInstance(n))
		must(e.cloud.AddAlias(e.ctx, cloud.InstanceRef{Name: n}, cloud.AliasRange{CIDR: netip.MustParsePrefix(s.alias), RangeName: s.rangeName}))
	}
	must(framework.CreateNodes(e.ctx, e.client, names, func(n *corev1.Node) {
		s := nodes[n.Name]
		n.Spec.PodCIDR, n.Spec.PodCIDRs, n.Labels = s.podCIDR, []string{s.podCIDR}, s.labels
	}))
	rv := map[string]string{}
	for _, n := range []string{"right", "mismatch"} {
		node, err := e.client.CoreV1().Nodes().Get(e.ctx, n, metav1.GetOptions{})
		must(err)
		rv[n] = node.ResourceVersion
	}
	c := e.startController("controller", "--resync-period", "1s")

	want := map[string]string{"old-default": "default", "old-legacy": "legacy", "wrong": "default", "right": "default", "mismatch": ""}
	var label map[string]string
	if err := framework.Eventually(e.ctx, 30*time.Second, func() (bool, error) {
		_, label, _ = e.nodesState()
		for n, l := range want {
			if label[n] != l {
				return false, nil
			}
		}
		return true, nil
	}); err != nil {
		t.Fatalf("labels %v, want %v: %v", label, want, err)
	}
	e.waitEvent("mismatch", corev1.EventTypeWarning, controller.EventCIDRMismatch, 30*time.Second)
	// Every node is synced again (the resync is 1 s) a few times over:
	// nothing more is written.
	syncs := func() float64 {
		v, _ := c.metric("aliasip_node_sync_duration_seconds_count", `result="ok"`)
		return v
	}
	from := syncs()
	if err := framework.Eventually(e.ctx, 30*time.Second, func() (bool, error) {
		return syncs() >= from+3*float64(len(nodes)), nil
	}); err != nil {
		t.Fatalf("nodes not synced again: %v", err)
	}
	if v, ok := c.metric("aliasip_node_writes_total", ""); !ok || v != 3 {
		t.Errorf("aliasip_node_writes_total = %v (%v), want 3: one label patch for each of old-default, old-legacy, wrong", v, ok)
	}
	for n, was := range rv {
		node, err := e.client.CoreV1().Nodes().Get(e.ctx, n, metav1.GetOptions{})
		must(err)
		if node.ResourceVersion != was {
			t.Errorf("node %s was written (resourceVersion %s → %s): labels %v", n, was, node.ResourceVersion, node.Labels)
		}
	}
	// The labels were added to the ones the nodes had.
	node, err := e.client.CoreV1().Nodes().Get(e.ctx, "old-legacy", metav1.GetOptions{})
	must(err)
	if node.Labels["pool"] != "l" {
		t.Errorf("old-legacy lost its label pool=l: %v", node.Labels)
	}
	if podCIDR, _, _ := e.nodesState(); podCIDR["old-legacy"] != "10.161.0.16/28" || podCIDR["wrong"] != "10.160.4.0/24" {
		t.Errorf("podCIDRs changed: %v", podCIDR)
	}
}
