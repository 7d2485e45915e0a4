package netns

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/aliasip/aliasip/test/framework"
)

// outside is a stand-in for the internet: a namespace behind the fabric's
// router on RFC 2544's 198.18.0.0/15, which routes back only to the node
// subnet. It answers TCP on :80 with the peer address it saw and records
// the sources of UDP datagrams on :9.
type outside struct {
	NS   ns.NetNS
	IP   netip.Addr
	mu   sync.Mutex
	seen map[string][]string // UDP payload -> source addresses
}

func newOutside(t *testing.T, f *framework.Fabric) *outside {
	t.Helper()
	o := &outside{IP: netip.MustParseAddr("198.18.0.10"), seen: map[string][]string{}}
	n, err := testutils.NewNS()
	if err != nil {
		t.Fatal(err)
	}
	o.NS = n
	t.Cleanup(func() { n.Close(); testutils.UnmountNS(n) })
	err = f.NS.Do(func(ns.NetNS) error {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "out0"}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(n.Fd()))}
		if err := netlink.LinkAdd(veth); err != nil {
			return err
		}
		l, _ := netlink.LinkByName("out0")
		addr, _ := netlink.ParseAddr("198.18.0.1/24")
		if err := netlink.AddrAdd(l, addr); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
		// The fabric routes between the VPC and the outside, and takes
		// packets from pod addresses it has no route back to.
		for k, v := range map[string]string{"net/ipv4/ip_forward": "1", "net/ipv4/conf/all/rp_filter": "0", "net/ipv4/conf/out0/rp_filter": "0", "net/ipv4/conf/vpc0/rp_filter": "0"} {
			if err := writeSysctl(k, v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("outside link: %v", err)
	}
	err = n.Do(func(ns.NetNS) error {
		for _, name := range []string{"lo", "eth0"} {
			l, _ := netlink.LinkByName(name)
			if err := netlink.LinkSetUp(l); err != nil {
				return err
			}
		}
		eth0, _ := netlink.LinkByName("eth0")
		addr, _ := netlink.ParseAddr(o.IP.String() + "/24")
		if err := netlink.AddrAdd(eth0, addr); err != nil {
			return err
		}
		// Back to the node subnet only, as the internet would: a packet
		// from a pod address gets no answer.
		_, dst, _ := net.ParseCIDR(f.Subnet.String())
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: dst, Gw: net.ParseIP("198.18.0.1")}); err != nil {
			return err
		}
		ln, err := net.Listen("tcp", ":80")
		if err != nil {
			return err
		}
		serveTCP(t, ln, func(c net.Conn) {
			// One line per line read: the peer as seen.
			sc := bufio.NewScanner(c)
			fmt.Fprintf(c, "%s\n", c.RemoteAddr().(*net.TCPAddr).IP)
			for sc.Scan() {
				fmt.Fprintf(c, "%s\n", c.RemoteAddr().(*net.TCPAddr).IP)
			}
		})
		pc, err := net.ListenPacket("udp", ":9")
		if err != nil {
			return err
		}
		t.Cleanup(func() { pc.Close() })
		go func() {
			buf := make([]byte, 256)
			for {
				k, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				o.mu.Lock()
				o.seen[string(buf[:k])] = append(o.seen[string(buf[:k])], from.(*net.UDPAddr).IP.String())
				o.mu.Unlock()
			}
		}()
		return nil
	})
	if err != nil {
		t.Fatalf("outside host: %v", err)
	}
	return o
}

// writeSysctl writes a net.* sysctl of the namespace the calling thread is
// in (inside ns.Do).
func writeSysctl(key, value string) error {
	return os.WriteFile("/proc/sys/"+key, []byte(value), 0o644)
}

// sources returns the source addresses the outside saw sending token.
func (o *outside) sources(token string) []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]string(nil), o.seen[token]...)
}

// dialFrom opens a TCP connection from the pod's namespace.
func dialFrom(p *framework.Pod, addr string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := p.NS.Do(func(ns.NetNS) error {
		var err error
		c, err = net.DialTimeout("tcp", addr, timeout)
		return err
	})
	return c, err
}

