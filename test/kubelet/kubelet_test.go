package kubelet

import (
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/aliasip/aliasip/controller"
	"github.com/aliasip/aliasip/node-agent/agent"
	"github.com/aliasip/aliasip/test/framework"
)

// The tests run in this file's order on one cluster; each makes what it
// needs if an earlier one did not (so -run works on one of them).

// TestChartRunning: the chart's controller Deployment and agent DaemonSet
// run under the kubelets, and every Node becomes Ready with the agent's
// NetworkUnavailable=False.
func TestChartRunning(t *testing.T) {
	e, ctx := setup(t, 5*time.Minute)
	eventually(t, ctx, 3*time.Minute, "controller and agents ready", func() (bool, error) {
		d, err := e.Client.AppsV1().Deployments(releaseNS).Get(ctx, "aliasip-controller", metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		ds, err := e.Client.AppsV1().DaemonSets(releaseNS).Get(ctx, "aliasip-agent", metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		return d.Status.ReadyReplicas == *d.Spec.Replicas && ds.Status.NumberReady == int32(len(e.Nodes)) &&
			ds.Status.DesiredNumberScheduled == int32(len(e.Nodes)), nil
	})
	for _, name := range e.Nodes {
		var last string
		eventually(t, ctx, 2*time.Minute, name+" Ready with NetworkUnavailable=False from the agent", func() (bool, error) {
			n, err := e.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return false, nil
			}
			ready, netOK := false, false
			for _, c := range n.Status.Conditions {
				switch c.Type {
				case corev1.NodeReady:
					ready = c.Status == corev1.ConditionTrue
				case corev1.NodeNetworkUnavailable:
					netOK = c.Status == corev1.ConditionFalse && c.Reason == agent.ConditionReason
				}
			}
			last = fmt.Sprintf("ready=%v networkOK=%v podCIDR=%q providerID=%q", ready, netOK, n.Spec.PodCIDR, n.Spec.ProviderID)
			return ready && netOK, nil
		})
		n, _ := e.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if want := "kind://docker/aliasip/" + name; n.Spec.ProviderID != want {
			t.Errorf("%s: providerID %q, want kind's %q", name, n.Spec.ProviderID, want)
		}
		if _, err := netip.ParsePrefix(n.Spec.PodCIDR); err != nil {
			t.Errorf("%s: podCIDR %q: %v (%s)", name, n.Spec.PodCIDR, err, last)
		}
	}
}

// TestPodIPsInNodeCIDRs: a Deployment spread over every node; each pod's
// status.podIP, as the kubelet reports it, is inside its node's podCIDR,
// and no two pods share one.
func TestPodIPsInNodeCIDRs(t *testing.T) {
	e, ctx := setup(t, 5*time.Minute)
	pods := ensureNetcheck(t, ctx, e, int32(2*len(e.Nodes)))
	seen := map[string]string{}
	perNode := map[string]int{}
	for _, p := range pods {
		ip, err := netip.ParseAddr(p.Status.PodIP)
		if err != nil {
			t.Fatalf("pod %s: podIP %q: %v", p.Name, p.Status.PodIP, err)
		}
		cidr := nodeBlocks(t, ctx, e, p.Spec.NodeName)
		if !cidr.Contains(ip) {
			t.Errorf("pod %s on %s has %s, outside the node's blocks %s", p.Name, p.Spec.NodeName, ip, cidr)
		}
		if other, dup := seen[ip.String()]; dup {
			t.Errorf("pods %s and %s share %s", other, p.Name, ip)
		}
		seen[ip.String()] = p.Name
		perNode[p.Spec.NodeName]++
	}
	for _, n := range e.Nodes {
		if perNode[n] == 0 {
			t.Errorf("no netcheck pod on %s (spread: %v)", n, perNode)
		}
	}
	t.Logf("%d pods, per node %v", len(pods), perNode)
}

// TestJobsReachEveryPod: a Job pinned to each node reaches every netcheck
// pod, on its own node and across nodes.
func TestJobsReachEveryPod(t *testing.T) {
	e, ctx := setup(t, 8*time.Minute)
	pods := ensureNetcheck(t, ctx, e, int32(2*len(e.Nodes)))
	urls := podURLs(pods)
	for _, node := range e.Nodes {
		name := "reach-from-" + node
		logs := runJobOn(t, ctx, e, node, name, append([]string{"get"}, urls...)...)
		if got := strings.Count(logs, "OK "); got != len(urls) {
			t.Errorf("job on %s: %d of %d OK:\n%s", node, got, len(urls), logs)
		}
		deleteJob(ctx, e, name)
	}
}

// TestClusterIPService: kube-proxy (iptables mode) in every node's
// namespace load-balances a ClusterIP Service in front of netcheck, and it
// answers pods on every node, from more than one backend.
func TestClusterIPService(t *testing.T) {
	e, ctx := setup(t, 8*time.Minute)
	ensureNetcheck(t, ctx, e, int32(2*len(e.Nodes)))
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: netcheckName, Namespace: testNS},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": netcheckName},
			Ports:    []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}},
		},
	}
	created, err := e.Client.CoreV1().Services(testNS).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		created, err = e.Client.CoreV1().Services(testNS).Get(ctx, netcheckName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
	}
	url := fmt.Sprintf("http://%s/", created.Spec.ClusterIP)
	var urls []string
	for range 12 {
		urls = append(urls, url)
	}
	for _, node := range e.Nodes {
		name := "svc-from-" + node
		logs := runJobOn(t, ctx, e, node, name, append([]string{"get"}, urls...)...)
		backends := map[string]bool{}
		for _, l := range strings.Split(logs, "\n") {
			if f := strings.Fields(l); len(f) > 3 && f[0] == "OK" {
				backends[f[3]] = true
			}
		}
		if len(backends) < 2 {
			t.Errorf("service from %s: answers from %d backends, want several:\n%s", node, len(backends), logs)
		}
		deleteJob(ctx, e, name)
	}
}

