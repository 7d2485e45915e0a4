package datapath

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// hostIPv6 is the test node's own IPv6 address, on its eth0.
var hostIPv6 = netip.MustParseAddr("fd00:50::2")

// firstTry bounds a first connection attempt. A lost first packet is only
// retried after a second: the kernel re-solicits an unanswered neighbour
// after retrans_time_ms (1000 ms by default) and resends a SYN after
// TCP_TIMEOUT_INIT (1 s). A connection made within firstTry was made by
// the first packet, neighbour discovery included, with nothing delayed.
const firstTry = 500 * time.Millisecond

// newDualStackHost is newHost with IPv6: fd00:50::2/64 on eth0 and the
// host-wide IPv6 settings (PrepareHostIPv6) applied.
func newDualStackHost(t *testing.T) ns.NetNS {
	t.Helper()
	host := newHost(t)
	err := host.Do(func(ns.NetNS) error {
		eth0, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		if err := netlink.AddrAdd(eth0, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(hostIPv6, 64)), Flags: unix.IFA_F_NODAD}); err != nil {
			return err
		}
		if _, err := PrepareHost("eth0"); err != nil {
			return err
		}
		_, err = PrepareHostIPv6("eth0")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return host
}

// newPod sets up pod i on host, dual-stack when ip6 is not empty.
func newPod(t *testing.T, host ns.NetNS, name string, ip4, ip6 string) (Pod, ns.NetNS) {
	t.Helper()
	podNS, err := testutils.NewNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { podNS.Close(); testutils.UnmountNS(podNS) })
	p := Pod{NetNS: podNS.Path(), IfName: "eth0", HostVeth: HostVethName("ipv6", name),
		ContainerID: "c-" + name, IP: netip.MustParseAddr(ip4), MTU: 1460}
	if ip6 != "" {
		p.IPv6 = netip.MustParseAddr(ip6)
	}
	if err := host.Do(func(ns.NetNS) error { _, err := SetupPod(p); return err }); err != nil {
		t.Fatalf("SetupPod %s: %v", name, err)
	}
	return p, podNS
}

