package netns

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/aliasip/aliasip/node-agent/datapath"
	"github.com/aliasip/aliasip/node-agent/ipam"
	"github.com/aliasip/aliasip/test/framework"
)

// dualStackNode creates a node whose Node object has podCIDRs [v4, v6], as
// the controller's --dual-stack writes them, and starts its agent. With
// nodeIPv6 the node's eth0 gets that address (/64, on the fabric's
// link) and the Node lists it as a second InternalIP, as the kubelet
// does for a dual-stack node.
func (e *env) dualStackNode(v4, v6, nodeIPv6 string, extra ...string) *framework.Node {
	e.t.Helper()
	n := e.bareNode()
	addrs := []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: n.IP.String()}}
	if nodeIPv6 != "" {
		ip := netip.MustParseAddr(nodeIPv6)
		if err := n.NS.Do(func(ns.NetNS) error {
			eth0, err := netlink.LinkByName("eth0")
			if err != nil {
				return err
			}
			// nodad: usable at once, as a VM's address is.
			return netlink.AddrAdd(eth0, &netlink.Addr{IPNet: &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(64, 128)}, Flags: unix.IFA_F_NODAD})
		}); err != nil {
			e.t.Fatal(err)
		}
		addrs = append(addrs, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: nodeIPv6})
	}
	addrs = append(addrs, corev1.NodeAddress{Type: corev1.NodeHostName, Address: n.Name})
	obj := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.Name}, Spec: corev1.NodeSpec{PodCIDR: v4, PodCIDRs: []string{v4, v6}}}
	if _, err := e.client.CoreV1().Nodes().Create(e.ctx, obj, metav1.CreateOptions{}); err != nil {
		e.t.Fatal(err)
	}
	obj, err := e.client.CoreV1().Nodes().Get(e.ctx, n.Name, metav1.GetOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	obj.Status.Addresses = addrs
	if _, err := e.client.CoreV1().Nodes().UpdateStatus(e.ctx, obj, metav1.UpdateOptions{}); err != nil {
		e.t.Fatal(err)
	}
	e.startAgent(n, extra...)
	return n
}

// podIPv6 is the pod's IPv6 address from its ADD result (the zero Addr:
// none).
func podIPv6(p *framework.Pod) netip.Addr {
	for _, c := range p.Result.IPs {
		if c.Address.IP.To4() == nil {
			a, _ := netip.AddrFromSlice(c.Address.IP)
			return a
		}
	}
	return netip.Addr{}
}

