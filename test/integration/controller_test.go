package integration

import (
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/aliasip/aliasip/cloud"
	"github.com/aliasip/aliasip/controller"
	"github.com/aliasip/aliasip/test/framework"
)

// 1. 300 Nodes created at once: every one gets a podCIDR inside the range, no
// two overlap, and the cloud holds exactly the matching alias on each.
func TestThreeHundredNodesAtOnce(t *testing.T) {
	e := newEnv(t, "10.128.0.0/14")
	c := e.startController("controller", "--cloud-qps", "500", "--cloud-burst", "500")
	if err := framework.CreateNodes(e.ctx, e.client, framework.NodeNames("n", 300), nil); err != nil {
		t.Fatal(err)
	}
	s := e.waitConverged(2 * time.Minute)
	if len(s.PodCIDR) != 300 {
		t.Fatalf("%d nodes, want 300", len(s.PodCIDR))
	}
	s.CheckInvariants(t, e.cluster, true)
	for n, cidr := range s.PodCIDR {
		if p := netip.MustParsePrefix(cidr); p.Bits() != 24 {
			t.Errorf("node %s: podCIDR %v is not a /24", n, p)
		}
	}
	// podCIDRs mirrors podCIDR.
	node, err := e.client.CoreV1().Nodes().Get(e.ctx, "n-0042", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(node.Spec.PodCIDRs) != 1 || node.Spec.PodCIDRs[0] != node.Spec.PodCIDR {
		t.Errorf("podCIDRs %v, podCIDR %q", node.Spec.PodCIDRs, node.Spec.PodCIDR)
	}
	e.waitEvent("n-0042", corev1.EventTypeNormal, controller.EventCIDRAssigned, 30*time.Second)
	if v, ok := c.metric("aliasip_pool_blocks", `state="used"`); !ok || v != 300 {
		t.Errorf("aliasip_pool_blocks{state=used} = %v (found %v), want 300", v, ok)
	}
	if v, ok := c.metric("aliasip_node_writes_total", ""); !ok || v != 300 {
		t.Errorf("aliasip_node_writes_total = %v, want exactly one write per node (300)", v)
	}
	if c.get("/healthz") != 200 || c.get("/readyz") != 200 {
		t.Error("health endpoints not OK")
	}
}

// 2. SIGKILL while allocations are in flight, then restart: no overlap, no
// node without a podCIDR, no alias without its node.
func TestKilledMidFlightAndRestarted(t *testing.T) {
	e := newEnv(t, "10.64.0.0/14")
	c := e.startController("controller-1", "--fake-latency", "30ms", "--leader-elect=false")
	if err := framework.CreateNodes(e.ctx, e.client, framework.NodeNames("k", 300), nil); err != nil {
		t.Fatal(err)
	}
	// Kill once some, but not all, nodes are through.
	err := framework.Eventually(e.ctx, time.Minute, func() (bool, error) {
		s := e.snapshot()
		done := 0
		for _, c := range s.PodCIDR {
			if c != "" {
				done++
			}
		}
		return done >= 60, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	c.Kill()
	mid := e.snapshot()
	if mid.Converged() {
		t.Fatal("all nodes done before the kill; the test did not catch allocations in flight")
	}
	mid.CheckInvariants(t, e.cluster, false)

	e.startController("controller-2", "--leader-elect=false")
	s := e.waitConverged(2 * time.Minute)
	s.CheckInvariants(t, e.cluster, true)
	if len(s.PodCIDR) != 300 {
		t.Fatalf("%d nodes, want 300", len(s.PodCIDR))
	}
}

// 3. The state table's repair, adopt and mismatch rows.
func TestStateTable(t *testing.T) {
	e := newEnv(t, "10.32.0.0/16")
	for _, n := range []string{"repair", "adopt", "mismatch", "insync"} {
		if err := e.cloud.RegisterInstance(n); err != nil {
			t.Fatal(err)
		}
	}
	ctx := e.ctx
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(e.cloud.AddAlias(ctx, cloud.InstanceRef{Name: "adopt"}, cloud.AliasRange{CIDR: netip.MustParsePrefix("10.32.7.0/24"), RangeName: "pods"}))
	must(e.cloud.AddAlias(ctx, cloud.InstanceRef{Name: "mismatch"}, cloud.AliasRange{CIDR: netip.MustParsePrefix("10.32.10.0/24"), RangeName: "pods"}))
	must(e.cloud.AddAlias(ctx, cloud.InstanceRef{Name: "insync"}, cloud.AliasRange{CIDR: netip.MustParsePrefix("10.32.11.0/24"), RangeName: "pods"}))
	podCIDRs := map[string]string{"repair": "10.32.5.0/24", "mismatch": "10.32.9.0/24", "insync": "10.32.11.0/24"}
	must(framework.CreateNodes(ctx, e.client, []string{"repair", "adopt", "mismatch", "insync", "fresh"}, func(n *corev1.Node) {
		if c, ok := podCIDRs[n.Name]; ok {
			n.Spec.PodCIDR, n.Spec.PodCIDRs = c, []string{c}
		}
	}))
	e.startController("controller")

	e.waitEvent("mismatch", corev1.EventTypeWarning, controller.EventCIDRMismatch, 30*time.Second)
	err := framework.Eventually(ctx, 30*time.Second, func() (bool, error) {
		s := e.snapshot()
		return s.PodCIDR["adopt"] == "10.32.7.0/24" && len(s.Aliases["repair"]) == 1 && s.PodCIDR["fresh"] != "", nil
	})
	if err != nil {
		t.Fatalf("%v: %+v", err, e.snapshot())
	}
	s := e.snapshot()
	if got := s.Aliases["repair"]; len(got) != 1 || got[0].String() != "10.32.5.0/24" {
		t.Errorf("repair: aliases %v, want [10.32.5.0/24]", got)
	}
	// The mismatch is left untouched on both sides.
	if s.PodCIDR["mismatch"] != "10.32.9.0/24" || len(s.Aliases["mismatch"]) != 1 || s.Aliases["mismatch"][0].String() != "10.32.10.0/24" {
		t.Errorf("mismatch was touched: podCIDR %q aliases %v", s.PodCIDR["mismatch"], s.Aliases["mismatch"])
	}
	if s.PodCIDR["insync"] != "10.32.11.0/24" || len(s.Aliases["insync"]) != 1 {
		t.Errorf("insync changed: %q %v", s.PodCIDR["insync"], s.Aliases["insync"])
	}
	// The fresh node never gets a block that is in use anywhere.
	for _, used := range []string{"10.32.5.0/24", "10.32.7.0/24", "10.32.9.0/24", "10.32.10.0/24", "10.32.11.0/24"} {
		if s.PodCIDR["fresh"] == used {
			t.Errorf("fresh node got %s, which was already in use", used)
		}
	}
	e.waitEvent("adopt", corev1.EventTypeNormal, controller.EventCIDRAssigned, 10*time.Second)
	e.waitEvent("repair", corev1.EventTypeNormal, controller.EventCIDRAssigned, 10*time.Second)
}

// 4. Node deleted: its alias is removed, and the block is handed out again
// only after the cooldown.
func TestNodeDeletedReleasesAfterCooldown(t *testing.T) {
	e := newEnv(t, "10.40.0.0/23") // two /24 blocks
	const cooldown = 4 * time.Second
	e.startController("controller", "--release-cooldown", cooldown.String())
	if err := framework.CreateNodes(e.ctx, e.client, []string{"a", "b"}, nil); err != nil {
		t.Fatal(err)
	}
	s := e.waitConverged(30 * time.Second)
	freed := s.PodCIDR["a"]
	if err := e.client.CoreV1().Nodes().Delete(e.ctx, "a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	deleted := time.Now()
	// The alias goes at once.
	if err := framework.Eventually(e.ctx, 10*time.Second, func() (bool, error) {
		return len(e.snapshot().Aliases["a"]) == 0, nil
	}); err != nil {
		t.Fatalf("alias of deleted node a not removed: %v", err)
	}
	if time.Since(deleted) > cooldown {
		t.Fatalf("alias removal took longer than the cooldown; the test cannot tell the two apart")
	}
	e.waitEvent("a", corev1.EventTypeNormal, controller.EventAliasReleased, 10*time.Second)
	if err := framework.CreateNodes(e.ctx, e.client, []string{"c"}, nil); err != nil {
		t.Fatal(err)
	}
	e.expectReuseAfterCooldown("c", freed, deleted, cooldown)
	e.waitConverged(10*time.Second).CheckInvariants(t, e.cluster, true)
}

// 5. Range exhausted: CIDRNotAvailable on the nodes that got nothing, the
// others keep working, the controller stays up; freeing a block lets a
// waiting node proceed.
func TestRangeExhausted(t *testing.T) {
	e := newEnv(t, "10.50.0.0/23") // two /24 blocks
	c := e.startController("controller", "--release-cooldown", "0s")
	names := []string{"x1", "x2", "x3", "x4"}
	if err := framework.CreateNodes(e.ctx, e.client, names, nil); err != nil {
		t.Fatal(err)
	}
	var s *framework.Snapshot
	if err := framework.Eventually(e.ctx, 30*time.Second, func() (bool, error) {
		s = e.snapshot()
		n := 0
		for _, c := range s.PodCIDR {
			if c != "" {
				n++
			}
		}
		return n == 2, nil
	}); err != nil {
		t.Fatal(err)
	}
	var have, waiting []string
	for _, n := range names {
		if s.PodCIDR[n] != "" {
			have = append(have, n)
		} else {
			waiting = append(waiting, n)
		}
	}
	for _, n := range waiting {
		e.waitEvent(n, corev1.EventTypeWarning, controller.EventCIDRNotAvailable, 30*time.Second)
	}
	if v, _ := c.metric("aliasip_allocations_total", `result="exhausted"`); v < 2 {
		t.Errorf("aliasip_allocations_total{result=exhausted} = %v, want >= 2", v)
	}
	if c.Exited() || c.get("/healthz") != 200 {
		t.Fatal("controller not healthy with an exhausted range")
	}
	s.CheckInvariants(t, e.cluster, false)
	if err := e.client.CoreV1().Nodes().Delete(e.ctx, have[0], metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := framework.Eventually(e.ctx, 30*time.Second, func() (bool, error) {
		s = e.snapshot()
		return s.PodCIDR[waiting[0]] != "" || s.PodCIDR[waiting[1]] != "", nil
	}); err != nil {
		t.Fatalf("no waiting node proceeded after a block was freed: %v", err)
	}
	s.CheckInvariants(t, e.cluster, false)
}

// 6. Two controllers with leader election: one allocates; kill it, the other
// takes over; no duplicate anywhere.
func TestLeaderElectionFailover(t *testing.T) {
	e := newEnv(t, "10.60.0.0/14")
	a := e.startController("controller-a", "--fake-latency", "20ms")
	b := e.startController("controller-b", "--fake-latency", "20ms")
	leader, standby := e.waitSingleLeader(a, b)
	if err := framework.CreateNodes(e.ctx, e.client, framework.NodeNames("le", 200), nil); err != nil {
		t.Fatal(err)
	}
	if err := framework.Eventually(e.ctx, time.Minute, func() (bool, error) {
		n := 0
		for _, c := range e.snapshot().PodCIDR {
			if c != "" {
				n++
			}
		}
		return n >= 40, nil
	}); err != nil {
		t.Fatal(err)
	}
	if v, _ := standby.metric("aliasip_node_writes_total", ""); v != 0 {
		t.Errorf("standby wrote %v nodes while not leading", v)
	}
	leader.Kill()
	s := e.waitConverged(2 * time.Minute)
	s.CheckInvariants(t, e.cluster, true)
	if v, _ := standby.metric("aliasip_leader", ""); v != 1 {
		t.Errorf("standby did not become leader")
	}
	if v, _ := standby.metric("aliasip_node_writes_total", ""); v == 0 {
		t.Errorf("new leader made no writes; the old one finished before the kill")
	}
}

// 7. A node naming an unknown instance and a node with a foreign podCIDR: a
// Warning each, nothing else disturbed.
func TestForeignNodes(t *testing.T) {
	e := newEnv(t, "10.70.0.0/16")
	c := e.startController("controller")
	if err := framework.CreateNodes(e.ctx, e.client, []string{"ghost", "foreign", "ok-1", "ok-2"}, func(n *corev1.Node) {
		switch n.Name {
		case "ghost":
			n.Spec.ProviderID = "gce://p/z/no-such-instance" // not a scheme the fake owns
		case "foreign":
			n.Spec.PodCIDR, n.Spec.PodCIDRs = "192.168.77.0/24", []string{"192.168.77.0/24"}
		}
	}); err != nil {
		t.Fatal(err)
	}
	e.waitEvent("ghost", corev1.EventTypeWarning, controller.EventInstanceNotFound, 30*time.Second)
	e.waitEvent("foreign", corev1.EventTypeWarning, controller.EventCIDROutOfRange, 30*time.Second)
	if err := framework.Eventually(e.ctx, 30*time.Second, func() (bool, error) {
		s := e.snapshot()
		return s.PodCIDR["ok-1"] != "" && s.PodCIDR["ok-2"] != "" && len(s.Aliases["ok-1"]) == 1 && len(s.Aliases["ok-2"]) == 1, nil
	}); err != nil {
		t.Fatal(err)
	}
	s := e.snapshot()
	if s.PodCIDR["ghost"] != "" {
		t.Errorf("ghost got podCIDR %q", s.PodCIDR["ghost"])
	}
	if s.PodCIDR["foreign"] != "192.168.77.0/24" || len(s.Aliases["foreign"]) != 0 {
		t.Errorf("foreign node disturbed: podCIDR %q aliases %v", s.PodCIDR["foreign"], s.Aliases["foreign"])
	}
	if c.Exited() || c.get("/healthz") != 200 {
		t.Fatal("controller not healthy")
	}
}

// kind's nodes carry providerID kind://docker/<cluster>/<node>: with the
// default --fake-provider-schemes (fake,kind) each is an instance of the fake
// cloud and gets its block; a node of another cloud (aws://) gets a Warning
// naming the schemes the fake owns and no podCIDR. With the flag narrowed to
// fake, a kind node is foreign too.
func TestKindProviderIDs(t *testing.T) {
	for _, tc := range []struct {
		name      string
		flags     []string
		kindNode  string
		awsNode   string
		kindOwned bool
		schemes   string // as the event names them
	}{
		{name: "default schemes", kindNode: "kind-worker", awsNode: "aws-node", kindOwned: true, schemes: "fake,kind"},
		{name: "only fake", flags: []string{"--fake-provider-schemes=fake"}, kindNode: "kind-worker2", awsNode: "aws-node2", schemes: "fake"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, "10.71.0.0/16")
			c := e.startController("controller", tc.flags...)
			if err := framework.CreateNodes(e.ctx, e.client, []string{tc.kindNode, tc.awsNode, "plain"}, func(n *corev1.Node) {
				switch n.Name {
				case tc.kindNode:
					n.Spec.ProviderID = "kind://docker/aliasip/" + n.Name
				case tc.awsNode:
					n.Spec.ProviderID = "aws:///us-east-1a/i-0abc"
				}
			}); err != nil {
				t.Fatal(err)
			}
			foreign := []string{tc.awsNode}
			if !tc.kindOwned {
				foreign = append(foreign, tc.kindNode)
			}
			for _, node := range foreign {
				e.waitEvent(node, corev1.EventTypeWarning, controller.EventInstanceNotFound, 30*time.Second)
				evs, err := framework.Events(e.ctx, e.client, node)
				if err != nil {
					t.Fatal(err)
				}
				for _, ev := range evs {
					if ev.Reason == controller.EventInstanceNotFound && !strings.Contains(ev.Message, "--fake-provider-schemes="+tc.schemes+",") {
						t.Errorf("%s: event %q does not name the accepted schemes %s", node, ev.Message, tc.schemes)
					}
				}
			}
			owned := []string{"plain"} // no providerID: always the fake's
			if tc.kindOwned {
				owned = append(owned, tc.kindNode)
			}
			if err := framework.Eventually(e.ctx, 30*time.Second, func() (bool, error) {
				s := e.snapshot()
				for _, n := range owned {
					if s.PodCIDR[n] == "" || len(s.Aliases[n]) != 1 || s.Aliases[n][0].String() != s.PodCIDR[n] {
						return false, nil
					}
				}
				return true, nil
			}); err != nil {
				t.Fatalf("%v: no podCIDR with matching alias: %v; snapshot %+v", owned, err, e.snapshot())
			}
			s := e.snapshot()
			for _, n := range foreign {
				if s.PodCIDR[n] != "" {
					t.Errorf("%s got podCIDR %s", n, s.PodCIDR[n])
				}
			}
			insts, err := e.cloud.ListInstances(e.ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, in := range insts {
				if in.Ref.Name == "i-0abc" || (!tc.kindOwned && in.Ref.Name == tc.kindNode) {
					t.Errorf("the fake cloud created instance %s for a foreign node", in.Ref.Name)
				}
			}
			if c.Exited() {
				t.Fatal("controller exited")
			}
		})
	}
}

// Leaked aliases (from the pod range, on instances with no Node) are removed
// after the grace period.
func TestLeakedAliasCollected(t *testing.T) {
	e := newEnv(t, "10.80.0.0/16")
	if err := e.cloud.RegisterInstance("orphan"); err != nil {
		t.Fatal(err)
	}
	if err := e.cloud.AddAlias(e.ctx, cloud.InstanceRef{Name: "orphan"}, cloud.AliasRange{CIDR: netip.MustParsePrefix("10.80.3.0/24"), RangeName: "pods"}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	e.startController("controller", "--leak-grace-period", "3s")
	if err := framework.Eventually(e.ctx, 30*time.Second, func() (bool, error) {
		return len(e.snapshot().Aliases["orphan"]) == 0, nil
	}); err != nil {
		t.Fatalf("leaked alias not collected: %v", err)
	}
	if d := time.Since(start); d < 3*time.Second {
		t.Errorf("leaked alias removed after %v, before the 3s grace period", d)
	}
}

// Bad flags: one clear line on stderr, exit code 2.
func TestBadFlags(t *testing.T) {
	if setupErr != nil && controllerBin == "" {
		t.Skip(setupErr)
	}
	for _, args := range [][]string{
		{"--cloud=fake"},
		{"--cloud=aws"},
		{"--cloud=fake", "--cluster-cidr=10.0.0.1/8"},
		{"--cloud=fake", "--cluster-cidr=10.0.0.0/16", "--node-cidr-mask-size=8"},
		{"--cloud=fake", "--cluster-cidr=10.0.0.0/16", "--workers=0"},
		{"--cloud=fake", "--cluster-cidr=10.0.0.0/16", "--fake-provider-schemes=kind://"},
		{"--no-such-flag"},
	} {
		cmd := exec.Command(controllerBin, args...)
		out, err := cmd.CombinedOutput()
		ee, ok := err.(*exec.ExitError)
		if !ok || ee.ExitCode() != 2 {
			t.Errorf("%v: exit %v, want 2", args, err)
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if len(lines) != 1 || !strings.HasPrefix(lines[0], "aliasip-controller: ") {
			t.Errorf("%v: want one line starting with the program name, got %q", args, out)
		}
	}
}

// The cooldown survives a controller restart: a block freed just before a
// SIGKILL is not handed out by the next controller before its time.
func TestCooldownSurvivesRestart(t *testing.T) {
	e := newEnv(t, "10.41.0.0/23") // two /24 blocks
	const cooldown = 8 * time.Second
	c := e.startController("controller-1", "--release-cooldown", cooldown.String(), "--leader-elect=false")
	if err := framework.CreateNodes(e.ctx, e.client, []string{"a", "b"}, nil); err != nil {
		t.Fatal(err)
	}
	freed := e.waitConverged(30 * time.Second).PodCIDR["a"]
	if err := e.client.CoreV1().Nodes().Delete(e.ctx, "a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	deleted := time.Now()
	if err := framework.Eventually(e.ctx, 10*time.Second, func() (bool, error) {
		return len(e.snapshot().Aliases["a"]) == 0, nil
	}); err != nil {
		t.Fatal(err)
	}
	// Let the cooling set be written, then crash.
	if err := framework.Eventually(e.ctx, 5*time.Second, func() (bool, error) {
		cm, err := e.client.CoreV1().ConfigMaps("kube-system").Get(e.ctx, "aliasip-testcooldownsurvivesrestart-cooling", metav1.GetOptions{})
		return err == nil && strings.Contains(cm.Data["cooling.json"], freed), nil
	}); err != nil {
		t.Fatalf("cooling set not persisted: %v", err)
	}
	c.Kill()
	e.startController("controller-2", "--release-cooldown", cooldown.String(), "--leader-elect=false")
	if err := framework.CreateNodes(e.ctx, e.client, []string{"c"}, nil); err != nil {
		t.Fatal(err)
	}
	e.expectReuseAfterCooldown("c", freed, deleted, cooldown)
}

// expectReuseAfterCooldown waits for node to get a podCIDR and checks it is
// the freed block (the only one left), handed out no sooner than cooldown
// after the old node's deletion.
func (e *env) expectReuseAfterCooldown(node, freed string, deleted time.Time, cooldown time.Duration) {
	e.t.Helper()
	var got string
	if err := framework.Eventually(e.ctx, 30*time.Second, func() (bool, error) {
		got = e.snapshot().PodCIDR[node]
		return got != "", nil
	}); err != nil {
		e.t.Fatalf("node %s never got the freed block: %v", node, err)
	}
	if waited := time.Since(deleted); waited < cooldown {
		e.t.Errorf("block %s reused %v after the delete, before the %v cooldown", got, waited, cooldown)
	}
	if got != freed {
		e.t.Errorf("node %s got %s, want the freed %s (the only block)", node, got, freed)
	}
}

// TestDefaultRangeExhaustionEvents: the flags' range has no PodRange to
// carry a condition, so crossing 80 % and 100 % used records Warning
// events on its state object, the cooling ConfigMap — once per crossing,
// not once a second.
func TestDefaultRangeExhaustionEvents(t *testing.T) {
	e := newEnv(t, "10.42.0.0/21") // eight /24 blocks
	c := e.startController("controller-1", "--leader-elect=false")
	// morePasses waits until the alert loop ran n more passes.
	morePasses := func(n float64) {
		t.Helper()
		start, _ := c.metric("aliasip_default_range_alert_passes_total", "")
		if err := framework.Eventually(e.ctx, 15*time.Second, func() (bool, error) {
			v, _ := c.metric("aliasip_default_range_alert_passes_total", "")
			return v >= start+n, nil
		}); err != nil {
			t.Fatalf("the alert loop did not run %v more passes: %v", n, err)
		}
	}
	cm := "aliasip-testdefaultrangeexhaustionevents-cooling"
	events := func(reason string) int {
		evs, err := e.client.CoreV1().Events("kube-system").List(e.ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + cm + ",reason=" + reason})
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, ev := range evs.Items {
			if ev.Type == "Warning" && strings.Contains(ev.Message, "range default (10.42.0.0/21") {
				n += int(max(ev.Count, 1))
			}
		}
		return n
	}
	var six []string
	for i := 0; i < 6; i++ {
		six = append(six, fmt.Sprintf("n%d", i))
	}
	if err := framework.CreateNodes(e.ctx, e.client, six, nil); err != nil {
		t.Fatal(err)
	}
	e.waitConverged(30 * time.Second)
	morePasses(2) // two alert passes at 75 %
	if n := events("PodRangeNearlyExhausted") + events("PodRangeExhausted"); n != 0 {
		t.Fatalf("%d exhaustion events at 6 of 8 blocks", n)
	}
	if err := framework.CreateNodes(e.ctx, e.client, []string{"n6"}, nil); err != nil {
		t.Fatal(err)
	}
	if err := framework.Eventually(e.ctx, 15*time.Second, func() (bool, error) { return events("PodRangeNearlyExhausted") == 1, nil }); err != nil {
		t.Fatalf("no PodRangeNearlyExhausted event at 7 of 8 blocks: %v", err)
	}
	if err := framework.CreateNodes(e.ctx, e.client, []string{"n7"}, nil); err != nil {
		t.Fatal(err)
	}
	if err := framework.Eventually(e.ctx, 15*time.Second, func() (bool, error) { return events("PodRangeExhausted") == 1, nil }); err != nil {
		t.Fatalf("no PodRangeExhausted event at 8 of 8 blocks: %v", err)
	}
	morePasses(3) // more passes at the same level
	if a, b := events("PodRangeNearlyExhausted"), events("PodRangeExhausted"); a != 1 || b != 1 {
		t.Fatalf("events repeated: %d nearly exhausted, %d exhausted; want one each", a, b)
	}
}
