// Package agent is aliasip-agent, the node agent (a DaemonSet): it waits for
// its Node's podCIDR, prepares the host, owns pod IPAM and serves it to
// aliasip-cni over a root-only unix socket, installs the plugin and its
// conflist once it can serve ADD, marks the Node's NetworkUnavailable
// condition False, and then keeps the host right: netlink subscriptions plus
// a periodic resync repair pod routes and sysctls and remove routes of
// vanished pods, allocations of pods gone from the API are collected after a
// grace period, and with --fabric=routes other nodes' podCIDRs are routed
// via their InternalIPs the way the VPC routes alias ranges.
//
// A node whose spec.podCIDRs carries an IPv6 block (the controller's
// --dual-stack) is dual-stack: each pod gets an address of each block in
// one IPAM transaction, both routed (/32 and /128), reconciled and
// released together. Without one, nothing of IPv6 is touched.
package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"

	"github.com/aliasip/aliasip/node-agent/api"
	"github.com/aliasip/aliasip/node-agent/datapath"
	"github.com/aliasip/aliasip/node-agent/ipam"
)

// ConditionReason is the reason on the NetworkUnavailable=False condition.
const ConditionReason = "AliasipReady"

// Event reasons the agent records on its Node.
const (
	// EventPodIPsExhausted: an ADD found no free address in the podCIDR.
	EventPodIPsExhausted = "PodIPsExhausted"
	// EventPodCIDRChanged: the IPAM state was for another podCIDR.
	EventPodCIDRChanged = "PodCIDRChanged"
	// EventIPAMStateRecovered: the IPAM state file was unreadable and was
	// rebuilt from the host.
	EventIPAMStateRecovered = "IPAMStateRecovered"
	// EventDataPathRepaired: the reconciler had to repair routes or sysctls.
	EventDataPathRepaired = "DataPathRepaired"
	// EventGuestAgentIPAliases: the GCE guest agent manages routes for alias
	// ranges ([IpForwarding] ip_aliases is not false), so it keeps adding a
	// local route for the podCIDR that the agent has to remove.
	EventGuestAgentIPAliases = "GuestAgentIPAliases"
	// EventPortmapMissing: --chain-portmap is set but --cni-bin-dir has no
	// portmap, so the conflist does not chain it (hostPorts do not work).
	EventPortmapMissing = "PortmapMissing"
	// EventMaxPodsExceedBlock: the kubelet's maxPods (the Node's pods
	// capacity) is more than the node's block can address.
	EventMaxPodsExceedBlock = "MaxPodsExceedBlock"
)

// ConfListName is the file the agent writes into the CNI config dir.
const ConfListName = "10-aliasip.conflist"

// NetworkName is the CNI network name.
const NetworkName = "aliasip"

// Config configures an Agent.
type Config struct {
	NodeName      string
	HostInterface string // "": the default route's
	NetNS         string // the node's network namespace ("": this process's)
	Cloud         string // gce or fake
	FabricRoutes  bool
	CNIConfDir    string
	CNIBinDir     string
	StateDir      string
	Socket        string
	PluginBinary  string // the aliasip-cni to install
	PluginLogFile string
	// ProcSys is where sysctls are read and written (datapath.ProcSys).
	ProcSys       string
	ChainPortmap  bool
	IPCooldown    time.Duration
	PodGCGrace    time.Duration
	PodGCInterval time.Duration
	ResyncPeriod  time.Duration
	// GuestAgentConfig is the GCE guest agent's configuration file
	// ("": not on GCE, nothing to read).
	GuestAgentConfig string
	// Masquerade: SNAT this node's pods' traffic to destinations outside
	// the non-masquerade set (package egress); off removes the table.
	Masquerade bool
	// MasqConfigMap is NAMESPACE/NAME of the ConfigMap in ip-masq-agent's
	// format ("": the cloud's defaults only).
	MasqConfigMap string
	// ClusterCIDRs are the default pod range(s) (the controller's
	// --cluster-cidr), never masqueraded; with FabricRoutes the only
	// IPv4 and IPv6 ranges (beside the PodRanges) other nodes' blocks
	// are routed in.
	ClusterCIDRs []netip.Prefix
	// NodeCIDRMaskSize is the length of the default IPv4 range's blocks
	// (the controller's --node-cidr-mask-size; 0: not known): with
	// FabricRoutes, another node's IPv4 block in that range of any other
	// length is not routed.
	NodeCIDRMaskSize int
	// AliasCheck, if set, must report true before the agent is ready (on
	// GCE: the podCIDR is an alias range of this VM's NIC).
	AliasCheck func(ctx context.Context, podCIDR netip.Prefix) (bool, error)
}

