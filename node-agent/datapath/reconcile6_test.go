package datapath

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"sort"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

var podCIDR6 = netip.MustParsePrefix("fd00:99:1::/112")

// render6 is render plus the IPv6 state aliasip owns: the /128 routes of
// podCIDR6 (as `ip -6 route` prints them), each veth's IPv6 addresses (as
// `ip -6 addr show dev VETH` does, with the flags nodad and tentative),
// the host-wide IPv6 sysctls and each veth's IPv6 ones.
func render6(t *testing.T, host ns.NetNS, veths []string) string {
	t.Helper()
	lines := strings.Split(render(t, host, veths), "\n")
	err := host.Do(func(ns.NetNS) error {
		routes, err := netlink.RouteListFiltered(unix.AF_INET6, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return err
		}
		for _, r := range routes {
			if r.Dst == nil {
				continue
			}
			p, _ := prefixOf(r.Dst.IP, r.Dst.Mask)
			if p.Bits() < podCIDR6.Bits() || !podCIDR6.Contains(p.Addr()) {
				continue
			}
			dev := "?"
			if l, err := netlink.LinkByIndex(r.LinkIndex); err == nil {
				dev = l.Attrs().Name
			}
			via := ""
			if r.Gw != nil {
				via = " via " + r.Gw.String()
			}
			lines = append(lines, fmt.Sprintf("%s%s dev %s proto %d metric %d", p.Addr(), via, dev, int(r.Protocol), r.Priority))
		}
		for _, v := range veths {
			l, err := netlink.LinkByName(v)
			if err != nil {
				continue
			}
			addrs, err := netlink.AddrList(l, unix.AF_INET6)
			if err != nil {
				return err
			}
			for _, a := range addrs {
				line := fmt.Sprintf("dev %s inet6 %v", v, a.IPNet)
				if a.Flags&unix.IFA_F_NODAD != 0 {
					line += " nodad"
				}
				if a.Flags&unix.IFA_F_TENTATIVE != 0 {
					line += " tentative"
				}
				lines = append(lines, line)
			}
		}
		read := func(key string) string {
			b, err := os.ReadFile("/proc/sys/" + key)
			if err != nil {
				return "?"
			}
			return strings.ReplaceAll(key, "/", ".") + " = " + strings.TrimSpace(string(b))
		}
		lines = append(lines, read("net/ipv6/conf/all/forwarding"), read("net/ipv6/conf/eth0/accept_ra"))
		for _, v := range veths {
			for _, s := range hostVethSysctls6 {
				lines = append(lines, read(fmt.Sprintf(s.key, v)))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// TestReconcileStatesDualStack is TestReconcileStates for dual-stack pods:
// the state SetupPod and one ReconcileDualStack build for three pods,
// written out in full, and every combination of drift of either family
// (applied in random order) brought back to exactly that state by one
// pass, which reports it; a second pass changes nothing. A single-stack
// Reconcile on the same host leaves the IPv6 state alone.
func TestReconcileStatesDualStack(t *testing.T) {
	host := newDualStackHost(t)
	// The NIC takes router advertisements before PrepareHostIPv6 (1, the
	// kernel's default for a host), so the golden shows it raised to 2.
	var want []PodRoute
	var veths []string
	for i := range 3 {
		p, _ := newPod(t, host, fmt.Sprint("pod", i), fmt.Sprintf("10.99.1.%d", i+2), fmt.Sprintf("fd00:99:1::%d", i+2))
		want = append(want, PodRoute{IP: p.IP, IPv6: p.IPv6, HostVeth: p.HostVeth})
		veths = append(veths, p.HostVeth)
	}
	reconcile := func() Report {
		var rep Report
		if err := host.Do(func(ns.NetNS) error {
			var err error
			rep, err = ReconcileDualStack(podCIDR, podCIDR6, "eth0", func() []PodRoute { return want }, ProtoGCEGuestAgent)
			return err
		}); err != nil {
			t.Fatalf("ReconcileDualStack: %v", err)
		}
		return rep
	}
	reconcile()
	golden := literal(veths, `
		10.99.1.2 dev VETH0 proto boot scope link
		10.99.1.3 dev VETH1 proto boot scope link
		10.99.1.4 dev VETH2 proto boot scope link
		fd00:99:1::2 dev VETH0 proto 3 metric 1024
		fd00:99:1::3 dev VETH1 proto 3 metric 1024
		fd00:99:1::4 dev VETH2 proto 3 metric 1024
		dev VETH0 inet6 fe80::ecee:eeff:feee:eeee/64 nodad
		dev VETH1 inet6 fe80::ecee:eeff:feee:eeee/64 nodad
		dev VETH2 inet6 fe80::ecee:eeff:feee:eeee/64 nodad
		net.ipv4.ip_forward = 1
		net.ipv4.conf.eth0.rp_filter = 2
		net.ipv6.conf.all.forwarding = 1
		net.ipv6.conf.eth0.accept_ra = 2
		net.ipv4.conf.VETH0.proxy_arp = 1
		net.ipv4.neigh.VETH0.proxy_delay = 0
		net.ipv4.conf.VETH0.forwarding = 1
		net.ipv6.conf.VETH0.accept_ra = 0
		net.ipv6.conf.VETH0.addr_gen_mode = 1
		net.ipv6.conf.VETH0.disable_ipv6 = 0
		net.ipv4.conf.VETH1.proxy_arp = 1
		net.ipv4.neigh.VETH1.proxy_delay = 0
		net.ipv4.conf.VETH1.forwarding = 1
		net.ipv6.conf.VETH1.accept_ra = 0
		net.ipv6.conf.VETH1.addr_gen_mode = 1
		net.ipv6.conf.VETH1.disable_ipv6 = 0
		net.ipv4.conf.VETH2.proxy_arp = 1
		net.ipv4.neigh.VETH2.proxy_delay = 0
		net.ipv4.conf.VETH2.forwarding = 1
		net.ipv6.conf.VETH2.accept_ra = 0
		net.ipv6.conf.VETH2.addr_gen_mode = 1
		net.ipv6.conf.VETH2.disable_ipv6 = 0
	`)
	if diff := cmp.Diff(golden, render6(t, host, veths)); diff != "" {
		t.Fatalf("three dual-stack pods: host state (-want +got):\n%s", diff)
	}
	if rep := reconcile(); rep != (Report{}) {
		t.Errorf("a pass over the state SetupPod built changed %+v", rep)
	}

	link := func(name string) netlink.Link {
		l, err := netlink.LinkByName(name)
		if err != nil {
			t.Fatalf("link %s: %v", name, err)
		}
		return l
	}
	drifts := map[string]func() error{
		"IPv4 route deleted": func() error {
			return netlink.RouteDel(&netlink.Route{LinkIndex: link(veths[0]).Attrs().Index, Dst: netlink.NewIPNet(want[0].IP.AsSlice()), Scope: netlink.SCOPE_LINK})
		},
		"/128 route deleted": func() error {
			return netlink.RouteDel(&netlink.Route{LinkIndex: link(veths[0]).Attrs().Index, Dst: ipNet(netip.PrefixFrom(want[0].IPv6, 128))})
		},
		"gateway address removed": func() error {
			return netlink.AddrDel(link(veths[1]), &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(GatewayIPv6, 64))})
		},
		"IPv6 disabled on a veth": func() error {
			return os.WriteFile("/proc/sys/net/ipv6/conf/"+veths[2]+"/disable_ipv6", []byte("1"), 0o644)
		},
		"IPv6 forwarding off": func() error {
			return os.WriteFile("/proc/sys/net/ipv6/conf/all/forwarding", []byte("0"), 0o644)
		},
		"NIC accept_ra back to 1": func() error {
			return os.WriteFile("/proc/sys/net/ipv6/conf/eth0/accept_ra", []byte("1"), 0o644)
		},
		"vanished pod's /128 route": func() error {
			return netlink.RouteAdd(&netlink.Route{LinkIndex: link(veths[0]).Attrs().Index, Dst: ipNet(netip.MustParsePrefix("fd00:99:1::200/128"))})
		},
	}
	names := make([]string, 0, len(drifts))
	for n := range drifts {
		names = append(names, n)
	}
	sort.Strings(names)
	rng := rand.New(rand.NewPCG(3, 4))
	for round := 0; round < 10; round++ {
		var applied []string
		for _, i := range rng.Perm(len(names)) {
			if rng.IntN(2) == 0 && round > 0 {
				continue
			}
			applied = append(applied, names[i])
			if err := host.Do(func(ns.NetNS) error { return drifts[names[i]]() }); err != nil {
				t.Fatalf("drift %q: %v", names[i], err)
			}
		}
		if len(applied) > 0 && render6(t, host, veths) == golden {
			t.Fatalf("drift %v did not change the rendered state; the test would not notice", applied)
		}
		rep := reconcile()
		if diff := cmp.Diff(golden, render6(t, host, veths)); diff != "" {
			t.Fatalf("round %d, drift %v: state after ReconcileDualStack differs (-want +got):\n%s", round, applied, diff)
		}
		if len(applied) > 0 && rep == (Report{}) {
			t.Errorf("round %d: drift %v repaired but not reported", round, applied)
		}
		if rep := reconcile(); rep != (Report{}) {
			t.Errorf("round %d: second pass changed %+v", round, rep)
		}
	}

	// A single-stack pass (the agent on a single-stack node) neither
	// repairs nor removes anything of IPv6.
	if err := host.Do(func(ns.NetNS) error {
		_, err := Reconcile(podCIDR, "eth0", func() []PodRoute { return want }, ProtoGCEGuestAgent)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(golden, render6(t, host, veths)); diff != "" {
		t.Errorf("a single-stack Reconcile changed the IPv6 state (-want +got):\n%s", diff)
	}
}

// HostPodsDualStack reports each pod's IPv6 address from its /128 route;
// HostPods, as before, none.
func TestHostPodsDualStack(t *testing.T) {
	host := newDualStackHost(t)
	a, _ := newPod(t, host, "a", "10.99.1.2", "fd00:99:1::2")
	b, _ := newPod(t, host, "b", "10.99.1.3", "")
	for _, tc := range []struct {
		name  string
		block netip.Prefix
		want  map[string]string
	}{
		{"dual-stack", podCIDR6, map[string]string{a.HostVeth: "c-a 10.99.1.2 fd00:99:1::2", b.HostVeth: "c-b 10.99.1.3 invalid IP"}},
		{"single-stack", netip.Prefix{}, map[string]string{a.HostVeth: "c-a 10.99.1.2 invalid IP", b.HostVeth: "c-b 10.99.1.3 invalid IP"}},
		{"another IPv6 block", netip.MustParsePrefix("fd00:99:2::/112"), map[string]string{a.HostVeth: "c-a 10.99.1.2 invalid IP", b.HostVeth: "c-b 10.99.1.3 invalid IP"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var pods []HostPod
			if err := host.Do(func(ns.NetNS) error {
				var err error
				pods, err = HostPodsDualStack(podCIDR, tc.block)
				return err
			}); err != nil {
				t.Fatal(err)
			}
			got := map[string]string{}
			for _, p := range pods {
				got[p.HostVeth] = fmt.Sprintf("%s %v %v", p.ContainerID, p.IP, p.IPv6)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("host pods (-want +got):\n%s", diff)
			}
		})
	}
}

// SyncFabric routes an IPv6 block via a node's IPv6 address beside the
// IPv4 routes, and removes it once it is no longer wanted.
func TestSyncFabricIPv6(t *testing.T) {
	host := newDualStackHost(t)
	v4 := FabricRoute{PodCIDR: netip.MustParsePrefix("10.99.2.0/24"), Via: netip.MustParseAddr("192.168.50.3")}
	v6 := FabricRoute{PodCIDR: netip.MustParsePrefix("fd00:99:2::/112"), Via: netip.MustParseAddr("fd00:50::3")}
	fabric := func() []string {
		var out []string
		host.Do(func(ns.NetNS) error {
			for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
				routes, err := netlink.RouteListFiltered(fam, &netlink.Route{Table: unix.RT_TABLE_MAIN, Protocol: ProtoFabric}, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
				if err != nil {
					t.Fatal(err)
				}
				for _, r := range routes {
					out = append(out, fmt.Sprintf("%v via %v", r.Dst, r.Gw))
				}
			}
			return nil
		})
		sort.Strings(out)
		return out
	}
	sync := func(want ...FabricRoute) (int, int) {
		var changed, removed int
		if err := host.Do(func(ns.NetNS) error {
			var err error
			changed, removed, err = SyncFabric(want)
			return err
		}); err != nil {
			t.Fatalf("SyncFabric: %v", err)
		}
		return changed, removed
	}
	for _, step := range []struct {
		name                  string
		want                  []FabricRoute
		wantRoutes            []string
		wantChanged, wantGone int
	}{
		{"both families", []FabricRoute{v4, v6}, []string{"10.99.2.0/24 via 192.168.50.3", "fd00:99:2::/112 via fd00:50::3"}, 2, 0},
		{"again: nothing to do", []FabricRoute{v4, v6}, []string{"10.99.2.0/24 via 192.168.50.3", "fd00:99:2::/112 via fd00:50::3"}, 0, 0},
		{"next hop moved", []FabricRoute{v4, {PodCIDR: v6.PodCIDR, Via: netip.MustParseAddr("fd00:50::4")}},
			[]string{"10.99.2.0/24 via 192.168.50.3", "fd00:99:2::/112 via fd00:50::4"}, 1, 0},
		{"IPv6 route no longer wanted", []FabricRoute{v4}, []string{"10.99.2.0/24 via 192.168.50.3"}, 0, 1},
	} {
		changed, removed := sync(step.want...)
		if got := fabric(); !cmp.Equal(got, step.wantRoutes) || changed != step.wantChanged || removed != step.wantGone {
			t.Errorf("%s: routes %v changed %d removed %d; want %v, %d, %d", step.name, got, changed, removed, step.wantRoutes, step.wantChanged, step.wantGone)
		}
	}
}
