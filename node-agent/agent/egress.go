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
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"github.com/aliasip/aliasip/node-agent/egress"
	"github.com/aliasip/aliasip/node-agent/ipam"
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

// masq is the agent's egress masquerade: its inputs (the ConfigMap, the
// PodRanges, this node's blocks and subnets), the last good
// configuration, and the tables it keeps right: ip aliasip, and on a
// dual-stack node ip6 aliasip, each kept, repaired and reported alike.
type masq struct {
	tables []*masqTable
	// syncMu: one pass at a time (the egress loop's, or the growth loop's
	// before a new block serves pods).
	syncMu sync.Mutex
	kick   chan struct{}
	cmSync cache.InformerSynced
	cms    corelisters.ConfigMapLister

	mu     sync.Mutex
	cfg    egress.Config // the last good configuration
	known  bool          // cfg was read in this process (not just the defaults)
	cmSeen string        // the ConfigMap data last parsed (one event per bad version)
}

// masqTable is one family's table and how its rules are computed.
type masqTable struct {
	table   *egress.Table
	rules   func(*masq) (egress.Rules, error)
	applied string // Describe of the rules last written or found in place (under masq.mu)
}

// startEgress starts the informers the masquerade follows and waits (up to
// 30 s) for the ConfigMap's, so the first rules written are the
// configured ones, not the defaults.
func (a *Agent) startEgress(ctx context.Context) *masq {
	fd := -1
	if a.nodeNS != nil {
		fd = int(a.nodeNS.Fd())
	}
	m := &masq{kick: a.egressCh, cfg: egress.Defaults(a.cfg.Cloud)}
	m.tables = []*masqTable{{table: egress.NewTable(fd), rules: a.egressRules}}
	a.mu.Lock()
	dualStack := a.podCIDR6.IsValid()
	a.mu.Unlock()
	if dualStack {
		m.tables = append(m.tables, &masqTable{table: egress.NewTable6(fd), rules: a.egressRules6})
	} else {
		// A single-stack node has no ip6 table; one left from when this
		// node was dual-stack (a podCIDRs change restarts the agent)
		// would masquerade a block the node no longer has.
		if existed, err := egress.NewTable6(fd).Delete(); err != nil {
			klog.FromContext(ctx).Error(err, "Removing the IPv6 masquerade table of a single-stack node")
		} else if existed {
			klog.FromContext(ctx).Info("Single-stack node: removed the IPv6 masquerade table", "table", "ip6 "+egress.TableName)
		}
	}
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
	return m
}

func splitRef(ref string) (ns, name string) {
	for i := 0; i < len(ref); i++ {
		if ref[i] == '/' {
			return ref[:i], ref[i+1:]
		}
	}
	return "", ref
}

