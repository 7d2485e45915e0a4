// Package agent is aliasip-agent, the node agent (a DaemonSet): it waits for
// its Node's podCIDR, prepares the host, owns pod IPAM and serves it to
// aliasip-cni over a root-only unix socket, installs the plugin and its
// conflist once it can serve ADD, marks the Node's NetworkUnavailable
// condition False, and then keeps the host right: netlink subscriptions plus
// a periodic resync repair pod routes and sysctls and remove routes of
// vanished pods, allocations of pods gone from the API are collected after a
// grace period, and with --fabric=routes other nodes' podCIDRs are routed
// via their InternalIPs the way the VPC routes alias ranges.
package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
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

	nodes    corelisters.NodeLister
	pods     corelisters.PodLister
	factory  informers.SharedInformerFactory
	podInf   informers.SharedInformerFactory
	kick     chan struct{}
	fabricCh chan struct{}

	mu      sync.Mutex
	store   *ipam.Store
	podCIDR netip.Prefix
	mtu     int
	iface   string
	ready   bool
	reason  string
	// nodeLost: this node's Node object is gone or lost its podCIDR; ADD
	// is refused until it is back with the same podCIDR.
	nodeLost bool
	// stop ends Run with a cause (set by Run).
	stop context.CancelCauseFunc
	// conflistChain is the chained plugin list of the conflist last
	// written ("" before the first write).
	conflistChain string
	// guestProto is the protocol of the GCE guest agent's local routes.
	guestProto int
}

// New builds an agent; recorder records Events on the agent's Node.
func New(cfg Config, client kubernetes.Interface, recorder record.EventRecorder, m *Metrics) *Agent {
	if cfg.ProcSys != "" {
		datapath.ProcSys = cfg.ProcSys
	}
	a := &Agent{cfg: cfg, client: client, recorder: recorder, metrics: m, kick: make(chan struct{}, 1), fabricCh: make(chan struct{}, 1), reason: "starting",
		guestProto: datapath.ProtoGCEGuestAgent}
	m.ipSource = a.ipStats
	return a
}

func (a *Agent) ipStats() (used, free, cooling int) {
	a.mu.Lock()
	s := a.store
	a.mu.Unlock()
	if s == nil {
		return 0, 0, 0
	}
	return s.Stats()
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

	podCIDR, err := a.waitPodCIDR(ctx)
	if err != nil {
		return err
	}
	logger.Info("Node podCIDR", "podCIDR", podCIDR)
	if err := a.prepare(ctx, podCIDR); err != nil {
		return err
	}
	srv, err := a.serveSocket(ctx)
	if err != nil {
		return err
	}
	defer srv.Close()
	// Collect leftovers from before a restart before serving new pods.
	a.collectPods(ctx)
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
	<-ctx.Done()
	wg.Wait()
	if cause := context.Cause(ctx); errors.Is(cause, ErrPodCIDRChanged) {
		return cause
	}
	return nil
}