// peerSeen is the address the outside (or a pod server) saw for a new
// connection from p.
func peerSeen(p *framework.Pod, addr string) (string, error) {
	c, err := dialFrom(p, addr, 2*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

func sendUDP(p *framework.Pod, addr, token string) error {
	return p.NS.Do(func(ns.NetNS) error {
		c, err := net.Dial("udp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte(token))
		return err
	})
}

func nftListIn(t *testing.T, n ns.NetNS) string {
	t.Helper()
	var out []byte
	err := n.Do(func(ns.NetNS) error {
		runtime.LockOSThread()
		var err error
		out, err = exec.Command("nft", "list", "table", "ip", "aliasip").CombinedOutput()
		return err
	})
	if err != nil {
		return "error: " + strings.TrimSpace(string(out))
	}
	return string(out)
}

func setMasqConfig(t *testing.T, e *env, name, data string) {
	t.Helper()
	cms := e.client.CoreV1().ConfigMaps("default")
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name}, Data: map[string]string{"config": data}}
	if _, err := cms.Update(e.ctx, cm, metav1.UpdateOptions{}); apierrors.IsNotFound(err) {
		_, err = cms.Create(e.ctx, cm, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
	} else if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cms.Delete(context.Background(), name, metav1.DeleteOptions{}) })
}