// serve listens on addr (port chosen by the kernel) inside n, accepting and
// closing connections until the test ends.
func serve(t *testing.T, n ns.NetNS, addr netip.Addr) netip.AddrPort {
	t.Helper()
	var l net.Listener
	if err := n.Do(func(ns.NetNS) error {
		var err error
		l, err = net.Listen("tcp", netip.AddrPortFrom(addr, 0).String())
		return err
	}); err != nil {
		t.Fatalf("listen on %v: %v", addr, err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return netip.MustParseAddrPort(l.Addr().String())
}

// connectOnce makes one TCP connection from inside n to to, failing if it
// is not made within firstTry.
func connectOnce(n ns.NetNS, to netip.AddrPort) error {
	return n.Do(func(ns.NetNS) error {
		start := time.Now()
		c, err := net.DialTimeout("tcp", to.String(), firstTry)
		if err != nil {
			return fmt.Errorf("first connection to %v: %v after %v", to, err, time.Since(start).Round(time.Millisecond))
		}
		return c.Close()
	})
}

// Two dual-stack pods on one node reach each other, and the node reaches
// them and they it, over IPv6; every first connection from or to a pod
// that was just set up is made by its first packet (no neighbour
// discovery delay); and the host holds no proxy-NDP entry.
func TestIPv6PodsReachEachOtherAtOnce(t *testing.T) {
	host := newDualStackHost(t)
	a, aNS := newPod(t, host, "a", "10.99.1.2", "fd00:99:1::2")
	b, bNS := newPod(t, host, "b", "10.99.1.3", "fd00:99:1::3")
	toA, toB := serve(t, aNS, a.IPv6), serve(t, bNS, b.IPv6)
	toHost := serve(t, host, hostIPv6)
	for _, c := range []struct {
		name string
		from ns.NetNS
		to   netip.AddrPort
	}{
		{"a -> b", aNS, toB},
		{"b -> a", bNS, toA},
		{"a -> host", aNS, toHost},
		{"host -> b", host, toB},
	} {
		if err := connectOnce(c.from, c.to); err != nil {
			t.Errorf("%s: %v", c.name, err)
		}
	}
	// The same from fresh pods: the first packet each way meets an empty
	// neighbour cache on both veth ends, and a pod brand new.
	for i := 0; i < 6; i++ {
		name := fmt.Sprint("fresh", i)
		p, pNS := newPod(t, host, name, fmt.Sprintf("10.99.1.%d", 10+i), fmt.Sprintf("fd00:99:1::%x", 0x10+i))
		var err error
		switch i % 3 {
		case 0: // fresh pod -> pod
			err = connectOnce(pNS, toA)
		case 1: // pod -> fresh pod
			err = connectOnce(bNS, serve(t, pNS, p.IPv6))
		case 2: // node -> fresh pod, then fresh pod -> node
			if err = connectOnce(host, serve(t, pNS, p.IPv6)); err == nil {
				err = connectOnce(pNS, toHost)
			}
		}
		if err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	// IPv4 is as before in a dual-stack pod.
	if err := connectOnce(aNS, serve(t, bNS, b.IP)); err != nil {
		t.Errorf("a -> b over IPv4: %v", err)
	}
	err := host.Do(func(ns.NetNS) error {
		for _, p := range []Pod{a, b} {
			if err := CheckPod(p); err != nil {
				return fmt.Errorf("CheckPod %s: %w", p.HostVeth, err)
			}
		}
		proxies, err := netlink.NeighProxyList(0, unix.AF_INET6)
		if err != nil {
			return err
		}
		if len(proxies) > 0 {
			return fmt.Errorf("proxy-NDP entries on the host: %v", proxies)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
}

// What SetupPod builds for IPv6, as iproute2 would show it: the pod's
// /128 without a prefix route, its default route via GatewayIPv6, the host
// veth's MAC and gateway address, the /128 route, the sysctls.
func TestIPv6SetupPodState(t *testing.T) {
	host := newDualStackHost(t)
	p, podNS := newPod(t, host, "state", "10.99.1.2", "fd00:99:1::2")
	err := host.Do(func(ns.NetNS) error {
		read := func(key string) string {
			b, _ := os.ReadFile("/proc/sys/" + key)
			return strings.TrimSpace(string(b))
		}
		if got := read("net/ipv6/conf/all/forwarding"); got != "1" {
			t.Errorf("host net.ipv6.conf.all.forwarding = %s, want 1", got)
		}
		if got := read("net/ipv6/conf/eth0/accept_ra"); got != "2" {
			t.Errorf("host net.ipv6.conf.eth0.accept_ra = %s, want 2 (RAs still taken with forwarding on)", got)
		}
		for key, want := range map[string]string{"accept_ra": "0", "addr_gen_mode": "1", "disable_ipv6": "0", "proxy_ndp": "0"} {
			if got := read("net/ipv6/conf/" + p.HostVeth + "/" + key); got != want {
				t.Errorf("host veth %s = %s, want %s", key, got, want)
			}
		}
		veth, err := netlink.LinkByName(p.HostVeth)
		if err != nil {
			return err
		}
		if !bytes.Equal(veth.Attrs().HardwareAddr, HostVethMAC) {
			t.Errorf("host veth MAC %v, want %v", veth.Attrs().HardwareAddr, HostVethMAC)
		}
		addrs, err := netlink.AddrList(veth, unix.AF_INET6)
		if err != nil {
			return err
		}
		if len(addrs) != 1 || addrs[0].IPNet.String() != "fe80::ecee:eeff:feee:eeee/64" || addrs[0].Flags&unix.IFA_F_TENTATIVE != 0 {
			t.Errorf("host veth IPv6 addresses %v, want only fe80::ecee:eeff:feee:eeee/64, not tentative", addrs)
		}
		routes, err := netlink.RouteListFiltered(unix.AF_INET6, &netlink.Route{Dst: ipNet(netip.PrefixFrom(p.IPv6, 128))}, netlink.RT_FILTER_DST)
		if err != nil {
			return err
		}
		if len(routes) != 1 || routes[0].LinkIndex != veth.Attrs().Index || routes[0].Gw != nil {
			t.Errorf("host routes to %v/128: %v, want one dev %s", p.IPv6, routes, p.HostVeth)
		}
		return podNS.Do(func(ns.NetNS) error {
			for key, want := range map[string]string{"accept_ra": "0", "accept_dad": "0", "disable_ipv6": "0"} {
				if got := read("net/ipv6/conf/eth0/" + key); got != want {
					t.Errorf("pod eth0 %s = %s, want %s", key, got, want)
				}
			}
			eth0, err := netlink.LinkByName("eth0")
			if err != nil {
				return err
			}
			addrs, err := netlink.AddrList(eth0, unix.AF_INET6)
			if err != nil {
				return err
			}
			var global []string
			for _, a := range addrs {
				if a.Flags&unix.IFA_F_TENTATIVE != 0 {
					t.Errorf("pod address %v is tentative", a.IPNet)
				}
				if !a.IP.IsLinkLocalUnicast() {
					global = append(global, a.IPNet.String())
				}
			}
			if len(global) != 1 || global[0] != "fd00:99:1::2/128" {
				t.Errorf("pod global IPv6 addresses %v, want [fd00:99:1::2/128]", global)
			}
			routes, err := netlink.RouteList(eth0, unix.AF_INET6)
			if err != nil {
				return err
			}
			var got []string
			for _, r := range routes {
				if r.Dst != nil && r.Dst.IP.IsLinkLocalUnicast() {
					continue // fe80::/64, the kernel's with the link-local address
				}
				dst := "default"
				if r.Dst != nil && maskBits(r.Dst.Mask) != 0 {
					dst = r.Dst.String()
				}
				got = append(got, fmt.Sprintf("%s via %v", dst, r.Gw))
			}
			if len(got) != 1 || got[0] != "default via fe80::ecee:eeff:feee:eeee" {
				t.Errorf("pod IPv6 routes %v, want only default via fe80::ecee:eeff:feee:eeee", got)
			}
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
}

// CheckPod reports each missing IPv6 part; TeardownPod removes the /128.
func TestIPv6CheckAndTeardown(t *testing.T) {
	host := newDualStackHost(t)
	for i, c := range []struct {
		name   string
		host   bool // break it in the host's namespace, else the pod's
		break_ func(p Pod) error
		want   string
	}{
		{"host /128 route deleted", true, func(p Pod) error {
			l, _ := netlink.LinkByName(p.HostVeth)
			return netlink.RouteDel(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: ipNet(netip.PrefixFrom(p.IPv6, 128))})
		}, "no route fd00:99:1::%x/128 dev"},
		{"gateway address removed", true, func(p Pod) error {
			l, _ := netlink.LinkByName(p.HostVeth)
			return netlink.AddrDel(l, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(GatewayIPv6, 64))})
		}, "lacks the pod's gateway fe80::ecee:eeff:feee:eeee"},
		{"host veth addr_gen_mode reset", true, func(p Pod) error {
			return os.WriteFile("/proc/sys/net/ipv6/conf/"+p.HostVeth+"/addr_gen_mode", []byte("0"), 0o644)
		}, "addr_gen_mode"},
		{"pod address deleted", false, func(p Pod) error {
			l, _ := netlink.LinkByName("eth0")
			return netlink.AddrDel(l, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(p.IPv6, 128))})
		}, "lacks fd00:99:1::%x/128"},
		{"pod default route deleted", false, func(p Pod) error {
			l, _ := netlink.LinkByName("eth0")
			return netlink.RouteDel(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: ipNet(netip.MustParsePrefix("::/0")), Gw: GatewayIPv6.AsSlice()})
		}, "no IPv6 default route via fe80::ecee:eeff:feee:eeee"},
	} {
		t.Run(c.name, func(t *testing.T) {
			p, podNS := newPod(t, host, fmt.Sprint("check", i), fmt.Sprintf("10.99.1.%d", 2+i), fmt.Sprintf("fd00:99:1::%x", 2+i))
			check := func() error {
				var err error
				host.Do(func(ns.NetNS) error { err = CheckPod(p); return nil })
				return err
			}
			if err := check(); err != nil {
				t.Fatalf("CheckPod before: %v", err)
			}
			where := podNS
			if c.host {
				where = host
			}
			if err := where.Do(func(ns.NetNS) error { return c.break_(p) }); err != nil {
				t.Fatalf("break: %v", err)
			}
			want := c.want
			if strings.Contains(want, "%x") {
				want = fmt.Sprintf(want, 2+i)
			}
			if err := check(); err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("CheckPod after %s: %v, want an error with %q", c.name, err, want)
			}
		})
	}

	t.Run("teardown", func(t *testing.T) {
		p, _ := newPod(t, host, "teardown", "10.99.1.50", "fd00:99:1::50")
		routesTo := func() []netlink.Route {
			var routes []netlink.Route
			err := host.Do(func(ns.NetNS) error {
				var err error
				routes, err = netlink.RouteListFiltered(unix.AF_INET6, &netlink.Route{Dst: ipNet(netip.PrefixFrom(p.IPv6, 128))}, netlink.RT_FILTER_DST)
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			return routes
		}
		if len(routesTo()) != 1 {
			t.Fatalf("before teardown: routes to %v/128: %v, want one", p.IPv6, routesTo())
		}
		if err := host.Do(func(ns.NetNS) error { return TeardownPod(p.HostVeth, p.ContainerID) }); err != nil {
			t.Fatalf("TeardownPod: %v", err)
		}
		if r := routesTo(); len(r) != 0 {
			t.Errorf("after teardown: routes to %v/128: %v, want none", p.IPv6, r)
		}
		var err error
		host.Do(func(ns.NetNS) error { err = CheckPod(p); return nil })
		if err == nil {
			t.Error("CheckPod after teardown: no error")
		}
		// A second DEL finds nothing and is fine.
		if err := host.Do(func(ns.NetNS) error { return TeardownPod(p.HostVeth, p.ContainerID) }); err != nil {
			t.Errorf("second TeardownPod: %v", err)
		}
	})
}

// A single-stack pod on a dual-stack host gets nothing of IPv6: a random
// MAC, the kernel's own link-local address, no IPv6 route in the pod.
func TestSingleStackPodHasNoIPv6Gateway(t *testing.T) {
	host := newDualStackHost(t)
	p, podNS := newPod(t, host, "v4only", "10.99.1.2", "")
	err := host.Do(func(ns.NetNS) error {
		if err := CheckPod(p); err != nil {
			return err
		}
		veth, err := netlink.LinkByName(p.HostVeth)
		if err != nil {
			return err
		}
		if bytes.Equal(veth.Attrs().HardwareAddr, HostVethMAC) {
			t.Errorf("single-stack host veth has the IPv6 gateway MAC")
		}
		addrs, _ := netlink.AddrList(veth, unix.AF_INET6)
		for _, a := range addrs {
			if a.IP.Equal(GatewayIPv6.AsSlice()) {
				t.Errorf("single-stack host veth has %v", a.IPNet)
			}
		}
		return podNS.Do(func(ns.NetNS) error {
			routes, err := netlink.RouteList(nil, unix.AF_INET6)
			if err != nil {
				return err
			}
			for _, r := range routes {
				if r.Gw != nil {
					t.Errorf("single-stack pod has IPv6 route %v", r)
				}
			}
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestSetupPodRefusesBadIPv6(t *testing.T) {
	for _, a := range []string{"10.99.1.9", "::ffff:10.99.1.9", "fe80::1", "ff02::1"} {
		_, err := SetupPod(Pod{IP: netip.MustParseAddr("10.99.1.9"), IPv6: netip.MustParseAddr(a)})
		if err == nil || !strings.Contains(err.Error(), "global unicast IPv6") {
			t.Errorf("IPv6 %s: %v, want refused", a, err)
		}
	}
}

// GatewayIPv6 is the link-local address the kernel itself would derive
// from HostVethMAC (RFC 4291 appendix A, modified EUI-64).
func TestGatewayIPv6IsEUI64OfHostVethMAC(t *testing.T) {
	m := HostVethMAC
	var a [16]byte
	a[0], a[1] = 0xfe, 0x80
	copy(a[8:], []byte{m[0] ^ 0x02, m[1], m[2], 0xff, 0xfe, m[3], m[4], m[5]})
	if got := netip.AddrFrom16(a); got != GatewayIPv6 {
		t.Fatalf("EUI-64 link-local of %v is %v, GatewayIPv6 is %v", m, got, GatewayIPv6)
	}
}

// PrepareHostIPv6 raises the NIC's accept_ra from 1 to 2 only, and is
// idempotent.
func TestPrepareHostIPv6(t *testing.T) {
	host := newHost(t)
	err := host.Do(func(ns.NetNS) error {
		read := func(key string) string {
			b, _ := os.ReadFile("/proc/sys/" + key)
			return strings.TrimSpace(string(b))
		}
		if got := read("net/ipv6/conf/eth0/accept_ra"); got != "1" {
			return fmt.Errorf("fresh namespace: eth0 accept_ra = %s, the test expects 1", got)
		}
		if n, err := PrepareHostIPv6("eth0"); err != nil || n != 2 {
			return fmt.Errorf("first PrepareHostIPv6: %d changed, %v; want 2", n, err)
		}
		if a, f := read("net/ipv6/conf/eth0/accept_ra"), read("net/ipv6/conf/all/forwarding"); a != "2" || f != "1" {
			return fmt.Errorf("accept_ra %s, all.forwarding %s; want 2, 1", a, f)
		}
		if n, err := PrepareHostIPv6("eth0"); err != nil || n != 0 {
			return fmt.Errorf("second PrepareHostIPv6: %d changed, %v; want 0", n, err)
		}
		// A NIC configured statically (accept_ra=0) is left so.
		if err := os.WriteFile("/proc/sys/net/ipv6/conf/uplink/accept_ra", []byte("0"), 0o644); err != nil {
			return err
		}
		if _, err := PrepareHostIPv6("uplink"); err != nil {
			return err
		}
		if got := read("net/ipv6/conf/uplink/accept_ra"); got != "0" {
			return fmt.Errorf("uplink accept_ra = %s, want 0 left alone", got)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