// checkOwnNode follows this node's Node object once the agent serves a
// block. If it is deleted or loses its podCIDR, ADD is refused at once (a
// Node deleted and re-registered may get another block, and the controller
// hands ours to another node after its cooldown). Back with the same
// podCIDR, the agent serves again. With another podCIDR, it stops serving
// and ends Run with ErrPodCIDRChanged; on restart the old state is moved
// aside and the old block's pods torn down.
func (a *Agent) checkOwnNode(ctx context.Context) {
	a.mu.Lock()
	cur, lost := a.podCIDR, a.nodeLost
	a.mu.Unlock()
	if !cur.IsValid() {
		return // not serving yet: waitPodCIDR decides
	}
	node, err := a.nodes.Get(a.cfg.NodeName)
	if err != nil || node.Spec.PodCIDR == "" {
		if !lost {
			reason := fmt.Sprintf("this node's Node object is gone or has no podCIDR; not serving addresses of %v", cur)
			klog.FromContext(ctx).Info("Not ready", "reason", reason)
			a.mu.Lock()
			a.nodeLost = true
			a.mu.Unlock()
			a.setNotReady(reason)
		}
		return
	}
	p, err := netip.ParsePrefix(node.Spec.PodCIDR)
	if err == nil && p.Masked() == cur {
		if lost {
			a.mu.Lock()
			a.nodeLost = false
			a.ready, a.reason = true, ""
			a.mu.Unlock()
			a.metrics.Ready.Set(1)
			klog.FromContext(ctx).Info("Node back with the same podCIDR: serving again", "podCIDR", cur)
			go a.ensureNetworkAvailable(ctx)
		}
		return
	}
	reason := fmt.Sprintf("podCIDR changed from %v to %q", cur, node.Spec.PodCIDR)
	a.setNotReady(reason)
	a.event(corev1.EventTypeWarning, EventPodCIDRChanged, "The node's podCIDR changed from %v to %s; the agent stops serving %v and restarts on the new block", cur, node.Spec.PodCIDR, cur)
	klog.FromContext(ctx).Info("PodCIDR changed; stopping", "old", cur, "new", node.Spec.PodCIDR)
	a.mu.Lock()
	stop := a.stop
	a.mu.Unlock()
	if stop != nil {
		stop(ErrPodCIDRChanged)
	}
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

// waitPodCIDR waits until the node has a podCIDR (and, on GCE, it is an
// alias range of this VM's NIC).
func (a *Agent) waitPodCIDR(ctx context.Context) (netip.Prefix, error) {
	logger := klog.FromContext(ctx)
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	lastReason := ""
	for {
		reason := ""
		node, err := a.nodes.Get(a.cfg.NodeName)
		switch {
		case err != nil:
			reason = fmt.Sprintf("node %s not found: %v", a.cfg.NodeName, err)
		case node.Spec.PodCIDR == "":
			reason = "waiting for the node's podCIDR"
		default:
			p, err := netip.ParsePrefix(node.Spec.PodCIDR)
			if err != nil {
				reason = fmt.Sprintf("podCIDR %q: %v", node.Spec.PodCIDR, err)
				break
			}
			if a.cfg.AliasCheck != nil {
				ok, err := a.cfg.AliasCheck(ctx, p)
				if err != nil || !ok {
					reason = fmt.Sprintf("podCIDR %v is not (yet) an alias range of this VM's NIC (err: %v)", p, err)
					break
				}
			}
			return p.Masked(), nil
		}
		a.setNotReady(reason)
		if reason != lastReason {
			logger.Info("Not ready", "reason", reason)
			lastReason = reason
		}
		select {
		case <-ctx.Done():
			return netip.Prefix{}, ctx.Err()
		case <-t.C:
		}
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

// prepare readies the host and opens IPAM.
func (a *Agent) prepare(ctx context.Context, podCIDR netip.Prefix) error {
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
	store, err := ipam.Open(statePath, podCIDR, a.cfg.IPCooldown)
	if errors.Is(err, ipam.ErrPodCIDRChanged) {
		// The node was given another block (its Node object was deleted
		// and re-created, say). Addresses of the old block are not ours to
		// route any more: keep the old state aside for the operator and
		// start afresh rather than crash-loop.
		aside := fmt.Sprintf("%s.%d.old", statePath, time.Now().Unix())
		klog.FromContext(ctx).Error(err, "Node podCIDR changed; moving the old IPAM state aside", "podCIDR", podCIDR, "oldState", aside)
		a.event(corev1.EventTypeWarning, EventPodCIDRChanged, "IPAM state was for another podCIDR (%v); kept aside in %s, now serving %v", err, aside, podCIDR)
		if rerr := os.Rename(statePath, aside); rerr != nil {
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
		store, err = ipam.Open(statePath, podCIDR, a.cfg.IPCooldown)
	}
	if errors.Is(err, ipam.ErrCorrupt) {
		store, err = a.recoverState(ctx, statePath, podCIDR, err)
	}
	if err != nil {
		return err
	}
	a.mu.Lock()
	a.store, a.podCIDR, a.iface, a.mtu = store, podCIDR, iface, mtu
	a.mu.Unlock()
	return nil
}

// recoverState handles a lost state file (0 bytes after a power loss, or
// corrupt): it is moved aside, and the allocations are rebuilt from the
// host — each pod's /32 route through a veth whose alias names its
// container — so no live pod's address is handed out again. The interface
// name is eth0: the one Kubernetes runtimes give the pod network
// (containerd's CRI plugin, pkg/cri/server/sandbox_run.go, defaultIfName).
func (a *Agent) recoverState(ctx context.Context, statePath string, podCIDR netip.Prefix, cause error) (*ipam.Store, error) {
	aside := fmt.Sprintf("%s.%d.corrupt", statePath, time.Now().Unix())
	if err := os.Rename(statePath, aside); err != nil {
		return nil, fmt.Errorf("%w (and moving it aside failed: %v)", cause, err)
	}
	var pods []datapath.HostPod
	if err := a.inHost(func() error {
		var err error
		pods, err = datapath.HostPods(podCIDR)
		return err
	}); err != nil {
		return nil, fmt.Errorf("%w; rebuilding from the host failed: %v", cause, err)
	}
	allocs := make([]ipam.Allocation, 0, len(pods))
	for _, p := range pods {
		allocs = append(allocs, ipam.Allocation{Key: ipam.Key{ContainerID: p.ContainerID, IfName: "eth0"}, HostVeth: p.HostVeth, IP: p.IP})
	}
	store, err := ipam.Recover(statePath, podCIDR, a.cfg.IPCooldown, allocs)
	if err != nil {
		return nil, err
	}
	klog.FromContext(ctx).Error(cause, "IPAM state lost; rebuilt from the host", "pods", len(allocs), "kept", aside)
	a.metrics.StateRecovered.Inc()
	a.event(corev1.EventTypeWarning, EventIPAMStateRecovered,
		"IPAM state was unreadable (%v); kept aside in %s and rebuilt %d allocations from the host's pod routes", cause, aside, len(allocs))
	return store, nil
}

// serveSocket listens on the root-only unix socket.
func (a *Agent) serveSocket(ctx context.Context) (*http.Server, error) {
	if err := os.MkdirAll(filepath.Dir(a.cfg.Socket), 0o700); err != nil {
		return nil, err
	}
	os.Remove(a.cfg.Socket) // a previous agent's socket
	ln, err := net.Listen("unix", a.cfg.Socket)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", a.cfg.Socket, err)
	}
	if err := os.Chmod(a.cfg.Socket, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	srv := newSocketServer(a.handler(ctx))
	go srv.Serve(ln)
	return srv, nil
}

// Socket server limits. The socket is root-only, but a stuck or broken
// plugin process must not hold a connection (and a goroutine) forever, nor
// make the agent read an unbounded body.
var (
	socketHeaderTimeout = 5 * time.Second
	socketReadTimeout   = 10 * time.Second
	socketWriteTimeout  = 30 * time.Second
	socketIdleTimeout   = 30 * time.Second
)

const (
	maxRequestBody   = 1 << 20
	maxRequestHeader = 16 << 10
)

func newSocketServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			r.Body = http.MaxBytesReader(w, r.Body, maxRequestBody)
			h.ServeHTTP(w, r)
		}),
		ReadHeaderTimeout: socketHeaderTimeout,
		ReadTimeout:       socketReadTimeout,
		WriteTimeout:      socketWriteTimeout,
		IdleTimeout:       socketIdleTimeout,
		MaxHeaderBytes:    maxRequestHeader,
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

func writeErr(w http.ResponseWriter, code int, c, msg string) {
	writeJSON(w, code, api.ErrorBody{Code: c, Message: msg})
}

func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	if err := json.NewDecoder(r.Body).Decode(v); err != nil { // bounded by newSocketServer
		writeErr(w, http.StatusBadRequest, api.CodeInvalid, "bad request: "+err.Error())
		return false
	}
	return true
}

func (a *Agent) handler(ctx context.Context) http.Handler {
	logger := klog.FromContext(ctx)
	mux := http.NewServeMux()
	timed := func(verb string, h func(w http.ResponseWriter, r *http.Request) string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			start := time.Now()
			result := h(w, r)
			a.metrics.CNIRequests.WithLabelValues(verb, result).Inc()
			a.metrics.CNILatency.WithLabelValues(verb).Observe(time.Since(start).Seconds())
		}
	}
	mux.HandleFunc("POST /v1/allocate", timed("ADD", func(w http.ResponseWriter, r *http.Request) string {
		var req api.AllocateRequest
		if !decode(w, r, &req) {
			return "invalid"
		}
		st := a.Status()
		if !st.Ready {
			writeErr(w, http.StatusServiceUnavailable, api.CodeNotReady, st.Reason)
			return "not_ready"
		}
		a.mu.Lock()
		store, mtu, podCIDR := a.store, a.mtu, a.podCIDR
		a.mu.Unlock()
		al, err := store.Allocate(ipam.Request{Key: ipam.Key{ContainerID: req.ContainerID, IfName: req.IfName},
			Namespace: req.Namespace, Pod: req.Pod, PodUID: req.PodUID, HostVeth: req.HostVeth})
		switch {
		case errors.Is(err, ipam.ErrExhausted):
			logger.Info("Pod IP range exhausted", "pod", req.Namespace+"/"+req.Pod)
			a.event(corev1.EventTypeWarning, EventPodIPsExhausted, "No free address in %v for pod %s/%s", podCIDR, req.Namespace, req.Pod)
			writeErr(w, http.StatusConflict, api.CodeExhausted, err.Error())
			return "exhausted"
		case err != nil:
			writeErr(w, http.StatusBadRequest, api.CodeInvalid, err.Error())
			return "error"
		}
		logger.V(2).Info("Allocated", "pod", req.Namespace+"/"+req.Pod, "container", req.ContainerID, "ip", al.IP)
		writeJSON(w, http.StatusOK, api.AllocateResponse{IP: al.IP.String(), PodCIDR: podCIDR.String(), MTU: mtu})
		return "ok"
	}))
	mux.HandleFunc("POST /v1/release", timed("DEL", func(w http.ResponseWriter, r *http.Request) string {
		var att api.Attachment
		if !decode(w, r, &att) {
			return "invalid"
		}
		store, ok := a.openStore(w)
		if !ok {
			return "not_ready"
		}
		al, found, err := store.Release(ipam.Key{ContainerID: att.ContainerID, IfName: att.IfName})
		if err != nil {
			writeErr(w, http.StatusInternalServerError, api.CodeInternal, err.Error())
			return "error"
		}
		a.signal(a.kick)
		writeJSON(w, http.StatusOK, info(al, found))
		return "ok"
	}))
	mux.HandleFunc("POST /v1/get", timed("CHECK", func(w http.ResponseWriter, r *http.Request) string {
		var att api.Attachment
		if !decode(w, r, &att) {
			return "invalid"
		}
		store, ok := a.openStore(w)
		if !ok {
			return "not_ready"
		}
		al, found := store.Get(ipam.Key{ContainerID: att.ContainerID, IfName: att.IfName})
		writeJSON(w, http.StatusOK, info(al, found))
		return "ok"
	}))
	mux.HandleFunc("POST /v1/gc", timed("GC", func(w http.ResponseWriter, r *http.Request) string {
		var req api.GCRequest
		if !decode(w, r, &req) {
			return "invalid"
		}
		store, ok := a.openStore(w)
		if !ok {
			return "not_ready"
		}
		valid := map[ipam.Key]bool{}
		for _, v := range req.Valid {
			valid[ipam.Key{ContainerID: v.ContainerID, IfName: v.IfName}] = true
		}
		gone, err := store.Retain(func(al ipam.Allocation) bool { return valid[al.Key] })
		if err != nil {
			writeErr(w, http.StatusInternalServerError, api.CodeInternal, err.Error())
			return "error"
		}
		resp := api.GCResponse{Released: []api.AllocationInfo{}}
		for _, al := range gone {
			resp.Released = append(resp.Released, info(al, true))
			logger.Info("CNI GC released", "pod", al.Namespace+"/"+al.Pod, "container", al.ContainerID, "ip", al.IP)
		}
		a.metrics.GCReleased.WithLabelValues("cni_gc").Add(float64(len(gone)))
		a.signal(a.kick)
		writeJSON(w, http.StatusOK, resp)
		return "ok"
	}))
	mux.HandleFunc("GET /v1/status", timed("STATUS", func(w http.ResponseWriter, r *http.Request) string {
		writeJSON(w, http.StatusOK, a.Status())
		return "ok"
	}))
	return mux
}

