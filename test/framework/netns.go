package framework

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// RequireRoot returns a reason to skip when not running as root.
func RequireRoot() string {
	if os.Geteuid() != 0 {
		return "needs root (network namespaces, veths, netlink); run as root or via `make test` in CI"
	}
	return ""
}

// Fabric is the emulated VPC: a bridge in a network namespace of its own,
// with every node's eth0 attached. Its subnet is 192.168.X.0/24 and the
// bridge holds .1, the nodes' default gateway. After EnableIPv6 the link
// is dual-stack: Subnet6 is fd00:192:168:X::/64 and the bridge holds ::1.
type Fabric struct {
	NS      ns.NetNS
	Subnet  netip.Prefix
	Subnet6 netip.Prefix // zero until EnableIPv6
	nodes   int
}

var fabricSeq atomic.Int32

// NewFabric creates the fabric namespace and bridge.
func NewFabric() (*Fabric, error) {
	n, err := testutils.NewNS()
	if err != nil {
		return nil, err
	}
	third := 100 + int(fabricSeq.Add(1))%150
	f := &Fabric{NS: n, Subnet: netip.MustParsePrefix(fmt.Sprintf("192.168.%d.0/24", third))}
	err = n.Do(func(ns.NetNS) error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return err
		}
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "vpc0"}}
		if err := netlink.LinkAdd(br); err != nil {
			return err
		}
		addr, _ := netlink.ParseAddr(fmt.Sprintf("%s/24", f.Subnet.Addr().Next()))
		if err := netlink.AddrAdd(br, addr); err != nil {
			return err
		}
		return netlink.LinkSetUp(br)
	})
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("fabric: %w", err)
	}
	return f, nil
}

// Gateway is the bridge's address.
func (f *Fabric) Gateway() netip.Addr { return f.Subnet.Addr().Next() }

// Gateway6 is the bridge's IPv6 address (the zero Addr before EnableIPv6).
func (f *Fabric) Gateway6() netip.Addr {
	if !f.Subnet6.IsValid() {
		return netip.Addr{}
	}
	return f.Subnet6.Addr().Next()
}

// EnableIPv6 makes the link dual-stack, as a GCE dual-stack subnet is:
// Subnet6 becomes fd00:192:168:X::/64 (X the third octet of Subnet) and
// the bridge gets ::1 of it. Nodes added from then on get an IPv6 address
// too (Node.IPv6); those added before stay IPv4-only.
func (f *Fabric) EnableIPv6() error {
	if f.Subnet6.IsValid() {
		return nil
	}
	third := f.Subnet.Addr().As4()[2]
	subnet := netip.MustParsePrefix(fmt.Sprintf("fd00:192:168:%d::/64", third))
	err := f.NS.Do(func(ns.NetNS) error {
		br, err := netlink.LinkByName("vpc0")
		if err != nil {
			return err
		}
		return addIPv6(br, subnet.Addr().Next())
	})
	if err != nil {
		return fmt.Errorf("fabric IPv6: %w", err)
	}
	f.Subnet6 = subnet
	return nil
}

// addIPv6 adds ip/64 to the link with nodad: usable at once, as a VM's
// address is.
func addIPv6(l netlink.Link, ip netip.Addr) error {
	return netlink.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(64, 128)}, Flags: unix.IFA_F_NODAD})
}

// Close removes the fabric namespace (its links go with it).
func (f *Fabric) Close() {
	if f.NS != nil {
		f.NS.Close()
		testutils.UnmountNS(f.NS)
	}
}

// Node is one emulated node: a network namespace whose eth0 is on the
// fabric, with its own directories for the agent.
type Node struct {
	Name    string
	NS      ns.NetNS
	IP      netip.Addr
	IPv6    netip.Addr // on a dual-stack fabric (EnableIPv6); else zero
	Dir     string
	ConfDir string
	BinDir  string
	State   string
	Socket  string
	CNILog  string
	Agent   *Process
	Metrics string // host:port of the agent's metrics
	// Labels are the Node object's labels at registration (RegisterNode).
	Labels map[string]string
	// ProviderID is the Node object's spec.providerID at registration
	// (RegisterNode); empty: none.
	ProviderID string
	fabric     *Fabric
}