// TestScaleDownUpCooldown: addresses freed by a scale-down are not handed
// out again within the agent's cooldown (--ip-cooldown, 30 s by default).
func TestScaleDownUpCooldown(t *testing.T) {
	e, ctx := setup(t, 8*time.Minute)
	replicas := int32(2 * len(e.Nodes))
	before := ensureNetcheck(t, ctx, e, replicas)
	old := map[string]string{}
	for _, p := range before {
		old[p.Status.PodIP] = p.Name
	}
	ensureNetcheck(t, ctx, e, 0)
	eventually(t, ctx, 2*time.Minute, "netcheck pods gone", func() (bool, error) {
		l, err := e.Client.CoreV1().Pods(testNS).List(ctx, metav1.ListOptions{LabelSelector: "app=" + netcheckName})
		return err == nil && len(l.Items) == 0, nil
	})
	released := time.Now()
	after := ensureNetcheck(t, ctx, e, replicas)
	const cooldown = 30 * time.Second
	checked := 0
	for _, p := range after {
		if p.CreationTimestamp.Time.Sub(released) > cooldown-time.Second {
			continue // created after the cooldown: reuse would be allowed
		}
		checked++
		if was, ok := old[p.Status.PodIP]; ok {
			t.Errorf("pod %s got %s, freed by %s less than %v ago", p.Name, p.Status.PodIP, was, cooldown)
		}
	}
	if checked == 0 {
		t.Fatalf("no pod came up within the cooldown of the scale-down: nothing was checked")
	}
	t.Logf("%d new pods within the cooldown, none reused one of the %d freed addresses", checked, len(old))
}