// egressLoop keeps the tables right: on a change of their inputs, on an
// nftables event about either table, and every resyncInterval. One
// monitor serves both tables: events are told apart by the table's name,
// which they share.
func (a *Agent) egressLoop(ctx context.Context, m *masq) {
	logger := klog.FromContext(ctx)
	events := make(chan struct{}, 1)
	go func() {
		if err := m.tables[0].table.Watch(ctx, func() { a.signal(events) }); err != nil && ctx.Err() == nil {
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

// syncEgress computes the rules and writes each table that differs.
func (a *Agent) syncEgress(ctx context.Context, m *masq) {
	m.syncMu.Lock()
	defer m.syncMu.Unlock()
	a.loadMasqConfig(ctx, m)
	for _, t := range m.tables {
		a.syncEgressTable(ctx, m, t)
	}
}

// syncEgressTable writes one table if it differs from its rules.
func (a *Agent) syncEgressTable(ctx context.Context, m *masq, t *masqTable) {
	fam := t.table.Family()
	logger := klog.FromContext(ctx).WithValues("table", fam+" "+egress.TableName)
	want, err := t.rules(m)
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
		// Its destinations stay; its sources follow this node's blocks (a
		// block granted since must be masqueraded before it serves pods).
		if cur, ok, err := t.table.InPlace(); err == nil && ok {
			if t.table.Describe(egress.Rules{PodBlocks: cur.PodBlocks}) == t.table.Describe(egress.Rules{PodBlocks: want.PodBlocks}) {
				logger.Info("No good masquerade configuration yet; keeping the rules in place", "configMap", a.cfg.MasqConfigMap)
				return
			}
			want.NonMasquerade = cur.NonMasquerade
		}
	}
	m.mu.Lock()
	wantText := t.table.Describe(want)
	wasApplied := t.applied == wantText
	m.mu.Unlock()
	changed, err := t.table.Sync(want)
	if err != nil {
		a.metrics.EgressFailed.Inc()
		logger.Error(err, "Writing the masquerade rules")
		a.event(corev1.EventTypeWarning, EventEgressRulesFailed, "Writing the egress masquerade rules (nftables table %s %s) failed: %v; pods' traffic leaving the cluster may carry their own addresses until it succeeds", fam, egress.TableName, err)
		return
	}
	m.mu.Lock()
	t.applied = wantText
	m.mu.Unlock()
	if t == m.tables[0] {
		// The gauge is the ip table's, as before dual-stack (the metric
		// has no family label to keep the two apart).
		a.metrics.EgressNonMasq.Set(float64(len(want.NonMasquerade)))
	}
	switch {
	case changed && wasApplied:
		a.metrics.EgressRepaired.Inc()
		logger.Info("Masquerade table repaired: it had been flushed, deleted or edited")
		a.event(corev1.EventTypeWarning, EventEgressRulesRepaired, "The egress masquerade table (nftables table %s %s) had been flushed, deleted or edited; aliasip wrote it back", fam, egress.TableName)
	case changed:
		a.metrics.EgressProgrammed.Inc()
		logger.Info("Masquerade rules written", "podBlocks", want.PodBlocks, "nonMasquerade", want.NonMasquerade)
		a.event(corev1.EventTypeNormal, EventEgressRulesProgrammed, "Egress masquerade rules written (nftables table %s %s): traffic from %v to anything outside %d non-masquerade ranges leaves with the node's address", fam, egress.TableName, want.PodBlocks, len(want.NonMasquerade))
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
	klog.FromContext(ctx).Info("Masquerade configuration applied", "configMap", a.cfg.MasqConfigMap, "nonMasqueradeCIDRs", c.NonMasqueradeCIDRs, "masqLinkLocal", c.MasqLinkLocal, "masqLinkLocalIPv6", c.MasqLinkLocalIPv6, "resyncInterval", c.ResyncInterval)
}

// egressRules is the wanted table: this node's blocks (its podCIDR and,
// in a growable range, its extra blocks, draining ones included: they
// still hold pods) are masqueraded on their way to anything but the
// configured destinations, link-local (unless masqLinkLocal), the node's
// subnet, the default range, every PodRange and this node's own block.
func (a *Agent) egressRules(m *masq) (egress.Rules, error) {
	a.mu.Lock()
	podCIDR, iface, store := a.podCIDR, a.iface, a.store
	pending := slices.Clone(a.pendingExtra)
	a.mu.Unlock()
	m.mu.Lock()
	cfg := m.cfg
	m.mu.Unlock()
	var r egress.Rules
	r.PodBlocks = podBlocks(podCIDR, store, pending)
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
	r.NonMasquerade = append(r.NonMasquerade, a.podRangeCIDRs()...)
	subnets, err := a.hostSubnets(iface, netlink.FAMILY_V4)
	if err != nil {
		return r, fmt.Errorf("the node's subnet on %s: %w", iface, err)
	}
	r.NonMasquerade = append(r.NonMasquerade, subnets...)
	// The ip table holds IPv4 only (the table drops the rest too); the
	// list is logged and counted, so it says what the table holds.
	r.NonMasquerade = slices.DeleteFunc(r.NonMasquerade, func(p netip.Prefix) bool { return !p.Addr().Is4() })
	slices.SortFunc(r.NonMasquerade, func(x, y netip.Prefix) int { return strings.Compare(x.String(), y.String()) })
	r.NonMasquerade = slices.Compact(r.NonMasquerade)
	return r, nil
}

// egressRules6 is the wanted ip6 table of a dual-stack node (rules6).
func (a *Agent) egressRules6(m *masq) (egress.Rules, error) {
	a.mu.Lock()
	block, iface := a.podCIDR6, a.iface
	a.mu.Unlock()
	m.mu.Lock()
	cfg := m.cfg
	m.mu.Unlock()
	subnets, err := a.hostSubnets(iface, netlink.FAMILY_V6)
	if err != nil {
		return egress.Rules{}, fmt.Errorf("the node's IPv6 subnet on %s: %w", iface, err)
	}
	return rules6(cfg, block, a.cfg.ClusterCIDRs, a.podRangeCIDRs(), subnets), nil
}

// rules6 is the ip6 table: the node's IPv6 block is masqueraded on its way
// to anything but the configuration's IPv6 nonMasqueradeCIDRs, fe80::/10
// (unless masqLinkLocalIPv6), the IPv6 --cluster-cidr, the IPv6 PodRanges,
// this node's IPv6 block and the IPv6 subnets of its interface. Entries of
// the other family are left out. As for IPv4, other Nodes' IPv6 podCIDRs
// are not taken: a kubelet can write any podCIDRs into the Node it
// creates, and ::/0 there must not turn masquerade off on every node.
func rules6(cfg egress.Config, block netip.Prefix, clusterCIDRs, podRanges, subnets []netip.Prefix) egress.Rules {
	r := egress.Rules{PodBlocks: []netip.Prefix{block}}
	var all []netip.Prefix
	all = append(all, cfg.NonMasqueradeCIDRs...)
	if !cfg.MasqLinkLocalIPv6 {
		all = append(all, egress.LinkLocalIPv6)
	}
	all = append(all, clusterCIDRs...)
	all = append(all, block)
	all = append(all, podRanges...)
	all = append(all, subnets...)
	for _, p := range all {
		if p.IsValid() && p.Addr().Is6() && !p.Addr().Is4In6() {
			r.NonMasquerade = append(r.NonMasquerade, p.Masked())
		}
	}
	slices.SortFunc(r.NonMasquerade, func(x, y netip.Prefix) int { return strings.Compare(x.String(), y.String()) })
	r.NonMasquerade = slices.Compact(r.NonMasquerade)
	return r
}

// hostSubnets returns the networks of the host interface's addresses of
// one family (netlink.FAMILY_V4 or FAMILY_V6): the node subnet (other
// nodes, and on GCE the VPC subnet's gateway). A host address (/32,
// /128) names no subnet; IPv6 link-local addresses are left to
// masqLinkLocalIPv6.
func (a *Agent) hostSubnets(iface string, family int) ([]netip.Prefix, error) {
	var out []netip.Prefix
	err := a.inHost(func() error {
		l, err := netlink.LinkByName(iface)
		if err != nil {
			return err
		}
		addrs, err := netlink.AddrList(l, family)
		if err != nil {
			return err
		}
		for _, ad := range addrs {
			if ad.IPNet == nil {
				continue
			}
			ip, ok := netip.AddrFromSlice(ad.IP)
			if !ok {
				continue
			}
			ip = ip.Unmap()
			ones, bits := ad.Mask.Size()
			switch {
			case family == netlink.FAMILY_V4 && ip.Is4() && ones < 32:
			case family == netlink.FAMILY_V6 && ip.Is6() && bits == 128 && ones < 128 && !ip.IsLinkLocalUnicast():
			default:
				continue
			}
			out = append(out, netip.PrefixFrom(ip, ones).Masked())
		}
		return nil
	})
	return out, err
}

// removeEgress deletes the tables: masquerade turned off
// (--masquerade=false, a Cloud NAT set-up) removes what an earlier agent
// wrote, the ip6 table too (the ip table's Delete takes both).
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
		klog.FromContext(ctx).Info("Masquerade is off: removed the masquerade tables", "table", egress.TableName)
	}
}

// podBlocks are the sources the ip table masquerades: the podCIDR, the
// store's extra blocks and the pending ones (growth.go: a granted block
// is masqueraded before it serves a pod, so a pod's first packet to the
// outside never leaves with its own address).
func podBlocks(podCIDR netip.Prefix, store *ipam.Store, pending []netip.Prefix) []netip.Prefix {
	out := []netip.Prefix{podCIDR}
	if store != nil {
		for _, b := range store.ExtraBlocks() {
			out = append(out, b.CIDR)
		}
	}
	for _, p := range pending {
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out
}