// AddNode creates a node namespace attached to the fabric, with loopback
// up, eth0 at the next address and a default route via the bridge; on a
// dual-stack fabric also at the same host number in Subnet6 (nodad), with
// an IPv6 default route via the bridge.
func (f *Fabric) AddNode(name, dir string) (*Node, error) {
	f.nodes++
	ip := f.Subnet.Addr()
	for i := 0; i < 10+f.nodes; i++ {
		ip = ip.Next()
	}
	var ip6 netip.Addr
	if f.Subnet6.IsValid() {
		// The IPv4 host number written the same way: .11 is ::11.
		var err error
		if ip6, err = netip.ParseAddr(fmt.Sprintf("%s%d", f.Subnet6.Addr(), 10+f.nodes)); err != nil {
			return nil, fmt.Errorf("node %s: IPv6 address: %w", name, err)
		}
	}
	n, err := testutils.NewNS()
	if err != nil {
		return nil, err
	}
	node := &Node{Name: name, NS: n, IP: ip, IPv6: ip6, Dir: dir, fabric: f,
		ConfDir: filepath.Join(dir, "net.d"), BinDir: filepath.Join(dir, "bin"), State: filepath.Join(dir, "state"),
		Socket: filepath.Join(dir, "agent.sock"), CNILog: filepath.Join(dir, "cni.log")}
	for _, d := range []string{node.ConfDir, node.BinDir, node.State} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	// A node with the CNI reference plugins installed has portmap in its
	// bin dir (the agent chains it only if it is there).
	if data, err := os.ReadFile(filepath.Join(CacheDir(), "cni", "portmap")); err == nil {
		if err := os.WriteFile(filepath.Join(node.BinDir, "portmap"), data, 0o755); err != nil {
			return nil, err
		}
	}
	peer := fmt.Sprintf("n%d-%s", f.nodes, shortName(name))
	err = f.NS.Do(func(ns.NetNS) error {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: peer, MTU: 1460}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(n.Fd()))}
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("veth %s: %w", peer, err)
		}
		l, err := netlink.LinkByName(peer)
		if err != nil {
			return err
		}
		br, err := netlink.LinkByName("vpc0")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetMaster(l, br); err != nil {
			return err
		}
		return netlink.LinkSetUp(l)
	})
	if err != nil {
		node.Close()
		return nil, err
	}
	err = n.Do(func(ns.NetNS) error {
		// No duplicate address detection on eth0, set before the link goes
		// up: a VM's NIC finished it long before its first pod starts, but
		// here pods start within a second of the node. While eth0's
		// link-local address is tentative the kernel sends no neighbour
		// solicitation for a packet whose source is not the node's own (a
		// pod's, forwarded): ndisc_send_ns returns when ipv6_get_lladdr
		// finds no usable link-local address (net/ipv6/ndisc.c), so a
		// fresh node's first forwarded IPv6 packets waited ~2 s.
		if err := os.WriteFile("/proc/sys/net/ipv6/conf/eth0/accept_dad", []byte("0"), 0o644); err != nil {
			return fmt.Errorf("eth0 accept_dad: %w", err)
		}
		for _, name := range []string{"lo", "eth0"} {
			l, err := netlink.LinkByName(name)
			if err != nil {
				return err
			}
			if err := netlink.LinkSetUp(l); err != nil {
				return err
			}
		}
		eth0, _ := netlink.LinkByName("eth0")
		addr, _ := netlink.ParseAddr(fmt.Sprintf("%s/24", ip))
		if err := netlink.AddrAdd(eth0, addr); err != nil {
			return err
		}
		// The default route also lets proxy-ARP answer for 169.254.1.1.
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: f.Gateway().AsSlice()}); err != nil {
			return err
		}
		if !ip6.IsValid() {
			return nil
		}
		if err := addIPv6(eth0, ip6); err != nil {
			return err
		}
		return netlink.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: f.Gateway6().AsSlice()})
	})
	if err != nil {
		node.Close()
		return nil, fmt.Errorf("node %s: %w", name, err)
	}
	return node, nil
}

