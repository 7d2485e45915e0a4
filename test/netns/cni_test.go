package netns

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8stypes "k8s.io/apimachinery/pkg/types"

	"github.com/aliasip/aliasip/node-agent/agent"
	"github.com/aliasip/aliasip/node-agent/datapath"
	"github.com/aliasip/aliasip/node-agent/ipam"
	"github.com/aliasip/aliasip/test/framework"
)

// hostRoutes lists the node's /32 routes as "IP dev NAME".
func hostRoutes(t *testing.T, n *framework.Node) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := n.NS.Do(func(ns.NetNS) error {
		routes, err := netlink.RouteListFiltered(unix.AF_INET, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return err
		}
		for _, r := range routes {
			if r.Dst != nil && r.LinkIndex > 0 {
				if ones, _ := r.Dst.Mask.Size(); ones == 32 {
					l, err := netlink.LinkByIndex(r.LinkIndex)
					if err == nil {
						out[r.Dst.IP.String()] = l.Attrs().Name
					}
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func allocations(t *testing.T, n *framework.Node) []ipam.Allocation {
	t.Helper()
	// Snapshot and journal, as the agent would read them on restart.
	allocs, err := ipam.ReadAllocations(filepath.Join(n.State, "ipam.json"))
	if err != nil {
		t.Fatal(err)
	}
	return allocs
}

// 1. Two pods on one node ping each other and the node; the first ping's
// ARP is answered at once; no bridge; the /32 routes are there.
func TestPodsPingWithoutBridge(t *testing.T) {
	e := newEnv(t)
	n := e.node("10.210.1.0/24")
	a, b := e.pod(n, "pod-a"), e.pod(n, "pod-b")
	if !netip.MustParsePrefix("10.210.1.0/24").Contains(a.IP) || a.IP == b.IP {
		t.Fatalf("addresses %v %v", a.IP, b.IP)
	}
	// The very first packet from a fresh pod needs ARP for 169.254.1.1.
	// With proxy_delay=0 it is answered at once; the kernel default would
	// delay the answer by a random 0–0.8 s. Four fresh pods all answering
	// within 150 ms leave the default a chance of (3/16)^4, about 0.1 %.
	if _, err := framework.Ping(a.NS, b.IP, 3*time.Second); err != nil {
		t.Fatalf("pod-a -> pod-b: %v", err)
	}
	for i := 0; i < 4; i++ {
		fresh := e.pod(n, fmt.Sprintf("fresh-%d", i))
		rtt, err := framework.Ping(fresh.NS, n.IP, 3*time.Second)
		if err != nil {
			t.Fatalf("%s -> node: %v", fresh.Name, err)
		}
		if rtt > 150*time.Millisecond {
			t.Errorf("first ping of %s took %v: the proxy-ARP answer was delayed", fresh.Name, rtt)
		}
	}
	for _, c := range []struct {
		from *framework.Pod
		to   netip.Addr
	}{{b, a.IP}, {a, n.IP}, {b, n.IP}} {
		if _, err := framework.Ping(c.from.NS, c.to, 3*time.Second); err != nil {
			t.Errorf("%s -> %v: %v", c.from.Name, c.to, err)
		}
	}
	routes := hostRoutes(t, n)
	for _, p := range []*framework.Pod{a, b} {
		want := datapath.HostVethName("default", p.Name)
		if routes[p.IP.String()] != want {
			t.Errorf("route for %v: dev %q, want %q (routes %v)", p.IP, routes[p.IP.String()], want, routes)
		}
	}
	n.NS.Do(func(ns.NetNS) error {
		links, _ := netlink.LinkList()
		for _, l := range links {
			if l.Type() == "bridge" {
				t.Errorf("node has a bridge %s", l.Attrs().Name)
			}
		}
		return nil
	})
	if err := n.Check(e.ctx, a); err != nil {
		t.Errorf("CHECK on a healthy pod: %v", err)
	}
	if err := n.Status(e.ctx); err != nil {
		t.Errorf("STATUS with a running agent: %v", err)
	}
}

// 2. DEL twice, DEL after the netns is gone, DEL for an unknown container
// all succeed and free the address after the cooldown. CHECK fails after
// the /32 route is deleted and passes after the agent repairs it.
func TestDelIdempotentAndCheckRepair(t *testing.T) {
	e := newEnv(t)
	n := e.node("10.210.2.0/24")
	p := e.pod(n, "victim")
	// Stop the agent so the test sees the broken state before the repair.
	n.Agent.Cmd.Process.Signal(syscall.SIGSTOP)
	n.NS.Do(func(ns.NetNS) error {
		// ip route del IP/32 (scope link, as the plugin made it)
		return netlink.RouteDel(&netlink.Route{Dst: netlink.NewIPNet(p.IP.AsSlice()), Table: unix.RT_TABLE_MAIN, Scope: netlink.SCOPE_LINK})
	})
	if routes := hostRoutes(t, n); routes[p.IP.String()] != "" {
		t.Fatalf("test setup: route for %v not deleted", p.IP)
	}
	err := n.Check(e.ctx, p)
	if err == nil || cniCode(err) != 102 || !strings.Contains(err.Error(), "route") {
		t.Fatalf("CHECK with the /32 route gone: %v (code %d), want code 102 naming the route", err, cniCode(err))
	}
	n.Agent.Cmd.Process.Signal(syscall.SIGCONT)
	if err := framework.Eventually(e.ctx, 15*time.Second, func() (bool, error) {
		return n.Check(e.ctx, p) == nil, nil
	}); err != nil {
		t.Fatalf("CHECK never passed again after the agent's repair: %v", n.Check(e.ctx, p))
	}
	if _, err := framework.Ping(p.NS, n.IP, 3*time.Second); err != nil {
		t.Errorf("ping after repair: %v", err)
	}
	e.waitNodeEvent(n, "DataPathRepaired")

	for i := 0; i < 2; i++ {
		if err := n.Del(e.ctx, p); err != nil {
			t.Fatalf("DEL #%d: %v", i+1, err)
		}
	}
	gone := e.pod(n, "gone-netns")
	gone.Close() // the sandbox's netns is gone before DEL
	if err := n.Del(e.ctx, gone); err != nil {
		t.Fatalf("DEL with the netns gone: %v", err)
	}
	unknown, _ := framework.NewPod("default", "never-added")
	defer unknown.Close()
	if err := n.Del(e.ctx, unknown); err != nil {
		t.Fatalf("DEL of an unknown container: %v", err)
	}
	if left := allocations(t, n); len(left) != 0 {
		t.Fatalf("allocations left after DELs: %v", left)
	}
	if routes := hostRoutes(t, n); len(routes) != 0 {
		t.Errorf("routes left after DELs: %v", routes)
	}
	// The freed addresses cool down (2 s here), then are free again.
	if v := agentMetric(t, n, "aliasip_pod_ips", `state="cooling"`); v != 2 {
		t.Errorf("cooling addresses right after the DELs: %v, want 2", v)
	}
	freed := map[netip.Addr]bool{p.IP: true, gone.IP: true}
	q := e.pod(n, "during-cooldown")
	if freed[q.IP] {
		t.Errorf("%v reused during its cooldown", q.IP)
	}
	if err := framework.Eventually(e.ctx, 10*time.Second, func() (bool, error) {
		return agentMetric(t, n, "aliasip_pod_ips", `state="cooling"`) == 0 &&
			agentMetric(t, n, "aliasip_pod_ips", `state="free"`) == 252, nil
	}); err != nil {
		t.Errorf("freed addresses not free after the cooldown")
	}
}

func agentMetric(t *testing.T, n *framework.Node, name, labels string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + n.Metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	v, _ := framework.ScrapeMetric(string(b), name, labels)
	return v
}

// 3. 30 concurrent ADDs while the agent is killed and restarted: every ADD
// succeeds or fails cleanly, no address is given twice, and after GC no
// allocation is left without a live pod.
func TestConcurrentAddsAcrossAgentKill(t *testing.T) {
	e := newEnv(t)
	n := e.node("10.210.3.0/24")
	pods := make([]*framework.Pod, 30)
	for i := range pods {
		pods[i] = e.newPod(n, fmt.Sprintf("burst-%02d", i))
	}
	errs := make([]error, len(pods))
	var wg sync.WaitGroup
	for i, p := range pods {
		wg.Go(func() { errs[i] = n.Add(e.ctx, p) })
	}
	// Kill the agent once a few addresses are handed out, mid-burst.
	framework.Eventually(e.ctx, 10*time.Second, func() (bool, error) {
		allocs, _ := ipam.ReadAllocations(filepath.Join(n.State, "ipam.json"))
		return len(allocs) >= 4, nil
	})
	n.Agent.Kill()
	e.startAgent(n)
	wg.Wait()

	var ok, failed []*framework.Pod
	seen := map[netip.Addr]string{}
	for i, err := range errs {
		if err != nil {
			code := cniCode(err)
			if code == 0 {
				t.Errorf("%s: not a clean CNI error: %v", pods[i].Name, err)
			}
			failed = append(failed, pods[i])
			continue
		}
		if other, dup := seen[pods[i].IP]; dup {
			t.Fatalf("%v given to %s and %s", pods[i].IP, other, pods[i].Name)
		}
		seen[pods[i].IP] = pods[i].Name
		ok = append(ok, pods[i])
	}
	t.Logf("%d ADDs succeeded, %d failed cleanly", len(ok), len(failed))
	// The runtime calls DEL after a failed ADD, and GC with what it keeps.
	for _, p := range failed {
		if err := n.Del(e.ctx, p); err != nil {
			t.Errorf("DEL after failed ADD of %s: %v", p.Name, err)
		}
	}
	if err := n.GC(e.ctx, ok); err != nil {
		t.Fatalf("CNI GC: %v", err)
	}
	left := map[string]netip.Addr{}
	for _, a := range allocations(t, n) {
		left[a.ContainerID] = a.IP
	}
	if len(left) != len(ok) {
		t.Errorf("%d allocations after GC, want %d (one per live pod)", len(left), len(ok))
	}
	for _, p := range ok {
		if left[p.ContainerID] != p.IP {
			t.Errorf("%s: allocation %v, pod has %v", p.Name, left[p.ContainerID], p.IP)
		}
		if _, err := framework.Ping(p.NS, n.IP, 3*time.Second); err != nil {
			t.Errorf("%s lost connectivity: %v", p.Name, err)
		}
	}
	routes := hostRoutes(t, n)
	if len(routes) != len(ok) {
		t.Errorf("%d pod routes, want %d: %v", len(routes), len(ok), routes)
	}
}

// 4. Clean CNI errors, nothing leaked: range exhausted, malformed config,
// missing CNI_NETNS, unreachable agent.
func TestCleanErrors(t *testing.T) {
	e := newEnv(t)
	n := e.node("10.210.4.0/29") // 8 addresses, 5 usable
	for i := 0; i < 5; i++ {
		e.pod(n, fmt.Sprintf("fill-%d", i))
	}
	extra := e.newPod(n, "one-too-many")
	err := n.Add(e.ctx, extra)
	if cniCode(err) != 100 || !strings.Contains(err.Error(), "exhausted") {
		t.Errorf("ADD on a full node: %v (code %d), want code 100 naming the exhausted range", err, cniCode(err))
	}
	e.waitNodeEvent(n, "PodIPsExhausted")

	cni := libcni.NewCNIConfigWithCacheDir([]string{n.BinDir}, filepath.Join(n.Dir, "cache2"), nil)
	run := func(conf string, netnsPath string) error {
		list, err := libcni.NetworkConfFromBytes([]byte(conf))
		if err != nil {
			return err
		}
		p, _ := framework.NewPod("default", "bad")
		defer p.Close()
		rt := &libcni.RuntimeConf{ContainerID: "bad-1", NetNS: netnsPath, IfName: "eth0"}
		if netnsPath == "pod" {
			rt.NetNS = p.NS.Path()
		}
		return n.NS.Do(func(ns.NetNS) error {
			_, err := cni.AddNetworkList(e.ctx, list, rt)
			return err
		})
	}
	good := fmt.Sprintf(`{"cniVersion":"1.1.0","name":"aliasip","plugins":[{"type":"aliasip-cni","socket":%q,"logFile":%q}]}`, n.Socket, n.CNILog)
	for _, c := range []struct {
		name, conf, netns string
		code              uint
		mention           string
	}{
		{"malformed plugin config", `{"cniVersion":"1.1.0","name":"aliasip","plugins":[{"type":"aliasip-cni","socket":17}]}`, "pod", 6, "malformed"},
		{"config without socket", `{"cniVersion":"1.1.0","name":"aliasip","plugins":[{"type":"aliasip-cni"}]}`, "pod", 7, "socket"},
		{"missing CNI_NETNS", good, "", 4, "CNI_NETNS"},
		{"unreachable agent", strings.Replace(good, n.Socket, filepath.Join(n.Dir, "nobody.sock"), 1), "pod", 11, "unreachable"},
	} {
		err := run(c.conf, c.netns)
		if cniCode(err) != c.code || !strings.Contains(err.Error(), c.mention) {
			t.Errorf("%s: %v (code %d), want code %d mentioning %q", c.name, err, cniCode(err), c.code, c.mention)
		}
	}
	if got := len(allocations(t, n)); got != 5 {
		t.Errorf("%d allocations after failed ADDs, want the 5 pods'", got)
	}
	if routes := hostRoutes(t, n); len(routes) != 5 {
		t.Errorf("%d routes after failed ADDs, want 5: %v", len(routes), routes)
	}
	// A plugin that cannot reach the agent reports STATUS unavailable.
	n.Agent.Kill()
	if err := n.Status(e.ctx); cniCode(err) != 50 {
		t.Errorf("STATUS with the agent down: %v, want code 50", err)
	}
}

// 5. A stale veth with the pod's host name and a stale /32 route for its
// address are replaced by ADD.
func TestStaleVethAndRouteReplaced(t *testing.T) {
	e := newEnv(t)
	n := e.node("10.210.5.0/24")
	stale := datapath.HostVethName("default", "reborn")
	first := netip.MustParseAddr("10.210.5.2") // a fresh node's first address
	n.NS.Do(func(ns.NetNS) error {
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: stale}, PeerName: "stalepeer"}); err != nil {
			t.Fatal(err)
		}
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "stale0"}, PeerName: "stale1"}); err != nil {
			t.Fatal(err)
		}
		d, _ := netlink.LinkByName("stale0")
		netlink.LinkSetUp(d)
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: d.Attrs().Index, Dst: netlink.NewIPNet(first.AsSlice()), Scope: netlink.SCOPE_LINK}); err != nil {
			t.Fatal(err)
		}
		return nil
	})
	p := e.pod(n, "reborn")
	if p.IP != first {
		t.Fatalf("pod got %v, the test expected %v", p.IP, first)
	}
	if got := hostRoutes(t, n)[first.String()]; got != stale {
		t.Errorf("route for %v: dev %q, want the new %s", first, got, stale)
	}
	n.NS.Do(func(ns.NetNS) error {
		if _, err := netlink.LinkByName("stalepeer"); err == nil {
			t.Errorf("the stale veth's peer survives: the old veth was not replaced")
		}
		return nil
	})
	if _, err := framework.Ping(p.NS, n.IP, 3*time.Second); err != nil {
		t.Errorf("ping: %v", err)
	}
}