// Agent is the node agent.
type Agent struct {
	cfg      Config
	client   kubernetes.Interface
	metrics  *Metrics
	recorder record.EventRecorder

	nodeNS ns.NetNS

	nodes   corelisters.NodeLister
	pods    corelisters.PodLister
	factory informers.SharedInformerFactory
	podInf  informers.SharedInformerFactory
	kick    chan struct{}
	// settleRecheck: a pass is scheduled for when settling pods settle.
	settleRecheck atomic.Bool
	fabricCh      chan struct{}
	// egressCh kicks the egress loop (the masquerade's inputs changed).
	egressCh chan struct{}
	// growthCh kicks the growth loop (growth.go); growth is nil until
	// NodeBlocks are followed.
	growthCh chan struct{}
	growth   *growth
	// egress is the masquerade's state once it runs (nil: masquerade off
	// or not started yet); pendingExtra are extra blocks about to enter
	// the store, already masqueraded (growth.go).
	egress       *masq
	pendingExtra []netip.Prefix
	// dyn follows PodRanges (nil: not followed); ranges lists them once
	// startPodRanges ran (nil: not followed).
	dyn    dynamic.Interface
	ranges cache.GenericLister

	mu      sync.Mutex
	store   *ipam.Store
	podCIDR netip.Prefix
	// podCIDR6 is the node's IPv6 block (the IPv6 entry of its
	// spec.podCIDRs); zero when the node is single-stack.
	podCIDR6 netip.Prefix
	mtu      int
	iface    string
	ready    bool
	reason   string
	// nodeLost: this node's Node object is gone or lost its podCIDR; ADD
	// is refused until it is back with the same podCIDR.
	nodeLost bool
	// maxPodsWarned is the maxPods/block pair last checked (one Event each).
	maxPodsWarned string
	// stop ends Run with a cause (set by Run).
	stop context.CancelCauseFunc
	// conflistChain is the chained plugin list of the conflist last
	// written ("" before the first write).
	conflistChain string
	// guestProto is the protocol of the GCE guest agent's local routes.
	guestProto int
	// veths lists the host's veths and the container each names
	// (hostVethAliases; tests substitute the host).
	veths func() (map[string]string, error)
}

// New builds an agent; recorder records Events on the agent's Node.
func New(cfg Config, client kubernetes.Interface, recorder record.EventRecorder, m *Metrics) *Agent {
	if cfg.ProcSys != "" {
		datapath.ProcSys = cfg.ProcSys
	}
	a := &Agent{cfg: cfg, client: client, recorder: recorder, metrics: m, kick: make(chan struct{}, 1), fabricCh: make(chan struct{}, 1), egressCh: make(chan struct{}, 1), growthCh: make(chan struct{}, 1), reason: "starting",
		guestProto: datapath.ProtoGCEGuestAgent}
	a.veths = a.hostVethAliases
	m.ipSource = a.ipStats
	return a
}

func (a *Agent) ipStats() []ipam.FamilyStats {
	a.mu.Lock()
	s := a.store
	a.mu.Unlock()
	if s == nil {
		return nil
	}
	return s.StatsByFamily()
}

// inHost runs fn in the node's network namespace.
func (a *Agent) inHost(fn func() error) error {
	if a.nodeNS == nil {
		return fn()
	}
	return a.nodeNS.Do(func(ns.NetNS) error { return fn() })
}

func (a *Agent) setNotReady(reason string) {
	a.mu.Lock()
	a.ready, a.reason = false, reason
	a.mu.Unlock()
	a.metrics.Ready.Set(0)
}

// Status reports whether ADD can be served, and why not.
func (a *Agent) Status() api.Status {
	a.mu.Lock()
	defer a.mu.Unlock()
	st := api.Status{Ready: a.ready, Reason: a.reason}
	if a.podCIDR.IsValid() {
		st.PodCIDR = a.podCIDR.String()
	}
	if a.podCIDR6.IsValid() {
		st.PodCIDRIPv6 = a.podCIDR6.String()
	}
	return st
}

// ErrPodCIDRChanged ends Run when this node's podCIDR changes under the
// agent: it exits so that it starts afresh on the new block (the DaemonSet
// restarts it), never serving an address of the old one.
var ErrPodCIDRChanged = errors.New("this node's podCIDR changed; restarting on the new block")