func shortName(s string) string {
	s = strings.NewReplacer("-", "", "_", "").Replace(s)
	if len(s) > 8 {
		s = s[len(s)-8:]
	}
	return s
}

// Close stops the agent and removes the node namespace.
func (n *Node) Close() {
	if n.Agent != nil {
		n.Agent.Stop()
	}
	if n.NS != nil {
		n.NS.Close()
		testutils.UnmountNS(n.NS)
	}
}

// TestClusterCIDR is the default pod range agents started by AgentArgs
// are given when the caller names none: every podCIDR the tests write
// lies in it (the fake cloud's --fabric=routes requires one).
const TestClusterCIDR = "10.0.0.0/8"

// AgentArgs returns the flags that run an agent for this node, then
// extra; --cluster-cidr TestClusterCIDR unless extra names a
// --cluster-cidr (a repeated one would add to it, not replace it).
func (n *Node) AgentArgs(kubeconfig, pluginBinary string, extra ...string) []string {
	n.Metrics = fmt.Sprintf("127.0.0.1:%d", FreePort())
	args := []string{
		"--node-name", n.Name, "--kubeconfig", kubeconfig, "--cloud", "fake",
		"--netns", n.NS.Path(), "--host-interface", "eth0",
		"--cni-conf-dir", n.ConfDir, "--cni-bin-dir", n.BinDir, "--state-dir", n.State,
		"--socket", n.Socket, "--plugin-binary", pluginBinary, "--cni-log-file", n.CNILog,
		"--metrics-addr", n.Metrics,
	}
	if !slices.ContainsFunc(extra, func(a string) bool { return a == "--cluster-cidr" || strings.HasPrefix(a, "--cluster-cidr=") }) {
		args = append(args, "--cluster-cidr", TestClusterCIDR)
	}
	return append(args, extra...)
}

// RegisterNode creates (or updates) the Node object with the node's
// InternalIP (and its IPv6 one after it, as the kubelet lists a
// dual-stack node's, when the node has one), its Labels and ProviderID
// (if set) and, if set, a podCIDR.
func (n *Node) RegisterNode(ctx context.Context, client kubernetes.Interface, podCIDR string) error {
	obj := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.Name, Labels: n.Labels}, Spec: corev1.NodeSpec{ProviderID: n.ProviderID}}
	if podCIDR != "" {
		obj.Spec.PodCIDR, obj.Spec.PodCIDRs = podCIDR, []string{podCIDR}
	}
	if _, err := client.CoreV1().Nodes().Create(ctx, obj, metav1.CreateOptions{}); err != nil {
		return err
	}
	// A patch, not an update: the controller may already be writing the
	// node's podCIDR.
	internal := fmt.Sprintf(`{"type":"InternalIP","address":%q}`, n.IP)
	if n.IPv6.IsValid() {
		internal += fmt.Sprintf(`,{"type":"InternalIP","address":%q}`, n.IPv6)
	}
	patch := fmt.Sprintf(`{"status":{"addresses":[%s,{"type":"Hostname","address":%q}]}}`, internal, n.Name)
	_, err := client.CoreV1().Nodes().PatchStatus(ctx, n.Name, []byte(patch))
	return err
}

// Pod is a pod sandbox: a network namespace with an attachment.
type Pod struct {
	Namespace, Name string
	// UID, when set, is passed as K8S_POD_UID, as containerd does.
	UID         string
	ContainerID string
	NS          ns.NetNS
	IP          netip.Addr
	IPv6        netip.Addr // on a dual-stack node; else zero
	Result      *current.Result
}

// CNI returns the libcni handle for this node (the node's bin dir, then the
// cached reference plugins) and the loaded conflist.
func (n *Node) CNI() (*libcni.CNIConfig, *libcni.NetworkConfigList, error) {
	list, err := libcni.LoadNetworkConf(n.ConfDir, "aliasip")
	if err != nil {
		return nil, nil, err
	}
	return libcni.NewCNIConfigWithCacheDir([]string{n.BinDir, filepath.Join(CacheDir(), "cni")}, filepath.Join(n.Dir, "cni-cache"), nil), list, nil
}