// openStore returns the IPAM store, or answers "not ready" when it is not
// open yet (the agent is still waiting for its podCIDR).
func (a *Agent) openStore(w http.ResponseWriter) (*ipam.Store, bool) {
	store := a.storeOrNil()
	if store == nil {
		writeErr(w, http.StatusServiceUnavailable, api.CodeNotReady, "IPAM not open yet")
		return nil, false
	}
	return store, true
}

func (a *Agent) storeOrNil() *ipam.Store {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.store
}

func info(al ipam.Allocation, found bool) api.AllocationInfo {
	if !found {
		return api.AllocationInfo{}
	}
	return api.AllocationInfo{Found: true, ContainerID: al.ContainerID, IP: al.IP.String(), HostVeth: al.HostVeth}
}

// installCNI copies the plugin into the bin dir and writes the conflist,
// each atomically (temporary file, rename), so a runtime never runs a
// half-written binary or reads a half-written config.
func (a *Agent) installCNI(ctx context.Context) error {
	if a.cfg.PluginBinary != "" {
		if err := copyAtomic(a.cfg.PluginBinary, filepath.Join(a.cfg.CNIBinDir, "aliasip-cni"), 0o755); err != nil {
			return fmt.Errorf("install aliasip-cni: %w", err)
		}
	}
	return a.writeConflist(ctx)
}

