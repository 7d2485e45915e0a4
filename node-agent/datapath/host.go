package datapath

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ProtoGCEGuestAgent is the route protocol the GCE guest agent uses by
// default for the `local` routes it adds for a NIC's alias ranges (its
// [IpForwarding] ethernet_proto_id, 66 unless configured otherwise).
const ProtoGCEGuestAgent = 66

// ProtoFabric marks the fabric routes aliasip installs (--fabric=routes).
const ProtoFabric = 201

// DefaultRouteInterface returns the interface of the IPv4 default route.
func DefaultRouteInterface() (string, error) {
	routes, err := netlinksafe.RouteListFiltered(unix.AF_INET, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return "", err
	}
	for _, r := range routes {
		if (r.Dst == nil || maskBits(r.Dst.Mask) == 0) && r.LinkIndex > 0 {
			l, err := netlink.LinkByIndex(r.LinkIndex)
			if err != nil {
				return "", err
			}
			return l.Attrs().Name, nil
		}
	}
	return "", errors.New("no IPv4 default route; set --host-interface")
}

// InterfaceMTU returns a link's MTU.
func InterfaceMTU(name string) (int, error) {
	l, err := netlinksafe.LinkByName(name)
	if err != nil {
		return 0, fmt.Errorf("host interface %s: %w", name, err)
	}
	return l.Attrs().MTU, nil
}

// PrepareHost applies the host-wide settings and reports how many it had to
// change.
func PrepareHost(hostIface string) (int, error) {
	changed := 0
	for _, s := range []struct{ key, value string }{
		// Route between the NIC and the pods' veths.
		{"net/ipv4/ip_forward", "1"},
		// Loose reverse-path filtering on the NIC: replies to pods arrive
		// for addresses the kernel routes out of a veth, not the NIC, and
		// strict mode would drop them.
		{"net/ipv4/conf/" + hostIface + "/rp_filter", "2"},
	} {
		n, err := ensureSysctl(s.key, s.value)
		if err != nil {
			return changed, fmt.Errorf("sysctl %s=%s: %w", s.key, s.value, err)
		}
		changed += n
	}
	return changed, nil
}

// PrepareHostIPv6 applies the host-wide IPv6 settings of a dual-stack node
// and reports how many it had to change. hostIface is the node's NIC.
//
// IPv6 forwarding is one switch for the whole host: conf/all/forwarding
// "Enable global IPv6 forwarding between all interfaces" and "also sets all
// interfaces' Host/Router setting 'forwarding'" (ip-sysctl.rst). A router
// interface ignores router advertisements "unless accept_ra is 2"
// (ip-sysctl.rst, forwarding, TRUE (1), 3.), and the kernel drops the
// default routes it learnt from them as forwarding is switched on
// (net/ipv6/route.c, rt6_purge_dflt_routers, spares accept_ra=2 links). A
// NIC that takes its IPv6 default route from RAs, as a GCE VM's does,
// would lose it. So the NIC's accept_ra goes from 1 to 2 first; 0 (static
// configuration) and 2 are left as they are.
func PrepareHostIPv6(hostIface string) (int, error) {
	changed := 0
	raKey := "net/ipv6/conf/" + hostIface + "/accept_ra"
	cur, err := os.ReadFile(filepath.Join(ProcSys, raKey))
	if err != nil {
		return 0, fmt.Errorf("sysctl %s: %w", raKey, err)
	}
	if strings.TrimSpace(string(cur)) == "1" {
		// Keep taking router advertisements on the NIC once forwarding is on.
		n, err := ensureSysctl(raKey, "2")
		if err != nil {
			return 0, fmt.Errorf("sysctl %s=2: %w", raKey, err)
		}
		changed += n
	}
	// Route IPv6 between the NIC and the pods' veths.
	n, err := ensureSysctl("net/ipv6/conf/all/forwarding", "1")
	if err != nil {
		return changed, fmt.Errorf("sysctl net/ipv6/conf/all/forwarding=1: %w", err)
	}
	return changed + n, nil
}

