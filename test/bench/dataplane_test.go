package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/aliasip/aliasip/node-agent/datapath"
	"github.com/aliasip/aliasip/test/framework"
)

const (
	dpPings     = 200 // RTT samples per path and contender
	dpFirst     = 8   // fresh pods per path and contender for the first packet
	dpRounds    = 5   // iperf3 runs per path and contender, in paired rounds
	dpIperfSecs = 3   // measured seconds of one iperf3 run (after one omitted)
)

// dpContender is one CNI set-up on two identical node namespaces.
type dpContender struct {
	name  string
	nodes [2]*framework.Node
	// add runs CNI ADD for p on nodes[node].
	add  func(ctx context.Context, node int, p *framework.Pod) error
	pods []*framework.Pod
	seq  int
}

// pod creates a sandbox on nodes[node] and runs ADD.
func (c *dpContender) pod(ctx context.Context, node int) (*framework.Pod, error) {
	c.seq++
	p, err := framework.NewPod("bench", fmt.Sprintf("dp-%d", c.seq))
	if err != nil {
		return nil, err
	}
	if err := c.add(ctx, node, p); err != nil {
		p.Close()
		return nil, fmt.Errorf("%s: ADD on %s: %w", c.name, c.nodes[node].Name, err)
	}
	c.pods = append(c.pods, p)
	return p, nil
}

func (c *dpContender) close() {
	for _, p := range c.pods {
		p.Close()
	}
	for _, n := range c.nodes {
		if n != nil {
			n.Close()
		}
	}
}

// dpPath is a pod pair: src on node 0, dst on node 0 (same node) or
// node 1 (across the fabric), measured over IPv4 or, with v6, over IPv6
// (the contender then being a dual-stack one).
type dpPath struct {
	name   string
	metric string
	cni    string
	c      *dpContender
	v6     bool
	// host: the limit row — the node namespaces themselves (host↔host
	// across the fabric, or host loopback on one node), no pod, no ADD.
	host     bool
	src, dst *framework.Pod
	server   *framework.Process
	gbps     []float64
	rtt      []time.Duration
	first    []time.Duration
}

// dstAddr is the destination pod's address in the path's family.
func (p *dpPath) dstAddr() netip.Addr {
	if p.v6 {
		return p.dst.IPv6
	}
	return p.dst.IP
}

// ping sends one echo from the pod to the path's destination, in the
// path's family.
func (p *dpPath) ping(from *framework.Pod, timeout time.Duration) (time.Duration, error) {
	if p.v6 {
		return framework.Ping6(from.NS, p.dstAddr(), timeout)
	}
	return framework.Ping(from.NS, p.dst.IP, timeout)
}