// 6. Two nodes on one link, agents with --fabric=routes: a pod on node A
// reaches a pod on node B.
func TestTwoNodesFabric(t *testing.T) {
	e := newEnv(t)
	a := e.node("10.210.6.0/24", "--fabric", "routes")
	b := e.node("10.210.7.0/24", "--fabric", "routes")
	pa, pb := e.pod(a, "on-a"), e.pod(b, "on-b")
	if err := framework.Eventually(e.ctx, 20*time.Second, func() (bool, error) {
		_, err := framework.Ping(pa.NS, pb.IP, time.Second)
		return err == nil, nil
	}); err != nil {
		t.Fatalf("pod on A cannot reach pod on B: %v", err)
	}
	if _, err := framework.Ping(pb.NS, pa.IP, 3*time.Second); err != nil {
		t.Errorf("B -> A: %v", err)
	}
}

// The agent writes its conflist only once it can serve ADD, and then marks
// the Node's NetworkUnavailable condition False.
func TestAgentWaitsForPodCIDR(t *testing.T) {
	e := newEnv(t)
	n := e.bareNode()
	name := n.Name
	if err := n.RegisterNode(e.ctx, e.client, ""); err != nil {
		t.Fatal(err)
	}
	args := append(n.AgentArgs(cp.Kubeconfig, pluginBin), "--v", "2")
	var err error
	n.Agent, err = framework.StartProcess(filepath.Join(n.Dir, "agent.log"), nil, agentBin, args...)
	if err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(n.ConfDir, "10-aliasip.conflist")
	// Not ready without a podCIDR: no conflist, /readyz fails.
	if err := framework.Eventually(e.ctx, 10*time.Second, func() (bool, error) {
		resp, err := http.Get("http://" + n.Metrics + "/readyz")
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusServiceUnavailable, nil
	}); err != nil {
		t.Fatalf("agent not answering /readyz: %v", err)
	}
	if _, err := os.Stat(conf); err == nil {
		t.Fatal("conflist written before the node has a podCIDR")
	}
	patch := []byte(`{"spec":{"podCIDR":"10.210.9.0/24","podCIDRs":["10.210.9.0/24"]}}`)
	if _, err := e.client.CoreV1().Nodes().Patch(e.ctx, name, k8stypes.StrategicMergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := framework.Eventually(e.ctx, 15*time.Second, func() (bool, error) {
		_, err := os.Stat(conf)
		return err == nil, nil
	}); err != nil {
		t.Fatal("conflist never written after the podCIDR arrived")
	}
	if err := framework.Eventually(e.ctx, 10*time.Second, func() (bool, error) {
		node, err := e.client.CoreV1().Nodes().Get(e.ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		for _, c := range node.Status.Conditions {
			if c.Type == corev1.NodeNetworkUnavailable && c.Status == corev1.ConditionFalse && c.Reason == "AliasipReady" {
				return true, nil
			}
		}
		return false, nil
	}); err != nil {
		t.Fatalf("NetworkUnavailable never set False: %v", err)
	}
	if _, err := os.Stat(filepath.Join(n.BinDir, "aliasip-cni")); err != nil {
		t.Errorf("plugin not installed: %v", err)
	}
	// A restarted agent keeps the condition's lastTransitionTime: it is
	// when the network became available, not the last restart. An agent
	// that finds the condition as it would write it writes nothing, which
	// leaves no trace to wait for; so the message is made stale while no
	// agent runs, and the new agent's rewrite of it is the fact that it
	// looked.
	condition := func() corev1.NodeCondition {
		node, err := e.client.CoreV1().Nodes().Get(e.ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range node.Status.Conditions {
			if c.Type == corev1.NodeNetworkUnavailable {
				return c
			}
		}
		return corev1.NodeCondition{}
	}
	before := condition()
	n.Agent.Stop()
	stale := []byte(`{"status":{"conditions":[{"type":"NetworkUnavailable","status":"False","reason":"AliasipReady","message":"stale"}]}}`)
	if _, err := e.client.CoreV1().Nodes().PatchStatus(e.ctx, name, stale); err != nil {
		t.Fatal(err)
	}
	if c := condition(); c.Message != "stale" || !c.LastTransitionTime.Equal(&before.LastTransitionTime) {
		t.Fatalf("the stale patch left %+v", c)
	}
	// Condition times have a resolution of one second: a new time written
	// now must be one that differs from before's.
	if err := framework.Eventually(e.ctx, 2*time.Second, func() (bool, error) {
		return metav1.Now().Rfc3339Copy().After(before.LastTransitionTime.Time), nil
	}); err != nil {
		t.Fatal(err)
	}
	n.Agent, err = framework.StartProcess(filepath.Join(n.Dir, "agent2.log"), nil, agentBin, args...)
	if err != nil {
		t.Fatal(err)
	}
	if err := framework.Eventually(e.ctx, 15*time.Second, func() (bool, error) {
		c := condition()
		return c.Message == before.Message, fmt.Errorf("message %q", c.Message)
	}); err != nil {
		t.Fatalf("the restarted agent never rewrote the stale condition: %v", err)
	}
	if after := condition(); !after.LastTransitionTime.Equal(&before.LastTransitionTime) || after.Status != corev1.ConditionFalse {
		t.Errorf("NetworkUnavailable moved from %v (%s) to %v (%s) on an agent restart", before.LastTransitionTime, before.Status, after.LastTransitionTime, after.Status)
	}
	p := e.pod(n, "late")
	if _, err := framework.Ping(p.NS, n.IP, 3*time.Second); err != nil {
		t.Errorf("ping: %v", err)
	}
}

// aliasip-cni chained with the reference portmap plugin: a hostPort reaches
// the pod through the node's address.
func TestPortmapChained(t *testing.T) {
	e := newEnv(t)
	n := e.node("10.210.8.0/24")
	p := e.newPod(n, "web")
	cni, list, err := n.CNI()
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Plugins) != 2 || list.Plugins[1].Network.Type != "portmap" {
		t.Fatalf("conflist does not chain portmap: %+v", list.Plugins)
	}
	rt := &libcni.RuntimeConf{
		ContainerID: p.ContainerID, NetNS: p.NS.Path(), IfName: "eth0",
		Args:           [][2]string{{"K8S_POD_NAMESPACE", "default"}, {"K8S_POD_NAME", "web"}},
		CapabilityArgs: map[string]any{"portMappings": []map[string]any{{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}}},
	}
	err = n.NS.Do(func(ns.NetNS) error { _, err := cni.AddNetworkList(e.ctx, list, rt); return err })
	if err != nil {
		t.Fatalf("ADD with a port mapping: %v", err)
	}
	// A server in the pod on :80.
	servePod(t, p, "hello from the pod\n")
	// A client on the VPC (the fabric namespace) dials the node's hostPort.
	var got string
	err = e.fabric.NS.Do(func(ns.NetNS) error {
		c, err := net.DialTimeout("tcp", net.JoinHostPort(n.IP.String(), "8080"), 3*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		b, err := io.ReadAll(c)
		got = string(b)
		return err
	})
	if err != nil || got != "hello from the pod\n" {
		t.Fatalf("hostPort 8080 -> pod :80: %q, %v", got, err)
	}
	if err := n.NS.Do(func(ns.NetNS) error { return cni.DelNetworkList(e.ctx, list, rt) }); err != nil {
		t.Fatalf("DEL: %v", err)
	}
}

// A node re-registered with another podCIDR: the agent keeps the old IPAM
// state aside and serves the new block instead of crash-looping.
func TestPodCIDRChangedAcrossRestart(t *testing.T) {
	e := newEnv(t)
	n := e.node("10.210.10.0/24")
	e.pod(n, "old-block")
	n.Agent.Stop()
	if err := e.client.CoreV1().Nodes().Delete(e.ctx, n.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := n.RegisterNode(e.ctx, e.client, "10.210.11.0/24"); err != nil {
		t.Fatal(err)
	}
	e.startAgent(n)
	p := e.pod(n, "new-block")
	if !netip.MustParsePrefix("10.210.11.0/24").Contains(p.IP) {
		t.Fatalf("pod got %v, outside the new podCIDR", p.IP)
	}
	e.waitNodeEvent(n, "PodCIDRChanged")
	old, _ := filepath.Glob(filepath.Join(n.State, "ipam.json.*.old"))
	if len(old) != 1 {
		t.Fatalf("old IPAM state not kept aside: %v", old)
	}
	if data, _ := os.ReadFile(old[0]); !strings.Contains(string(data), "10.210.10.") {
		t.Errorf("kept state lacks the old allocation: %s", data)
	}
}

// Allocations of pods gone from the API and from the host (their
// sandbox's network namespace removed, no CNI DEL) are released after the
// grace period, and their routes and host veths are gone, without any CNI
// call. While the namespace lives the host veth still names the container
// and pod GC keeps the address whatever the API says (the agent's
// TestPodGCFollowsTheHost): the leak is a sandbox the runtime removed
// without DEL.
func TestPodGoneFromAPICollected(t *testing.T) {
	e := newEnv(t)
	n := e.node("10.210.12.0/24", "--pod-gc-grace", "1s", "--pod-gc-interval", "1s")
	keep := e.pod(n, "keeper")
	gone := e.pod(n, "vanishing")
	// A pod of the same name but another UID (a StatefulSet pod
	// re-created) does not keep the old pod's address alive. The
	// allocation is made with the UID of a pod the API has already
	// replaced, so the GC never sees a moment with no pod of that name
	// (deleting and re-creating here raced the 1 s GC: pod_gone).
	if _, err := framework.CreatePodObjectUID(e.ctx, e.client, "default", "replaced", n.Name); err != nil {
		t.Fatal(err)
	}
	old, err := framework.NewPod("default", "replaced")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(old.Close)
	old.UID = "3f0c2a4e-0000-4000-8000-0000000000aa" // the earlier incarnation's UID
	if err := n.Add(e.ctx, old); err != nil {
		t.Fatalf("ADD replaced: %v", err)
	}
	if err := e.client.CoreV1().Pods("default").Delete(e.ctx, "vanishing", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	// The runtime removed both sandboxes without CNI DEL: the vanishing
	// pod's and the replaced pod's earlier incarnation's. The kernel
	// destroys their veths with the namespaces.
	gone.Close()
	old.Close()
	if err := framework.Eventually(e.ctx, 20*time.Second, func() (bool, error) {
		return len(allocations(t, n)) == 1, nil
	}); err != nil {
		t.Fatalf("allocations of the deleted and the replaced pod not collected: %v", allocations(t, n))
	}
	// The counters move as each released pod is torn down, just after the
	// state is saved: wait for them rather than race them.
	for _, reason := range []string{"pod_replaced", "pod_gone"} {
		if err := framework.Eventually(e.ctx, 5*time.Second, func() (bool, error) {
			return agentMetric(t, n, "aliasip_gc_released_total", `reason="`+reason+`"`) == 1, nil
		}); err != nil {
			t.Errorf("aliasip_gc_released_total{reason=%s} = %v, want 1", reason, agentMetric(t, n, "aliasip_gc_released_total", `reason="`+reason+`"`))
		}
	}
	if a := allocations(t, n)[0]; a.Pod != "keeper" || a.IP != keep.IP {
		t.Fatalf("the wrong allocation survived: %+v", a)
	}
	// No route or host veth is left of the collected pod (the kernel took
	// the veth with the namespace, and its route with it).
	if err := framework.Eventually(e.ctx, 5*time.Second, func() (bool, error) {
		_, routed := hostRoutes(t, n)[gone.IP.String()]
		vethLeft := false
		n.NS.Do(func(ns.NetNS) error {
			_, err := netlink.LinkByName(datapath.HostVethName("default", "vanishing"))
			vethLeft = err == nil
			return nil
		})
		return !routed && !vethLeft, nil
	}); err != nil {
		t.Error("route or host veth of the collected pod remains")
	}
	if _, err := framework.Ping(keep.NS, n.IP, 3*time.Second); err != nil {
		t.Errorf("the live pod lost connectivity: %v", err)
	}
}

// A bare node: default flags (--chain-portmap=true) and no portmap in
// --cni-bin-dir. The conflist must not name portmap (the runtime finds
// plugins only in its bin dir and would fail every ADD), the agent warns
// once with an Event and a metric, and pod ADD works through a runtime
// that searches the node's bin dir alone. portmap installed later is
// chained on the next resync.
func TestBareNodeWithoutPortmap(t *testing.T) {
	e := newEnv(t)
	n := e.bareNode()
	portmap := filepath.Join(n.BinDir, "portmap")
	if err := os.Remove(portmap); err != nil {
		t.Fatal(err)
	}
	if err := n.RegisterNode(e.ctx, e.client, "10.210.9.0/24"); err != nil {
		t.Fatal(err)
	}
	e.startAgent(n) // default flags: --chain-portmap=true

	plugins := func() []string {
		list, err := libcni.ConfListFromFile(filepath.Join(n.ConfDir, "10-aliasip.conflist"))
		if err != nil {
			t.Fatal(err)
		}
		var types []string
		for _, p := range list.Plugins {
			types = append(types, p.Network.Type)
		}
		return types
	}
	if got := strings.Join(plugins(), ","); got != "aliasip-cni" {
		t.Fatalf("conflist on a node without portmap chains %s, want aliasip-cni alone", got)
	}
	// Runtimes with an older libcni (containerd 1.6) read cniVersion and
	// reject 1.1.0 results; newer ones pick the highest of cniVersions.
	var raw struct {
		CNIVersion  string   `json:"cniVersion"`
		CNIVersions []string `json:"cniVersions"`
	}
	if b, err := os.ReadFile(filepath.Join(n.ConfDir, "10-aliasip.conflist")); err != nil || json.Unmarshal(b, &raw) != nil {
		t.Fatalf("conflist: %v", err)
	}
	if raw.CNIVersion != "1.0.0" || strings.Join(raw.CNIVersions, ",") != "1.0.0,1.1.0" {
		t.Errorf("conflist versions %q %v, want cniVersion 1.0.0 and cniVersions [1.0.0 1.1.0]", raw.CNIVersion, raw.CNIVersions)
	}
	if l, err := libcni.ConfListFromFile(filepath.Join(n.ConfDir, "10-aliasip.conflist")); err != nil {
		t.Error(err)
	} else if l.CNIVersion != "1.1.0" {
		t.Errorf("libcni v1.3 selects version %q, want 1.1.0 so it calls STATUS and GC", l.CNIVersion)
	}
	e.waitNodeEvent(n, agent.EventPortmapMissing)
	if v := agentMetric(t, n, "aliasip_cni_chained_plugin_missing", `plugin="portmap"`); v != 1 {
		t.Errorf("aliasip_cni_chained_plugin_missing{plugin=portmap} = %v, want 1", v)
	}

	// ADD as a runtime does it: plugins from the node's bin dir only.
	list, err := libcni.LoadNetworkConf(n.ConfDir, "aliasip")
	if err != nil {
		t.Fatal(err)
	}
	cni := libcni.NewCNIConfigWithCacheDir([]string{n.BinDir}, filepath.Join(n.Dir, "bare-cache"), nil)
	p := e.newPod(n, "bare")
	rt := &libcni.RuntimeConf{ContainerID: p.ContainerID, NetNS: p.NS.Path(), IfName: "eth0",
		Args: [][2]string{{"K8S_POD_NAMESPACE", "default"}, {"K8S_POD_NAME", "bare"}}}
	if err := n.NS.Do(func(ns.NetNS) error { _, err := cni.AddNetworkList(e.ctx, list, rt); return err }); err != nil {
		t.Fatalf("ADD on a bare node: %v", err)
	}
	if _, err := framework.Ping(p.NS, n.IP, 3*time.Second); err != nil {
		t.Errorf("pod cannot reach its node: %v", err)
	}

	// portmap installed later: chained within a resync (2 s here).
	data, err := os.ReadFile(filepath.Join(framework.CacheDir(), "cni", "portmap"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(portmap, data, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := framework.Eventually(e.ctx, 20*time.Second, func() (bool, error) {
		return strings.Join(plugins(), ",") == "aliasip-cni,portmap", nil
	}); err != nil {
		t.Fatalf("portmap installed but not chained: %v (conflist chains %v)", err, plugins())
	}
	if v := agentMetric(t, n, "aliasip_cni_chained_plugin_missing", `plugin="portmap"`); v != 0 {
		t.Errorf("aliasip_cni_chained_plugin_missing{plugin=portmap} = %v after install, want 0", v)
	}
	// DEL of the pod added before still works with the new chain.
	if err := n.NS.Do(func(ns.NetNS) error { return cni.DelNetworkList(e.ctx, list, rt) }); err != nil {
		t.Errorf("DEL: %v", err)
	}
}

// The GCE guest agent, where it manages alias routes ([IpForwarding]
// ip_aliases not false), re-adds `local PODCIDR table local proto 66` at
// least every minute. Here it is re-added every second for 8 s while a
// client on another node connects to a pod's TCP server every 50 ms: the
// agent removes the route on the netlink event (not at the next resync),
// so losses stay bounded; it warns once (GuestAgentIPAliases and a
// metric), counts every removal, and raises no Warning per re-add. The
// client's node runs with ip_aliases = false: no warning there.
func TestGuestAgentRouteReadded(t *testing.T) {
	e := newEnv(t)
	cfgDir := t.TempDir()
	managed := filepath.Join(cfgDir, "managed.cfg")
	os.WriteFile(managed, []byte("[IpForwarding]\nethernet_proto_id = 66\nip_aliases = true\n"), 0o644)
	off := filepath.Join(cfgDir, "off.cfg")
	os.WriteFile(off, []byte("[IpForwarding]\nip_aliases = false\n"), 0o644)
	const podCIDR = "10.210.12.0/24"
	a := e.node(podCIDR, "--fabric", "routes", "--guest-agent-config", managed, "--resync-period", "30s")
	b := e.node("10.210.13.0/24", "--fabric", "routes", "--guest-agent-config", off)
	p := e.pod(a, "server")
	servePod(t, p, "")
	dial := func() error {
		return b.NS.Do(func(ns.NetNS) error {
			c, err := net.DialTimeout("tcp", net.JoinHostPort(p.IP.String(), "80"), 200*time.Millisecond)
			if err == nil {
				c.Close()
			}
			return err
		})
	}
	if err := framework.Eventually(e.ctx, 20*time.Second, func() (bool, error) { return dial() == nil, nil }); err != nil {
		t.Fatalf("client on B never reached the pod on A: %v", err)
	}
	e.waitNodeEvent(a, agent.EventGuestAgentIPAliases)
	if v := agentMetric(t, a, "aliasip_gce_guest_agent_ip_aliases", ""); v != 1 {
		t.Errorf("aliasip_gce_guest_agent_ip_aliases on A = %v, want 1", v)
	}
	if v := agentMetric(t, b, "aliasip_gce_guest_agent_ip_aliases", ""); v != 0 {
		t.Errorf("aliasip_gce_guest_agent_ip_aliases on B (ip_aliases = false) = %v, want 0", v)
	}

	// The "guest agent": ip route replace table local local PODCIDR dev
	// eth0 proto 66, every second, eight times; meanwhile the client
	// connects every 50 ms (the probe rate is the measurement).
	const wantReadds = 8
	var readds atomic.Int32
	readder := make(chan struct{})
	go func() {
		defer close(readder)
		tk := time.NewTicker(time.Second)
		defer tk.Stop()
		for readds.Load() < wantReadds && e.ctx.Err() == nil {
			if err := a.NS.Do(func(ns.NetNS) error {
				eth0, err := netlink.LinkByName("eth0")
				if err != nil {
					return err
				}
				_, dst, _ := net.ParseCIDR(podCIDR)
				return netlink.RouteReplace(&netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: dst, Table: unix.RT_TABLE_LOCAL,
					Type: unix.RTN_LOCAL, Scope: netlink.SCOPE_HOST, Protocol: 66})
			}); err == nil {
				readds.Add(1)
			}
			<-tk.C
		}
	}()
	var probes, lost int
	tk := time.NewTicker(50 * time.Millisecond)
	for done := false; !done; {
		probes++
		if dial() != nil {
			lost++
		}
		select {
		case <-readder:
			done = true
		case <-tk.C:
		}
	}
	tk.Stop()
	if n := readds.Load(); n < wantReadds {
		t.Fatalf("only %d re-adds: the test did not exercise the agent", n)
	}
	// Each re-add is removed on its netlink event; the last one may still
	// be on its way.
	var removed float64
	if err := framework.Eventually(e.ctx, 10*time.Second, func() (bool, error) {
		removed = agentMetric(t, a, "aliasip_guest_agent_routes_removed_total", "")
		return removed >= wantReadds, fmt.Errorf("%v removals for %d re-adds", removed, wantReadds)
	}); err != nil {
		t.Error(err)
	}
	t.Logf("guest route re-added %d times: %d of %d connects lost (%.1f%%); %v removals", wantReadds, lost, probes, 100*float64(lost)/float64(probes), removed)
	// Without the event-driven removal a route would live until the next
	// resync (30 s here) and almost every connect would fail.
	if lost*10 > probes {
		t.Errorf("%d of %d connects lost while the guest route was re-added every second: more than 10%%", lost, probes)
	}
	if dial() != nil {
		t.Errorf("pod unreachable after the re-adds stopped")
	}
	if ok, _ := framework.HasEvent(e.ctx, e.client, a.Name, "Warning", agent.EventDataPathRepaired); ok {
		t.Errorf("a DataPathRepaired Warning for guest-agent routes: they are reported once, not per re-add")
	}
	if ok, _ := framework.HasEvent(e.ctx, e.client, b.Name, "Warning", agent.EventGuestAgentIPAliases); ok {
		t.Errorf("GuestAgentIPAliases on B, whose guest agent has ip_aliases = false")
	}
}

// servePod runs a TCP server on :80 inside the pod's namespace that writes
// reply to each connection and closes it, until the test ends.
func servePod(t *testing.T, p *framework.Pod, reply string) {
	t.Helper()
	servePodWith(t, p, func(net.Conn) string { return reply })
}

// servePodWith answers every TCP connection on :80 in the pod with
// answer(conn), then closes it.
func servePodWith(t *testing.T, p *framework.Pod, answer func(net.Conn) string) {
	t.Helper()
	var ln net.Listener
	if err := p.NS.Do(func(ns.NetNS) error {
		var err error
		ln, err = net.Listen("tcp", ":80")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	serveTCP(t, ln, func(c net.Conn) { c.Write([]byte(answer(c))) })
}

// A state file left with 0 bytes (a power loss on XFS) does not
// crash-loop the agent: it moves the file aside, rebuilds the allocations
// from the host's pod routes, warns once, and never hands out a live pod's
// address. A second agent on the same state directory is refused.
func TestCorruptStateRecoveredFromHost(t *testing.T) {
	e := newEnv(t)
	n := e.node("10.210.14.0/24")
	live := map[netip.Addr]string{}
	for i := 0; i < 3; i++ {
		p := e.pod(n, fmt.Sprintf("live-%d", i))
		live[p.IP] = p.Name
	}
	// A second agent on the same node directory: refused, the first keeps
	// serving.
	second, err := framework.StartProcess(filepath.Join(n.Dir, "agent-2.log"), nil, agentBin,
		append(n.AgentArgs(cp.Kubeconfig, pluginBin), "--metrics-addr", fmt.Sprintf("127.0.0.1:%d", framework.FreePort()),
			"--socket", filepath.Join(n.Dir, "agent-2.sock"))...)
	if err != nil {
		t.Fatal(err)
	}
	if err := framework.Eventually(e.ctx, 30*time.Second, func() (bool, error) { return second.Exited(), nil }); err != nil {
		second.Stop()
		b, _ := os.ReadFile(second.Log)
		t.Errorf("a second agent on the same state directory kept running:\n%s", b)
	} else if b, _ := os.ReadFile(second.Log); !strings.Contains(string(b), "in use by another process") {
		t.Errorf("second agent exited without saying why:\n%s", b)
	}

	n.Agent.Stop()
	state := filepath.Join(n.State, "ipam.json")
	if err := os.Truncate(state, 0); err != nil {
		t.Fatal(err)
	}
	e.startAgent(n)
	e.waitNodeEvent(n, "IPAMStateRecovered")
	if aside, _ := filepath.Glob(state + ".*.corrupt"); len(aside) != 1 {
		t.Errorf("the empty state was not kept aside: %v", aside)
	}
	for i := 0; i < 5; i++ {
		p := e.pod(n, fmt.Sprintf("new-%d", i))
		if owner, taken := live[p.IP]; taken {
			t.Fatalf("new pod got %v, the address of live pod %s", p.IP, owner)
		}
	}
	if v := agentMetric(t, n, "aliasip_ipam_state_recovered_total", ""); v != 1 {
		t.Errorf("aliasip_ipam_state_recovered_total = %v, want 1", v)
	}
}

// The node's podCIDR changes while the agent runs (the Node deleted and
// re-registered): deleted, the agent refuses ADD at once; back with the
// same podCIDR it serves again; back with another, it stops and exits,
// never handing out an address of the old block. Restarted (as the
// DaemonSet does), it serves the new block and the old block's pods are
// torn down.
func TestPodCIDRChangedWhileRunning(t *testing.T) {
	e := newEnv(t)
	n := e.node("10.210.15.0/24")
	old := e.pod(n, "old-1")
	readyz := func() int {
		resp, err := http.Get("http://" + n.Metrics + "/readyz")
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	deleteNode := func() {
		if err := e.client.CoreV1().Nodes().Delete(e.ctx, n.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	deleteNode()
	if err := framework.Eventually(e.ctx, 10*time.Second, func() (bool, error) { return readyz() == http.StatusServiceUnavailable, nil }); err != nil {
		t.Fatalf("agent still ready after its Node was deleted")
	}
	refused := e.newPod(n, "while-gone")
	if err := n.Add(e.ctx, refused); err == nil {
		t.Fatalf("ADD served (%v) while the Node was gone", refused.IP)
	}
	// Back with the same podCIDR: serving again.
	if err := n.RegisterNode(e.ctx, e.client, "10.210.15.0/24"); err != nil {
		t.Fatal(err)
	}
	if err := framework.Eventually(e.ctx, 10*time.Second, func() (bool, error) { return readyz() == http.StatusOK, nil }); err != nil {
		t.Fatalf("agent not ready again with the same podCIDR")
	}
	again := e.pod(n, "same-block")
	if !netip.MustParsePrefix("10.210.15.0/24").Contains(again.IP) {
		t.Fatalf("pod got %v", again.IP)
	}
	// Back with another podCIDR: the agent exits without serving either.
	deleteNode()
	if err := n.RegisterNode(e.ctx, e.client, "10.210.16.0/24"); err != nil {
		t.Fatal(err)
	}
	if err := framework.Eventually(e.ctx, 15*time.Second, func() (bool, error) { return n.Agent.Exited(), nil }); err != nil {
		t.Fatalf("agent kept running after its podCIDR changed")
	}
	if b, _ := os.ReadFile(n.Agent.Log); !strings.Contains(string(b), "podCIDR changed") {
		t.Errorf("agent exited without saying why")
	}
	e.startAgent(n)
	p := e.pod(n, "new-block")
	if !netip.MustParsePrefix("10.210.16.0/24").Contains(p.IP) {
		t.Fatalf("pod got %v, outside the new podCIDR", p.IP)
	}
	if _, routed := hostRoutes(t, n)[old.IP.String()]; routed {
		t.Errorf("the old block's pod %v is still routed", old.IP)
	}
	if aside, _ := filepath.Glob(filepath.Join(n.State, "ipam.json.*.old")); len(aside) != 1 {
		t.Errorf("old IPAM state not kept aside: %v", aside)
	}
}

// The kubelet's maxPods (the Node's pods capacity) above what the block can
// address: a Warning event and a gauge, which clears once it fits.
func TestMaxPodsOverBlockWarned(t *testing.T) {
	e := newEnv(t)
	n := e.node("10.210.14.0/24")
	setPods := func(v string) {
		t.Helper()
		patch := fmt.Sprintf(`{"status":{"capacity":{"pods":%q}}}`, v)
		if _, err := e.client.CoreV1().Nodes().Patch(e.ctx, n.Name, k8stypes.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}, "status"); err != nil {
			t.Fatal(err)
		}
	}
	setPods("300") // a /24 has 253 pod addresses
	e.waitNodeEvent(n, agent.EventMaxPodsExceedBlock)
	if v := agentMetric(t, n, "aliasip_max_pods_over_block", ""); v != 1 {
		t.Errorf("aliasip_max_pods_over_block = %v, want 1", v)
	}
	setPods("110")
	if err := framework.Eventually(e.ctx, 10*time.Second, func() (bool, error) {
		return agentMetric(t, n, "aliasip_max_pods_over_block", "") == 0, nil
	}); err != nil {
		t.Error("aliasip_max_pods_over_block stays 1 with maxPods 110 on a /24")
	}
}

// TestYoungPodRouteRepairedOnceSettled: a pod's route deleted while its
// address is seconds old (its ADD could still be running: the reconciler
// leaves such pods to the plugin) is still repaired within seconds of the
// pod settling, not at the next resync (an hour here), and the repair is
// reported as one.
func TestYoungPodRouteRepairedOnceSettled(t *testing.T) {
	e := newEnv(t)
	n := e.node("10.210.14.0/24", "--resync-period", "1h")
	p := e.pod(n, "young")
	start := time.Now()
	n.NS.Do(func(ns.NetNS) error {
		return netlink.RouteDel(&netlink.Route{Dst: netlink.NewIPNet(p.IP.AsSlice()), Table: unix.RT_TABLE_MAIN, Scope: netlink.SCOPE_LINK})
	})
	if err := framework.Eventually(e.ctx, 20*time.Second, func() (bool, error) {
		return hostRoutes(t, n)[p.IP.String()] != "", nil
	}); err != nil {
		t.Fatalf("the young pod's route was never repaired (resync 1h): %v", err)
	}
	t.Logf("route repaired %v after the deletion", time.Since(start).Round(100*time.Millisecond))
	if v := agentMetric(t, n, "aliasip_routes_repaired_total", ""); v != 1 {
		t.Errorf("aliasip_routes_repaired_total = %v, want 1", v)
	}
	e.waitNodeEvent(n, "DataPathRepaired")
}
