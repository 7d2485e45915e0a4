package framework

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/aliasip/aliasip/fake"
)

// LocalCluster is the whole system on one machine: etcd and kube-apiserver
// on loopback, aliasip-controller with the fake cloud (state in a file the
// cluster reads too), an emulated VPC link, and nodes that are each a
// network namespace with its own aliasip-agent.
type LocalCluster struct {
	Dir         string
	CP          *ControlPlane
	Client      kubernetes.Interface
	Fabric      *Fabric
	Cloud       *fake.Cloud // reads the controller's fake cloud state
	ClusterCIDR netip.Prefix
	IPv6Range   netip.Prefix // the fake cloud's IPv6 range when dual-stack; else zero
	Controller  *Process

	opts           LocalClusterOptions
	controllerBin  string
	agentBin       string
	pluginBin      string
	controllerN    int
	controllerAddr string

	mu    sync.Mutex
	Nodes []*Node
}

// LocalClusterOptions configures a LocalCluster.
type LocalClusterOptions struct {
	ClusterCIDR     string   // default 10.100.0.0/16
	ControllerArgs  []string // extra controller flags
	AgentArgs       []string // extra agent flags
	ControlPlaneDir string   // default Dir/cp
	// IPv6Range, when set (a ULA /64 such as fd00:100::/64), makes the
	// cluster dual-stack: the controller runs with --dual-stack and
	// --fake-ipv6-range=IPv6Range (each instance gets the next /96 of it,
	// each node the first /112 of that as its second podCIDR), the fabric
	// link gets an IPv6 subnet (Fabric.EnableIPv6), and every node an IPv6
	// address on it (nodad) and a second InternalIP. Empty: single-stack.
	IPv6Range string
	// ProviderID, when set, gives each Node object AddNode creates its
	// spec.providerID (e.g. gce://PROJECT/ZONE/NAME for a controller that
	// ControllerArgs point at the GCE test server); nil: none, the fake
	// cloud's instance by name. The agents run with --cloud=fake either
	// way: they read the API, never the cloud, and Cloud reads only the
	// fake cloud's state file (empty when the controller uses another).
	ProviderID func(node string) string
}

// StartLocalCluster starts the control plane, the fabric and the controller
// (no nodes yet). It needs root and the binaries of hack/deps.sh.
func StartLocalCluster(ctx context.Context, dir string, opts LocalClusterOptions) (*LocalCluster, error) {
	if opts.ClusterCIDR == "" {
		opts.ClusterCIDR = "10.100.0.0/16"
	}
	lc := &LocalCluster{Dir: dir, opts: opts, ClusterCIDR: netip.MustParsePrefix(opts.ClusterCIDR)}
	if opts.IPv6Range != "" {
		p, err := netip.ParsePrefix(opts.IPv6Range)
		if err != nil || !p.Addr().Is6() {
			return nil, fmt.Errorf("IPv6Range %q: want an IPv6 prefix such as fd00:100::/64", opts.IPv6Range)
		}
		lc.IPv6Range = p.Masked()
	}
	ok := false
	defer func() {
		if !ok {
			lc.Close()
		}
	}()
	var err error
	binDir := filepath.Join(dir, "bin")
	os.MkdirAll(binDir, 0o755)
	for _, b := range []struct {
		dst       *string
		name, pkg string
	}{
		{&lc.controllerBin, "aliasip-controller", "./controller/cmd/aliasip-controller"},
		{&lc.agentBin, "aliasip-agent", "./node-agent/cmd/aliasip-agent"},
		{&lc.pluginBin, "aliasip-cni", "./node-agent/cmd/aliasip-cni"},
	} {
		if *b.dst, err = BuildBinary(binDir, b.name, b.pkg); err != nil {
			return nil, err
		}
	}
	cpDir := opts.ControlPlaneDir
	if cpDir == "" {
		cpDir = filepath.Join(dir, "cp")
	}
	if lc.CP, err = StartControlPlane(ctx, cpDir); err != nil {
		return nil, err
	}
	lc.Client = lc.CP.Client(0)
	if lc.Fabric, err = NewFabric(); err != nil {
		return nil, err
	}
	if lc.IPv6Range.IsValid() {
		if err := lc.Fabric.EnableIPv6(); err != nil {
			return nil, err
		}
	}
	if lc.Cloud, err = fake.New(fake.Options{PodRange: lc.ClusterCIDR, StatePath: lc.cloudState(), IPv6Range: lc.IPv6Range}); err != nil {
		return nil, err
	}
	if err := lc.StartController(); err != nil {
		return nil, err
	}
	ok = true
	return lc, nil
}

func (lc *LocalCluster) cloudState() string { return filepath.Join(lc.Dir, "fake-cloud.json") }

// StartController starts (or restarts) aliasip-controller.
func (lc *LocalCluster) StartController() error {
	lc.controllerN++
	lc.controllerAddr = fmt.Sprintf("127.0.0.1:%d", FreePort())
	args := []string{
		"--kubeconfig", lc.CP.Kubeconfig, "--cloud", "fake", "--cluster-cidr", lc.ClusterCIDR.String(),
		"--fake-state-file", lc.cloudState(), "--fake-latency", "20ms",
		"--metrics-addr", lc.controllerAddr, "--health-addr", lc.controllerAddr,
		"--leader-elect-lease-duration", "4s", "--leader-elect-renew-deadline", "3s", "--leader-elect-retry-period", "500ms",
		"--release-cooldown", "2s", "--gc-interval", "2s", "--leak-grace-period", "5s", "--v", "2",
	}
	if lc.IPv6Range.IsValid() {
		args = append(args, "--dual-stack", "--fake-ipv6-range", lc.IPv6Range.String())
	}
	args = append(args, lc.opts.ControllerArgs...)
	p, err := StartProcess(filepath.Join(lc.Dir, fmt.Sprintf("controller-%d.log", lc.controllerN)), nil, lc.controllerBin, args...)
	if err != nil {
		return err
	}
	lc.Controller = p
	return nil
}