// TestAgentRolloutRestart: `kubectl rollout restart daemonset/aliasip-agent`
// while a client polls every pod; no pod is unreachable for longer than the
// restart, and afterwards there is one allocation, route and veth per pod.
func TestAgentRolloutRestart(t *testing.T) {
	e, ctx := setup(t, 8*time.Minute)
	pods := ensureNetcheck(t, ctx, e, int32(2*len(e.Nodes)))
	// The client sits in the first node's namespace: the same node's pods
	// through their host routes, the others' across the VPC.
	hc := httpClientIn(nodeNetNS(t, e.Nodes[0]), 500*time.Millisecond)
	type gap struct {
		lastOK time.Time
		max    time.Duration
		fails  int
	}
	gaps := map[string]*gap{}
	var mu sync.Mutex
	stop := make(chan struct{})
	stopPolls := sync.OnceFunc(func() { close(stop) })
	defer stopPolls() // a failed wait below ends the polls too
	var wg sync.WaitGroup
	start := time.Now()
	for _, p := range pods {
		g := &gap{lastOK: start}
		gaps[p.Name] = g
		url := fmt.Sprintf("http://%s:8080/", p.Status.PodIP)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				case <-time.After(100 * time.Millisecond):
				}
				resp, err := hc.Get(url)
				now := time.Now()
				mu.Lock()
				if err == nil && resp.StatusCode == 200 {
					if d := now.Sub(g.lastOK); d > g.max {
						g.max = d
					}
					g.lastOK = now
				} else {
					g.fails++
				}
				mu.Unlock()
				if err == nil {
					resp.Body.Close()
				}
			}
		}()
	}
	// answeredSince: every pod has answered a poll after t, the fact
	// that the client saw each of them then.
	answeredSince := func(t time.Time) func() (bool, error) {
		return func() (bool, error) {
			mu.Lock()
			defer mu.Unlock()
			for name, g := range gaps {
				if !g.lastOK.After(t) {
					return false, fmt.Errorf("pod %s has not answered since %v", name, t.Format(time.StampMilli))
				}
			}
			return true, nil
		}
	}
	// A baseline before the restart: every pod answered once.
	eventually(t, ctx, 30*time.Second, "every pod answering before the restart", answeredSince(start))
	t0 := time.Now()
	e.kubectl(t, "-n", releaseNS, "rollout", "restart", "daemonset/aliasip-agent")
	e.kubectl(t, "-n", releaseNS, "rollout", "status", "daemonset/aliasip-agent", "--timeout=4m")
	restart := time.Since(t0)
	// Every pod answered after the rollout: its gaps have closed.
	eventually(t, ctx, time.Minute, "every pod answering after the restart", answeredSince(t0.Add(restart)))
	stopPolls()
	wg.Wait()
	var worst time.Duration
	for name, g := range gaps {
		if d := time.Since(g.lastOK); d > g.max {
			g.max = d
		}
		if g.max > worst {
			worst = g.max
		}
		// Polls are 100 ms apart with a 500 ms timeout: a gap up to ~0.7 s
		// is one slow answer, not an outage.
		if g.max >= restart {
			t.Errorf("pod %s unreachable for %v, longer than the agents' restart (%v); %d failed polls", name, g.max, restart, g.fails)
		}
	}
	t.Logf("rollout restart of %d agents took %v; longest gap between answers of any pod: %v", len(e.Nodes), restart.Round(time.Millisecond), worst.Round(time.Millisecond))
	checkOnePerPod(t, ctx, e, e.Nodes)
}

// TestHelmTest: the chart's `helm test` hook passes on the installed chart.
func TestHelmTest(t *testing.T) {
	e, _ := setup(t, 5*time.Minute)
	out := e.helm(t, "test", "aliasip", "-n", releaseNS, "--timeout", "3m")
	// The pod's own section: its name, then its phase.
	_, after, ok := strings.Cut(out, "TEST SUITE:     aliasip-verify-install")
	if !ok {
		t.Fatalf("helm test ran no verify-install pod:\n%s", out)
	}
	_, phase, _ := strings.Cut(after, "Phase:")
	if f := strings.Fields(phase); len(f) == 0 || f[0] != "Succeeded" {
		t.Fatalf("verify-install did not succeed:\n%s", out)
	}
}

