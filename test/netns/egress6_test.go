package netns

import (
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/aliasip/aliasip/test/framework"
)

// outside6 is the IPv6 side of the outside stand-in: 2001:2::/48, RFC
// 5180's IPv6 benchmarking range (RFC 2544's 198.18.0.0/15 has no IPv6
// twin there). The fabric holds fd00:fab::1 on its bridge (the nodes'
// IPv6 gateway) and 2001:2::1 towards the outside, which routes back only
// to the nodes' IPv6 subnet fd00:fab::/64, as the internet would: a packet
// from a pod's own IPv6 address gets no answer.
var (
	outsideIPv6  = netip.MustParseAddr("2001:2::10")
	fabricIPv6   = netip.MustParseAddr("fd00:fab::1")
	nodeSubnet6  = netip.MustParsePrefix("fd00:fab::/64")
	outsideNet6  = netip.MustParsePrefix("2001:2::/48")
	fabricOutGw6 = netip.MustParseAddr("2001:2::1")
)

// addIPv6 gives the outside (newOutside) its IPv6 address; its listeners
// (":80", ":9") already take both families.
func (o *outside) addIPv6(t *testing.T, f *framework.Fabric) {
	t.Helper()
	addr := func(l netlink.Link, a netip.Addr, bits int) error {
		// nodad: usable at once, as a router's and a server's are.
		return netlink.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, 128)}, Flags: unix.IFA_F_NODAD})
	}
	if err := f.NS.Do(func(ns.NetNS) error {
		if err := writeSysctl("net/ipv6/conf/all/forwarding", "1"); err != nil {
			return err
		}
		br, err := netlink.LinkByName("vpc0")
		if err != nil {
			return err
		}
		if err := addr(br, fabricIPv6, 64); err != nil {
			return err
		}
		out, err := netlink.LinkByName("out0")
		if err != nil {
			return err
		}
		return addr(out, fabricOutGw6, 64)
	}); err != nil {
		t.Fatalf("fabric IPv6: %v", err)
	}
	if err := o.NS.Do(func(ns.NetNS) error {
		eth0, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		if err := addr(eth0, outsideIPv6, 64); err != nil {
			return err
		}
		_, dst, _ := net.ParseCIDR(nodeSubnet6.String())
		return netlink.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: dst, Gw: fabricOutGw6.AsSlice()})
	}); err != nil {
		t.Fatalf("outside IPv6: %v", err)
	}
}

// routeToOutside6 gives a node the route a VPC's IPv6 default route
// would: the outside via the fabric.
func routeToOutside6(t *testing.T, n *framework.Node) {
	t.Helper()
	if err := n.NS.Do(func(ns.NetNS) error {
		eth0, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		_, dst, _ := net.ParseCIDR(outsideNet6.String())
		return netlink.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: dst, Gw: fabricIPv6.AsSlice()})
	}); err != nil {
		t.Fatal(err)
	}
}

func nftList6In(t *testing.T, n ns.NetNS) string {
	t.Helper()
	var out []byte
	err := n.Do(func(ns.NetNS) error {
		runtime.LockOSThread()
		var err error
		out, err = exec.Command("nft", "list", "table", "ip6", "aliasip").CombinedOutput()
		return err
	})
	if err != nil {
		return "error: " + strings.TrimSpace(string(out))
	}
	return string(out)
}

