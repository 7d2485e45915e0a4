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
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

var podCIDR = netip.MustParsePrefix("10.99.1.0/24")

// newHost makes a fresh "node" namespace: eth0 (one end of a veth pair)
// with an address and a default route, as a real node has.
func newHost(t *testing.T) ns.NetNS {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces and veths")
	}
	host, err := testutils.NewNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { host.Close(); testutils.UnmountNS(host) })
	err = host.Do(func(ns.NetNS) error {
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0", MTU: 1460}, PeerName: "uplink"}); err != nil {
			return err
		}
		for _, n := range []string{"lo", "eth0", "uplink"} {
			l, _ := netlink.LinkByName(n)
			if err := netlink.LinkSetUp(l); err != nil {
				return err
			}
		}
		eth0, _ := netlink.LinkByName("eth0")
		addr, _ := netlink.ParseAddr("192.168.50.2/24")
		if err := netlink.AddrAdd(eth0, addr); err != nil {
			return err
		}
		return netlink.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: netip.MustParseAddr("192.168.50.1").AsSlice()})
	})
	if err != nil {
		t.Fatal(err)
	}
	return host
}

// render prints the state aliasip owns on the host in iproute2's and
// sysctl's words, sorted: the routes of the podCIDR in the main and local
// tables (as `ip route` and `ip route show table local` print them) and
// the sysctls of eth0 and of each veth given.
func render(t *testing.T, host ns.NetNS, veths []string) string {
	t.Helper()
	protos := map[netlink.RouteProtocol]string{unix.RTPROT_BOOT: "boot", unix.RTPROT_KERNEL: "kernel", unix.RTPROT_STATIC: "static"}
	scopes := map[netlink.Scope]string{netlink.SCOPE_LINK: "link", netlink.SCOPE_HOST: "host", netlink.SCOPE_UNIVERSE: "global"}
	var lines []string
	err := host.Do(func(ns.NetNS) error {
		for _, table := range []int{unix.RT_TABLE_MAIN, unix.RT_TABLE_LOCAL} {
			routes, err := netlink.RouteListFiltered(unix.AF_INET, &netlink.Route{Table: table}, netlink.RT_FILTER_TABLE)
			if err != nil {
				return err
			}
			for _, r := range routes {
				if r.Dst == nil {
					continue
				}
				p, _ := prefixOf(r.Dst.IP, r.Dst.Mask)
				if p.Bits() < podCIDR.Bits() || !podCIDR.Contains(p.Addr()) {
					continue // the default route and others beyond the podCIDR
				}
				dev := "?"
				if l, err := netlink.LinkByIndex(r.LinkIndex); err == nil {
					dev = l.Attrs().Name
				}
				dst := p.String()
				if p.Bits() == 32 {
					dst = p.Addr().String()
				}
				proto, ok := protos[r.Protocol]
				if !ok {
					proto = fmt.Sprint(int(r.Protocol))
				}
				line := fmt.Sprintf("%s dev %s proto %s scope %s", dst, dev, proto, scopes[r.Scope])
				if table == unix.RT_TABLE_LOCAL {
					line = "local " + line + " table local"
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
		lines = append(lines, read("net/ipv4/ip_forward"), read("net/ipv4/conf/eth0/rp_filter"))
		for _, v := range veths {
			for _, s := range hostVethSysctls {
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

// literal fills the veth names into an expected state written out in full.
func literal(veths []string, state string) string {
	var pairs []string
	for i, v := range veths {
		pairs = append(pairs, fmt.Sprintf("VETH%d", i), v)
	}
	lines := strings.Split(strings.TrimSpace(strings.NewReplacer(pairs...).Replace(state)), "\n")
	for i := range lines {
		lines[i] = strings.TrimSpace(lines[i])
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// TestReconcileStates is a golden state test, the expected host state
// written out as iproute2 and sysctl print it (after tailscale's
// wgengine/router/router_linux_test.go): the state SetupPod and one
// Reconcile build for two pods; a third pod added; one removed; and from
// each, every combination of drift (applied in random order) is brought
// back to exactly that state by one Reconcile.
func TestReconcileStates(t *testing.T) {
	host := newHost(t)
	var want []PodRoute
	var veths []string
	addPod := func(i int) {
		pod, err := testutils.NewNS()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { pod.Close(); testutils.UnmountNS(pod) })
		p := Pod{NetNS: pod.Path(), IfName: "eth0", HostVeth: HostVethName("ns", fmt.Sprint("pod", i)),
			ContainerID: fmt.Sprint("c", i), IP: netip.MustParseAddr(fmt.Sprintf("10.99.1.%d", i+2)), MTU: 1460}
		if err := host.Do(func(ns.NetNS) error { _, err := SetupPod(p); return err }); err != nil {
			t.Fatalf("SetupPod: %v", err)
		}
		want = append(want, PodRoute{IP: p.IP, HostVeth: p.HostVeth})
		veths = append(veths, p.HostVeth)
	}
	reconcile := func() Report {
		var rep Report
		if err := host.Do(func(ns.NetNS) error {
			var err error
			rep, err = Reconcile(podCIDR, "eth0", func() []PodRoute { return want }, ProtoGCEGuestAgent)
			return err
		}); err != nil {
			t.Fatalf("Reconcile: %v", err)
		}
		return rep
	}
	addPod(0)
	addPod(1)
	reconcile() // host-wide settings
	twoPods := literal(veths, `
		10.99.1.2 dev VETH0 proto boot scope link
		10.99.1.3 dev VETH1 proto boot scope link
		net.ipv4.ip_forward = 1
		net.ipv4.conf.eth0.rp_filter = 2
		net.ipv4.conf.VETH0.proxy_arp = 1
		net.ipv4.neigh.VETH0.proxy_delay = 0
		net.ipv4.conf.VETH0.forwarding = 1
		net.ipv6.conf.VETH0.accept_ra = 0
		net.ipv4.conf.VETH1.proxy_arp = 1
		net.ipv4.neigh.VETH1.proxy_delay = 0
		net.ipv4.conf.VETH1.forwarding = 1
		net.ipv6.conf.VETH1.accept_ra = 0
	`)
	if diff := cmp.Diff(twoPods, render(t, host, veths)); diff != "" {
		t.Fatalf("two pods: host state (-want +got):\n%s", diff)
	}
	survivesDrift(t, host, &want, veths, reconcile, twoPods)

	// A third pod is added.
	addPod(2)
	reconcile()
	threePods := literal(veths, `
		10.99.1.2 dev VETH0 proto boot scope link
		10.99.1.3 dev VETH1 proto boot scope link
		10.99.1.4 dev VETH2 proto boot scope link
		net.ipv4.ip_forward = 1
		net.ipv4.conf.eth0.rp_filter = 2
		net.ipv4.conf.VETH0.proxy_arp = 1
		net.ipv4.neigh.VETH0.proxy_delay = 0
		net.ipv4.conf.VETH0.forwarding = 1
		net.ipv6.conf.VETH0.accept_ra = 0
		net.ipv4.conf.VETH1.proxy_arp = 1
		net.ipv4.neigh.VETH1.proxy_delay = 0
		net.ipv4.conf.VETH1.forwarding = 1
		net.ipv6.conf.VETH1.accept_ra = 0
		net.ipv4.conf.VETH2.proxy_arp = 1
		net.ipv4.neigh.VETH2.proxy_delay = 0
		net.ipv4.conf.VETH2.forwarding = 1
		net.ipv6.conf.VETH2.accept_ra = 0
	`)
	if diff := cmp.Diff(threePods, render(t, host, veths)); diff != "" {
		t.Fatalf("pod added: host state (-want +got):\n%s", diff)
	}
	survivesDrift(t, host, &want, veths, reconcile, threePods)

	// The second pod is removed: its veth, route and sysctls go.
	if err := host.Do(func(ns.NetNS) error { return TeardownPod(veths[1], "c1") }); err != nil {
		t.Fatal(err)
	}
	want = []PodRoute{want[0], want[2]}
	reconcile()
	removed := literal([]string{veths[0], veths[2]}, `
		10.99.1.2 dev VETH0 proto boot scope link
		10.99.1.4 dev VETH1 proto boot scope link
		net.ipv4.ip_forward = 1
		net.ipv4.conf.eth0.rp_filter = 2
		net.ipv4.conf.VETH0.proxy_arp = 1
		net.ipv4.neigh.VETH0.proxy_delay = 0
		net.ipv4.conf.VETH0.forwarding = 1
		net.ipv6.conf.VETH0.accept_ra = 0
		net.ipv4.conf.VETH1.proxy_arp = 1
		net.ipv4.neigh.VETH1.proxy_delay = 0
		net.ipv4.conf.VETH1.forwarding = 1
		net.ipv6.conf.VETH1.accept_ra = 0
	`)
	if diff := cmp.Diff(removed, render(t, host, []string{veths[0], veths[2]})); diff != "" {
		t.Fatalf("pod removed: host state (-want +got):\n%s", diff)
	}
	survivesDrift(t, host, &want, []string{veths[0], veths[2]}, reconcile, removed)
}

// survivesDrift applies every combination of drift to the first, second
// and last veths' pods (random order, seeded) and checks that one Reconcile
// brings the host back to golden, reports it, and a second changes nothing.
func survivesDrift(t *testing.T, host ns.NetNS, want *[]PodRoute, veths []string, reconcile func() Report, golden string) {
	t.Helper()
	first, second, last := veths[0], veths[min(1, len(veths)-1)], veths[len(veths)-1]
	drifts := map[string]func() error{
		"route deleted": func() error {
			l, _ := netlink.LinkByName(first)
			return netlink.RouteDel(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: netlink.NewIPNet((*want)[0].IP.AsSlice()), Scope: netlink.SCOPE_LINK})
		},
		"proxy_arp reset": func() error {
			return os.WriteFile("/proc/sys/net/ipv4/conf/"+second+"/proxy_arp", []byte("0"), 0o644)
		},
		"proxy_delay reset": func() error {
			return os.WriteFile("/proc/sys/net/ipv4/neigh/"+last+"/proxy_delay", []byte("80"), 0o644)
		},
		"strict rp_filter": func() error {
			return os.WriteFile("/proc/sys/net/ipv4/conf/eth0/rp_filter", []byte("1"), 0o644)
		},
		"vanished pod's route": func() error {
			l, _ := netlink.LinkByName(last)
			return netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: netlink.NewIPNet(netip.MustParseAddr("10.99.1.200").AsSlice()), Scope: netlink.SCOPE_LINK})
		},
		"guest agent local route": func() error {
			eth0, _ := netlink.LinkByName("eth0")
			return netlink.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: ipNet(podCIDR), Table: unix.RT_TABLE_LOCAL,
				Type: unix.RTN_LOCAL, Protocol: ProtoGCEGuestAgent, Scope: netlink.SCOPE_HOST})
		},
	}
	names := make([]string, 0, len(drifts))
	for n := range drifts {
		names = append(names, n)
	}
	sort.Strings(names)
	rng := rand.New(rand.NewPCG(1, 2))
	for round := 0; round < 8; round++ {
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
		if len(applied) > 0 && render(t, host, veths) == golden {
			t.Fatalf("drift %v did not change the rendered state; the test would not notice", applied)
		}
		rep := reconcile()
		if diff := cmp.Diff(golden, render(t, host, veths)); diff != "" {
			t.Fatalf("round %d, drift %v: state after Reconcile differs (-want +got):\n%s", round, applied, diff)
		}
		if len(applied) > 0 && rep == (Report{}) {
			t.Errorf("round %d: drift %v repaired but not reported", round, applied)
		}
		// Idempotent: a second pass changes nothing.
		if rep := reconcile(); rep != (Report{}) {
			t.Errorf("round %d: second Reconcile changed %+v", round, rep)
		}
	}
}

func TestHostVethName(t *testing.T) {
	a := HostVethName("default", "web-1")
	if len(a) != 14 || !strings.HasPrefix(a, VethPrefix) {
		t.Fatalf("%q: want ali + 11 hex digits", a)
	}
	if a == HostVethName("default", "web-2") || a == HostVethName("default2", "web-1") {
		t.Fatal("names collide")
	}
	if a != HostVethName("default", "web-1") {
		t.Fatal("not deterministic")
	}
}

// SetupPod returns only once both veth ends are operationally up: before
// that the kernel drops the pod's first packets (see waitOperUp).
func TestSetupPodReturnsWithLinksUp(t *testing.T) {
	host := newHost(t)
	for i := 0; i < 20; i++ {
		pod, err := testutils.NewNS()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { pod.Close(); testutils.UnmountNS(pod) })
		p := Pod{NetNS: pod.Path(), IfName: "eth0", HostVeth: HostVethName("up", fmt.Sprint("pod", i)),
			ContainerID: fmt.Sprint("c", i), IP: netip.MustParseAddr(fmt.Sprintf("10.99.1.%d", i+2)), MTU: 1460}
		var hostState, podState netlink.LinkOperState
		if err := host.Do(func(ns.NetNS) error {
			res, err := SetupPod(p)
			if err != nil {
				return err
			}
			l, err := netlink.LinkByName(p.HostVeth)
			if err != nil {
				return err
			}
			hostState = l.Attrs().OperState
			return pod.Do(func(ns.NetNS) error {
				l, err := netlink.LinkByIndex(res.PodIfIndex)
				if err == nil {
					podState = l.Attrs().OperState
				}
				return err
			})
		}); err != nil {
			t.Fatalf("SetupPod: %v", err)
		}
		if hostState != netlink.OperUp || podState != netlink.OperUp {
			t.Errorf("pod %d: SetupPod returned with host end %v, pod end %v; want both up", i, hostState, podState)
		}
	}
}