// BenchmarkDataPlane: pod-to-pod TCP throughput (iperf3), ping RTT, and the
// first packet's round trip right after ADD (ARP included), on one node and
// across two nodes, aliasip (veth + /32 route + proxy-ARP, the agent's
// --fabric=routes across nodes) side by side with Debian's bridge +
// host-local set up the way kubenet did (bridge as the pods' gateway, no
// masquerade, each node routing the other's pod subnet via its fabric
// address), on identical node namespaces on one emulated VPC fabric, in one
// run. Goals (issue 12): throughput ≥ 1.0× the bridge's, RTT ≤ 1.0×.
//
// The IPv6 rows (issue 23) measure the same over IPv6 between pods of
// dual-stack nodes of each contender, set up beside the IPv4-only ones
// (which the IPv4 rows keep using): aliasip with podCIDRs [IPv4 block,
// IPv6 /112] (a /128 route per pod, the default route via the host veth's
// fixed link-local address, no proxy-NDP; --fabric=routes via the nodes'
// IPv6 InternalIPs), the bridge with host-local IPv4 and IPv6 ranges (the
// bridge holds both gateways). The first packet then includes neighbour
// discovery instead of ARP. All rows are measured interleaved in one run.
func BenchmarkDataPlane(b *testing.B) {
	if reason := framework.RequireRoot(); reason != "" {
		b.Skip(reason)
	}
	for _, p := range []string{"/usr/lib/cni/bridge", "/usr/lib/cni/host-local"} {
		if _, err := os.Stat(p); err != nil {
			b.Skipf("skipping: Debian's containernetworking-plugins missing: %v (run make deps)", err)
		}
	}
	for _, bin := range []string{"iperf3", "nsenter"} {
		if _, err := exec.LookPath(bin); err != nil {
			b.Skipf("skipping: %s not installed: %v (run make deps)", bin, err)
		}
	}
	dir, agentBin, pluginBin, cp, fabric := nodeBench(b)
	ctx, cancel := context.WithTimeout(context.Background(), 14*time.Minute)
	defer cancel()

	alias, err := dpAliasip(ctx, fabric, cp, dir, agentBin, pluginBin)
	defer alias.close()
	if err != nil {
		b.Fatal(err)
	}
	mtu, err := dpLinkMTU(alias.nodes[0].NS, "eth0")
	if err != nil {
		b.Fatal(err)
	}
	bridge, err := dpBridge(fabric, dir, mtu)
	defer bridge.close()
	if err != nil {
		b.Fatal(err)
	}
	// The dual-stack nodes: added after the IPv4-only ones, they alone get
	// IPv6 addresses on the fabric's link.
	if err := fabric.EnableIPv6(); err != nil {
		b.Fatal(err)
	}
	alias6, err := dpAliasipDualStack(ctx, fabric, cp, dir, agentBin, pluginBin)
	defer alias6.close()
	if err != nil {
		b.Fatal(err)
	}
	bridge6, err := dpBridgeDualStack(fabric, dir, mtu)
	defer bridge6.close()
	if err != nil {
		b.Fatal(err)
	}

	// paths[i][j]: path i of contender j (aliasip first). Rows 0 and 1 are
	// IPv4, 2 and 3 IPv6.
	paths := make([][]*dpPath, 4)
	for f, contenders := range [][]*dpContender{{alias, bridge}, {alias6, bridge6}} {
		v6 := f == 1
		for _, c := range contenders {
			src, err := c.pod(ctx, 0)
			if err != nil {
				b.Fatal(err)
			}
			for i, node := range []int{0, 1} {
				dst, err := c.pod(ctx, node)
				if err != nil {
					b.Fatal(err)
				}
				p := &dpPath{name: []string{"same node", "across nodes"}[i], metric: []string{"same", "cross"}[i], cni: c.name, c: c, v6: v6, src: src, dst: dst}
				if v6 {
					p.name += ", IPv6"
					p.metric += "6"
				}
				paths[2*f+i] = append(paths[2*f+i], p)
				// The agent's fabric routes come from its Node informer: wait.
				if err := framework.Eventually(ctx, 30*time.Second, func() (bool, error) {
					_, err := p.ping(src, time.Second)
					return err == nil, err
				}); err != nil {
					b.Fatalf("%s, %s: %v -> %v: %v", c.name, p.name, src.IP, p.dstAddr(), err)
				}
			}
		}
	}
	// The limit of each path, measured beside the pods (issue 25): the
	// aliasip nodes' own namespaces, host↔host over the same fabric (their
	// eth0 addresses), and host loopback for the same-node path — what the
	// kernel does with no pod data path at all.
	for i, row := range paths {
		n0, n1 := row[0].c.nodes[0], row[0].c.nodes[1]
		v6 := i >= 2
		addr := func(n *framework.Node) netip.Addr {
			if v6 {
				return n.IPv6
			}
			return n.IP
		}
		src := &framework.Pod{Name: "host-" + n0.Name, ContainerID: "host-" + n0.Name, NS: n0.NS, IP: n0.IP, IPv6: n0.IPv6}
		dst := &framework.Pod{Name: "host-" + n1.Name, ContainerID: "host-" + n1.Name, NS: n1.NS, IP: n1.IP, IPv6: n1.IPv6}
		name := "host↔host (the limit)"
		if i%2 == 0 {
			lo := netip.MustParseAddr("127.0.0.1")
			if v6 {
				lo = netip.IPv6Loopback()
			}
			dst = &framework.Pod{Name: "loopback-" + n0.Name, ContainerID: "loopback-" + n0.Name, NS: n0.NS, IP: lo, IPv6: lo}
			name = "host loopback (the limit)"
		} else if !addr(n1).IsValid() {
			b.Fatalf("%s has no address for %s", n1.Name, row[0].name)
		}
		p := &dpPath{name: row[0].name, metric: row[0].metric, cni: name, c: row[0].c, v6: v6, host: true, src: src, dst: dst}
		if _, err := p.ping(src, 2*time.Second); err != nil {
			b.Fatalf("%s, %s: %v -> %v: %v", name, p.name, src.IP, p.dstAddr(), err)
		}
		paths[i] = append(paths[i], p)
	}
	conditions, err := dpConditions(alias, bridge, paths[0][0].src, paths[0][1].src)
	if err != nil {
		b.Fatal(err)
	}
	conditions6, err := dpConditions6(alias6, bridge6, paths[2][0].src, paths[2][1].src)
	if err != nil {
		b.Fatal(err)
	}

	// RTT: one ICMP echo at a time from a socket in the source pod (timed
	// from send to the reply's read, Go's wake-up included), the contenders
	// interleaved so that load from elsewhere on the machine falls on both
	// alike.
	for range dpPings {
		for _, row := range paths {
			for _, p := range row {
				d, err := p.ping(p.src, 2*time.Second)
				if err != nil {
					b.Fatalf("%s, %s: %v", p.cni, p.name, err)
				}
				p.rtt = append(p.rtt, d)
			}
		}
	}

	// Throughput: an iperf3 server in each destination pod, one client run
	// per path and contender a round, the order flipped every round. The
	// two runs of a round are seconds apart, so their ratio is what other
	// load on the machine disturbs least: the ratio reported is the median
	// of the rounds' ratios.
	for _, row := range paths {
		for _, p := range row {
			if p.server, err = dpIperfServer(ctx, p.dst, filepath.Join(dir, fmt.Sprintf("iperf3-%s.log", p.dst.ContainerID))); err != nil {
				b.Fatal(err)
			}
			defer p.server.Stop()
		}
	}
	for r := range dpRounds {
		for _, row := range paths {
			for k := range row {
				p := row[k]
				if r%2 == 1 {
					p = row[len(row)-1-k]
				}
				g, err := dpIperf(ctx, p.src, p.dstAddr())
				if err != nil {
					b.Fatalf("%s, %s: %v", p.cni, p.name, err)
				}
				p.gbps = append(p.gbps, g)
			}
		}
	}

	// Where the across-nodes path's time goes, against the limit's
	// (dpbreakdown_test.go); printed before the main table.
	if err := dpBreakdown(ctx, dir, paths[1]); err != nil {
		b.Fatal(err)
	}

	// First packet: a fresh pod pings the destination right after its ADD
	// returns; neither side has a neighbour entry for it yet. A lost ARP
	// request or reply (over IPv6 a neighbour solicitation or
	// advertisement) costs the neighbour retransmit time, 1 s by default
	// (retrans_time_ms, arp(7), RFC 4861 RETRANS_TIMER): the last column
	// counts those.
	for _, row := range paths {
		for range dpFirst {
			for _, p := range row {
				if p.host {
					continue // no ADD: no first packet
				}
				fresh, err := p.c.pod(ctx, 0)
				if err != nil {
					b.Fatal(err)
				}
				d, err := p.ping(fresh, 3*time.Second)
				if err != nil {
					b.Fatalf("%s, %s: first ping from a fresh pod: %v", p.cni, p.name, err)
				}
				p.first = append(p.first, d)
			}
		}
	}

	fmt.Printf("\nPod-to-pod data plane: iperf3 TCP (1 stream, %d s after 1 s omitted, median of %d rounds), ping RTT (%d echoes), first ping after ADD (%d fresh pods)\n", dpIperfSecs, dpRounds, dpPings, dpFirst)
	fmt.Printf("%s\n%s\n\n", conditions, conditions6)
	fmt.Println("| path | CNI | TCP Gbit/s | runs | RTT p50 | RTT p99 | first packet p50 | first packet max | first packet > 100 ms |")
	fmt.Println("| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
	for _, row := range paths {
		for _, p := range row {
			runs := make([]string, len(p.gbps))
			for k, g := range p.gbps {
				runs[k] = fmt.Sprintf("%.2f", g)
			}
			slow := 0
			for _, d := range p.first {
				if d > 100*time.Millisecond {
					slow++
				}
			}
			if p.host {
				fmt.Printf("| %s | %s | %.2f | %s | %s | %s | – | – | – |\n", p.name, p.cni, dpMedian(p.gbps), strings.Join(runs, ", "),
					dpMicros(pct(p.rtt, 50)), dpMicros(pct(p.rtt, 99)))
				continue
			}
			fmt.Printf("| %s | %s | %.2f | %s | %s | %s | %s | %s | %d of %d |\n", p.name, p.cni, dpMedian(p.gbps), strings.Join(runs, ", "),
				dpMicros(pct(p.rtt, 50)), dpMicros(pct(p.rtt, 99)), dpMicros(pct(p.first, 50)), dpMicros(pct(p.first, 100)), slow, len(p.first))
		}
	}
	fmt.Println()
	for _, row := range paths {
		a, br := row[0], row[1]
		perRound := make([]float64, len(a.gbps))
		for r := range perRound {
			perRound[r] = a.gbps[r] / br.gbps[r]
		}
		tput := dpMedian(perRound)
		p50, p99, first := ratio(a.rtt, br.rtt, 50), ratio(a.rtt, br.rtt, 99), ratio(a.first, br.first, 50)
		fmt.Printf("%s: aliasip/bridge throughput %.2f (median of the rounds' %.2f; goal ≥ 1.0: %s), RTT p50 %.2f p99 %.2f (goal ≤ 1.0: %s), first packet p50 %.2f\n",
			a.name, tput, perRound, dpVerdict(tput >= 1), p50, p99, dpVerdict(p50 <= 1 && p99 <= 1), first)
		b.ReportMetric(tput, a.metric+"-tput-ratio")
		b.ReportMetric(p50, a.metric+"-rtt-p50-ratio")
		b.ReportMetric(p99, a.metric+"-rtt-p99-ratio")
		b.ReportMetric(first, a.metric+"-first-ratio")
		// Against the limit: goal (issue 25) across nodes ≥ 0.95× host↔host
		// throughput and RTT p50 ≤ 1.1×; the same-node path is shown
		// against loopback without a goal.
		h := row[2]
		hRound := make([]float64, len(a.gbps))
		bRound := make([]float64, len(a.gbps))
		for r := range hRound {
			hRound[r] = a.gbps[r] / h.gbps[r]
			bRound[r] = br.gbps[r] / h.gbps[r]
		}
		ht, hb, hp50 := dpMedian(hRound), dpMedian(bRound), ratio(a.rtt, h.rtt, 50)
		verdict := "no goal for this path"
		if a.metric == "cross" || a.metric == "cross6" {
			verdict = fmt.Sprintf("goal ≥ 0.95 and RTT p50 ≤ 1.1: %s", dpVerdict(ht >= 0.95 && hp50 <= 1.1))
		}
		fmt.Printf("%s: aliasip/%s throughput %.2f (bridge/%s %.2f), RTT p50 %.2f (bridge %.2f) — %s\n",
			a.name, h.cni, ht, h.cni, hb, hp50, ratio(br.rtt, h.rtt, 50), verdict)
		b.ReportMetric(ht, a.metric+"-tput-vs-host")
		b.ReportMetric(hp50, a.metric+"-rtt-p50-vs-host")
	}
	fmt.Println()
}

// dpAliasip starts two aliasip nodes, each with its agent in fabric mode
// (--fabric=routes: a route to the other node's podCIDR via its
// InternalIP, as the VPC would route the alias range).
func dpAliasip(ctx context.Context, fabric *framework.Fabric, cp *framework.ControlPlane, dir, agentBin, pluginBin string) (*dpContender, error) {
	return dpAliasipNodes(ctx, &dpContender{name: "aliasip"}, "aliasip", fabric, cp, dir, agentBin, pluginBin, func(i int, n *framework.Node) error {
		return n.RegisterNode(ctx, cp.Client(0), fmt.Sprintf("10.230.%d.0/24", i+1))
	})
}

// dpAliasipNodes adds c's two nodes to the fabric as dp-NAME-1 and -2,
// registers each with register and starts its agent in fabric mode.
func dpAliasipNodes(ctx context.Context, c *dpContender, name string, fabric *framework.Fabric, cp *framework.ControlPlane, dir, agentBin, pluginBin string, register func(i int, n *framework.Node) error) (*dpContender, error) {
	for i := range c.nodes {
		n, err := fabric.AddNode(fmt.Sprintf("dp-%s-%d", name, i+1), filepath.Join(dir, fmt.Sprintf("%s-%d", name, i+1)))
		if err != nil {
			return c, err
		}
		c.nodes[i] = n
		if err := register(i, n); err != nil {
			return c, err
		}
		args := append(n.AgentArgs(cp.Kubeconfig, pluginBin), "--fabric", "routes", "--chain-portmap=false", "--pod-gc-grace", "1h")
		if n.Agent, err = framework.StartProcess(filepath.Join(n.Dir, "agent.log"), nil, agentBin, args...); err != nil {
			return c, err
		}
	}
	for _, n := range c.nodes {
		if err := framework.Eventually(ctx, 30*time.Second, func() (bool, error) {
			if n.Agent.Exited() {
				return false, fmt.Errorf("agent exited (log %s)", n.Agent.Log)
			}
			_, err := os.Stat(filepath.Join(n.ConfDir, "10-aliasip.conflist"))
			return err == nil, nil
		}); err != nil {
			return c, fmt.Errorf("agent of %s not ready: %w", n.Name, err)
		}
	}
	c.add = func(ctx context.Context, node int, p *framework.Pod) error { return c.nodes[node].Add(ctx, p) }
	return c, nil
}

// dpBridge starts two nodes with Debian's bridge + host-local, configured
// as kubenet configured them (kubernetes pkg/kubelet/dockershim/network/
// kubenet/kubenet_linux.go, NET_CONFIG_TEMPLATE, v1.23: "isGateway": true,
// "ipMasq": false, host-local with a default route): the bridge holds the
// subnet's gateway address and the plugin turns on IP forwarding
// (https://www.cni.dev/plugins/current/main/bridge/, isGateway). The pods'
// MTU is the node interface's, as aliasip sets it. Across nodes each node
// routes the other's pod subnet via the other's fabric address, with the
// same route aliasip's --fabric=routes installs (datapath.SyncFabric), as
// a cloud route or Calico's routed mode would.
func dpBridge(fabric *framework.Fabric, dir string, mtu int) (*dpContender, error) {
	return dpBridgeNodes(&dpContender{name: "bridge + host-local (Debian)"}, "bridge", fabric, dir, mtu,
		func(i int, n *framework.Node) (string, []datapath.FabricRoute, error) {
			subnet := fmt.Sprintf("10.231.%d.0/24", i+1)
			ipam := fmt.Sprintf(`{"type":"host-local","ranges":[[{"subnet":%q}]],"routes":[{"dst":"0.0.0.0/0"}],"dataDir":%q}`,
				subnet, filepath.Join(n.Dir, "host-local"))
			return ipam, []datapath.FabricRoute{{PodCIDR: netip.MustParsePrefix(subnet), Via: n.IP}}, nil
		})
}

// dpBridgeNodes adds c's two nodes to the fabric as dp-NAME-1 and -2 with
// the bridge plugin; node i's IPAM configuration and the fabric routes the
// other node needs to reach its pods come from node(i, n).
func dpBridgeNodes(c *dpContender, name string, fabric *framework.Fabric, dir string, mtu int,
	node func(i int, n *framework.Node) (ipam string, routes []datapath.FabricRoute, err error)) (*dpContender, error) {
	var cnis [2]*libcni.CNIConfig
	var lists [2]*libcni.NetworkConfigList
	var routes [2][]datapath.FabricRoute
	for i := range c.nodes {
		n, err := fabric.AddNode(fmt.Sprintf("dp-%s-%d", name, i+1), filepath.Join(dir, fmt.Sprintf("%s-%d", name, i+1)))
		if err != nil {
			return c, err
		}
		c.nodes[i] = n
		ipam, rs, err := node(i, n)
		if err != nil {
			return c, err
		}
		conf := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"bridge","plugins":[{"type":"bridge","bridge":"cni0","mtu":%d,
			"isGateway":true,"ipMasq":false,"hairpinMode":false,
			"ipam":%s}]}`, mtu, ipam)
		if lists[i], err = libcni.NetworkConfFromBytes([]byte(conf)); err != nil {
			return c, err
		}
		cnis[i] = libcni.NewCNIConfigWithCacheDir([]string{"/usr/lib/cni"}, filepath.Join(n.Dir, "cni-cache"), nil)
		routes[i] = rs
	}
	for i, n := range c.nodes {
		other := routes[1-i]
		if err := n.NS.Do(func(ns.NetNS) error {
			_, _, err := datapath.SyncFabric(other)
			return err
		}); err != nil {
			return c, fmt.Errorf("%s: routes %v: %w", n.Name, other, err)
		}
	}
	c.add = func(ctx context.Context, node int, p *framework.Pod) error {
		return c.nodes[node].AddWith(ctx, cnis[node], lists[node], p)
	}
	return c, nil
}

// dpConditions describes what could make the two set-ups differ: the pods'
// MTU, reverse-path filtering on the node interface, and whether bridged
// frames go through netfilter.
func dpConditions(alias, bridge *dpContender, aPod, bPod *framework.Pod) (string, error) {
	var aMTU, bMTU int
	var err error
	if aMTU, err = dpLinkMTU(aPod.NS, "eth0"); err != nil {
		return "", err
	}
	if bMTU, err = dpLinkMTU(bPod.NS, "eth0"); err != nil {
		return "", err
	}
	rp := func(n *framework.Node) string {
		return dpSysctl(n.NS, "net/ipv4/conf/all/rp_filter") + "/" + dpSysctl(n.NS, "net/ipv4/conf/eth0/rp_filter")
	}
	return fmt.Sprintf("pod MTU: aliasip %d, bridge %d; rp_filter all/eth0 on the nodes: aliasip %s, bridge %s; bridge-nf-call-iptables on the bridge nodes: %s",
		aMTU, bMTU, rp(alias.nodes[0]), rp(bridge.nodes[0]), dpSysctl(bridge.nodes[0].NS, "net/bridge/bridge-nf-call-iptables")), nil
}

// dpIperfServer runs `iperf3 -s` in the pod's network namespace (nsenter
// enters it and execs iperf3, so no Go thread changes namespace) and waits
// until it listens. --forceflush makes it write its "Server listening"
// line at once into the log file (iperf3(1)).
func dpIperfServer(ctx context.Context, p *framework.Pod, log string) (*framework.Process, error) {
	srv, err := framework.StartProcess(log, nil, "nsenter", "--net="+p.NS.Path(), "iperf3", "-s", "--forceflush")
	if err != nil {
		return nil, err
	}
	err = framework.Eventually(ctx, 10*time.Second, func() (bool, error) {
		if srv.Exited() {
			return false, fmt.Errorf("iperf3 -s exited (log %s)", log)
		}
		data, _ := os.ReadFile(log)
		return strings.Contains(string(data), "Server listening"), nil
	})
	if err != nil {
		srv.Stop()
		return nil, err
	}
	return srv, nil
}

// dpIperf runs one iperf3 client in the pod's namespace and returns the
// receiver's throughput in Gbit/s. With -O 1 the first second (slow start)
// is left out of the end sums, and -J prints them as JSON (iperf3(1),
// https://github.com/esnet/iperf/blob/master/src/iperf3.1); end.sum_received
// is what the server received.
func dpIperf(ctx context.Context, p *framework.Pod, dst netip.Addr) (float64, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Duration(dpIperfSecs+30)*time.Second)
	defer cancel()
	args := []string{"--net=" + p.NS.Path(), "iperf3", "-c", dst.String(), "-t", fmt.Sprint(dpIperfSecs), "-O", "1", "-J"}
	if dst.Is6() {
		args = append(args, "-6")
	}
	out, err := exec.CommandContext(ctx, "nsenter", args...).Output()
	var rep struct {
		Error string `json:"error"`
		End   struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if jerr := json.Unmarshal(out, &rep); jerr != nil || rep.Error != "" || err != nil {
		return 0, fmt.Errorf("iperf3 -c %v: %w", dst, errors.Join(err, jerr, dpErr(rep.Error)))
	}
	return rep.End.SumReceived.BitsPerSecond / 1e9, nil
}

func dpErr(s string) error {
	if s == "" {
		return nil
	}
	return errors.New(s)
}

func dpLinkMTU(n ns.NetNS, name string) (int, error) {
	var mtu int
	err := n.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		mtu = l.Attrs().MTU
		return nil
	})
	return mtu, err
}

// dpSysctl reads a sysctl as the namespace sees it ("?" if unreadable).
func dpSysctl(n ns.NetNS, key string) string {
	v := "?"
	n.Do(func(ns.NetNS) error {
		if b, err := os.ReadFile("/proc/sys/" + key); err == nil {
			v = strings.TrimSpace(string(b))
		}
		return nil
	})
	return v
}

func dpMedian(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func dpVerdict(ok bool) string {
	if ok {
		return "met"
	}
	return "not met"
}

func dpMicros(d time.Duration) string { return fmt.Sprintf("%d µs", d.Microseconds()) }