// TestEgressMasqueradeIPv6 runs the agent binary on dual-stack nodes
// (issue 23 with issue 19's egress): a pod's IPv6 traffic to the outside
// leaves as the node's IPv6 address; pod-to-pod IPv6 across nodes keeps
// the pod's own; the ip6 table is pinned as nft prints it; the
// ConfigMap's IPv6 entries apply without a restart; a flushed ip6 table
// comes back, counted; masquerade off removes both tables.
func TestEgressMasqueradeIPv6(t *testing.T) {
	e := newEnv(t)
	o := newOutside(t, e.fabric)
	o.addIPv6(t, e.fabric)
	cmName := fmt.Sprintf("masq6-%d", time.Now().UnixNano())
	flags := []string{"--masq-config", "default/" + cmName, "--cluster-cidr", "10.221.0.0/16,fd00:221::/48", "--fabric", "routes"}
	n1 := e.dualStackNode("10.221.1.0/24", "fd00:221:0:1::/112", "fd00:fab::41", flags...)
	n2 := e.dualStackNode("10.221.2.0/24", "fd00:221:0:2::/112", "fd00:fab::42", flags...)
	routeToOutside6(t, n1)
	a, b := e.pod(n1, "egress6-a"), e.pod(n2, "egress6-b")
	servePodPeer(t, b)
	a6, b6 := podIPv6(a), podIPv6(b)
	outside6 := net.JoinHostPort(outsideIPv6.String(), "80")

	// 1. To the outside over IPv6: seen as the node's IPv6 address.
	if err := framework.Eventually(e.ctx, 15*time.Second, func() (bool, error) {
		peer, err := peerSeen(a, outside6)
		if err != nil {
			return false, nil
		}
		if peer != "fd00:fab::41" {
			return false, fmt.Errorf("the outside saw %s; want the node's IPv6 address fd00:fab::41", peer)
		}
		return true, nil
	}); err != nil {
		t.Fatalf("pod -> outside over IPv6: %v\n%s", err, nftList6In(t, n1.NS))
	}
	// IPv4 still masqueraded in its own table.
	if peer, err := peerSeen(a, o.IP.String()+":80"); err != nil || peer != n1.IP.String() {
		t.Errorf("pod -> outside over IPv4 seen as %q (%v); want the node's %s", peer, err, n1.IP)
	}
	// 2. Pod to pod across nodes over IPv6: the pod's own address.
	if err := framework.Eventually(e.ctx, 15*time.Second, func() (bool, error) {
		peer, err := peerSeen(a, net.JoinHostPort(b6.String(), "80"))
		if err != nil {
			return false, nil
		}
		if peer != a6.String() {
			return false, fmt.Errorf("pod -> pod over IPv6 seen as %s; want the pod's own %s", peer, a6)
		}
		return true, nil
	}); err != nil {
		t.Errorf("pod -> pod across nodes over IPv6: %v", err)
	}

	// 3. The ip6 table as nft prints it: the node's IPv6 block
	// masqueraded to anything but its own block, the IPv6 cluster CIDR,
	// the node's IPv6 subnet and link-local.
	golden := `table ip6 aliasip {
	set pod_blocks {
		type ipv6_addr
		flags interval
		elements = { fd00:221:0:1::/112 }
	}

	set nonmasq {
		type ipv6_addr
		flags interval
		elements = { fd00:221::/48,
			     fd00:fab::/64,
			     fe80::/10 }
	}

	chain postrouting {
		type nat hook postrouting priority srcnat + 10; policy accept;
		ip6 saddr @pod_blocks ip6 daddr != @nonmasq masquerade fully-random
	}
}
`
	if diff := cmp.Diff(golden, nftList6In(t, n1.NS)); diff != "" {
		t.Errorf("nft list table ip6 aliasip on %s (-want +got):\n%s", n1.Name, diff)
	}
	if got := nftListIn(t, n1.NS); strings.Contains(got, ":") {
		t.Errorf("an IPv6 entry in the ip table:\n%s", got)
	}

	// 4. The outside's IPv6 range in nonMasqueradeCIDRs: applied without
	// a restart; the pod's own IPv6 address arrives, no answer comes back.
	programmed := agentMetric(t, n1, "aliasip_egress_rules_programmed_total", "")
	setMasqConfig(t, e, cmName, "nonMasqueradeCIDRs:\n  - '2001:2::/48'\nresyncInterval: 2s\n")
	if err := framework.Eventually(e.ctx, 15*time.Second, func() (bool, error) {
		return agentMetric(t, n1, "aliasip_egress_rules_programmed_total", "") > programmed &&
			strings.Contains(nftList6In(t, n1.NS), "2001:2::/48"), nil
	}); err != nil {
		t.Fatalf("the ConfigMap's IPv6 range never reached the ip6 table: %v\n%s", err, nftList6In(t, n1.NS))
	}
	if got := nftListIn(t, n1.NS); strings.Contains(got, "2001:2") {
		t.Errorf("the IPv6 entry reached the ip table:\n%s", got)
	}
	token := fmt.Sprintf("udp6-%d", time.Now().UnixNano())
	if err := framework.Eventually(e.ctx, 10*time.Second, func() (bool, error) {
		if err := sendUDP(a, net.JoinHostPort(outsideIPv6.String(), "9"), token); err != nil {
			return false, err
		}
		return len(o.sources(token)) > 0, nil
	}); err != nil {
		t.Fatalf("no IPv6 datagram reached the outside: %v", err)
	}
	if got := o.sources(token); got[0] != a6.String() {
		t.Errorf("with 2001:2::/48 in nonMasqueradeCIDRs the outside saw %v; want the pod's own %s", got, a6)
	}
	if c, err := dialFrom(a, outside6, time.Second); err == nil {
		c.Close()
		t.Errorf("a TCP connection from the pod's own IPv6 address was answered; the outside has no route back to pods")
	}

	// 5. Back to the defaults, then a flushed ip6 table is restored,
	// counted and reported.
	setMasqConfig(t, e, cmName, "resyncInterval: 2s\n")
	if err := framework.Eventually(e.ctx, 15*time.Second, func() (bool, error) {
		return nftList6In(t, n1.NS) == golden, nil
	}); err != nil {
		t.Fatalf("ip6 table not back to the defaults: %v\n%s", err, nftList6In(t, n1.NS))
	}
	repaired := agentMetric(t, n1, "aliasip_egress_rules_repaired_total", "")
	if err := n1.NS.Do(func(ns.NetNS) error {
		runtime.LockOSThread()
		return exec.Command("nft", "flush", "table", "ip6", "aliasip").Run()
	}); err != nil {
		t.Fatal(err)
	}
	if err := framework.Eventually(e.ctx, 10*time.Second, func() (bool, error) {
		return agentMetric(t, n1, "aliasip_egress_rules_repaired_total", "") > repaired && nftList6In(t, n1.NS) == golden, nil
	}); err != nil {
		t.Fatalf("flushed ip6 table not restored: %v\n%s", err, nftList6In(t, n1.NS))
	}

	// 6. Masquerade off removes both tables; the pod's own IPv6 address
	// then reaches the outside.
	n1.Agent.Stop()
	e.startAgent(n1, append(flags, "--masquerade=false")...)
	for fam, got := range map[string]string{"ip": nftListIn(t, n1.NS), "ip6": nftList6In(t, n1.NS)} {
		if !strings.HasPrefix(got, "error:") {
			t.Errorf("masquerade off left table %s aliasip:\n%s", fam, got)
		}
	}
	token = fmt.Sprintf("off6-%d", time.Now().UnixNano())
	if err := framework.Eventually(e.ctx, 10*time.Second, func() (bool, error) {
		if err := sendUDP(a, net.JoinHostPort(outsideIPv6.String(), "9"), token); err != nil {
			return false, err
		}
		return len(o.sources(token)) > 0, nil
	}); err != nil || o.sources(token)[0] != a6.String() {
		t.Errorf("with masquerade off the outside saw %v (%v); want the pod's own %s", o.sources(token), err, a6)
	}
}