// Run runs the agent until ctx is done, or until the node's podCIDR
// changes (ErrPodCIDRChanged).
func (a *Agent) Run(ctx context.Context) error {
	logger := klog.FromContext(ctx).WithValues("node", a.cfg.NodeName)
	ctx = klog.NewContext(ctx, logger)
	ctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	a.mu.Lock()
	a.stop = stop
	a.mu.Unlock()
	if a.cfg.NetNS != "" {
		nsh, err := ns.GetNS(a.cfg.NetNS)
		if err != nil {
			return fmt.Errorf("node netns %s: %w", a.cfg.NetNS, err)
		}
		a.nodeNS = nsh
		defer nsh.Close()
	}

	// Informers: all Nodes when emulating the fabric (we route to the
	// others), else only ours; the Pods bound to this node.
	nodeOpts := []informers.SharedInformerOption{}
	if !a.cfg.FabricRoutes {
		nodeOpts = append(nodeOpts, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", a.cfg.NodeName).String()
		}))
	}
	a.factory = informers.NewSharedInformerFactoryWithOptions(a.client, 10*time.Minute, nodeOpts...)
	nodeInf := a.factory.Core().V1().Nodes()
	a.nodes = nodeInf.Lister()
	nodeInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { a.signal(a.fabricCh); a.checkOwnNode(ctx) },
		UpdateFunc: func(any, any) { a.signal(a.fabricCh); a.checkOwnNode(ctx) },
		DeleteFunc: func(any) { a.signal(a.fabricCh); a.checkOwnNode(ctx) },
	})
	a.podInf = informers.NewSharedInformerFactoryWithOptions(a.client, 10*time.Minute,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", a.cfg.NodeName).String()
		}))
	podInf := a.podInf.Core().V1().Pods()
	a.pods = podInf.Lister()
	podInf.Informer() // register before Start
	// The informers stop when Run returns for any reason, not only on a
	// signal: an error below (say, the state directory held by another
	// agent) must end the process so the DaemonSet restarts it, not leave
	// Shutdown waiting for informers that never stop.
	informerCtx, stopInformers := context.WithCancel(ctx)
	a.factory.Start(informerCtx.Done())
	a.podInf.Start(informerCtx.Done())
	defer a.factory.Shutdown()
	defer a.podInf.Shutdown()
	defer stopInformers() // runs before the Shutdowns above
	if !cache.WaitForCacheSync(ctx.Done(), nodeInf.Informer().HasSynced, podInf.Informer().HasSynced) {
		return errors.New("informers never synced")
	}

	podCIDR, podCIDR6, err := a.waitPodCIDR(ctx)
	if err != nil {
		return err
	}
	if podCIDR6.IsValid() {
		logger.Info("Node podCIDRs (dual-stack)", "podCIDR", podCIDR, "podCIDRIPv6", podCIDR6)
	} else {
		logger.Info("Node podCIDR", "podCIDR", podCIDR)
	}
	if err := a.prepare(ctx, podCIDR, podCIDR6); err != nil {
		return err
	}
	srv, err := a.serveSocket(ctx)
	if err != nil {
		return err
	}
	defer func() {
		srv.Close() // calls in progress answer first
		if store := a.storeOrNil(); store != nil {
			store.Close() // folds the journal into the snapshot
		}
	}()
	// Collect leftovers from before a restart before serving new pods.
	a.collectPods(ctx)
	// Egress before the first pod: its traffic to the outside leaves
	// masqueraded from its first packet. A failure here is reported and
	// retried by the loop, never a reason to keep pods off the node.
	// PodRanges bound the fabric's routes and join the non-masquerade set.
	a.startPodRanges(ctx)
	if n, err := a.nodes.Get(a.cfg.NodeName); err == nil {
		a.checkMaxPods(ctx, n, podCIDR) // now that a growable range's maxBlocksPerNode is known
	}
	// Extra blocks of a growable range, before the first ADD.
	a.startGrowth(ctx)
	var egressState *masq
	if a.cfg.Masquerade {
		egressState = a.startEgress(ctx)
		a.syncEgress(ctx, egressState)
		a.mu.Lock()
		a.egress = egressState
		a.mu.Unlock()
	} else {
		a.removeEgress(ctx)
	}
	if err := a.installCNI(ctx); err != nil {
		return err
	}
	a.mu.Lock()
	a.ready, a.reason = true, ""
	a.mu.Unlock()
	a.metrics.Ready.Set(1)
	logger.Info("Ready: serving CNI ADD", "podCIDR", podCIDR, "hostInterface", a.iface, "mtu", a.mtu)
	go a.ensureNetworkAvailable(ctx)

	var wg sync.WaitGroup
	wg.Go(func() { a.reconcileLoop(ctx) })
	wg.Go(func() { a.gcLoop(ctx) })
	if a.cfg.FabricRoutes {
		wg.Go(func() { a.fabricLoop(ctx) })
	}
	wg.Go(func() { a.growthLoop(ctx) })
	if egressState != nil {
		wg.Go(func() { a.egressLoop(ctx, egressState) })
	}
	<-ctx.Done()
	wg.Wait()
	if cause := context.Cause(ctx); errors.Is(cause, ErrPodCIDRChanged) {
		return cause
	}
	return nil
}