// writeConflist writes the conflist if what it should chain changed since
// the last write. It never names a plugin missing from --cni-bin-dir: the
// runtime looks plugins up there and fails every ADD of a conflist that
// names a missing one (libcni: `failed to find plugin "portmap" in path`).
// A portmap that appears later is chained on the next resync.
func (a *Agent) writeConflist(ctx context.Context) error {
	portmap := a.cfg.ChainPortmap && isExecutable(filepath.Join(a.cfg.CNIBinDir, "portmap"))
	chain := "aliasip-cni"
	if portmap {
		chain += ",portmap"
	}
	a.mu.Lock()
	prev := a.conflistChain
	a.mu.Unlock()
	if prev == chain {
		return nil
	}
	plugins := []map[string]any{{
		"type":    "aliasip-cni",
		"socket":  a.cfg.Socket,
		"logFile": a.cfg.PluginLogFile,
	}}
	if portmap {
		plugins = append(plugins, map[string]any{"type": "portmap", "capabilities": map[string]bool{"portMappings": true}, "snat": true})
	}
	// cniVersion 1.0.0 for runtimes whose libcni predates spec 1.1 (containerd
	// 1.6 vendors CNI v1.1.2 and rejects a 1.1.0 result: "unsupported CNI
	// result version"); cniVersions lets newer runtimes pick 1.1.0 and so
	// call STATUS and GC ("CNI runtimes MUST select the highest supported
	// version from ... cniVersion and cniVersions": CNI SPEC.md, Version
	// considerations; libcni v1.2+ conf.go reads cniVersions).
	conf, err := json.MarshalIndent(map[string]any{
		"cniVersion": "1.0.0", "cniVersions": []string{"1.0.0", "1.1.0"},
		"name": NetworkName, "plugins": plugins,
	}, "", "  ")
	if err != nil {
		return err
	}
	if err := writeAtomic(filepath.Join(a.cfg.CNIConfDir, ConfListName), conf, 0o644); err != nil {
		return fmt.Errorf("write %s: %w", ConfListName, err)
	}
	a.mu.Lock()
	a.conflistChain = chain
	a.mu.Unlock()
	missing := a.cfg.ChainPortmap && !portmap
	a.metrics.ChainedPluginMissing.WithLabelValues("portmap").Set(map[bool]float64{true: 1}[missing])
	logger := klog.FromContext(ctx)
	switch {
	case missing:
		logger.Info("portmap is not in the CNI bin dir: the conflist chains only aliasip-cni; hostPorts will not work", "cniBinDir", a.cfg.CNIBinDir)
		a.event(corev1.EventTypeWarning, EventPortmapMissing,
			"--chain-portmap is set but %s has no portmap plugin: the CNI config chains only aliasip-cni, so hostPort mappings do not work. Install the CNI reference plugin portmap there (picked up within --resync-period) or set --chain-portmap=false.", a.cfg.CNIBinDir)
	case prev != "":
		logger.Info("CNI config rewritten", "plugins", chain)
	}
	return nil
}