// AddNode creates a node: its namespace on the fabric, its Node object
// (InternalIP set, no podCIDR: the controller assigns it) and its agent. If
// wait is set it returns once the agent serves ADD.
func (lc *LocalCluster) AddNode(ctx context.Context, name string, wait bool) (*Node, error) {
	return lc.AddNodeLabelled(ctx, name, nil, wait)
}

// AddNodeLabelled is AddNode with the Node object's labels (a node pool a
// PodRange selects).
func (lc *LocalCluster) AddNodeLabelled(ctx context.Context, name string, labels map[string]string, wait bool) (*Node, error) {
	n, err := lc.Fabric.AddNode(name, filepath.Join(lc.Dir, "nodes", name))
	if err != nil {
		return nil, err
	}
	n.Labels = labels
	if lc.opts.ProviderID != nil {
		n.ProviderID = lc.opts.ProviderID(name)
	}
	lc.mu.Lock()
	lc.Nodes = append(lc.Nodes, n)
	lc.mu.Unlock()
	if err := n.RegisterNode(ctx, lc.Client, ""); err != nil {
		return nil, err
	}
	if err := lc.StartAgent(n); err != nil {
		return nil, err
	}
	if wait {
		return n, lc.WaitAgentReady(ctx, n, 2*time.Minute)
	}
	return n, nil
}

// StartAgent starts (or restarts) a node's agent.
func (lc *LocalCluster) StartAgent(n *Node) error {
	// As the chart passes them (clusterCIDR, ipv6.range beside it): the
	// pod ranges egress never masquerades and the agents route other
	// nodes' blocks inside (fabric.go).
	ranges := lc.ClusterCIDR.String()
	if lc.IPv6Range.IsValid() {
		ranges += "," + lc.IPv6Range.String()
	}
	args := append(n.AgentArgs(lc.CP.Kubeconfig, lc.pluginBin, "--cluster-cidr", ranges),
		"--ip-cooldown", "2s", "--resync-period", "5s", "--pod-gc-interval", "5s", "--v", "2")
	args = append(args, lc.opts.AgentArgs...)
	p, err := StartProcess(filepath.Join(n.Dir, "agent.log"), nil, lc.agentBin, args...)
	if err != nil {
		return err
	}
	n.Agent = p
	return nil
}

// WaitAgentReady waits until the node's agent answers /readyz.
func (lc *LocalCluster) WaitAgentReady(ctx context.Context, n *Node, timeout time.Duration) error {
	return Eventually(ctx, timeout, func() (bool, error) {
		if n.Agent.Exited() {
			return false, fmt.Errorf("agent of %s exited (log %s)", n.Name, n.Agent.Log)
		}
		resp, err := http.Get("http://" + n.Metrics + "/readyz")
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})
}

// RemoveNode stops the node's agent, deletes its Node object and removes
// its namespace, as when a VM is deleted.
func (lc *LocalCluster) RemoveNode(ctx context.Context, n *Node) error {
	n.Close()
	lc.mu.Lock()
	for i, m := range lc.Nodes {
		if m == n {
			lc.Nodes = append(lc.Nodes[:i], lc.Nodes[i+1:]...)
			break
		}
	}
	lc.mu.Unlock()
	return IgnoreNotFound(lc.Client.CoreV1().Nodes().Delete(ctx, n.Name, metav1.DeleteOptions{}))
}

// RunPod creates a Pod object bound to the node, then its sandbox, then runs
// CNI ADD through libcni, as the kubelet and runtime would.
func (lc *LocalCluster) RunPod(ctx context.Context, n *Node, name string) (*Pod, error) {
	if err := CreatePodObject(ctx, lc.Client, "default", name, n.Name); err != nil {
		return nil, err
	}
	p, err := NewPod("default", name)
	if err != nil {
		return nil, err
	}
	if err := n.Add(ctx, p); err != nil {
		p.Close()
		return nil, fmt.Errorf("ADD %s on %s: %w", name, n.Name, err)
	}
	return p, nil
}

// PodCIDRs returns the node's spec.podCIDRs from the API (none yet: nil).
func (lc *LocalCluster) PodCIDRs(ctx context.Context, n *Node) []string {
	node, err := lc.Client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
	if err != nil {
		return nil
	}
	return node.Spec.PodCIDRs
}

// PodCIDR returns the node's podCIDR from the API ("" if none yet).
func (lc *LocalCluster) PodCIDR(ctx context.Context, n *Node) string {
	node, err := lc.Client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
	if err != nil {
		return ""
	}
	return node.Spec.PodCIDR
}

// Close stops everything and removes the namespaces.
func (lc *LocalCluster) Close() {
	lc.mu.Lock()
	nodes := lc.Nodes
	lc.Nodes = nil
	lc.mu.Unlock()
	for _, n := range nodes {
		n.Close()
	}
	if lc.Controller != nil {
		lc.Controller.Stop()
	}
	if lc.Fabric != nil {
		lc.Fabric.Close()
	}
	if lc.CP != nil {
		lc.CP.Stop()
	}
}