func (p *Pod) runtimeConf(ifName string) *libcni.RuntimeConf {
	netnsPath := ""
	if p.NS != nil {
		netnsPath = p.NS.Path()
	}
	return &libcni.RuntimeConf{
		ContainerID: p.ContainerID, NetNS: netnsPath, IfName: ifName,
		Args: append([][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", p.Namespace}, {"K8S_POD_NAME", p.Name}, {"K8S_POD_INFRA_CONTAINER_ID", p.ContainerID}},
			podUIDArg(p)...),
	}
}

// NewPod creates the pod's network namespace (not yet attached).
func NewPod(namespace, name string) (*Pod, error) {
	n, err := testutils.NewNS()
	if err != nil {
		return nil, err
	}
	id := fmt.Sprintf("%s-%d", name, time.Now().UnixNano())
	return &Pod{Namespace: namespace, Name: name, ContainerID: id, NS: n}, nil
}

// Close removes the pod's network namespace.
func (p *Pod) Close() {
	if p.NS != nil {
		p.NS.Close()
		testutils.UnmountNS(p.NS)
		p.NS = nil
	}
}

// Add runs CNI ADD for the pod through libcni, the way a runtime does: the
// plugin runs in the node's namespace.
func (n *Node) Add(ctx context.Context, p *Pod) error {
	cni, list, err := n.CNI()
	if err != nil {
		return err
	}
	return n.AddWith(ctx, cni, list, p)
}

// AddWith is Add through another network configuration: a contender's
// plugins on an identical node, in a benchmark.
func (n *Node) AddWith(ctx context.Context, cni *libcni.CNIConfig, list *libcni.NetworkConfigList, p *Pod) error {
	var res types.Result
	err := n.NS.Do(func(ns.NetNS) error {
		var err error
		res, err = cni.AddNetworkList(ctx, list, p.runtimeConf("eth0"))
		return err
	})
	if err != nil {
		return err
	}
	r, err := current.NewResultFromResult(res)
	if err != nil {
		return err
	}
	if len(r.IPs) == 0 {
		return errors.New("ADD result has no IP")
	}
	p.Result = r
	p.IP, _ = netip.AddrFromSlice(r.IPs[0].Address.IP.To4())
	p.IPv6 = netip.Addr{}
	for _, c := range r.IPs {
		if c.Address.IP.To4() == nil {
			p.IPv6, _ = netip.AddrFromSlice(c.Address.IP)
			break
		}
	}
	return nil
}

// Del runs CNI DEL.
func (n *Node) Del(ctx context.Context, p *Pod) error {
	cni, list, err := n.CNI()
	if err != nil {
		return err
	}
	return n.NS.Do(func(ns.NetNS) error { return cni.DelNetworkList(ctx, list, p.runtimeConf("eth0")) })
}

// Check runs CNI CHECK.
func (n *Node) Check(ctx context.Context, p *Pod) error {
	cni, list, err := n.CNI()
	if err != nil {
		return err
	}
	return n.NS.Do(func(ns.NetNS) error { return cni.CheckNetworkList(ctx, list, p.runtimeConf("eth0")) })
}

// GC runs CNI GC with the given pods as the valid attachments.
func (n *Node) GC(ctx context.Context, valid []*Pod) error {
	cni, list, err := n.CNI()
	if err != nil {
		return err
	}
	args := &libcni.GCArgs{}
	for _, p := range valid {
		args.ValidAttachments = append(args.ValidAttachments, types.GCAttachment{ContainerID: p.ContainerID, IfName: "eth0"})
	}
	return n.NS.Do(func(ns.NetNS) error { return cni.GCNetworkList(ctx, list, args) })
}

// Status runs CNI STATUS.
func (n *Node) Status(ctx context.Context) error {
	cni, list, err := n.CNI()
	if err != nil {
		return err
	}
	return n.NS.Do(func(ns.NetNS) error { return cni.GetStatusNetworkList(ctx, list) })
}

var pingSeq atomic.Int32

// Ping sends one ICMP echo from inside netns to dst and returns the round
// trip time.
func Ping(from ns.NetNS, dst netip.Addr, timeout time.Duration) (time.Duration, error) {
	var conn *icmp.PacketConn
	err := from.Do(func(ns.NetNS) error {
		var err error
		conn, err = icmp.ListenPacket("ip4:icmp", "0.0.0.0")
		return err
	})
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	id := int(pingSeq.Add(1)) & 0xffff
	msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: id, Seq: 1, Data: []byte("aliasip")}}
	b, _ := msg.Marshal(nil)
	start := time.Now()
	if _, err := conn.WriteTo(b, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
		return 0, err
	}
	buf := make([]byte, 1500)
	deadline := start.Add(timeout)
	for {
		conn.SetReadDeadline(deadline)
		n, peer, err := conn.ReadFrom(buf)
		if err != nil {
			return 0, fmt.Errorf("ping %v: %w", dst, err)
		}
		m, err := icmp.ParseMessage(1, buf[:n])
		if err != nil || m.Type != ipv4.ICMPTypeEchoReply {
			continue
		}
		if e, ok := m.Body.(*icmp.Echo); ok && e.ID == id && peer.String() == dst.String() {
			return time.Since(start), nil
		}
	}
}