func isExecutable(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0
}

func copyAtomic(src, dst string, mode os.FileMode) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return writeAtomic(dst, data, mode)
}

func writeAtomic(dst string, data []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), dst)
}

// markNetworkAvailable sets the Node's NetworkUnavailable condition False.
// ensureNetworkAvailable sets NetworkUnavailable=False, retrying with
// backoff (up to 30 s apart) until it lands or ctx ends: until then the
// scheduler keeps pods off the node.
func (a *Agent) ensureNetworkAvailable(ctx context.Context) {
	logger := klog.FromContext(ctx)
	backoff := wait.Backoff{Duration: 500 * time.Millisecond, Factor: 2, Jitter: 0.2, Steps: math.MaxInt32, Cap: 30 * time.Second}
	err := wait.ExponentialBackoffWithContext(ctx, backoff, func(ctx context.Context) (bool, error) {
		if err := a.markNetworkAvailable(ctx); err != nil {
			logger.Error(err, "Setting NetworkUnavailable=False; retrying")
			return false, nil
		}
		return true, nil
	})
	if err != nil && ctx.Err() == nil {
		logger.Error(err, "Gave up setting NetworkUnavailable=False")
	}
}

func (a *Agent) markNetworkAvailable(ctx context.Context) error {
	a.mu.Lock()
	podCIDR := a.podCIDR
	a.mu.Unlock()
	now := metav1.Now()
	cond := corev1.NodeCondition{
		Type: corev1.NodeNetworkUnavailable, Status: corev1.ConditionFalse,
		Reason: ConditionReason, Message: "aliasip routes this node's podCIDR " + podCIDR.String(),
		LastTransitionTime: now, LastHeartbeatTime: now,
	}
	patch, err := json.Marshal(map[string]any{"status": map[string]any{"conditions": []corev1.NodeCondition{cond}}})
	if err != nil {
		return err
	}
	_, err = a.client.CoreV1().Nodes().PatchStatus(ctx, a.cfg.NodeName, patch)
	return err
}

