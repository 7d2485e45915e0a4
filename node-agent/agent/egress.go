package agent

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"github.com/aliasip/aliasip/node-agent/egress"
)

// Event reasons of the egress masquerade.
const (
	// EventEgressConfigInvalid: the masquerade ConfigMap does not parse;
	// the last good rules stay in place.
	EventEgressConfigInvalid = "EgressConfigInvalid"
	// EventEgressRulesRepaired: the aliasip nftables table had been
	// flushed, deleted or edited and was written back.
	EventEgressRulesRepaired = "EgressRulesRepaired"
	// EventEgressRulesFailed: the masquerade rules could not be written.
	EventEgressRulesFailed = "EgressRulesFailed"
	// EventEgressRulesProgrammed (Normal): new masquerade rules were
	// written (first start, or the ConfigMap or the pod ranges changed).
	EventEgressRulesProgrammed = "EgressRulesProgrammed"
)

// podRangeGVR is the PodRange resource, read as unstructured objects so
// the agent does not import the controller's API packages.
var podRangeGVR = schema.GroupVersionResource{Group: "aliasip.io", Version: "v1alpha1", Resource: "podranges"}

// masq is the agent's egress masquerade: its inputs (the ConfigMap, the
// PodRanges, the Nodes' blocks, this node's block and subnet), the last
// good configuration, and the table it keeps right.
type masq struct {
	table   *egress.Table
	kick    chan struct{}
	cmSync  cache.InformerSynced
	cms     corelisters.ConfigMapLister
	ranges  cache.GenericLister // nil: PodRanges not followed
	rSynced cache.InformerSynced

	mu       sync.Mutex
	cfg      egress.Config // the last good configuration
	known    bool          // cfg was read in this process (not just the defaults)
	cmSeen   string        // the ConfigMap data last parsed (one event per bad version)
	applied  string        // Describe of the rules last written or found in place
	lastWant egress.Rules
}

// SetDynamicClient gives the agent a dynamic client to follow PodRanges
// with (their CIDRs join the non-masquerade set). Without one, only the
// default range (--cluster-cidr) and the Nodes' blocks are followed.
func (a *Agent) SetDynamicClient(d dynamic.Interface) { a.dyn = d }

// startEgress starts the informers the masquerade follows and waits (up to
// 30 s) for the ConfigMap's, so the first rules written are the
// configured ones, not the defaults.
func (a *Agent) startEgress(ctx context.Context) *masq {
	fd := -1
	if a.nodeNS != nil {
		fd = int(a.nodeNS.Fd())
	}
	m := &masq{table: egress.NewTable(fd), kick: make(chan struct{}, 1), cfg: egress.Defaults(a.cfg.Cloud)}
	if a.cfg.MasqConfigMap != "" {
		ns, name := splitRef(a.cfg.MasqConfigMap)
		// One object, listed and watched by name: RBAC grants list and
		// watch on a resourceName only to requests with a metadata.name
		// field selector (https://kubernetes.io/docs/reference/access-authn-authz/rbac/#referring-to-resources).
		f := informers.NewSharedInformerFactoryWithOptions(a.client, 10*time.Minute, informers.WithNamespace(ns),
			informers.WithTweakListOptions(func(o *metav1.ListOptions) {
				o.FieldSelector = fields.OneTermEqualSelector("metadata.name", name).String()
			}))
		inf := f.Core().V1().ConfigMaps()
		m.cms = inf.Lister()
		inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc: func(any) { a.signal(m.kick) }, UpdateFunc: func(any, any) { a.signal(m.kick) }, DeleteFunc: func(any) { a.signal(m.kick) },
		})
		m.cmSync = inf.Informer().HasSynced
		f.Start(ctx.Done())
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		if !cache.WaitForCacheSync(wctx.Done(), m.cmSync) {
			klog.FromContext(ctx).Info("The masquerade ConfigMap's informer has not synced; starting with the defaults", "configMap", a.cfg.MasqConfigMap)
		}
		cancel()
	}
	if a.dyn != nil {
		f := dynamicinformer.NewDynamicSharedInformerFactory(a.dyn, 10*time.Minute)
		inf := f.ForResource(podRangeGVR)
		inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc: func(any) { a.signal(m.kick) }, UpdateFunc: func(any, any) { a.signal(m.kick) }, DeleteFunc: func(any) { a.signal(m.kick) },
		})
		m.ranges, m.rSynced = inf.Lister(), inf.Informer().HasSynced
		f.Start(ctx.Done())
		// Waited for (up to 30 s) when the API serves PodRanges: a first
		// write without their CIDRs would masquerade new pod-to-pod
		// connections to their blocks, and after a restart replace a
		// table that was right. A cluster without the CRD must not keep
		// pods from starting, so then it is not waited for.
		if a.podRangesServed() {
			wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			if !cache.WaitForCacheSync(wctx.Done(), m.rSynced) {
				klog.FromContext(ctx).Info("The PodRange informer has not synced; starting without their CIDRs")
			}
			cancel()
		}
	}
	return m
}