// RemoveGuestAgentRoute deletes the `local` route the GCE guest agent adds
// for the node's alias range (table local, protocol proto). While it exists
// the kernel takes every pod address as its own and pods are unreachable.
// It reports whether one was removed.
func RemoveGuestAgentRoute(podCIDR netip.Prefix, proto int) (bool, error) {
	routes, err := netlinksafe.RouteListFiltered(unix.AF_INET, &netlink.Route{Table: unix.RT_TABLE_LOCAL}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return false, err
	}
	removed := false
	for _, r := range routes {
		if r.Type != unix.RTN_LOCAL || int(r.Protocol) != proto || r.Dst == nil {
			continue
		}
		p, ok := prefixOf(r.Dst.IP, r.Dst.Mask)
		if !ok || !p.Overlaps(podCIDR) {
			continue
		}
		// ip route del table local local PODCIDR dev eth0 proto 66 (or proto)
		if err := netlink.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			return removed, fmt.Errorf("delete guest agent route %v: %w", p, err)
		}
		removed = true
	}
	return removed, nil
}

// PodRoute is a wanted /32 route to a pod's host veth, and, for a
// dual-stack pod, a wanted /128 route with the veth's IPv6 configuration.
type PodRoute struct {
	IP netip.Addr
	// IPv6 is the pod's IPv6 address (zero: IPv4 only).
	IPv6     netip.Addr
	HostVeth string
	// Settling: the pod's ADD may still be running (its address was
	// allocated moments ago). The plugin brings the host veth up, then sets
	// its sysctls and adds the route; a pass in between would "repair"
	// what the plugin is about to do. Its route is kept, never repaired.
	Settling bool
}

// Report counts what a reconcile pass changed.
type Report struct {
	RoutesRepaired  int
	SysctlsRepaired int
	RoutesRemoved   int
	GuestRoutes     int
	// Settling counts settling pods whose route is not there yet: a pass
	// once they settled repairs them if the plugin did not finish.
	Settling int
}

// Reconcile makes the host match the wanted pod routes: every pod whose
// veth exists and is up gets its /32 route and sysctls back; /32 routes
// from the podCIDR to "ali" veths that no pod wants are removed; the guest
// agent's local route (protocol guestProto) is removed.
//
// want is called after the host's links and routes are read, never before:
// the plugin allocates a pod's address before it creates the pod's route,
// so every route in those reads whose pod is live is in want. Read before
// them, want would miss a pod whose ADD completed in between, and its
// route would be removed as a vanished pod's.
//
// A pod whose host veth is down is being set up: SetupPod brings the veth
// up just before it adds the route. The plugin finishes it; a pass that
// ran in between would "repair" what the plugin is about to do (and the
// kernel refuses a route through a link that is down, ENETDOWN).
func Reconcile(podCIDR netip.Prefix, hostIface string, want func() []PodRoute, guestProto int) (Report, error) {
	return ReconcileDualStack(podCIDR, netip.Prefix{}, hostIface, want, guestProto)
}