// hostRoutes6 lists the node's /128 routes as "IP dev NAME".
func hostRoutes6(t *testing.T, n *framework.Node) map[string]string {
	t.Helper()
	out := map[string]string{}
	if err := n.NS.Do(func(ns.NetNS) error {
		routes, err := netlink.RouteListFiltered(unix.AF_INET6, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return err
		}
		for _, r := range routes {
			if r.Dst == nil || r.LinkIndex == 0 {
				continue
			}
			if ones, _ := r.Dst.Mask.Size(); ones == 128 {
				if l, err := netlink.LinkByIndex(r.LinkIndex); err == nil {
					out[r.Dst.IP.String()] = l.Attrs().Name
				}
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// byContainer indexes the node's allocations (state file) by container.
func byContainer(t *testing.T, n *framework.Node) map[string]ipam.Allocation {
	t.Helper()
	out := map[string]ipam.Allocation{}
	for _, al := range allocations(t, n) {
		out[al.ContainerID] = al
	}
	return out
}

// A dual-stack node (podCIDRs [IPv4 block, IPv6 /112]): each pod gets one
// address of each block, the CNI result lists both with their gateways and
// default routes, pods reach each other over both families with the first
// packet answered at once, CHECK passes, an agent restart — also one
// whose state file was lost — keeps both addresses of running pods, and
// DEL frees both.
func TestDualStackPods(t *testing.T) {
	e := newEnv(t)
	v4, v6 := netip.MustParsePrefix("10.210.20.0/24"), netip.MustParsePrefix("fd00:210:20::/112")
	n := e.dualStackNode(v4.String(), v6.String(), "")
	a, b := e.pod(n, "ds-a"), e.pod(n, "ds-b")
	for _, p := range []*framework.Pod{a, b} {
		r := p.Result
		if len(r.IPs) != 2 || len(r.Routes) != 2 {
			t.Fatalf("%s: ADD result IPs %v routes %v, want one of each family", p.Name, r.IPs, r.Routes)
		}
		got := fmt.Sprintf("%v gw %v; %v gw %v; routes %v via %v, %v via %v", r.IPs[0].Address.String(), r.IPs[0].Gateway, r.IPs[1].Address.String(), r.IPs[1].Gateway,
			r.Routes[0].Dst.String(), r.Routes[0].GW, r.Routes[1].Dst.String(), r.Routes[1].GW)
		want := fmt.Sprintf("%v/32 gw 169.254.1.1; %v/128 gw fe80::ecee:eeff:feee:eeee; routes 0.0.0.0/0 via 169.254.1.1, ::/0 via fe80::ecee:eeff:feee:eeee", p.IP, podIPv6(p))
		if got != want {
			t.Errorf("%s: ADD result\n got %s\nwant %s", p.Name, got, want)
		}
		if !v4.Contains(p.IP) || !v6.Contains(podIPv6(p)) {
			t.Errorf("%s: addresses %v %v outside the node's blocks", p.Name, p.IP, podIPv6(p))
		}
	}
	if a.IP == b.IP || podIPv6(a) == podIPv6(b) {
		t.Fatalf("pods share an address: %v %v / %v %v", a.IP, podIPv6(a), b.IP, podIPv6(b))
	}
	als := byContainer(t, n)
	for _, p := range []*framework.Pod{a, b} {
		if al := als[p.ContainerID]; al.IP != p.IP || al.IPv6 != podIPv6(p) {
			t.Errorf("%s: agent holds %v %v, the ADD result says %v %v", p.Name, al.IP, al.IPv6, p.IP, podIPv6(p))
		}
	}
	routes6 := hostRoutes6(t, n)
	for _, p := range []*framework.Pod{a, b} {
		if want := datapath.HostVethName("default", p.Name); routes6[podIPv6(p).String()] != want {
			t.Errorf("route for %v: dev %q, want %q (routes %v)", podIPv6(p), routes6[podIPv6(p).String()], want, routes6)
		}
	}

	// Both families between the two pods.
	if _, err := framework.Ping(a.NS, b.IP, 3*time.Second); err != nil {
		t.Errorf("a -> b over IPv4: %v", err)
	}
	if _, err := framework.Ping6(a.NS, podIPv6(b), 3*time.Second); err != nil {
		t.Errorf("a -> b over IPv6: %v", err)
	}
	if _, err := framework.Ping6(b.NS, podIPv6(a), 3*time.Second); err != nil {
		t.Errorf("b -> a over IPv6: %v", err)
	}
	// The first packet of a fresh pod is answered at once over either
	// family: neighbour discovery of the gateway (and of the pod by the
	// host) takes no retry. A lost one is retried after a second.
	for i := 0; i < 3; i++ {
		fresh := e.pod(n, fmt.Sprintf("ds-fresh-%d", i))
		if rtt, err := framework.Ping6(fresh.NS, podIPv6(a), 3*time.Second); err != nil {
			t.Fatalf("%s -> a over IPv6: %v", fresh.Name, err)
		} else if rtt > 150*time.Millisecond {
			t.Errorf("first IPv6 ping of %s took %v: neighbour discovery was delayed", fresh.Name, rtt)
		}
		if rtt, err := framework.Ping6(a.NS, podIPv6(fresh), 3*time.Second); err != nil {
			t.Fatalf("a -> %s over IPv6: %v", fresh.Name, err)
		} else if rtt > 150*time.Millisecond {
			t.Errorf("first IPv6 ping to %s took %v", fresh.Name, rtt)
		}
		if rtt, err := framework.Ping(fresh.NS, b.IP, 3*time.Second); err != nil {
			t.Fatalf("%s -> b over IPv4: %v", fresh.Name, err)
		} else if rtt > 150*time.Millisecond {
			t.Errorf("first IPv4 ping of %s took %v", fresh.Name, rtt)
		}
		if err := n.Del(e.ctx, fresh); err != nil {
			t.Fatalf("DEL %s: %v", fresh.Name, err)
		}
	}
	if err := n.Check(e.ctx, a); err != nil {
		t.Errorf("CHECK of a healthy dual-stack pod: %v", err)
	}
	if err := n.Status(e.ctx); err != nil {
		t.Errorf("STATUS: %v", err)
	}
	if v := agentMetric(t, n, "aliasip_pod_ips", `family="ipv6",state="used"`); v != 2 {
		t.Errorf(`aliasip_pod_ips{family="ipv6",state="used"} = %v, want 2`, v)
	}
	if v := agentMetric(t, n, "aliasip_pod_ips", `family="ipv4",state="used"`); v != 2 {
		t.Errorf(`aliasip_pod_ips{family="ipv4",state="used"} = %v, want 2`, v)
	}

	// CHECK notices a missing /128 route (the agent stopped, so it is
	// not repaired first), and passes again once the agent repaired it.
	n.Agent.Cmd.Process.Signal(unix.SIGSTOP)
	if err := n.NS.Do(func(ns.NetNS) error {
		return netlink.RouteDel(&netlink.Route{Dst: &net.IPNet{IP: podIPv6(a).AsSlice(), Mask: net.CIDRMask(128, 128)}, Table: unix.RT_TABLE_MAIN})
	}); err != nil {
		t.Fatal(err)
	}
	if err := n.Check(e.ctx, a); err == nil || cniCode(err) != 102 {
		t.Errorf("CHECK with the /128 route gone: %v (code %d), want code 102", err, cniCode(err))
	}
	n.Agent.Cmd.Process.Signal(unix.SIGCONT)
	if err := framework.Eventually(e.ctx, 15*time.Second, func() (bool, error) { return n.Check(e.ctx, a) == nil, nil }); err != nil {
		t.Errorf("CHECK never passed after the agent's repair: %v", n.Check(e.ctx, a))
	}

	// A restart keeps both addresses, and so does one whose state was lost
	// (rebuilt from the /32 and /128 routes).
	want := byContainer(t, n)
	for _, lose := range []bool{false, true} {
		n.Agent.Stop()
		state := filepath.Join(n.State, "ipam.json")
		if lose {
			if err := os.Truncate(state, 0); err != nil {
				t.Fatal(err)
			}
		}
		e.startAgent(n)
		if lose {
			e.waitNodeEvent(n, "IPAMStateRecovered")
		}
		got := byContainer(t, n)
		for _, p := range []*framework.Pod{a, b} {
			if g, w := got[p.ContainerID], want[p.ContainerID]; g.IP != w.IP || g.IPv6 != w.IPv6 || !w.IPv6.IsValid() {
				t.Errorf("state lost %v: after the restart %s holds %v %v, before %v %v", lose, p.Name, g.IP, g.IPv6, w.IP, w.IPv6)
			}
		}
		if _, err := framework.Ping6(a.NS, podIPv6(b), 3*time.Second); err != nil {
			t.Errorf("state lost %v: a -> b over IPv6 after the restart: %v", lose, err)
		}
		if err := n.Check(e.ctx, b); err != nil {
			t.Errorf("state lost %v: CHECK after the restart: %v", lose, err)
		}
		// A new pod gets neither address of a running one.
		p := e.pod(n, fmt.Sprintf("ds-new-%v", lose))
		if p.IP == a.IP || p.IP == b.IP || podIPv6(p) == podIPv6(a) || podIPv6(p) == podIPv6(b) || !v6.Contains(podIPv6(p)) {
			t.Errorf("state lost %v: new pod got %v %v (a %v %v, b %v %v)", lose, p.IP, podIPv6(p), a.IP, podIPv6(a), b.IP, podIPv6(b))
		}
		if err := n.Del(e.ctx, p); err != nil {
			t.Fatal(err)
		}
	}

	// DEL frees both addresses: no allocation, no route; both cool down.
	for _, p := range []*framework.Pod{a, b} {
		if err := n.Del(e.ctx, p); err != nil {
			t.Fatalf("DEL %s: %v", p.Name, err)
		}
	}
	if left := allocations(t, n); len(left) != 0 {
		t.Errorf("allocations left after DEL: %v", left)
	}
	if left := hostRoutes6(t, n); len(left) != 0 {
		t.Errorf("/128 routes left after DEL: %v", left)
	}
	if v := agentMetric(t, n, "aliasip_pod_ips", `family="ipv6",state="used"`); v != 0 {
		t.Errorf(`aliasip_pod_ips{family="ipv6",state="used"} after DEL = %v, want 0`, v)
	}
	if v := agentMetric(t, n, "aliasip_pod_ips", `family="ipv6",state="cooling"`); v < 2 {
		t.Errorf(`aliasip_pod_ips{family="ipv6",state="cooling"} right after DEL = %v, want at least 2`, v)
	}
}

// Two dual-stack nodes with --fabric=routes: each routes the other's IPv6
// block via its IPv6 InternalIP, so pods reach each other across nodes
// over IPv6 as over IPv4.
func TestDualStackFabric(t *testing.T) {
	e := newEnv(t)
	a := e.dualStackNode("10.210.21.0/24", "fd00:210:21::/112", "fd00:fab::21", "--fabric", "routes")
	b := e.dualStackNode("10.210.22.0/24", "fd00:210:22::/112", "fd00:fab::22", "--fabric", "routes")
	pa, pb := e.pod(a, "ds-on-a"), e.pod(b, "ds-on-b")
	if err := framework.Eventually(e.ctx, 20*time.Second, func() (bool, error) {
		_, err := framework.Ping6(pa.NS, podIPv6(pb), time.Second)
		return err == nil, nil
	}); err != nil {
		t.Fatalf("pod on A cannot reach pod on B over IPv6: %v", err)
	}
	if _, err := framework.Ping6(pb.NS, podIPv6(pa), 3*time.Second); err != nil {
		t.Errorf("B -> A over IPv6: %v", err)
	}
	if _, err := framework.Ping(pa.NS, pb.IP, 3*time.Second); err != nil {
		t.Errorf("A -> B over IPv4: %v", err)
	}
	if v := agentMetric(t, a, "aliasip_fabric_routes", ""); v != 2 {
		t.Errorf("aliasip_fabric_routes on A = %v, want 2 (B's two blocks)", v)
	}
}

// Across nodes, pod-to-pod traffic keeps the pods' own addresses (the pod
// ranges are given as --cluster-cidr, as the chart gives them, so egress
// does not masquerade it): once both agents route each other's blocks, the
// first echo from a pod to a pod on the other node is answered, over IPv6
// as over IPv4 — no packet lost to neighbour discovery on either node or
// in either pod.
func TestDualStackFabricFirstPacket(t *testing.T) {
	e := newEnv(t)
	flags := []string{"--fabric", "routes", "--cluster-cidr", "10.210.0.0/16,fd00:210::/32"}
	a := e.dualStackNode("10.210.23.0/24", "fd00:210:23::/112", "fd00:fab::23", flags...)
	b := e.dualStackNode("10.210.24.0/24", "fd00:210:24::/112", "fd00:fab::24", flags...)
	for _, n := range []*framework.Node{a, b} {
		if err := framework.Eventually(e.ctx, 20*time.Second, func() (bool, error) {
			return agentMetric(t, n, "aliasip_fabric_routes", "") == 2, nil
		}); err != nil {
			t.Fatalf("%s never routed the other node's two blocks: %v", n.Name, err)
		}
	}
	pa, pb := e.pod(a, "first-on-a"), e.pod(b, "first-on-b")
	if rtt, err := framework.Ping6(pa.NS, podIPv6(pb), time.Second); err != nil {
		t.Errorf("first IPv6 echo A -> B: %v", err)
	} else {
		t.Logf("first IPv6 echo A -> B: %v", rtt)
	}
	if rtt, err := framework.Ping(pa.NS, pb.IP, time.Second); err != nil {
		t.Errorf("first IPv4 echo A -> B: %v", err)
	} else {
		t.Logf("first IPv4 echo A -> B: %v", rtt)
	}
}