// podRangesServed reports whether the API serves the PodRange resource.
func (a *Agent) podRangesServed() bool {
	l, err := a.client.Discovery().ServerResourcesForGroupVersion(podRangeGVR.GroupVersion().String())
	if err != nil {
		return false
	}
	for _, r := range l.APIResources {
		if r.Name == podRangeGVR.Resource {
			return true
		}
	}
	return false
}

func splitRef(ref string) (ns, name string) {
	for i := 0; i < len(ref); i++ {
		if ref[i] == '/' {
			return ref[:i], ref[i+1:]
		}
	}
	return "", ref
}

// egressLoop keeps the table right: on a change of its inputs, on an
// nftables event about the table, and every resyncInterval.
func (a *Agent) egressLoop(ctx context.Context, m *masq) {
	logger := klog.FromContext(ctx)
	events := make(chan struct{}, 1)
	go func() {
		if err := m.table.Watch(ctx, func() { a.signal(events) }); err != nil && ctx.Err() == nil {
			logger.Error(err, "nftables monitor failed; the masquerade table is checked every resyncInterval")
		}
	}()
	for {
		m.mu.Lock()
		interval := m.cfg.ResyncInterval
		m.mu.Unlock()
		t := time.NewTimer(interval)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		case <-m.kick:
		case <-events:
			// Our own writes come back as events too: a pass then finds
			// the table as wanted and writes nothing. Set-element events
			// do not name their table (google/nftables v0.3.0), so other
			// tables' churn (kube-proxy's nftables mode) wakes us too: a
			// burst is coalesced into one read-only pass.
			coalesce := time.NewTimer(reconcileDelay)
			select {
			case <-ctx.Done():
			case <-coalesce.C:
			}
			coalesce.Stop()
			select {
			case <-events:
			default:
			}
		}
		t.Stop()
		a.syncEgress(ctx, m)
	}
}

// syncEgress computes the rules and writes them if the table differs.
func (a *Agent) syncEgress(ctx context.Context, m *masq) {
	logger := klog.FromContext(ctx)
	a.loadMasqConfig(ctx, m)
	want, err := a.egressRules(m)
	if err != nil {
		logger.Error(err, "Masquerade rules")
		return
	}
	m.mu.Lock()
	known := m.known
	m.mu.Unlock()
	if !known {
		// No good configuration read yet in this process (the ConfigMap is
		// malformed, or could not be read): a table an earlier agent
		// wrote from the last good one stays as it is. Only a node with
		// no table at all gets the defaults, so its pods reach the outside.
		if cur, err := m.table.Read(); err == nil && cur != "" {
			logger.Info("No good masquerade configuration yet; keeping the rules in place", "configMap", a.cfg.MasqConfigMap)
			return
		}
	}
	m.mu.Lock()
	wantText := egress.Describe(want)
	wasApplied := m.applied == wantText
	m.mu.Unlock()
	changed, err := m.table.Sync(want)
	if err != nil {
		a.metrics.EgressFailed.Inc()
		logger.Error(err, "Writing the masquerade rules")
		a.event(corev1.EventTypeWarning, EventEgressRulesFailed, "Writing the egress masquerade rules (nftables table ip %s) failed: %v; pods' traffic leaving the cluster may carry their own addresses until it succeeds", egress.TableName, err)
		return
	}
	m.mu.Lock()
	m.applied, m.lastWant = wantText, want
	m.mu.Unlock()
	a.metrics.EgressNonMasq.Set(float64(len(want.NonMasquerade)))
	switch {
	case changed && wasApplied:
		a.metrics.EgressRepaired.Inc()
		logger.Info("Masquerade table repaired: it had been flushed, deleted or edited", "table", egress.TableName)
		a.event(corev1.EventTypeWarning, EventEgressRulesRepaired, "The egress masquerade table (nftables table ip %s) had been flushed, deleted or edited; aliasip wrote it back", egress.TableName)
	case changed:
		a.metrics.EgressProgrammed.Inc()
		logger.Info("Masquerade rules written", "podBlocks", want.PodBlocks, "nonMasquerade", want.NonMasquerade)
		a.event(corev1.EventTypeNormal, EventEgressRulesProgrammed, "Egress masquerade rules written (nftables table ip %s): traffic from %v to anything outside %d non-masquerade ranges leaves with the node's address", egress.TableName, want.PodBlocks, len(want.NonMasquerade))
	}
}