// ReconcileDualStack is Reconcile for a node with an IPv6 block too
// (podCIDR6; the zero Prefix: exactly Reconcile). On top of Reconcile's
// work it re-applies PrepareHostIPv6, gives every up pod with an IPv6
// address its host veth's IPv6 sysctls (ConfigureHostVethIPv6), the
// gateway address GatewayIPv6 and its /128 route back, and removes /128
// routes of podCIDR6 to "ali" veths that no pod wants. Repaired gateway
// addresses count as repaired routes (the pod's IPv6 default route
// depends on it as its IPv4 one does on proxy-ARP).
func ReconcileDualStack(podCIDR, podCIDR6 netip.Prefix, hostIface string, want func() []PodRoute, guestProto int) (Report, error) {
	var rep Report
	var errs []error
	if n, err := PrepareHost(hostIface); err != nil {
		errs = append(errs, err)
	} else {
		rep.SysctlsRepaired += n
	}
	if podCIDR6.IsValid() {
		if n, err := PrepareHostIPv6(hostIface); err != nil {
			errs = append(errs, err)
		} else {
			rep.SysctlsRepaired += n
		}
	}
	if removed, err := RemoveGuestAgentRoute(podCIDR, guestProto); err != nil {
		errs = append(errs, err)
	} else if removed {
		rep.GuestRoutes++
	}
	// One dump of the links and one of the main table per pass, whatever
	// the number of pods: the pass must stay cheap, as it runs while pods
	// start.
	links, err := netlinksafe.LinkList()
	if err != nil {
		return rep, errors.Join(append(errs, err)...)
	}
	byName := map[string]netlink.Link{}
	byIndex := map[int]netlink.Link{}
	for _, l := range links {
		byName[l.Attrs().Name] = l
		byIndex[l.Attrs().Index] = l
	}
	routes, err := netlinksafe.RouteListFiltered(unix.AF_INET, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return rep, errors.Join(append(errs, err)...)
	}
	type hostRoute struct {
		route netlink.Route
		ip    netip.Addr
	}
	var podRoutes []hostRoute
	correct := map[netip.Addr]int{} // pod address -> link index of a correct route
	for _, r := range routes {
		if r.Dst == nil || maskBits(r.Dst.Mask) != 32 || r.LinkIndex == 0 {
			continue
		}
		ip, ok := netip.AddrFromSlice(r.Dst.IP.To4())
		if !ok || !podCIDR.Contains(ip) {
			continue
		}
		podRoutes = append(podRoutes, hostRoute{r, ip})
		if r.Scope == netlink.SCOPE_LINK && r.Gw == nil {
			correct[ip] = r.LinkIndex
		}
	}
	if podCIDR6.IsValid() {
		routes6, err := netlinksafe.RouteListFiltered(unix.AF_INET6, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return rep, errors.Join(append(errs, err)...)
		}
		for _, r := range routes6 {
			if r.Dst == nil || maskBits(r.Dst.Mask) != 128 || r.LinkIndex == 0 {
				continue
			}
			ip, ok := netip.AddrFromSlice(r.Dst.IP)
			if !ok || !podCIDR6.Contains(ip) {
				continue
			}
			podRoutes = append(podRoutes, hostRoute{r, ip})
			if r.Gw == nil {
				correct[ip] = r.LinkIndex
			}
		}
	}

	wanted := map[netip.Addr]string{}
	for _, w := range want() {
		wanted[w.IP] = w.HostVeth
		if w.IPv6.IsValid() && podCIDR6.IsValid() {
			wanted[w.IPv6] = w.HostVeth
		}
		link, ok := byName[w.HostVeth]
		if !ok {
			continue // the pod's veth is gone (or not made yet): nothing to route to
		}
		if link.Attrs().Flags&net.FlagUp == 0 {
			continue // an ADD in progress
		}
		v6 := w.IPv6.IsValid() && podCIDR6.IsValid()
		if w.Settling {
			if correct[w.IP] != link.Attrs().Index || (v6 && correct[w.IPv6] != link.Attrs().Index) {
				rep.Settling++
			}
			continue
		}
		n, err := ConfigureHostVeth(w.HostVeth)
		rep.SysctlsRepaired += n
		if err != nil {
			errs = append(errs, err)
		}
		if v6 {
			repairHostIPv6(link, w, correct, &rep, &errs)
		}
		if correct[w.IP] == link.Attrs().Index {
			continue
		}
		// ip route replace IP/32 dev aliXXX scope link
		if err := netlink.RouteReplace(&netlink.Route{LinkIndex: link.Attrs().Index, Dst: ipNet(netip.PrefixFrom(w.IP, 32)), Scope: netlink.SCOPE_LINK}); err != nil {
			errs = append(errs, fmt.Errorf("route %v dev %s: %w", w.IP, w.HostVeth, err))
			continue
		}
		rep.RoutesRepaired++
	}
	for _, hr := range podRoutes {
		link, ok := byIndex[hr.route.LinkIndex]
		if !ok || !strings.HasPrefix(link.Attrs().Name, VethPrefix) {
			continue
		}
		if wanted[hr.ip] == link.Attrs().Name {
			continue
		}
		// ip route del IP/32 (or IP6/128) dev aliXXX: a vanished pod's route.
		r := hr.route
		if err := netlink.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, err)
			continue
		}
		rep.RoutesRemoved++
	}
	return rep, errors.Join(errs...)
}

