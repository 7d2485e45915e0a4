// Package e2e runs the whole system on one machine: a real control plane,
// aliasip-controller with the fake cloud, nodes as network namespaces on a
// shared VPC link each with its own aliasip-agent, and pods attached through
// libcni. Root only.
package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/aliasip/aliasip/node-agent/datapath"
	"github.com/aliasip/aliasip/node-agent/ipam"
	"github.com/aliasip/aliasip/test/framework"
)

func startCluster(t *testing.T, opts framework.LocalClusterOptions) (*framework.LocalCluster, context.Context) {
	t.Helper()
	if reason := framework.RequireRoot(); reason != "" {
		t.Skipf("skipping: %s", reason)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	t.Cleanup(cancel)
	dir := t.TempDir()
	lc, err := framework.StartLocalCluster(ctx, dir, opts)
	if errors.Is(err, framework.ErrNotInstalled) {
		t.Skipf("skipping: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			logs, _ := filepath.Glob(filepath.Join(dir, "controller-*.log"))
			logs2, _ := filepath.Glob(filepath.Join(dir, "nodes", "*", "agent.log"))
			for _, l := range append(logs, logs2...) {
				b, _ := os.ReadFile(l)
				lines := strings.Split(string(b), "\n")
				if len(lines) > 15 {
					lines = lines[len(lines)-15:]
				}
				t.Logf("%s:\n%s", l, strings.Join(lines, "\n"))
			}
		}
		lc.Close()
	})
	return lc, ctx
}

