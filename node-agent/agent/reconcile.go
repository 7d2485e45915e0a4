package agent

import (
	"context"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	"github.com/aliasip/aliasip/node-agent/datapath"
)

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
	podCIDR, proto, store := a.podCIDR, a.guestProto, a.store
	a.mu.Unlock()
	// The podCIDR's, and each extra block's (growable ranges).
	blocks := []netip.Prefix{podCIDR}
	if store != nil {
		for _, b := range store.ExtraBlocks() {
			blocks = append(blocks, b.CIDR)
		}
	}
	var removed bool
	err := a.inHost(func() error {
		for _, b := range blocks {
			r, err := datapath.RemoveGuestAgentRoute(b, proto)
			if err != nil {
				return err
			}
			removed = removed || r
		}
		return nil
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

// settleWindow is how long after its address is allocated a pod's data
// path is the plugin's alone. An ADD takes milliseconds (see the ADD
// breakdown of test/bench/cni_test.go); under a burst of hundreds, still
// well under a second.
var settleWindow = 5 * time.Second

func (a *Agent) reconcile(ctx context.Context) {
	if err := a.writeConflist(ctx); err != nil {
		klog.FromContext(ctx).Error(err, "Updating the CNI config")
	}
	a.mu.Lock()
	store, podCIDR, podCIDR6, iface, guestProto := a.store, a.podCIDR, a.podCIDR6, a.iface, a.guestProto
	a.mu.Unlock()
	// The allocations are read after the host's routes (Reconcile calls
	// want then): a pod whose ADD completes during the pass is either in
	// both or its route is not in the read, so it is never taken for a
	// vanished pod.
	want := func() []datapath.PodRoute {
		var want []datapath.PodRoute
		now := time.Now()
		for _, al := range store.List() {
			if al.HostVeth != "" {
				want = append(want, datapath.PodRoute{IP: al.IP, IPv6: al.IPv6, HostVeth: al.HostVeth, Settling: now.Sub(al.Created) < settleWindow})
			}
		}
		return want
	}
	var rep datapath.Report
	err := a.inHost(func() error {
		var err error
		rep, err = datapath.ReconcileDualStack(podCIDR, podCIDR6, iface, want, guestProto)
		return err
	})
	// A settling pod without its route yet: look again once it settled,
	// so a route that really went missing is not left to the resync.
	if rep.Settling > 0 && a.settleRecheck.CompareAndSwap(false, true) {
		time.AfterFunc(settleWindow, func() {
			a.settleRecheck.Store(false)
			a.signal(a.kick)
		})
	}
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