// repairHostIPv6 gives a dual-stack pod's host veth back its IPv6
// sysctls, the gateway address and the /128 route, counting what it had
// to change.
func repairHostIPv6(link netlink.Link, w PodRoute, correct map[netip.Addr]int, rep *Report, errs *[]error) {
	n, err := ConfigureHostVethIPv6(w.HostVeth)
	rep.SysctlsRepaired += n
	if err != nil {
		*errs = append(*errs, err)
		return // without IPv6 on the veth, neither address nor route is taken
	}
	addrs, err := netlinksafe.AddrList(link, unix.AF_INET6)
	if err != nil {
		*errs = append(*errs, err)
		return
	}
	hasGW := false
	for _, a := range addrs {
		hasGW = hasGW || (a.IP.Equal(GatewayIPv6.AsSlice()) && a.Flags&unix.IFA_F_DADFAILED == 0)
	}
	if !hasGW {
		// ip addr replace fe80::ecee:eeff:feee:eeee/64 dev aliXXX nodad:
		// the pod's IPv6 gateway (see SetupPod).
		gw := &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(GatewayIPv6, 64)), Flags: unix.IFA_F_NODAD}
		if err := netlink.AddrReplace(link, gw); err != nil {
			*errs = append(*errs, fmt.Errorf("add %v to %s: %w", GatewayIPv6, w.HostVeth, err))
		} else {
			rep.RoutesRepaired++
		}
	}
	if correct[w.IPv6] == link.Attrs().Index {
		return
	}
	// ip -6 route replace IP6/128 dev aliXXX
	if err := netlink.RouteReplace(&netlink.Route{LinkIndex: link.Attrs().Index, Dst: ipNet(netip.PrefixFrom(w.IPv6, 128))}); err != nil {
		*errs = append(*errs, fmt.Errorf("route %v dev %s: %w", w.IPv6, w.HostVeth, err))
		return
	}
	rep.RoutesRepaired++
}

// FabricRoute sends another node's podCIDR to that node's address.
type FabricRoute struct {
	PodCIDR netip.Prefix
	Via     netip.Addr
}

// SyncFabric emulates the VPC: "ip route replace PODCIDR via NODEIP proto
// 201" for each wanted route, and removes proto-201 routes no longer wanted.
// It reports how many routes it added or changed and removed. A route is
// IPv4 or IPv6 (a node's IPv6 block via its IPv6 address); the proto-201
// routes of both families are read, so an IPv6 one no longer wanted goes
// too.
func SyncFabric(want []FabricRoute) (changed, removed int, err error) {
	routes, err := netlinksafe.RouteListFiltered(unix.AF_INET, &netlink.Route{Table: unix.RT_TABLE_MAIN, Protocol: ProtoFabric}, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		return 0, 0, err
	}
	routes6, err := netlinksafe.RouteListFiltered(unix.AF_INET6, &netlink.Route{Table: unix.RT_TABLE_MAIN, Protocol: ProtoFabric}, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
	if err != nil && !errors.Is(err, unix.EAFNOSUPPORT) {
		return 0, 0, err
	}
	routes = append(routes, routes6...)
	have := map[netip.Prefix]netip.Addr{}
	var errs []error
	wanted := map[netip.Prefix]bool{}
	for _, w := range want {
		wanted[w.PodCIDR] = true
	}
	for _, r := range routes {
		var p netip.Prefix
		ok := false
		if r.Dst != nil { // nil: a default route, never one SyncFabric adds
			p, ok = prefixOf(r.Dst.IP, r.Dst.Mask)
		}
		gw, _ := netip.AddrFromSlice(r.Gw)
		gw = gw.Unmap()
		if ok && wanted[p] {
			have[p] = gw
			continue
		}
		if err := netlink.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, err)
			continue
		}
		removed++
	}
	for _, w := range want {
		if have[w.PodCIDR] == w.Via {
			continue
		}
		if err := netlink.RouteReplace(&netlink.Route{Dst: ipNet(w.PodCIDR), Gw: w.Via.AsSlice(), Protocol: ProtoFabric}); err != nil {
			errs = append(errs, fmt.Errorf("fabric route %v via %v: %w", w.PodCIDR, w.Via, err))
			continue
		}
		changed++
	}
	return changed, removed, errors.Join(errs...)
}