func addNodes(t *testing.T, ctx context.Context, lc *framework.LocalCluster, prefix string, n int) []*framework.Node {
	t.Helper()
	var out []*framework.Node
	for i := 0; i < n; i++ {
		node, err := lc.AddNode(ctx, fmt.Sprintf("%s-%d", prefix, i+1), false)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, node)
	}
	for _, node := range out {
		if err := lc.WaitAgentReady(ctx, node, 2*time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// fabricRoutes returns the node's routes to other nodes' podCIDRs.
func fabricRoutes(t *testing.T, n *framework.Node) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := n.NS.Do(func(ns.NetNS) error {
		routes, err := netlink.RouteListFiltered(unix.AF_INET, &netlink.Route{Table: unix.RT_TABLE_MAIN, Protocol: datapath.ProtoFabric}, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
		for _, r := range routes {
			out[r.Dst.String()] = r.Gw.String()
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// pingAll checks that every pod reaches every other pod.
func pingAll(t *testing.T, pods []*framework.Pod) {
	t.Helper()
	var wg sync.WaitGroup
	for _, from := range pods {
		for _, to := range pods {
			if from == to {
				continue
			}
			wg.Go(func() {
				// A route just installed may need a moment: retry briefly.
				var err error
				for i := 0; i < 5; i++ {
					if _, err = framework.Ping(from.NS, to.IP, time.Second); err == nil {
						return
					}
				}
				t.Errorf("%s (%v) -> %s (%v): %v", from.Name, from.IP, to.Name, to.IP, err)
			})
		}
	}
	wg.Wait()
}

// Nodes join and leave: each gets a podCIDR and alias, traffic flows
// between every pair of nodes; a removed node's routes disappear from the
// others and its alias is released.
func TestNodesJoinAndLeave(t *testing.T) {
	lc, ctx := startCluster(t, framework.LocalClusterOptions{ClusterCIDR: "10.101.0.0/16"})
	nodes := addNodes(t, ctx, lc, "jl", 3)
	var pods []*framework.Pod
	for _, n := range nodes {
		for j := 0; j < 2; j++ {
			p, err := lc.RunPod(ctx, n, fmt.Sprintf("%s-p%d", n.Name, j))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(p.Close)
			pods = append(pods, p)
		}
	}
	pingAll(t, pods)

	// A fourth node joins: the others route to it, its pods reach all.
	late := addNodes(t, ctx, lc, "late", 1)[0]
	lateCIDR := lc.PodCIDR(ctx, late)
	if lateCIDR == "" {
		t.Fatal("new node has no podCIDR")
	}
	lp, err := lc.RunPod(ctx, late, "late-p0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(lp.Close)
	pingAll(t, append(pods, lp))
	snap, _ := framework.TakeSnapshot(ctx, lc.Client, lc.Cloud)
	snap.CheckInvariants(t, lc.ClusterCIDR, true)
	if len(snap.Aliases[late.Name]) != 1 || snap.Aliases[late.Name][0].String() != lateCIDR {
		t.Fatalf("late node alias %v, podCIDR %s", snap.Aliases[late.Name], lateCIDR)
	}

	// It leaves: its podCIDR's routes vanish from the others, its alias is
	// released from the (fake) cloud.
	if err := lc.RemoveNode(ctx, late); err != nil {
		t.Fatal(err)
	}
	if err := framework.Eventually(ctx, 30*time.Second, func() (bool, error) {
		for _, n := range nodes {
			if _, ok := fabricRoutes(t, n)[lateCIDR]; ok {
				return false, nil
			}
		}
		s, err := framework.TakeSnapshot(ctx, lc.Client, lc.Cloud)
		return err == nil && len(s.Aliases[late.Name]) == 0, err
	}); err != nil {
		t.Fatalf("removed node's routes or alias remain: %v", err)
	}
	for _, n := range nodes {
		if got := len(fabricRoutes(t, n)); got != 2 {
			t.Errorf("%s has %d fabric routes, want 2: %v", n.Name, got, fabricRoutes(t, n))
		}
	}
	pingAll(t, pods)
}

// The controller is restarted (SIGKILL) during a burst of node joins: every
// node still gets its block and alias, agents become ready, traffic flows.
func TestControllerRestartDuringJoins(t *testing.T) {
	lc, ctx := startCluster(t, framework.LocalClusterOptions{ClusterCIDR: "10.102.0.0/16",
		ControllerArgs: []string{"--fake-latency", "150ms", "--workers", "2"}})
	var nodes []*framework.Node
	for i := 0; i < 8; i++ {
		n, err := lc.AddNode(ctx, fmt.Sprintf("burst-%d", i+1), false)
		if err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, n)
		if i == 3 {
			lc.Controller.Kill()
			if err := lc.StartController(); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, n := range nodes {
		if err := lc.WaitAgentReady(ctx, n, 2*time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	snap, err := framework.TakeSnapshot(ctx, lc.Client, lc.Cloud)
	if err != nil {
		t.Fatal(err)
	}
	if !snap.Converged() {
		t.Fatalf("not converged: %v", snap.Pending())
	}
	snap.CheckInvariants(t, lc.ClusterCIDR, true)
	var pods []*framework.Pod
	for _, n := range []*framework.Node{nodes[0], nodes[4], nodes[7]} {
		p, err := lc.RunPod(ctx, n, n.Name+"-p")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.Close)
		pods = append(pods, p)
	}
	pingAll(t, pods)
}

// An agent restarted with 50 pods on its node: no pod loses connectivity
// for longer than the restart, and nothing leaks.
func TestAgentRestartWithFiftyPods(t *testing.T) {
	lc, ctx := startCluster(t, framework.LocalClusterOptions{ClusterCIDR: "10.103.0.0/16"})
	nodes := addNodes(t, ctx, lc, "ar", 2)
	busy, other := nodes[0], nodes[1]
	var pods []*framework.Pod
	for i := 0; i < 50; i++ {
		p, err := lc.RunPod(ctx, busy, fmt.Sprintf("many-%02d", i))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.Close)
		pods = append(pods, p)
	}
	probe, err := lc.RunPod(ctx, other, "probe")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(probe.Close)

	// Probe every pod in rounds while the agent restarts; record the
	// longest stretch any pod was unreachable.
	const probeTimeout = 200 * time.Millisecond
	var (
		mu      sync.Mutex
		lastOK  = map[netip.Addr]time.Time{}
		longest time.Duration
		rounds  int // probe rounds over all pods completed
		stop    = make(chan struct{})
		done    = make(chan struct{})
	)
	now := time.Now()
	for _, p := range pods {
		lastOK[p.IP] = now
	}
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			for _, p := range pods {
				_, err := framework.Ping(probe.NS, p.IP, probeTimeout)
				if err != nil {
					continue
				}
				// The stretch between two successful probes of a pod.
				mu.Lock()
				if gap := time.Since(lastOK[p.IP]); gap > longest {
					longest = gap
				}
				lastOK[p.IP] = time.Now()
				mu.Unlock()
			}
			mu.Lock()
			rounds++
			mu.Unlock()
		}
	}()
	defer func() {
		select {
		case <-done:
		default:
			close(stop) // a failure below ends the probes too
			<-done
		}
	}()
	// roundsDone waits until n more probe rounds than now have completed.
	roundsDone := func(n int) {
		t.Helper()
		mu.Lock()
		want := rounds + n
		mu.Unlock()
		if err := framework.Eventually(ctx, time.Minute, func() (bool, error) {
			mu.Lock()
			defer mu.Unlock()
			return rounds >= want, fmt.Errorf("%d of %d probe rounds", rounds, want)
		}); err != nil {
			t.Fatal(err)
		}
	}
	roundsDone(1) // a baseline: every pod probed once before the restart
	restartStart := time.Now()
	busy.Agent.Stop()
	if err := lc.StartAgent(busy); err != nil {
		t.Fatal(err)
	}
	if err := lc.WaitAgentReady(ctx, busy, time.Minute); err != nil {
		t.Fatal(err)
	}
	restart := time.Since(restartStart)
	// A whole round begun after the restart: every pod probed since.
	roundsDone(2)
	close(stop)
	<-done
	t.Logf("agent restart took %v; longest stretch between two answered probes of one pod %v", restart, longest)
	// A probe round over 50 pods, plus one probe timeout, is the
	// measurement's own granularity.
	if limit := restart + 2*probeTimeout; longest > limit {
		t.Errorf("a pod was unreachable for %v, longer than the agent restart (%v) plus the probe granularity", longest, restart)
	}

	// Nothing leaked: one allocation, one route, one veth per pod.
	state, err := ipam.ReadAllocations(filepath.Join(busy.State, "ipam.json"))
	if err != nil {
		t.Fatal(err)
	}
	if got := len(state); got != 50 {
		t.Errorf("%d allocations, want 50", got)
	}
	var routes, veths int
	busy.NS.Do(func(ns.NetNS) error {
		links, _ := netlink.LinkList()
		for _, l := range links {
			if strings.HasPrefix(l.Attrs().Name, datapath.VethPrefix) {
				veths++
			}
		}
		rs, _ := netlink.RouteListFiltered(unix.AF_INET, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		for _, r := range rs {
			if r.Dst != nil && r.LinkIndex > 0 {
				if ones, _ := r.Dst.Mask.Size(); ones == 32 {
					routes++
				}
			}
		}
		return nil
	})
	if routes != 50 || veths != 50 {
		t.Errorf("%d /32 routes and %d veths on the node, want 50 each", routes, veths)
	}
	// And new pods still start after the restart.
	p, err := lc.RunPod(ctx, busy, "after-restart")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	pingAll(t, []*framework.Pod{p, probe})
}