// reconcileDelay is how long an event-triggered reconcile waits for more
// events to coalesce.
const reconcileDelay = 300 * time.Millisecond

// reconcileLoop repairs the host on netlink events and every resync period.
func (a *Agent) reconcileLoop(ctx context.Context) {
	logger := klog.FromContext(ctx)
	done := make(chan struct{})
	defer close(done)
	routes := make(chan netlink.RouteUpdate, 256)
	links := make(chan netlink.LinkUpdate, 256)
	var nsh *netns.NsHandle
	if a.cfg.NetNS != "" {
		h, err := netns.GetFromPath(a.cfg.NetNS)
		if err == nil {
			nsh = &h
			defer h.Close()
		}
	}
	errCB := func(err error) { logger.V(2).Info("netlink subscription", "err", err) }
	if err := netlink.RouteSubscribeWithOptions(routes, done, netlink.RouteSubscribeOptions{Namespace: nsh, ErrorCallback: errCB}); err != nil {
		logger.Error(err, "Route subscription failed; relying on periodic resync")
	}
	if err := netlink.LinkSubscribeWithOptions(links, done, netlink.LinkSubscribeOptions{Namespace: nsh, ErrorCallback: errCB}); err != nil {
		logger.Error(err, "Link subscription failed; relying on periodic resync")
	}
	t := time.NewTicker(a.cfg.ResyncPeriod)
	defer t.Stop()
	a.reconcile(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-a.kick:
		case u := <-routes:
			if a.isGuestRoute(u) {
				// Pods are unreachable while it exists: remove it now,
				// not after the coalescing delay.
				a.removeGuestRoute(ctx)
			}
		case <-links:
		}
		// Coalesce a burst of events: every pod start or stop makes
		// several, and a full pass per event would compete with the
		// plugin for CPU exactly when pods start. Drift is repaired within
		// reconcileDelay of the event that revealed it.
		select {
		case <-ctx.Done():
			return
		case <-time.After(reconcileDelay):
		}
		drain(routes, links, a.kick)
		a.reconcile(ctx)
	}
}

// isGuestRoute reports whether u adds a guest-agent local route.
func (a *Agent) isGuestRoute(u netlink.RouteUpdate) bool {
	a.mu.Lock()
	proto := a.guestProto
	a.mu.Unlock()
	return u.Type == unix.RTM_NEWROUTE && u.Route.Type == unix.RTN_LOCAL && int(u.Route.Protocol) == proto
}