var ping6Seq atomic.Int32

// Ping6 sends one ICMPv6 echo from inside netns to dst and returns the
// round trip time (Ping's IPv6 twin).
func Ping6(from ns.NetNS, dst netip.Addr, timeout time.Duration) (time.Duration, error) {
	var conn *icmp.PacketConn
	if err := from.Do(func(ns.NetNS) error {
		var err error
		conn, err = icmp.ListenPacket("ip6:ipv6-icmp", "::")
		return err
	}); err != nil {
		return 0, err
	}
	defer conn.Close()
	id := int(ping6Seq.Add(1)+1000) & 0xffff
	msg := icmp.Message{Type: ipv6.ICMPTypeEchoRequest, Body: &icmp.Echo{ID: id, Seq: 1, Data: []byte("aliasip")}}
	b, _ := msg.Marshal(nil) // the kernel fills in an ICMPv6 checksum
	start := time.Now()
	if _, err := conn.WriteTo(b, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
		return 0, err
	}
	buf := make([]byte, 1500)
	conn.SetReadDeadline(start.Add(timeout))
	for {
		n, peer, err := conn.ReadFrom(buf)
		if err != nil {
			return 0, fmt.Errorf("ping %v: %w", dst, err)
		}
		m, err := icmp.ParseMessage(58, buf[:n])
		if err != nil || m.Type != ipv6.ICMPTypeEchoReply {
			continue
		}
		pa, _ := peer.(*net.IPAddr)
		if e, ok := m.Body.(*icmp.Echo); ok && e.ID == id && pa != nil && pa.IP.Equal(dst.AsSlice()) {
			return time.Since(start), nil
		}
	}
}

// CreatePodObject creates a Pod bound to node, as the scheduler would.
func CreatePodObject(ctx context.Context, client kubernetes.Interface, namespace, name, node string) error {
	_, err := CreatePodObjectUID(ctx, client, namespace, name, node)
	return err
}

// CreatePodObjectUID is CreatePodObject, returning the pod's UID.
func CreatePodObjectUID(ctx context.Context, client kubernetes.Interface, namespace, name, node string) (string, error) {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c", Image: "registry.k8s.io/pause:3.10"}}},
	}
	created, err := client.CoreV1().Pods(namespace).Create(ctx, p, metav1.CreateOptions{})
	if err != nil {
		return "", err
	}
	return string(created.UID), nil
}

func podUIDArg(p *Pod) [][2]string {
	if p.UID == "" {
		return nil
	}
	return [][2]string{{"K8S_POD_UID", p.UID}}
}
