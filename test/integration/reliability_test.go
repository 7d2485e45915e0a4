package integration

// The defects of issue 21, each shown against the real binary, a real
// kube-apiserver (Node authorizer and NodeRestriction on) and, where the
// cloud matters, the GCE test server through the real compute client.

import (
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	compute "google.golang.org/api/compute/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/aliasip/aliasip/cloud/gce/gcetest"
	"github.com/aliasip/aliasip/controller"
	"github.com/aliasip/aliasip/controller/apis/aliasip/v1alpha1"
	"github.com/aliasip/aliasip/test/framework"
)

// A kubelet may create its own Node with any spec.podCIDR: NodeRestriction
// limits a node to its own object and some labels, not the podCIDR it
// registers with (kubernetes plugin/pkg/admission/noderestriction
// admission.go, admitNode). A prefix of another size inside the range is
// foreign: it is never marked used, so it locks nothing, and never freed,
// so its deletion frees no other node's block — across a restart too.
func TestNodeCredentialsCannotLockOrDoubleBlocks(t *testing.T) {
	e := newEnv(t, "10.42.0.0/22") // four /24 blocks
	args := []string{"--leader-elect=false", "--release-cooldown", "1s"}
	c := e.startController("controller-1", args...)
	if err := framework.CreateNodes(e.ctx, e.client, []string{"live"}, nil); err != nil {
		t.Fatal(err)
	}
	liveBlock := e.waitConverged(30 * time.Second).PodCIDR["live"]
	half := netip.PrefixFrom(netip.MustParsePrefix(liveBlock).Addr(), 25).String()
	for name, podCIDR := range map[string]string{"evil-wide": "10.42.0.0/22", "evil-half": half} {
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: corev1.NodeSpec{PodCIDR: podCIDR, PodCIDRs: []string{podCIDR}, ProviderID: "fake://" + name}}
		if _, err := cp.AsNode(name).CoreV1().Nodes().Create(e.ctx, n, metav1.CreateOptions{}); err != nil {
			t.Fatalf("kubelet credentials of %s could not create their Node with podCIDR %s: %v", name, podCIDR, err)
		}
		e.waitEvent(name, corev1.EventTypeWarning, controller.EventCIDRWrongSize, 30*time.Second)
	}
	// The three other blocks are still free: three nodes get them.
	if err := framework.CreateNodes(e.ctx, e.client, []string{"n-1", "n-2", "n-3"}, nil); err != nil {
		t.Fatal(err)
	}
	waitPodCIDRs(t, e, "live", "n-1", "n-2", "n-3")

	old3 := e.snapshot().PodCIDR["n-3"]

	// Restart: the rebuild sees the same Nodes, and every block is a live
	// node's.
	c.Kill()
	c = e.startController("controller-2", args...)
	waitMetric(t, e, c, "aliasip_pool_blocks", `range="default",state="free"`, 0)
	// The kubelet-made Nodes go, and one real node: only its block comes
	// back, after its cooldown.
	for _, n := range []string{"evil-wide", "evil-half", "n-3"} {
		if err := e.client.CoreV1().Nodes().Delete(e.ctx, n, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	waitMetric(t, e, c, "aliasip_releases_total", "", 1)
	if err := framework.CreateNodes(e.ctx, e.client, []string{"late-1"}, nil); err != nil {
		t.Fatal(err)
	}
	waitPodCIDRs(t, e, "late-1")
	if err := framework.CreateNodes(e.ctx, e.client, []string{"late-2"}, nil); err != nil {
		t.Fatal(err)
	}
	e.waitEvent("late-2", corev1.EventTypeWarning, controller.EventCIDRNotAvailable, 30*time.Second)
	s := e.snapshot()
	if s.PodCIDR["late-1"] != old3 {
		t.Errorf("late-1 got %s, want %s, the only block freed (n-3's)", s.PodCIDR["late-1"], old3)
	}
	if s.PodCIDR["late-2"] != "" {
		t.Errorf("late-2 got %s while every block is held by a live node", s.PodCIDR["late-2"])
	}
	seen := map[string]string{}
	for _, n := range []string{"live", "n-1", "n-2", "late-1", "late-2"} {
		if p := s.PodCIDR[n]; p != "" {
			if other, dup := seen[p]; dup {
				t.Errorf("%s is the podCIDR of %s and %s", p, other, n)
			}
			seen[p] = n
		}
	}
	if s.PodCIDR["live"] != liveBlock {
		t.Errorf("live's podCIDR changed from %s to %s", liveBlock, s.PodCIDR["live"])
	}
	if v, _ := c.metric("aliasip_releases_total", ""); v != 1 {
		t.Errorf("%v blocks returned to the pool, want 1 (n-3's)", v)
	}
}

// waitPodCIDRs waits until each node has a podCIDR and its alias.
func waitPodCIDRs(t *testing.T, e *env, names ...string) {
	t.Helper()
	if err := framework.Eventually(e.ctx, 30*time.Second, func() (bool, error) {
		s := e.snapshot()
		for _, n := range names {
			if s.PodCIDR[n] == "" || len(s.Aliases[n]) != 1 {
				return false, nil
			}
		}
		return true, nil
	}); err != nil {
		t.Fatalf("%v never all assigned: %v; %v", names, err, e.snapshot().Pending())
	}
}

// waitMetric waits until the controller reports the metric with the value.
func waitMetric(t *testing.T, e *env, c *ctrlProc, name, labels string, want float64) {
	t.Helper()
	var got float64
	var ok bool
	if err := framework.Eventually(e.ctx, 30*time.Second, func() (bool, error) {
		got, ok = c.metric(name, labels)
		return ok && got == want, nil
	}); err != nil {
		t.Fatalf("%s{%s} = %v (reported %v), want %v", name, labels, got, ok, want)
	}
}

// The restart race (issue 21, defect 0), with exactly its timing: an alias
// operation a killed process started on node b's NIC finishes after the
// new process rebuilt its state, while the new process has reserved that
// same block for node a and a's write is in flight. b sees the alias on
// its NIC and adopts it once a's write fails on it; a gets another block.
// Before the fix b was reported (CIDRMismatch) and never queued again:
// an alias without a podCIDR, forever. The collector's drift check is
// kept out of it (--gc-interval 1h) so the claim rule alone is shown.
func TestGCEOperationOfKilledProcessFinishesAfterRebuild(t *testing.T) {
	var (
		mu       sync.Mutex
		reserved = make(chan string, 1) // the block a's first write asks for
		release  = make(chan struct{})  // lets a's first write through
		aSeen    bool
		bSeen    bool
		srv      *gcetest.Server
	)
	e, s := newGCEEnv(t, "10.18.0.0/20", gcetest.Options{OpDelay: 10 * time.Millisecond,
		BeforeUpdate: func(zone, name string, nic *compute.NetworkInterface) {
			mu.Lock()
			first := false
			switch name {
			case "a":
				first, aSeen = !aSeen, true
			case "b":
				first, bSeen = !bSeen, true
			}
			mu.Unlock()
			if !first {
				return
			}
			switch name {
			case "a": // the new process's write for a: hold it
				for _, r := range nic.AliasIpRanges {
					reserved <- r.IpCidrRange
				}
				<-release
			case "b": // b's own first write: the dead process's operation lands first
				var x string
				select {
				case x = <-reserved:
				case <-release: // the test is over
					return
				}
				reserved <- x
				srv.ApplyAliases(zone, "b", &compute.AliasIpRange{IpCidrRange: x, SubnetworkRangeName: "pods"})
			}
		}})
	srv = s
	var once sync.Once
	letGo := func() { once.Do(func() { close(release) }) }
	t.Cleanup(letGo) // before the server closes: no handler stays blocked
	gceNodes(t, e, s, []string{"a", "b"})
	e.startController("controller", "--leader-elect=false", "--workers", "2", "--gc-interval", "1h")
	// b adopts the alias of the dead operation only once a's reservation
	// settles: it is told to wait (CIDRPending), not reported.
	e.waitEvent("b", corev1.EventTypeNormal, controller.EventCIDRPending, 30*time.Second)
	letGo()
	if err := framework.Eventually(e.ctx, 30*time.Second, func() (bool, error) {
		snap := e.snapshot()
		return snap.Converged() && snap.PodCIDR["a"] != "" && snap.PodCIDR["b"] != "", nil
	}); err != nil {
		snap := e.snapshot()
		evs, _ := framework.Events(e.ctx, e.client, "b")
		var got []string
		for _, ev := range evs {
			got = append(got, ev.Reason+": "+ev.Message)
		}
		t.Fatalf("not converged: %v; podCIDRs %v, aliases %v, pending %v; b's events %v", err, snap.PodCIDR, srv.Aliases(), snap.Pending(), got)
	}
	snap := e.snapshot()
	snap.CheckInvariants(t, e.cluster, true)
	x := <-reserved
	if snap.PodCIDR["b"] != x {
		t.Errorf("b's podCIDR %s, want %s, the alias the dead operation put on its NIC", snap.PodCIDR["b"], x)
	}
	if snap.PodCIDR["a"] == x {
		t.Errorf("a and b both hold %s", x)
	}
}

// One PodRange whose secondary range cannot be read (403 on
// subnetworks.get) at start-up holds back only its own nodes: the rebuild
// goes on, nodes of the default range get blocks, the range's nodes wait,
// and once the subnetwork can be read the range is resolved and they get
// theirs.
func TestGCEUnreadableRangeAtRestartHoldsBackOnlyItsNodes(t *testing.T) {
	ge, s := newGCEEnv(t, "10.20.0.0/16", gcetest.Options{SecondaryRanges: map[string]netip.Prefix{
		"pods-b": netip.MustParsePrefix("10.21.0.0/20"),
	}})
	e := &rangeEnv{env: ge, prs: podRangeClient(t).AliasipV1alpha1().PodRanges()}
	e.deleteAllRanges()
	t.Cleanup(e.deleteAllRanges)
	// The default range is given by flag: reading it needs no call.
	args := []string{"--leader-elect=false", "--cluster-cidr", "10.20.0.0/16"}
	c := e.startController("controller-1", args...)
	if _, err := e.prs.Create(e.ctx, &v1alpha1.PodRange{ObjectMeta: metav1.ObjectMeta{Name: "pool-b"}, Spec: v1alpha1.PodRangeSpec{
		SecondaryRangeName: "pods-b", MaskSize: i32(24),
		NodeSelector: metav1.LabelSelector{MatchLabels: map[string]string{"pool": "b"}}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitRange("pool-b", "Ready", ready)
	c.Kill()
	s.SetFaults(gcetest.Faults{ForbidSubnetworkReads: true})
	e.startController("controller-2", args...)
	for _, n := range []string{"d-1", "b-1"} {
		s.AddInstance(gceZone, n)
	}
	if err := framework.CreateNodes(e.ctx, e.client, []string{"d-1", "b-1"}, func(n *corev1.Node) {
		n.Spec.ProviderID = fmt.Sprintf("gce://%s/%s/%s", gceProject, gceZone, n.Name)
		if n.Name == "b-1" {
			n.Labels = map[string]string{"pool": "b"}
		}
	}); err != nil {
		t.Fatal(err)
	}
	waitPodCIDRs(t, ge, "d-1")
	e.waitEvent("b-1", corev1.EventTypeWarning, controller.EventCIDRNotAvailable, 30*time.Second)
	if p := e.snapshot().PodCIDR["b-1"]; p != "" {
		t.Fatalf("b-1 got %s from another range while its own could not be read", p)
	}
	s.SetFaults(gcetest.Faults{})
	podCIDR, _, _ := e.waitAssigned("b-1")
	if !netip.MustParsePrefix("10.21.0.0/20").Contains(netip.MustParsePrefix(podCIDR["b-1"]).Addr()) {
		t.Errorf("b-1 got %s, want a block of pool-b (10.21.0.0/20)", podCIDR["b-1"])
	}
}

// A PodRange deleted while an instance without a Node still carries one of
// its aliases (the node was deleted while no controller ran) keeps its
// finalizer until the leak collector removed that alias; then it goes.
func TestPodRangeDeletedWaitsForItsLeakedAliases(t *testing.T) {
	e := newRangeEnv(t, "10.150.0.0/16")
	e.createRange("leaky", "10.151.0.0/20", 24, 0, 0, map[string]string{"pool": "l"})
	c := e.startController("controller-1", "--leader-elect=false")
	e.waitRange("leaky", "Ready", ready)
	if err := framework.CreateNodes(e.ctx, e.client, []string{"l-1"}, labelled(map[string]string{"pool": "l"})); err != nil {
		t.Fatal(err)
	}
	e.waitAssigned("l-1")
	c.Kill()
	if err := e.client.CoreV1().Nodes().Delete(e.ctx, "l-1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := e.prs.Delete(e.ctx, "leaky", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	c = e.startController("controller-2", "--leader-elect=false", "--leak-grace-period", "3s")
	// While the alias is on the VM the range stays, saying why.
	pr := e.waitRange("leaky", "waiting for its aliases", func(pr *v1alpha1.PodRange) bool {
		return strings.Contains(condition(pr, v1alpha1.ConditionReady).Message, "still carry aliases")
	})
	if !controllerOwnsFinalizer(pr) {
		t.Fatalf("finalizer gone while l-1's alias is on its VM: %+v", pr.ObjectMeta)
	}
	// The collector removes it, then the range goes.
	if err := framework.Eventually(e.ctx, 60*time.Second, func() (bool, error) {
		_, err := e.prs.Get(e.ctx, "leaky", metav1.GetOptions{})
		return err != nil, nil
	}); err != nil {
		t.Fatalf("PodRange never went: %v", err)
	}
	if a := e.snapshot().Aliases["l-1"]; len(a) != 0 {
		t.Errorf("l-1's VM still carries %v after its range went", a)
	}
	if v, _ := c.metric("aliasip_leaked_aliases_removed_total", ""); v < 1 {
		t.Errorf("leaked aliases removed = %v, want at least 1", v)
	}
}