// event records an Event on this agent's Node.
func (a *Agent) event(eventType, reason, format string, args ...any) {
	if a.recorder == nil {
		return
	}
	ref := &corev1.ObjectReference{Kind: "Node", Name: a.cfg.NodeName, UID: types.UID(a.cfg.NodeName)}
	a.recorder.Eventf(ref, eventType, reason, format, args...)
}

func (a *Agent) signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// checkGuestAgent reads the GCE guest agent's configuration (when
// --guest-agent-config is set) for the protocol of its routes, and warns
// once, with an Event and a metric, when it manages alias-range routes.
func (a *Agent) checkGuestAgent(ctx context.Context) {
	if a.cfg.GuestAgentConfig == "" {
		return
	}
	logger := klog.FromContext(ctx)
	gc, err := ReadGuestAgentConfig(a.cfg.GuestAgentConfig)
	if err != nil {
		logger.Error(err, "Reading the guest agent's configuration; assuming its defaults")
		a.event(corev1.EventTypeWarning, EventGuestAgentIPAliases, "Cannot read the GCE guest agent's configuration (%v); assuming it manages alias routes with protocol %d", err, gc.ProtoID)
	}
	a.mu.Lock()
	a.guestProto = gc.ProtoID
	a.mu.Unlock()
	a.metrics.GuestAgentIPAliases.Set(map[bool]float64{true: 1}[gc.IPAliases])
	if gc.IPAliases {
		logger.Info("The GCE guest agent manages alias routes; aliasip removes its local route for the podCIDR each time it comes back. Set [IpForwarding] ip_aliases = false in /etc/default/instance_configs.cfg",
			"files", gc.Files, "protoID", gc.ProtoID)
		if err == nil {
			a.event(corev1.EventTypeWarning, EventGuestAgentIPAliases,
				"The GCE guest agent manages alias IP routes ([IpForwarding] ip_aliases is not false in %s): it re-adds a local route for this node's podCIDR at least every minute, and pods are unreachable until aliasip removes it again. Set ip_aliases = false and restart the guest agent.", a.cfg.GuestAgentConfig)
		}
	}
}