func prefixOf(ip []byte, mask []byte) (netip.Prefix, bool) {
	addr, ok := netip.AddrFromSlice(ip)
	if !ok {
		return netip.Prefix{}, false
	}
	addr = addr.Unmap()
	ones := 0
	for _, b := range mask {
		for ; b&0x80 != 0; b <<= 1 {
			ones++
		}
	}
	return netip.PrefixFrom(addr, ones).Masked(), true
}

// HostPod is a pod found on the host: a /32 route of the podCIDR through a
// veth whose alias names the pod's container (SetupPod writes it), and,
// for a dual-stack pod, the /128 route of the IPv6 block through the same
// veth.
type HostPod struct {
	IP netip.Addr
	// IPv6 is the address of the /128 route through HostVeth (zero: none
	// found, or the node is single-stack).
	IPv6        netip.Addr
	HostVeth    string
	ContainerID string
}

// HostPods lists the pods the host routes to, for rebuilding the IPAM state
// when its file was lost: every /32 route of the main table inside podCIDR
// whose link is a veth with an alias.
func HostPods(podCIDR netip.Prefix) ([]HostPod, error) {
	return HostPodsDualStack(podCIDR, netip.Prefix{})
}

// HostPodsDualStack is HostPods for a node with an IPv6 block too: each pod
// also gets the address of the /128 route of podCIDR6 through its veth
// (the first, should there be several). The zero podCIDR6: HostPods.
func HostPodsDualStack(podCIDR, podCIDR6 netip.Prefix) ([]HostPod, error) {
	links, err := netlinksafe.LinkList()
	if err != nil {
		return nil, err
	}
	byIndex := map[int]netlink.Link{}
	for _, l := range links {
		byIndex[l.Attrs().Index] = l
	}
	routes, err := netlinksafe.RouteListFiltered(unix.AF_INET, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, err
	}
	// The IPv6 address of each veth: its /128 route of the IPv6 block.
	v6 := map[int]netip.Addr{}
	if podCIDR6.IsValid() {
		routes6, err := netlinksafe.RouteListFiltered(unix.AF_INET6, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return nil, err
		}
		for _, r := range routes6 {
			if r.Dst == nil || r.Gw != nil {
				continue
			}
			p, ok := prefixOf(r.Dst.IP, r.Dst.Mask)
			if !ok || p.Bits() != 128 || !podCIDR6.Contains(p.Addr()) {
				continue
			}
			if cur, seen := v6[r.LinkIndex]; !seen || p.Addr().Less(cur) {
				v6[r.LinkIndex] = p.Addr()
			}
		}
	}
	var out []HostPod
	for _, r := range routes {
		if r.Dst == nil {
			continue
		}
		p, ok := prefixOf(r.Dst.IP, r.Dst.Mask)
		if !ok || p.Bits() != 32 || !podCIDR.Contains(p.Addr()) {
			continue
		}
		l, ok := byIndex[r.LinkIndex]
		if !ok || l.Type() != "veth" || l.Attrs().Alias == "" {
			continue
		}
		out = append(out, HostPod{IP: p.Addr(), IPv6: v6[r.LinkIndex], HostVeth: l.Attrs().Name, ContainerID: l.Attrs().Alias})
	}
	return out, nil
}

// VethAliases maps every veth on the host to its alias (the container it
// was set up for; SetupPod writes it).
func VethAliases() (map[string]string, error) {
	links, err := netlinksafe.LinkList()
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, l := range links {
		if l.Type() == "veth" {
			out[l.Attrs().Name] = l.Attrs().Alias
		}
	}
	return out, nil
}