func (a *Agent) removeGuestRoute(ctx context.Context) {
	a.mu.Lock()
	podCIDR, proto := a.podCIDR, a.guestProto
	a.mu.Unlock()
	var removed bool
	err := a.inHost(func() error {
		var err error
		removed, err = datapath.RemoveGuestAgentRoute(podCIDR, proto)
		return err
	})
	if err != nil {
		klog.FromContext(ctx).Error(err, "Removing the guest agent's route")
	}
	if removed {
		a.metrics.GuestRoutesRemoved.Inc()
		klog.FromContext(ctx).V(2).Info("Removed the guest agent's local route for the podCIDR", "podCIDR", podCIDR)
	}
}

func drain(routes chan netlink.RouteUpdate, links chan netlink.LinkUpdate, kick chan struct{}) {
	for {
		select {
		case <-routes:
		case <-links:
		case <-kick:
		default:
			return
		}
	}
}

func (a *Agent) reconcile(ctx context.Context) {
	if err := a.writeConflist(ctx); err != nil {
		klog.FromContext(ctx).Error(err, "Updating the CNI config")
	}
	a.mu.Lock()
	store, podCIDR, iface, guestProto := a.store, a.podCIDR, a.iface, a.guestProto
	a.mu.Unlock()
	var want []datapath.PodRoute
	for _, al := range store.List() {
		if al.HostVeth != "" {
			want = append(want, datapath.PodRoute{IP: al.IP, HostVeth: al.HostVeth})
		}
	}
	var rep datapath.Report
	err := a.inHost(func() error {
		var err error
		rep, err = datapath.Reconcile(podCIDR, iface, want, guestProto)
		return err
	})
	a.metrics.RoutesRepaired.Add(float64(rep.RoutesRepaired))
	a.metrics.SysctlsRepaired.Add(float64(rep.SysctlsRepaired))
	a.metrics.RoutesRemoved.Add(float64(rep.RoutesRemoved))
	a.metrics.GuestRoutesRemoved.Add(float64(rep.GuestRoutes))
	// The guest agent's route comes back every minute where it manages
	// alias routes: that is reported once (GuestAgentIPAliases) and
	// counted, not warned about on every removal.
	if rep.RoutesRepaired+rep.SysctlsRepaired > 0 {
		a.event(corev1.EventTypeWarning, EventDataPathRepaired, "Repaired %d pod routes and %d sysctls (something changed the host's network)",
			rep.RoutesRepaired, rep.SysctlsRepaired)
	}
	if rep.RoutesRepaired+rep.SysctlsRepaired+rep.RoutesRemoved+rep.GuestRoutes > 0 {
		klog.FromContext(ctx).Info("Repaired host data path", "routesRepaired", rep.RoutesRepaired,
			"sysctlsRepaired", rep.SysctlsRepaired, "routesRemoved", rep.RoutesRemoved, "guestAgentRoutesRemoved", rep.GuestRoutes)
	}
	if err != nil {
		klog.FromContext(ctx).Error(err, "Reconcile")
	}
}

// gcLoop collects allocations of pods gone from the API.
func (a *Agent) gcLoop(ctx context.Context) {
	t := time.NewTicker(a.cfg.PodGCInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			a.collectPods(ctx)
		}
	}
}