// TestEgressMasquerade runs the agent binary with masquerade on (the
// default) against the outside stand-in: pods reach it as their node;
// pod-to-pod and pod-to-node traffic keeps the pod's address; the rule set
// is pinned as nft prints it; a ConfigMap change applies without a
// restart; a malformed one is refused and the rules stay; a flushed table
// comes back; a restart leaves the table and an established connection in
// place; masquerade off and `aliasip-agent cleanup` remove the table.
func TestEgressMasquerade(t *testing.T) {
	e := newEnv(t)
	o := newOutside(t, e.fabric)
	cmName := fmt.Sprintf("masq-%d", time.Now().UnixNano())
	masqFlags := []string{"--masq-config", "default/" + cmName, "--cluster-cidr", "10.220.0.0/16"}
	n1 := e.node("10.220.1.0/24", masqFlags...)
	// With the fake cloud the agents route each other's blocks (--fabric
	// defaults to routes).
	n2 := e.node("10.220.2.0/24", masqFlags...)
	a, b := e.pod(n1, "egress-a"), e.pod(n2, "egress-b")
	servePodPeer(t, b)
	outsideAddr := o.IP.String() + ":80"

	// 1. To the outside: seen as the node.
	if err := framework.Eventually(e.ctx, 10*time.Second, func() (bool, error) {
		peer, err := peerSeen(a, outsideAddr)
		if err != nil {
			return false, nil
		}
		if peer != n1.IP.String() {
			return false, fmt.Errorf("the outside saw %s; want the node's address %s", peer, n1.IP)
		}
		return true, nil
	}); err != nil {
		t.Fatalf("pod -> outside: %v", err)
	}
	// 2. Pod to pod across nodes: the pod's own address.
	if peer, err := peerSeen(a, b.IP.String()+":80"); err != nil || peer != a.IP.String() {
		t.Errorf("pod -> pod across nodes seen as %q (%v); want the pod's own %s", peer, err, a.IP)
	}
	if err := framework.Eventually(e.ctx, 15*time.Second, func() (bool, error) {
		return framework.HasEvent(e.ctx, e.client, n1.Name, "Normal", "EgressRulesProgrammed")
	}); err != nil {
		t.Errorf("no Normal EgressRulesProgrammed event on %s: %v", n1.Name, err)
	}
	// 3. The rules, as nft prints them: the node's block masqueraded to
	// anything but link-local, the default range, both nodes' blocks and
	// the node subnet (the fake cloud's defaults add nothing else).
	golden := fmt.Sprintf(`table ip aliasip {
	set pod_blocks {
		type ipv4_addr
		flags interval
		elements = { 10.220.1.0/24 }
	}

	set nonmasq {
		type ipv4_addr
		flags interval
		elements = { 10.220.0.0/16, 169.254.0.0/16,
			     %s }
	}

	chain postrouting {
		type nat hook postrouting priority srcnat + 10; policy accept;
		ip saddr @pod_blocks ip daddr != @nonmasq masquerade fully-random
	}
}
`, e.fabric.Subnet)
	if diff := cmp.Diff(golden, nftListIn(t, n1.NS)); diff != "" {
		t.Errorf("nft list table ip aliasip on %s (-want +got):\n%s", n1.Name, diff)
	}

	// 4. The outside's range added to nonMasqueradeCIDRs: no restart, the
	// pod's own address arrives and no reply comes back.
	// A Node whose podCIDR someone set to half the internet (a kubelet
	// may create its own Node with any podCIDR) must not turn masquerade
	// off on other nodes. The ConfigMap change below makes a pass after it.
	evil := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "evil-" + cmName}, Spec: corev1.NodeSpec{PodCIDR: "0.0.0.0/1", PodCIDRs: []string{"0.0.0.0/1"}}}
	if _, err := e.client.CoreV1().Nodes().Create(e.ctx, evil, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.client.CoreV1().Nodes().Delete(context.Background(), evil.Name, metav1.DeleteOptions{}) })
	programmed := agentMetric(t, n1, "aliasip_egress_rules_programmed_total", "")
	setMasqConfig(t, e, cmName, "nonMasqueradeCIDRs:\n  - 198.18.0.0/15\nresyncInterval: 2s\n")
	if err := framework.Eventually(e.ctx, 15*time.Second, func() (bool, error) {
		return agentMetric(t, n1, "aliasip_egress_rules_programmed_total", "") > programmed &&
			strings.Contains(nftListIn(t, n1.NS), "198.18.0.0/15"), nil
	}); err != nil {
		t.Fatalf("the ConfigMap's range never reached the table: %v\n%s", err, nftListIn(t, n1.NS))
	}
	if tbl := nftListIn(t, n1.NS); strings.Contains(tbl, "0.0.0.0/1") {
		t.Errorf("another Node's podCIDR 0.0.0.0/1 entered the non-masquerade set:\n%s", tbl)
	}
	token := fmt.Sprintf("udp-%d", time.Now().UnixNano())
	if err := framework.Eventually(e.ctx, 10*time.Second, func() (bool, error) {
		if err := sendUDP(a, o.IP.String()+":9", token); err != nil {
			return false, err
		}
		return len(o.sources(token)) > 0, nil
	}); err != nil {
		t.Fatalf("no datagram reached the outside: %v", err)
	}
	if got := o.sources(token); got[0] != a.IP.String() {
		t.Errorf("with the outside in nonMasqueradeCIDRs it saw %v; want the pod's own %s", got, a.IP)
	}
	if c, err := dialFrom(a, outsideAddr, time.Second); err == nil {
		c.Close()
		t.Errorf("a TCP connection from the pod's own address to the outside was answered; the outside has no route back to pods")
	}
	if got := agentMetric(t, n1, "aliasip_egress_config_valid", ""); got != 1 {
		t.Errorf("aliasip_egress_config_valid = %v; want 1", got)
	}

	// 5. A malformed ConfigMap is refused with a Warning and the rules stay.
	before := nftListIn(t, n1.NS)
	setMasqConfig(t, e, cmName, "nonMasqueradeCIDRs: [198.18.0.0]\n")
	e.waitNodeEvent(n1, "EgressConfigInvalid")
	if err := framework.Eventually(e.ctx, 10*time.Second, func() (bool, error) {
		return agentMetric(t, n1, "aliasip_egress_config_valid", "") == 0, nil
	}); err != nil {
		t.Errorf("aliasip_egress_config_valid never went to 0: %v", err)
	}
	if got := nftListIn(t, n1.NS); got != before {
		t.Errorf("a refused config changed the rules:\n%s", got)
	}
	// Back to the defaults: the outside sees the node again.
	setMasqConfig(t, e, cmName, "resyncInterval: 2s\n")
	if err := framework.Eventually(e.ctx, 15*time.Second, func() (bool, error) {
		return nftListIn(t, n1.NS) == golden, nil
	}); err != nil {
		t.Fatalf("rules not back to the defaults: %v\n%s", err, nftListIn(t, n1.NS))
	}

	// 6. A flushed table is restored, counted and reported.
	repaired := agentMetric(t, n1, "aliasip_egress_rules_repaired_total", "")
	if err := n1.NS.Do(func(ns.NetNS) error {
		runtime.LockOSThread()
		return exec.Command("nft", "flush", "table", "ip", "aliasip").Run()
	}); err != nil {
		t.Fatal(err)
	}
	if err := framework.Eventually(e.ctx, 10*time.Second, func() (bool, error) {
		return agentMetric(t, n1, "aliasip_egress_rules_repaired_total", "") > repaired && nftListIn(t, n1.NS) == golden, nil
	}); err != nil {
		t.Fatalf("flushed table not restored: %v\n%s", err, nftListIn(t, n1.NS))
	}
	e.waitNodeEvent(n1, "EgressRulesRepaired")

	// 7. An agent restart: the table stays while no agent runs, and an
	// established connection to the outside carries on.
	conn, err := dialFrom(a, outsideAddr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	rd := bufio.NewReader(conn)
	exchange := func() (string, error) {
		conn.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := io.WriteString(conn, "again\n"); err != nil {
			return "", err
		}
		l, err := rd.ReadString('\n')
		return strings.TrimSpace(l), err
	}
	if l, err := rd.ReadString('\n'); err != nil || strings.TrimSpace(l) != n1.IP.String() {
		t.Fatalf("long connection: first answer %q, %v", l, err)
	}
	n1.Agent.Stop()
	if got := nftListIn(t, n1.NS); got != golden {
		t.Errorf("the table changed when the agent stopped:\n%s", got)
	}
	if l, err := exchange(); err != nil || l != n1.IP.String() {
		t.Errorf("established connection with the agent down: %q, %v", l, err)
	}
	e.startAgent(n1, masqFlags...)
	if l, err := exchange(); err != nil || l != n1.IP.String() {
		t.Errorf("established connection after the restart: %q, %v", l, err)
	}
	if got := agentMetric(t, n1, "aliasip_egress_rules_programmed_total", "") + agentMetric(t, n1, "aliasip_egress_rules_repaired_total", ""); got != 0 {
		t.Errorf("the restarted agent rewrote a table that was right (%v writes)", got)
	}

	// 8. Masquerade off removes the table; cleanup removes it too.
	n1.Agent.Stop()
	e.startAgent(n1, append(masqFlags, "--masquerade=false")...)
	if got := nftListIn(t, n1.NS); !strings.HasPrefix(got, "error:") {
		t.Errorf("masquerade off left the table:\n%s", got)
	}
	token = fmt.Sprintf("off-%d", time.Now().UnixNano())
	if err := framework.Eventually(e.ctx, 10*time.Second, func() (bool, error) {
		if err := sendUDP(a, o.IP.String()+":9", token); err != nil {
			return false, err
		}
		return len(o.sources(token)) > 0, nil
	}); err != nil || o.sources(token)[0] != a.IP.String() {
		t.Errorf("with masquerade off the outside saw %v (%v); want the pod's own %s", o.sources(token), err, a.IP)
	}
	// cleanup is for a node whose agent is gone (a running one would
	// write the table straight back, as it did after the flush above).
	n2.Agent.Stop()
	out, err := exec.Command(agentBin, "cleanup", "--netns", n2.NS.Path()).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "removed nftables table ip aliasip" {
		t.Errorf("aliasip-agent cleanup on %s: %v: %s", n2.Name, err, out)
	}
	if got := nftListIn(t, n2.NS); !strings.HasPrefix(got, "error:") {
		t.Errorf("cleanup left the table:\n%s", got)
	}
	out, err = exec.Command(agentBin, "cleanup", "--netns", n2.NS.Path()).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "no nftables table ip aliasip" {
		t.Errorf("second cleanup: %v: %s", err, out)
	}
}

// servePodPeer answers TCP on :80 in the pod with the peer address it saw.
func servePodPeer(t *testing.T, p *framework.Pod) {
	t.Helper()
	servePodWith(t, p, func(c net.Conn) string { return c.RemoteAddr().(*net.TCPAddr).IP.String() + "\n" })
}