// loadMasqConfig reads the ConfigMap: a good version replaces the
// configuration, a bad one is refused with a Warning (once per version)
// and the last good configuration stays; no ConfigMap means the defaults,
// as ip-masq-agent uses its defaults without a config file.
func (a *Agent) loadMasqConfig(ctx context.Context, m *masq) {
	if m.cms == nil {
		m.mu.Lock()
		m.known = true
		m.mu.Unlock()
		return
	}
	if !m.cmSync() {
		return // not listed yet: nothing is known, not even its absence
	}
	ns, name := splitRef(a.cfg.MasqConfigMap)
	def := egress.Defaults(a.cfg.Cloud)
	cm, err := m.cms.ConfigMaps(ns).Get(name)
	m.mu.Lock()
	defer m.mu.Unlock()
	if err != nil {
		m.known = true
		if m.cmSeen != "<none>" {
			klog.FromContext(ctx).Info("No masquerade ConfigMap; using the defaults", "configMap", a.cfg.MasqConfigMap, "cloud", a.cfg.Cloud)
		}
		m.cfg, m.cmSeen = def, "<none>"
		a.metrics.EgressConfigValid.Set(1)
		return
	}
	data, ok := cm.Data[egress.ConfigKey]
	seen := fmt.Sprintf("%s|%v|%s", cm.ResourceVersion, ok, data)
	if seen == m.cmSeen {
		return
	}
	m.cmSeen = seen
	var c egress.Config
	if !ok {
		err = fmt.Errorf("no key %q", egress.ConfigKey)
	} else {
		c, err = egress.Parse([]byte(data), def)
	}
	if err != nil {
		a.metrics.EgressConfigValid.Set(0)
		klog.FromContext(ctx).Error(err, "Masquerade ConfigMap refused; keeping the last good rules", "configMap", a.cfg.MasqConfigMap)
		a.event(corev1.EventTypeWarning, EventEgressConfigInvalid, "ConfigMap %s key %q refused: %v; the last good masquerade rules stay in place", a.cfg.MasqConfigMap, egress.ConfigKey, err)
		return
	}
	a.metrics.EgressConfigValid.Set(1)
	m.cfg, m.known = c, true
	klog.FromContext(ctx).Info("Masquerade configuration applied", "configMap", a.cfg.MasqConfigMap, "nonMasqueradeCIDRs", c.NonMasqueradeCIDRs, "masqLinkLocal", c.MasqLinkLocal, "resyncInterval", c.ResyncInterval)
}