// prepare readies the host and opens IPAM: single-stack, or with podCIDR6
// (the node's IPv6 block) dual-stack, IPv6 prepared on the host too.
func (a *Agent) prepare(ctx context.Context, podCIDR, podCIDR6 netip.Prefix) error {
	a.checkGuestAgent(ctx)
	var iface string
	var mtu int
	err := a.inHost(func() error {
		iface = a.cfg.HostInterface
		if iface == "" {
			var err error
			if iface, err = datapath.DefaultRouteInterface(); err != nil {
				return err
			}
		}
		var err error
		if mtu, err = datapath.InterfaceMTU(iface); err != nil {
			return err
		}
		if _, err := datapath.PrepareHost(iface); err != nil {
			return err
		}
		if podCIDR6.IsValid() {
			if _, err := datapath.PrepareHostIPv6(iface); err != nil {
				return err
			}
		}
		if removed, err := datapath.RemoveGuestAgentRoute(podCIDR, a.guestProto); err != nil {
			return err
		} else if removed {
			a.metrics.GuestRoutesRemoved.Inc()
			klog.FromContext(ctx).Info("Removed the guest agent's local route for the alias range", "podCIDR", podCIDR)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("prepare host: %w", err)
	}
	statePath := filepath.Join(a.cfg.StateDir, "ipam.json")
	store, err := ipam.OpenDualStack(statePath, podCIDR, podCIDR6, a.cfg.IPCooldown)
	if errors.Is(err, ipam.ErrPodCIDRChanged) {
		// The node was given another block (its Node object was deleted
		// and re-created, say). Addresses of the old block are not ours to
		// route any more: keep the old state aside for the operator and
		// start afresh rather than crash-loop.
		aside := fmt.Sprintf("%s.%d.old", statePath, time.Now().Unix())
		serving := fmt.Sprint(podCIDR)
		if podCIDR6.IsValid() {
			serving = fmt.Sprint(blocksOf(podCIDR, podCIDR6))
		}
		klog.FromContext(ctx).Error(err, "Node podCIDR changed; moving the old IPAM state aside", "podCIDR", serving, "oldState", aside)
		a.event(corev1.EventTypeWarning, EventPodCIDRChanged, "IPAM state was for another podCIDR (%v); kept aside in %s, now serving %s", err, aside, serving)
		if rerr := ipam.MoveAside(statePath, aside); rerr != nil {
			return fmt.Errorf("%w (and moving it aside failed: %v)", err, rerr)
		}
		// The old block's pods cannot be routed any more (the block goes to
		// another node): their veths and routes go.
		if old, rerr := ipam.ReadAllocations(aside); rerr == nil {
			for _, al := range old {
				if terr := a.inHost(func() error { return datapath.TeardownPod(al.HostVeth, al.ContainerID) }); terr != nil {
					klog.FromContext(ctx).Error(terr, "Tearing down a pod of the old block", "pod", al.Namespace+"/"+al.Pod, "ip", al.IP)
				}
			}
			klog.FromContext(ctx).Info("Tore down the old block's pods", "count", len(old))
		}
		store, err = ipam.OpenDualStack(statePath, podCIDR, podCIDR6, a.cfg.IPCooldown)
	}
	if errors.Is(err, ipam.ErrCorrupt) {
		store, err = a.recoverState(ctx, statePath, podCIDR, podCIDR6, err)
	}
	if err != nil {
		return err
	}
	a.mu.Lock()
	a.store, a.podCIDR, a.podCIDR6, a.iface, a.mtu = store, podCIDR, podCIDR6, iface, mtu
	a.mu.Unlock()
	return nil
}

// recoverState handles a lost state file (0 bytes after a power loss, or
// corrupt): it is moved aside, and the allocations are rebuilt from the
// host — each pod's /32 route through a veth whose alias names its
// container, and on a dual-stack node its /128 route through the same veth
// — so no live pod's address is handed out again. The interface
// name is eth0: the one Kubernetes runtimes give the pod network
// (containerd's CRI plugin, pkg/cri/server, the defaultIfName constant).
func (a *Agent) recoverState(ctx context.Context, statePath string, podCIDR, podCIDR6 netip.Prefix, cause error) (*ipam.Store, error) {
	aside := fmt.Sprintf("%s.%d.corrupt", statePath, time.Now().Unix())
	// Linked, not moved: the bad state stays in place until Recover has
	// written its replacement, so an agent killed in between recovers
	// again rather than start from an empty state.
	if err := ipam.KeepAside(statePath, aside); err != nil {
		return nil, fmt.Errorf("%w (and keeping it aside failed: %v)", cause, err)
	}
	var pods []datapath.HostPod
	if err := a.inHost(func() error {
		var err error
		pods, err = datapath.HostPodsDualStack(podCIDR, podCIDR6)
		return err
	}); err != nil {
		return nil, fmt.Errorf("%w; rebuilding from the host failed: %v", cause, err)
	}
	// A node of a growable range: its extra blocks, as its NodeBlocks
	// grants them, and their pods' routes too — a pod there must not have
	// its address handed out again.
	extra, err := a.grantedNow(ctx)
	if err != nil {
		// The bad state stays in place (linked aside, not moved): the
		// agent exits and its next start recovers again.
		return nil, fmt.Errorf("%w; %v", cause, err)
	}
	for _, b := range extra {
		var more []datapath.HostPod
		if err := a.inHost(func() error {
			var err error
			more, err = datapath.HostPodsDualStack(b.CIDR, netip.Prefix{})
			return err
		}); err != nil {
			return nil, fmt.Errorf("%w; rebuilding extra block %v from the host failed: %v", cause, b.CIDR, err)
		}
		pods = append(pods, more...)
	}
	allocs := make([]ipam.Allocation, 0, len(pods))
	for _, p := range pods {
		allocs = append(allocs, ipam.Allocation{Key: ipam.Key{ContainerID: p.ContainerID, IfName: "eth0"}, HostVeth: p.HostVeth, IP: p.IP, IPv6: p.IPv6})
	}
	store, err := ipam.RecoverWithBlocks(statePath, podCIDR, podCIDR6, extra, a.cfg.IPCooldown, allocs)
	if err != nil {
		return nil, err
	}
	klog.FromContext(ctx).Error(cause, "IPAM state lost; rebuilt from the host", "pods", len(allocs), "kept", aside)
	a.metrics.StateRecovered.Inc()
	a.event(corev1.EventTypeWarning, EventIPAMStateRecovered,
		"IPAM state was unreadable (%v); kept aside in %s and rebuilt %d allocations from the host's pod routes", cause, aside, len(allocs))
	return store, nil
}
