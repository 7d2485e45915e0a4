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

// render prints the state aliasip owns on the host, sorted, one fact a line.
func render(t *testing.T, host ns.NetNS, veths []string) string {
	t.Helper()
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
				if !p.Overlaps(podCIDR) {
					continue
				}
				dev := ""
				if l, err := netlink.LinkByIndex(r.LinkIndex); err == nil {
					dev = l.Attrs().Name
				}
				lines = append(lines, fmt.Sprintf("route table=%d %v dev %s scope %d proto %d", table, p, dev, r.Scope, r.Protocol))
			}
		}
		read := func(key string) string {
			b, err := os.ReadFile("/proc/sys/" + key)
			if err != nil {
				return "?"
			}
			return strings.TrimSpace(string(b))
		}
		lines = append(lines, "sysctl ip_forward="+read("net/ipv4/ip_forward"), "sysctl eth0/rp_filter="+read("net/ipv4/conf/eth0/rp_filter"))
		for _, v := range veths {
			for _, s := range hostVethSysctls {
				key := fmt.Sprintf(s.key, v)
				lines = append(lines, "sysctl "+key+"="+read(key))
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

// TestReconcileStates is a golden state test: from the state SetupPod
// builds, every combination of drift (applied in random order) is brought
// back to exactly that state by one Reconcile.
func TestReconcileStates(t *testing.T) {
	host := newHost(t)
	var want []PodRoute
	var veths []string
	for i := 0; i < 3; i++ {
		pod, err := testutils.NewNS()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { pod.Close(); testutils.UnmountNS(pod) })
		p := Pod{NetNS: pod.Path(), IfName: "eth0", HostVeth: HostVethName("ns", fmt.Sprint("pod", i)),
			ContainerID: fmt.Sprint("c", i), IP: netip.MustParseAddr(fmt.Sprintf("10.99.1.%d", i+2)), MTU: 1460}
		err = host.Do(func(ns.NetNS) error { _, err := SetupPod(p); return err })
		if err != nil {
			t.Fatalf("SetupPod: %v", err)
		}
		want = append(want, PodRoute{IP: p.IP, HostVeth: p.HostVeth})
		veths = append(veths, p.HostVeth)
	}
	reconcile := func() Report {
		var rep Report
		if err := host.Do(func(ns.NetNS) error {
			var err error
			rep, err = Reconcile(podCIDR, "eth0", want, ProtoGCEGuestAgent)
			return err
		}); err != nil {
			t.Fatalf("Reconcile: %v", err)
		}
		return rep
	}
	reconcile() // host-wide settings
	golden := render(t, host, veths)
	for _, line := range []string{
		"route table=254 10.99.1.2/32 dev " + veths[0] + " scope 253 proto 3",
		"sysctl net/ipv4/conf/" + veths[1] + "/proxy_arp=1",
		"sysctl net/ipv4/neigh/" + veths[2] + "/proxy_delay=0",
		"sysctl eth0/rp_filter=2",
		"sysctl ip_forward=1",
	} {
		if !strings.Contains(golden, line) {
			t.Fatalf("golden state lacks %q:\n%s", line, golden)
		}
	}

	drifts := map[string]func() error{
		"route deleted": func() error {
			l, _ := netlink.LinkByName(veths[0])
			return netlink.RouteDel(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: netlink.NewIPNet(want[0].IP.AsSlice()), Scope: netlink.SCOPE_LINK})
		},
		"proxy_arp reset": func() error {
			return os.WriteFile("/proc/sys/net/ipv4/conf/"+veths[1]+"/proxy_arp", []byte("0"), 0o644)
		},
		"proxy_delay reset": func() error {
			return os.WriteFile("/proc/sys/net/ipv4/neigh/"+veths[2]+"/proxy_delay", []byte("80"), 0o644)
		},
		"strict rp_filter": func() error {
			return os.WriteFile("/proc/sys/net/ipv4/conf/eth0/rp_filter", []byte("1"), 0o644)
		},
		"vanished pod's route": func() error {
			l, _ := netlink.LinkByName(veths[2])
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
	for round := 0; round < 12; round++ {
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