// collectPods releases allocations of pods that are gone, once they are
// older than the grace period (a pod's ADD may run before the agent's cache
// has seen the pod). The cache only nominates: an allocation is released
// after a live read of its pod finds it deleted, finished, or replaced by a
// pod of the same name with another UID (K8S_POD_UID, recorded at ADD) —
// never because a stale cache missed it. An allocation whose host veth now
// names another container (its name was reused) is dead too. Allocations
// without a pod name (runtimes other than Kubernetes) are left to CNI GC.
func (a *Agent) collectPods(ctx context.Context) {
	logger := klog.FromContext(ctx)
	store := a.storeOrNil()
	if store == nil {
		return
	}
	pods, err := a.pods.List(labels.Everything())
	if err != nil {
		logger.Error(err, "Pod GC: list cached pods")
		return
	}
	cached := map[string]*corev1.Pod{}
	for _, p := range pods {
		cached[p.Namespace+"/"+p.Name] = p
	}
	var vethAliases map[string]string
	if err := a.inHost(func() error {
		var err error
		vethAliases, err = datapath.VethAliases()
		return err
	}); err != nil {
		logger.Error(err, "Pod GC: list host veths")
		return
	}
	terminal := func(p *corev1.Pod) bool {
		return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
	}
	sameUID := func(al ipam.Allocation, p *corev1.Pod) bool { return al.PodUID == "" || string(p.UID) == al.PodUID }
	cutoff := time.Now().Add(-a.cfg.PodGCGrace)
	dead := map[ipam.Key]string{}
	for _, al := range store.List() {
		if al.Pod == "" || al.Created.After(cutoff) {
			continue
		}
		if alias, ok := vethAliases[al.HostVeth]; ok && alias != "" && alias != al.ContainerID {
			dead[al.Key] = "veth_reused"
			continue
		}
		if p := cached[al.Namespace+"/"+al.Pod]; p != nil && !terminal(p) && sameUID(al, p) {
			continue
		}
		live, err := a.client.CoreV1().Pods(al.Namespace).Get(ctx, al.Pod, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			dead[al.Key] = "pod_gone"
		case err != nil:
			logger.V(2).Info("Pod GC: cannot confirm; kept until the next pass", "pod", al.Namespace+"/"+al.Pod, "err", err)
		case live.Spec.NodeName != "" && live.Spec.NodeName != a.cfg.NodeName:
			dead[al.Key] = "pod_replaced" // a same-named pod on another node
		case !sameUID(al, live):
			dead[al.Key] = "pod_replaced"
		case terminal(live):
			dead[al.Key] = "pod_gone"
		}
	}
	if len(dead) == 0 {
		return
	}
	gone, err := store.Retain(func(al ipam.Allocation) bool { _, d := dead[al.Key]; return !d })
	if err != nil {
		logger.Error(err, "Pod GC")
		return
	}
	for _, al := range gone {
		reason := dead[al.Key]
		a.metrics.GCReleased.WithLabelValues(reason).Inc()
		// TeardownPod removes the veth only if its alias still names this
		// container.
		if err := a.inHost(func() error { return datapath.TeardownPod(al.HostVeth, al.ContainerID) }); err != nil {
			logger.Error(err, "Pod GC: tear down", "pod", al.Namespace+"/"+al.Pod, "veth", al.HostVeth)
		}
		logger.Info("Released address of a pod gone from the API", "reason", reason, "pod", al.Namespace+"/"+al.Pod, "uid", al.PodUID, "container", al.ContainerID, "ip", al.IP)
	}
	a.signal(a.kick)
}

// fabricLoop routes other nodes' podCIDRs via their InternalIPs.
func (a *Agent) fabricLoop(ctx context.Context) {
	t := time.NewTicker(a.cfg.ResyncPeriod)
	defer t.Stop()
	for {
		a.syncFabric(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-a.fabricCh:
		}
	}
}

func (a *Agent) syncFabric(ctx context.Context) {
	nodes, err := a.nodes.List(labels.Everything())
	if err != nil {
		return
	}
	var want []datapath.FabricRoute
	for _, n := range nodes {
		if n.Name == a.cfg.NodeName || n.DeletionTimestamp != nil {
			continue
		}
		p, err := netip.ParsePrefix(n.Spec.PodCIDR)
		if err != nil {
			continue
		}
		for _, ad := range n.Status.Addresses {
			if ad.Type != corev1.NodeInternalIP {
				continue
			}
			if ip, err := netip.ParseAddr(ad.Address); err == nil && ip.Is4() {
				want = append(want, datapath.FabricRoute{PodCIDR: p.Masked(), Via: ip})
				break
			}
		}
	}
	var changed, removed int
	err = a.inHost(func() error {
		var err error
		changed, removed, err = datapath.SyncFabric(want)
		return err
	})
	a.metrics.FabricRoutes.Set(float64(len(want)))
	if changed+removed > 0 {
		klog.FromContext(ctx).Info("Fabric routes synced", "routes", len(want), "changed", changed, "removed", removed)
	}
	if err != nil {
		klog.FromContext(ctx).Error(err, "Fabric routes")
	}
}