// TestHelmUpgradeUninstallInstall: `helm upgrade` with a changed value rolls
// the agents; `helm uninstall` removes the release; a fresh `helm install`
// works and pods start again, inside their nodes' podCIDRs.
func TestHelmUpgradeUninstallInstall(t *testing.T) {
	e, ctx := setup(t, 12*time.Minute)
	ensureNetcheck(t, ctx, e, int32(2*len(e.Nodes)))
	chart := filepath.Join(framework.RepoRoot(), "charts", "aliasip")
	e.helm(t, "upgrade", "aliasip", chart, "-n", releaseNS, "--reuse-values", "--set", "agent.ipCooldown=20s", "--wait", "--timeout", "4m")
	ds, err := e.Client.AppsV1().DaemonSets(releaseNS).Get(ctx, "aliasip-agent", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if args := strings.Join(ds.Spec.Template.Spec.Containers[0].Args, " "); !strings.Contains(args, "--ip-cooldown=20s") {
		t.Errorf("after upgrade the agent runs with %s, want --ip-cooldown=20s", args)
	}
	e.kubectl(t, "-n", releaseNS, "rollout", "status", "daemonset/aliasip-agent", "--timeout=4m")

	e.helm(t, "uninstall", "aliasip", "-n", releaseNS, "--wait", "--timeout", "3m")
	eventually(t, ctx, 2*time.Minute, "aliasip pods gone after uninstall", func() (bool, error) {
		l, err := e.Client.CoreV1().Pods(releaseNS).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/instance=aliasip"})
		return err == nil && len(l.Items) == 0, nil
	})

	e.helm(t, append(chartInstallArgs(), "--wait", "--timeout", "4m")...)
	// New pods (the old ones are deleted) get addresses from the new agents.
	if err := e.Client.CoreV1().Pods(testNS).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{LabelSelector: "app=" + netcheckName}); err != nil {
		t.Fatal(err)
	}
	eventually(t, ctx, 3*time.Minute, "netcheck pods replaced", func() (bool, error) {
		l, err := e.Client.CoreV1().Pods(testNS).List(ctx, metav1.ListOptions{LabelSelector: "app=" + netcheckName})
		if err != nil {
			return false, nil
		}
		return len(l.Items) == 2*len(e.Nodes) && len(readyPods(ctx, e, "app="+netcheckName)) == 2*len(e.Nodes), nil
	})
	for _, p := range readyPods(ctx, e, "app="+netcheckName) {
		ip := netip.MustParseAddr(p.Status.PodIP)
		if cidr := nodeBlocks(t, ctx, e, p.Spec.NodeName); !cidr.Contains(ip) {
			t.Errorf("after reinstall pod %s on %s has %s outside %s", p.Name, p.Spec.NodeName, ip, cidr)
		}
	}
	checkOnePerPod(t, ctx, e, e.Nodes)
}

// TestNodeDrainDelete: a node drained, its VM gone and its Node deleted:
// the controller removes its alias from the fake cloud (AliasReleased) and
// the other nodes' routes to its podCIDR disappear. The node is pool-a's
// last: pool-b and pool-g keep their nodes for TestSecondNodePool and
// TestGrowableNodePool.
func TestNodeDrainDelete(t *testing.T) {
	e, ctx := setup(t, 8*time.Minute)
	ensureNetcheck(t, ctx, e, int32(2*len(e.Nodes)))
	var victim string
	var rest []string
	for _, n := range e.Nodes {
		if !e.inPoolB(n) && !e.inPoolG(n) {
			victim = n
		}
	}
	for _, n := range e.Nodes {
		if n != victim {
			rest = append(rest, n)
		}
	}
	cidr := nodePodCIDR(t, ctx, e, victim)
	for _, n := range rest {
		if !hasRouteTo(t, n, cidr) {
			t.Fatalf("%s has no fabric route to %s's podCIDR %s before the delete", n, victim, cidr)
		}
	}
	e.kubectl(t, "drain", victim, "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=3m")
	out, err := exec.Command(filepath.Join(framework.RepoRoot(), "hack", "cluster.sh"), "remove-node", victim).CombinedOutput()
	if err != nil {
		t.Fatalf("remove-node %s: %v\n%s", victim, err, out)
	}
	deleted := time.Now()
	e.kubectl(t, "delete", "node", victim)
	env.Nodes = rest // later tests see the nodes that are left

	eventually(t, ctx, 2*time.Minute, "AliasReleased event for "+victim, func() (bool, error) {
		evs, err := e.Client.CoreV1().Events("").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + victim + ",reason=" + controller.EventAliasReleased})
		return err == nil && len(evs.Items) > 0, nil
	})
	for _, n := range rest {
		eventually(t, ctx, time.Minute, n+": route to "+cidr.String()+" removed", func() (bool, error) {
			return !hasRouteTo(t, n, cidr), nil
		})
	}
	t.Logf("%s deleted: alias released and routes to %s gone within %v", victim, cidr, time.Since(deleted).Round(time.Millisecond))
	// The netcheck pods that were on the node run elsewhere now.
	ensureNetcheck(t, ctx, e, int32(2*len(e.Nodes)))
	checkOnePerPod(t, ctx, e, rest)
}

// hasRouteTo reports whether node has a route for exactly cidr.
func hasRouteTo(t *testing.T, node string, cidr netip.Prefix) bool {
	t.Helper()
	found := false
	err := nodeNetNS(t, node).Do(func(ns.NetNS) error {
		routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
		for _, r := range routes {
			if r.Dst != nil && r.Dst.String() == cidr.String() {
				found = true
			}
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}