// egressRules is the wanted table: this node's block is masqueraded on its
// way to anything but the configured destinations, link-local (unless
// masqLinkLocal), the node's subnet, the default range, every PodRange and
// this node's own block.
func (a *Agent) egressRules(m *masq) (egress.Rules, error) {
	a.mu.Lock()
	podCIDR, iface := a.podCIDR, a.iface
	a.mu.Unlock()
	m.mu.Lock()
	cfg := m.cfg
	m.mu.Unlock()
	var r egress.Rules
	r.PodBlocks = []netip.Prefix{podCIDR}
	r.NonMasquerade = append(r.NonMasquerade, cfg.NonMasqueradeCIDRs...)
	if !cfg.MasqLinkLocal {
		r.NonMasquerade = append(r.NonMasquerade, egress.LinkLocal)
	}
	r.NonMasquerade = append(r.NonMasquerade, a.cfg.ClusterCIDRs...)
	// Other Nodes' podCIDRs are not taken: a kubelet may create its own
	// Node with any spec.podCIDR (NodeRestriction lets a kubelet create its
	// own Node object), and one node's credentials writing
	// 0.0.0.0/0 there must not turn masquerade off on every other node.
	// Every block lies in the default range or a PodRange, which are here.
	r.NonMasquerade = append(r.NonMasquerade, podCIDR)
	if m.ranges != nil {
		objs, _ := m.ranges.List(labels.Everything())
		for _, o := range objs {
			u, ok := o.(*unstructured.Unstructured)
			if !ok {
				continue
			}
			if p, ok := podRangeInUse(u); ok {
				r.NonMasquerade = append(r.NonMasquerade, p)
			}
		}
	}
	subnets, err := a.hostSubnets(iface)
	if err != nil {
		return r, fmt.Errorf("the node's subnet on %s: %w", iface, err)
	}
	r.NonMasquerade = append(r.NonMasquerade, subnets...)
	slices.SortFunc(r.NonMasquerade, func(x, y netip.Prefix) int { return strings.Compare(x.String(), y.String()) })
	r.NonMasquerade = slices.Compact(r.NonMasquerade)
	return r, nil
}

// podRangeInUse returns the CIDR of a PodRange the controller hands blocks
// out of (Ready=True) or whose blocks nodes still hold (a range being
// removed): status.cidr, which only the controller writes (the status
// subresource). spec.cidr is not taken: the schema lets a PodRange
// creator write 0.0.0.0/1, and a range the controller refused (it
// overlaps another) must not switch masquerade off for those addresses.
func podRangeInUse(u *unstructured.Unstructured) (netip.Prefix, bool) {
	s, _, _ := unstructured.NestedString(u.Object, "status", "cidr")
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, false
	}
	nodes, _, _ := unstructured.NestedInt64(u.Object, "status", "nodes")
	used, _, _ := unstructured.NestedInt64(u.Object, "status", "blocksUsed")
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	ready := false
	for _, c := range conds {
		if m, ok := c.(map[string]any); ok && m["type"] == "Ready" && m["status"] == "True" {
			ready = true
		}
	}
	return p.Masked(), ready || nodes > 0 || used > 0
}

// hostSubnets returns the IPv4 networks of the host interface's addresses
// (the node subnet: other nodes, and on GCE the VPC subnet's gateway).
func (a *Agent) hostSubnets(iface string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	err := a.inHost(func() error {
		l, err := netlink.LinkByName(iface)
		if err != nil {
			return err
		}
		addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		for _, ad := range addrs {
			if ad.IPNet == nil {
				continue
			}
			ip, ok := netip.AddrFromSlice(ad.IP.To4())
			ones, _ := ad.Mask.Size()
			if ok && ones < 32 {
				out = append(out, netip.PrefixFrom(ip, ones).Masked())
			}
		}
		return nil
	})
	return out, err
}

// removeEgress deletes the table: masquerade turned off (--masquerade=false,
// a Cloud NAT set-up) removes what an earlier agent wrote.
func (a *Agent) removeEgress(ctx context.Context) {
	fd := -1
	if a.nodeNS != nil {
		fd = int(a.nodeNS.Fd())
	}
	existed, err := egress.NewTable(fd).Delete()
	switch {
	case err != nil:
		klog.FromContext(ctx).Error(err, "Removing the masquerade table (masquerade is off)")
	case existed:
		klog.FromContext(ctx).Info("Masquerade is off: removed the masquerade table", "table", egress.TableName)
	}
}
