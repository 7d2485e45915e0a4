// Package datapath builds and checks aliasip's node data plane with netlink:
// per pod a veth whose host end carries a /32 host route and answers the
// pod's ARP by proxy-ARP (no bridge, no overlay), the host preparation
// (forwarding, loose rp_filter, GCE's alias `local` route removed), the
// reconciliation that repairs drift, and the emulated VPC fabric routes.
//
// A dual-stack pod also gets an IPv6 address: a /128 host route to it, and
// as its gateway the host veth's own link-local address, the same on every
// veth (Calico's), so the host answers the pod's neighbour solicitations
// itself and needs no proxy-NDP entry per pod.
//
// Functions act on the calling goroutine's network namespace as "the host"
// unless they take a namespace; pod-side work runs inside ns.Do.
package datapath

import (
	"bytes"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/utils/sysctl"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// GatewayIP is the pod's default gateway: a link-local address nobody owns.
// The host veth answers ARP for it by proxy-ARP.
var GatewayIP = netip.MustParseAddr("169.254.1.1")

// HostVethMAC is the host veth's MAC when the pod has IPv6, Calico's
// (projectcalico/calico cni-plugin/pkg/dataplane/linux/dataplane_linux.go,
// hostSideMAC): every pod sees the same gateway MAC and address.
var HostVethMAC = net.HardwareAddr{0xee, 0xee, 0xee, 0xee, 0xee, 0xee}

// GatewayIPv6 is the pod's IPv6 default gateway: the link-local address
// EUI-64 makes of HostVethMAC (RFC 4291 appendix A: ff:fe in the middle,
// the universal/local bit flipped), which SetupPod puts on every host veth.
// Calico's pods route via the same address (its cni-plugin tests expect
// "default via fe80::ecee:eeff:feee:eeee dev eth0").
var GatewayIPv6 = netip.MustParseAddr("fe80::ecee:eeff:feee:eeee")

// VethPrefix starts every host-side veth name.
const VethPrefix = "ali"

// HostVethName is the host end's name for a pod: "ali" and 11 hex digits
// of SHA-1 over namespace/pod (14 characters, within the kernel's 15).
func HostVethName(namespace, pod string) string {
	h := sha1.Sum([]byte(namespace + "/" + pod))
	return VethPrefix + hex.EncodeToString(h[:])[:11]
}

// Pod describes one pod attachment.
type Pod struct {
	NetNS       string     // path of the pod's network namespace
	IfName      string     // interface inside the pod, usually eth0
	HostVeth    string     // host end's name
	ContainerID string     // recorded as the host veth's alias (ownership)
	IP          netip.Addr // the pod's address
	// IPv6 is the pod's IPv6 address; the zero Addr: IPv4 only, and
	// SetupPod, CheckPod and the host veth are exactly as without it.
	IPv6 netip.Addr
	MTU  int // 0: the kernel default
}

// SetupResult is what ADD reports.
type SetupResult struct {
	HostMAC, PodMAC net.HardwareAddr
	PodIfIndex      int
	// Phases is where SetupPod's time went, in order: the plugin logs it
	// as its ADD breakdown.
	Phases []Phase
}

// Phase is one timed step of SetupPod.
type Phase struct {
	Name string
	Took time.Duration
}

// mark appends the step that ended now and restarts the clock.
func (r *SetupResult) mark(name string, since *time.Time) {
	now := time.Now()
	r.Phases = append(r.Phases, Phase{name, now.Sub(*since)})
	*since = now
}

// SetupPod builds the pod's data path; the calling goroutine's namespace is
// the host. A stale host veth of the same name and a stale /32 (or /128)
// route for the address are replaced.
//
// With p.IPv6 it also: gives the pod's interface the address as /128 and a
// default route via GatewayIPv6; gives the host veth HostVethMAC, its IPv6
// sysctls (hostVethSysctls6) and GatewayIPv6; and routes the /128 to the
// host veth; and returns only once the kernel has both addresses in use
// (waitIPv6Ready), so the first packet each way is answered at once. The
// host-wide IPv6 settings are PrepareHostIPv6's.
func SetupPod(p Pod) (*SetupResult, error) {
	if p.IPv6.IsValid() && (!p.IPv6.Is6() || p.IPv6.Is4In6() || !p.IPv6.IsGlobalUnicast()) {
		return nil, fmt.Errorf("pod IPv6 address %v: want a global unicast IPv6 address", p.IPv6)
	}
	res := &SetupResult{}
	clock := time.Now()
	hostNS, err := ns.GetCurrentNS()
	if err != nil {
		return nil, err
	}
	defer hostNS.Close()
	podNS, err := ns.GetNS(p.NetNS)
	if err != nil {
		return nil, fmt.Errorf("pod netns %q: %w", p.NetNS, err)
	}
	defer podNS.Close()

	// A previous sandbox of the same pod may have left its veth behind.
	if old, err := netlinksafe.LinkByName(p.HostVeth); err == nil {
		if err := netlink.LinkDel(old); err != nil {
			return nil, fmt.Errorf("delete stale %s: %w", p.HostVeth, err)
		}
	}

	res.mark("netns", &clock)
	err = podNS.Do(func(ns.NetNS) error {
		if old, err := netlinksafe.LinkByName(p.IfName); err == nil {
			// A repeated ADD: start over.
			netlink.LinkDel(old)
		}
		// ip link add eth0 mtu M type veth peer name aliXXX netns <host>:
		// created in the pod with the peer placed straight into the host
		// namespace, so no temporary name ever appears in either.
		veth := &netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: p.IfName, MTU: p.MTU},
			PeerName:      p.HostVeth,
			PeerNamespace: netlink.NsFd(int(hostNS.Fd())),
		}
		if p.MTU > 0 {
			veth.PeerMTU = uint32(p.MTU)
		}
		if p.IPv6.IsValid() {
			// The host end is made with Calico's MAC, so that its
			// link-local address (EUI-64) is GatewayIPv6; checked below.
			veth.PeerHardwareAddr = HostVethMAC
		}
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("create veth %s/%s: %w", p.IfName, p.HostVeth, err)
		}
		res.mark("veth", &clock)
		link, err := netlinksafe.LinkByName(p.IfName)
		if err != nil {
			return err
		}
		res.PodMAC, res.PodIfIndex = link.Attrs().HardwareAddr, link.Attrs().Index
		if p.IPv6.IsValid() {
			// Before any address and before the link is up: the kernel
			// reads them when the link comes up.
			if _, err := configureSysctls(podIfSysctls6, p.IfName); err != nil {
				return err
			}
		}
		// ip addr add IP/32 dev eth0: the pod owns one address, no subnet,
		// so everything it sends goes to the gateway.
		if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(p.IP, 32))}); err != nil {
			return fmt.Errorf("add %v to %s: %w", p.IP, p.IfName, err)
		}
		if p.IPv6.IsValid() {
			// ip addr add IP6/128 dev eth0 nodad noprefixroute: one
			// address, no on-link prefix, so everything goes to the
			// gateway; nodad, because duplicate address detection would
			// keep it tentative (unusable, and unanswered when the host
			// solicits it) for a second or more, and on a veth nothing
			// else can hold it.
			a := &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(p.IPv6, 128)), Flags: unix.IFA_F_NODAD | unix.IFA_F_NOPREFIXROUTE}
			if err := netlink.AddrAdd(link, a); err != nil {
				return fmt.Errorf("add %v to %s: %w", p.IPv6, p.IfName, err)
			}
		}
		if err := netlink.LinkSetUp(link); err != nil {
			return err
		}
		// ip route replace 169.254.1.1 dev eth0 scope link
		if err := netlink.RouteReplace(&netlink.Route{LinkIndex: link.Attrs().Index, Dst: ipNet(netip.PrefixFrom(GatewayIP, 32)), Scope: netlink.SCOPE_LINK}); err != nil {
			return fmt.Errorf("gateway route: %w", err)
		}
		// ip route replace default via 169.254.1.1 dev eth0
		if err := netlink.RouteReplace(&netlink.Route{LinkIndex: link.Attrs().Index, Dst: ipNet(netip.MustParsePrefix("0.0.0.0/0")), Gw: GatewayIP.AsSlice()}); err != nil {
			return fmt.Errorf("default route: %w", err)
		}
		if p.IPv6.IsValid() {
			// ip -6 route replace default via fe80::ecee:eeff:feee:eeee dev eth0:
			// a link-local gateway needs no on-link route of its own; the
			// host veth owns the address and answers its solicitation.
			if err := netlink.RouteReplace(&netlink.Route{LinkIndex: link.Attrs().Index, Dst: ipNet(netip.MustParsePrefix("::/0")), Gw: GatewayIPv6.AsSlice()}); err != nil {
				return fmt.Errorf("IPv6 default route: %w", err)
			}
		}
		res.mark("pod-side", &clock)
		return nil
	})
	if err != nil {
		return nil, err
	}

	host, err := netlinksafe.LinkByName(p.HostVeth)
	if err != nil {
		return nil, fmt.Errorf("host veth %s: %w", p.HostVeth, err)
	}
	res.HostMAC = host.Attrs().HardwareAddr
	// ip link set dev aliXXX alias CONTAINERID: DEL of an older sandbox
	// must not remove the veth a newer one made under the same name.
	if err := netlink.LinkSetAlias(host, p.ContainerID); err != nil {
		return nil, err
	}
	if p.IPv6.IsValid() && !bytes.Equal(host.Attrs().HardwareAddr, HostVethMAC) {
		// Calico found the MAC asked for at creation not always honoured
		// and sets it again (dataplane_linux.go, "the kernel sometimes
		// fails to honor a MAC that we set on the LinkAdd request").
		// GatewayIPv6 does not depend on it (it is added explicitly
		// below); the MAC keeps it the EUI-64 of the veth's address.
		if err := netlink.LinkSetHardwareAddr(host, HostVethMAC); err != nil {
			return nil, fmt.Errorf("set %s's MAC to %v: %w", p.HostVeth, HostVethMAC, err)
		}
		res.HostMAC = HostVethMAC
	}
	res.mark("host-link", &clock)
	if _, err := ConfigureHostVeth(p.HostVeth); err != nil {
		return nil, err
	}
	if p.IPv6.IsValid() {
		if _, err := ConfigureHostVethIPv6(p.HostVeth); err != nil {
			return nil, err
		}
		// ip addr add fe80::ecee:eeff:feee:eeee/64 dev aliXXX nodad: the
		// pod's gateway, added here rather than left to the kernel
		// (addr_gen_mode=1 above). The kernel would derive the same
		// address from HostVethMAC, but only once the link is up and has
		// carrier, asynchronously, and tentative under DAD unless DAD is
		// off both for the veth and conf/all (ip-sysctl.rst, accept_dad);
		// Calico polls for it with sleeps and toggles the link when it
		// came from the wrong MAC (dataplane_linux.go, "Host-side
		// interface received unexpected link-local IP"). Added explicitly
		// and nodad it is there, usable, before the link comes up.
		gw := &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(GatewayIPv6, 64)), Flags: unix.IFA_F_NODAD}
		if err := netlink.AddrReplace(host, gw); err != nil {
			return nil, fmt.Errorf("add %v to %s: %w", GatewayIPv6, p.HostVeth, err)
		}
	}
	res.mark("sysctls", &clock)
	if err := netlink.LinkSetUp(host); err != nil {
		return nil, err
	}
	// ip route replace IP/32 dev aliXXX scope link: replaces a stale route
	// for the address in one call, no table dump on the ADD path.
	if err := netlink.RouteReplace(&netlink.Route{LinkIndex: host.Attrs().Index, Dst: ipNet(netip.PrefixFrom(p.IP, 32)), Scope: netlink.SCOPE_LINK}); err != nil {
		return nil, fmt.Errorf("route %v dev %s: %w", p.IP, p.HostVeth, err)
	}
	if p.IPv6.IsValid() {
		// ip -6 route replace IP6/128 dev aliXXX: the host reaches the
		// pod on the veth; it solicits the pod's address from GatewayIPv6.
		if err := netlink.RouteReplace(&netlink.Route{LinkIndex: host.Attrs().Index, Dst: ipNet(netip.PrefixFrom(p.IPv6, 128))}); err != nil {
			return nil, fmt.Errorf("route %v dev %s: %w", p.IPv6, p.HostVeth, err)
		}
	}
	res.mark("host-route", &clock)
	// Return only once both ends are operationally up. Until the kernel's
	// link watcher has processed the carrier change it leaves the device
	// on the noop qdisc, which drops every packet (net/core/link_watch.c,
	// linkwatch_do_dev → dev_activate; net/sched/sch_generic.c,
	// noop_enqueue), and the watcher may batch that change for up to a
	// second: the pod's first ARP was lost and retried 1 s later in about
	// one ADD in eight (BenchmarkDataPlane's first-packet column).
	if err := waitOperUp(host.Attrs().Index, podNS, res.PodIfIndex, operUpTimeout); err != nil {
		return nil, err
	}
	res.mark("oper-up", &clock)
	if p.IPv6.IsValid() {
		if err := waitIPv6Ready(host.Attrs().Index, podNS, res.PodIfIndex, p.IPv6, operUpTimeout); err != nil {
			return nil, err
		}
		res.mark("ipv6-ready", &clock)
	}
	return res, nil
}

// waitIPv6Ready polls until the kernel has taken GatewayIPv6 on the host
// veth (the calling goroutine's namespace) and podIP on the pod interface
// into use. It does that after an address is added, nodad or not, in a
// work item of its own (net/ipv6/addrconf.c: addrconf_dad_start queues
// addrconf_dad_work; addrconf_dad_begin joins the address's
// solicited-node group; addrconf_dad_completed then inserts its local
// route). Until then a neighbour solicitation for the address is dropped
// (ip6_mc_input: not a group of the interface) and a neighbour
// advertisement sent to it is not taken as local: the first packet each
// way waits a second for the solicitation's retry. Here that work had not
// yet run when SetupPod returned in two or three SetupPods in a hundred.
func waitIPv6Ready(hostIndex int, podNS ns.NetNS, podIndex int, podIP netip.Addr, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	pause := 100 * time.Microsecond
	hostReady, podReady := false, false
	for {
		var err error
		if !hostReady {
			hostReady, err = ipv6InUse(hostIndex, GatewayIPv6)
			if err != nil {
				return fmt.Errorf("host veth: %w", err)
			}
		}
		if hostReady && !podReady {
			err = podNS.Do(func(ns.NetNS) error {
				var err error
				podReady, err = ipv6InUse(podIndex, podIP)
				return err
			})
			if err != nil {
				return fmt.Errorf("pod interface: %w", err)
			}
		}
		if hostReady && podReady {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("IPv6 addresses not in use after %v (host end %v: %v, pod end %v: %v)", timeout, GatewayIPv6, hostReady, podIP, podReady)
		}
		time.Sleep(pause)
		pause = min(2*pause, 10*time.Millisecond)
	}
}

// ipv6InUse reports whether addr on the link has its local route (table
// local) and the link has joined the address's solicited-node multicast
// group (RFC 4291 2.7.1: ff02::1:ff and the address's last 24 bits), in the
// calling goroutine's namespace.
func ipv6InUse(linkIndex int, addr netip.Addr) (bool, error) {
	// ip -6 route show table local ADDR dev LINK
	routes, err := netlinksafe.RouteListFiltered(unix.AF_INET6,
		&netlink.Route{Table: unix.RT_TABLE_LOCAL, Dst: ipNet(netip.PrefixFrom(addr, 128)), LinkIndex: linkIndex},
		netlink.RT_FILTER_TABLE|netlink.RT_FILTER_DST|netlink.RT_FILTER_OIF)
	if err != nil || len(routes) == 0 {
		return false, err
	}
	a := addr.As16()
	group := netip.AddrFrom16([16]byte{0xff, 0x02, 11: 0x01, 12: 0xff, 13: a[13], 14: a[14], 15: a[15]})
	// ip -6 maddr show dev LINK: an RTM_GETMULTICAST dump, which
	// vishvananda/netlink does not wrap.
	req := nl.NewNetlinkRequest(unix.RTM_GETMULTICAST, unix.NLM_F_DUMP)
	req.AddData(nl.NewIfAddrmsg(unix.AF_INET6))
	msgs, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_GETMULTICAST)
	if err != nil && !errors.Is(err, nl.ErrDumpInterrupted) {
		return false, fmt.Errorf("multicast groups: %w", err)
	}
	for _, m := range msgs {
		msg := nl.DeserializeIfAddrmsg(m)
		if int(msg.Index) != linkIndex {
			continue
		}
		attrs, err := nl.ParseRouteAttr(m[msg.Len():])
		if err != nil {
			return false, err
		}
		for _, at := range attrs {
			if at.Attr.Type == unix.IFA_MULTICAST && bytes.Equal(at.Value, group.AsSlice()) {
				return true, nil
			}
		}
	}
	return false, nil
}

// operUpTimeout bounds the wait for both veth ends to come up; past it the
// link watcher is stuck and ADD fails rather than hand out a dead pod.
var operUpTimeout = 3 * time.Second

// waitOperUp polls, in the calling goroutine's namespace and in podNS,
// until both ends report IF_OPER_UP.
func waitOperUp(hostIndex int, podNS ns.NetNS, podIndex int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	pause := 100 * time.Microsecond
	hostUp, podUp := false, false
	for {
		if !hostUp {
			l, err := netlink.LinkByIndex(hostIndex)
			if err != nil {
				return fmt.Errorf("host veth: %w", err)
			}
			hostUp = l.Attrs().OperState == netlink.OperUp
		}
		if hostUp && !podUp {
			err := podNS.Do(func(ns.NetNS) error {
				l, err := netlink.LinkByIndex(podIndex)
				if err == nil {
					podUp = l.Attrs().OperState == netlink.OperUp
				}
				return err
			})
			if err != nil {
				return fmt.Errorf("pod interface: %w", err)
			}
		}
		if hostUp && podUp {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("veth not operationally up after %v (host end up: %v, pod end up: %v)", timeout, hostUp, podUp)
		}
		time.Sleep(pause)
		pause = min(2*pause, 10*time.Millisecond)
	}
}

// hostVethSysctls are the host end's settings, each with its reason.
var hostVethSysctls = []struct{ key, value string }{
	// Answer the pod's ARP for 169.254.1.1 (and anything else) with the
	// veth's MAC: the host routes whatever the pod sends.
	{"net/ipv4/conf/%s/proxy_arp", "1"},
	// Answer at once: the default delay (0.8 s) would stall each pod's
	// first packet.
	{"net/ipv4/neigh/%s/proxy_delay", "0"},
	// Route packets that arrive from the pod.
	{"net/ipv4/conf/%s/forwarding", "1"},
	// Never take router advertisements from a pod.
	{"net/ipv6/conf/%s/accept_ra", "0"},
}

// hostVethSysctls6 are the host end's IPv6 settings for a pod with IPv6, on
// top of hostVethSysctls (whose accept_ra=0 applies too: a router must not
// configure itself from what a pod advertises). IPv6 forwarding has no
// per-interface switch: PrepareHostIPv6 sets conf/all/forwarding.
var hostVethSysctls6 = []struct{ key, value string }{
	// No link-local address of the kernel's making: SetupPod adds
	// GatewayIPv6 itself, usable at once. Left to the kernel it comes
	// late and tentative, and under addr_gen_mode 2 or 3 (stable privacy,
	// a distribution default) it is another address (ip-sysctl.rst,
	// addr_gen_mode: "1 do no generate a link-local address").
	{"net/ipv6/conf/%s/addr_gen_mode", "1"},
	// IPv6 on for the veth even where new links start with it off
	// (conf/default/disable_ipv6=1): with it off the kernel refuses the
	// gateway address and the /128 route.
	{"net/ipv6/conf/%s/disable_ipv6", "0"},
}

// podIfSysctls6 are the pod interface's IPv6 settings, written in the pod's
// namespace before its addresses and before it comes up.
var podIfSysctls6 = []struct{ key, value string }{
	// IPv6 on, whatever the namespace's default: the address and the
	// default route need it.
	{"net/ipv6/conf/%s/disable_ipv6", "0"},
	// No duplicate address detection for the kernel's own link-local
	// address either (the pod's /128 is added nodad): until DAD ends,
	// about a second, it is tentative and unusable, for the pod's
	// solicitations too. DAD is on if conf/all or the
	// interface says so (ip-sysctl.rst, accept_dad: "the maximum value of
	// conf/{all,interface}/accept_dad"); all is 0 by default.
	{"net/ipv6/conf/%s/accept_dad", "0"},
	// Routes come from SetupPod, not from router advertisements: nothing
	// on the veth should be able to add a default route or an address.
	// This also stops the pod's router solicitations.
	{"net/ipv6/conf/%s/accept_ra", "0"},
}

// ConfigureHostVeth applies the host veth's sysctls and reports how many it
// had to change.
func ConfigureHostVeth(name string) (int, error) {
	changed := 0
	for _, s := range hostVethSysctls {
		key := fmt.Sprintf(s.key, name)
		n, err := ensureSysctl(key, s.value)
		if err != nil {
			if strings.HasPrefix(key, "net/ipv6/") && errors.Is(err, os.ErrNotExist) {
				continue // IPv6 disabled on this host
			}
			return changed, fmt.Errorf("sysctl %s=%s: %w", key, s.value, err)
		}
		changed += n
	}
	return changed, nil
}

// ConfigureHostVethIPv6 applies the IPv6 sysctls of a dual-stack pod's host
// veth (hostVethSysctls6) and reports how many it had to change. Unlike
// ConfigureHostVeth's IPv6 key, a host without IPv6 is an error here.
func ConfigureHostVethIPv6(name string) (int, error) {
	return configureSysctls(hostVethSysctls6, name)
}

// configureSysctls sets each key (formatted with name) to its value and
// reports how many it had to change.
func configureSysctls(list []struct{ key, value string }, name string) (int, error) {
	changed := 0
	for _, s := range list {
		key := fmt.Sprintf(s.key, name)
		n, err := ensureSysctl(key, s.value)
		if err != nil {
			return changed, fmt.Errorf("sysctl %s=%s: %w", key, s.value, err)
		}
		changed += n
	}
	return changed, nil
}

// ProcSys is where sysctls are read and written: /proc/sys, or a writable
// bind mount of the host's /proc/sys/net for an agent that is not
// privileged (a container's own /proc/sys is read-only; net.* entries are
// those of the writer's network namespace, the host's with hostNetwork —
// see proc(5), /proc/sys/net). Set it before any call.
var ProcSys = "/proc/sys"

// ensureSysctl sets key to value if it differs; it reports 1 when it wrote.
func ensureSysctl(key, value string) (int, error) {
	path := filepath.Join(ProcSys, key)
	cur, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	if strings.TrimSpace(string(cur)) == value {
		return 0, nil
	}
	if ProcSys == "/proc/sys" {
		if _, err := sysctl.Sysctl(key, value); err != nil {
			return 0, err
		}
		return 1, nil
	}
	if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
		return 0, err
	}
	return 1, nil
}

// TeardownPod removes the pod's host veth (which removes its peer, its
// /32 and /128 routes and the gateway address) if it belongs to
// containerID. Whatever is already gone is fine.
func TeardownPod(hostVeth, containerID string) error {
	if hostVeth == "" {
		return nil
	}
	link, err := netlinksafe.LinkByName(hostVeth)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return err
	}
	if alias := link.Attrs().Alias; alias != "" && containerID != "" && alias != containerID {
		return nil // a newer sandbox of the same pod owns this name now
	}
	if err := netlink.LinkDel(link); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete %s: %w", hostVeth, err)
	}
	return nil
}

// CheckPod verifies the data path SetupPod built; with p.IPv6 also its IPv6
// part: the /128 route, the host veth's gateway address and sysctls, the
// pod's address and its default route via GatewayIPv6.
func CheckPod(p Pod) error {
	host, err := netlinksafe.LinkByName(p.HostVeth)
	if err != nil {
		return fmt.Errorf("host veth %s: %w", p.HostVeth, err)
	}
	if host.Attrs().Flags&net.FlagUp == 0 {
		return fmt.Errorf("host veth %s is down", p.HostVeth)
	}
	dst := ipNet(netip.PrefixFrom(p.IP, 32))
	routes, err := netlinksafe.RouteListFiltered(unix.AF_INET, &netlink.Route{Dst: dst, Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_DST|netlink.RT_FILTER_TABLE)
	if err != nil {
		return err
	}
	found := false
	for _, r := range routes {
		found = found || r.LinkIndex == host.Attrs().Index
	}
	if !found {
		return fmt.Errorf("no route %v/32 dev %s", p.IP, p.HostVeth)
	}
	sysctls := hostVethSysctls[:3]
	if p.IPv6.IsValid() {
		if err := checkHostIPv6(p, host); err != nil {
			return err
		}
		// accept_ra=0 too, which a host without IPv6 could not have.
		sysctls = append(hostVethSysctls[:len(hostVethSysctls):len(hostVethSysctls)], hostVethSysctls6...)
	}
	for _, s := range sysctls {
		key := fmt.Sprintf(s.key, p.HostVeth)
		cur, err := os.ReadFile("/proc/sys/" + key)
		if err != nil || strings.TrimSpace(string(cur)) != s.value {
			return fmt.Errorf("sysctl %s is %q, want %s", key, strings.TrimSpace(string(cur)), s.value)
		}
	}
	podNS, err := ns.GetNS(p.NetNS)
	if err != nil {
		return fmt.Errorf("pod netns %q: %w", p.NetNS, err)
	}
	defer podNS.Close()
	return podNS.Do(func(ns.NetNS) error {
		link, err := netlinksafe.LinkByName(p.IfName)
		if err != nil {
			return fmt.Errorf("pod interface %s: %w", p.IfName, err)
		}
		addrs, err := netlinksafe.AddrList(link, unix.AF_INET)
		if err != nil {
			return err
		}
		hasIP := false
		for _, a := range addrs {
			hasIP = hasIP || (a.IP.Equal(p.IP.AsSlice()) && maskBits(a.Mask) == 32)
		}
		if !hasIP {
			return fmt.Errorf("pod interface %s lacks %v/32", p.IfName, p.IP)
		}
		routes, err := netlinksafe.RouteList(link, unix.AF_INET)
		if err != nil {
			return err
		}
		hasDefault := false
		for _, r := range routes {
			isDefault := r.Dst == nil || maskBits(r.Dst.Mask) == 0
			hasDefault = hasDefault || (isDefault && r.Gw.Equal(GatewayIP.AsSlice()))
		}
		if !hasDefault {
			return fmt.Errorf("pod has no default route via %v", GatewayIP)
		}
		if p.IPv6.IsValid() {
			return checkPodIPv6(p, link)
		}
		return nil
	})
}

// checkHostIPv6 checks the host's side of a pod's IPv6: the /128 route
// through the host veth and the gateway address on it.
func checkHostIPv6(p Pod, host netlink.Link) error {
	dst := ipNet(netip.PrefixFrom(p.IPv6, 128))
	routes, err := netlinksafe.RouteListFiltered(unix.AF_INET6, &netlink.Route{Dst: dst, Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_DST|netlink.RT_FILTER_TABLE)
	if err != nil {
		return err
	}
	found := false
	for _, r := range routes {
		found = found || (r.LinkIndex == host.Attrs().Index && r.Gw == nil)
	}
	if !found {
		return fmt.Errorf("no route %v/128 dev %s", p.IPv6, p.HostVeth)
	}
	addrs, err := netlinksafe.AddrList(host, unix.AF_INET6)
	if err != nil {
		return err
	}
	for _, a := range addrs {
		if a.IP.Equal(GatewayIPv6.AsSlice()) && a.Flags&(unix.IFA_F_TENTATIVE|unix.IFA_F_DADFAILED) == 0 {
			return nil
		}
	}
	return fmt.Errorf("host veth %s lacks the pod's gateway %v (or it is tentative)", p.HostVeth, GatewayIPv6)
}

// checkPodIPv6 checks, in the pod's namespace, its IPv6 address and its
// default route via GatewayIPv6.
func checkPodIPv6(p Pod, link netlink.Link) error {
	addrs, err := netlinksafe.AddrList(link, unix.AF_INET6)
	if err != nil {
		return err
	}
	hasIP := false
	for _, a := range addrs {
		hasIP = hasIP || (a.IP.Equal(p.IPv6.AsSlice()) && maskBits(a.Mask) == 128 && a.Flags&(unix.IFA_F_TENTATIVE|unix.IFA_F_DADFAILED) == 0)
	}
	if !hasIP {
		return fmt.Errorf("pod interface %s lacks %v/128 (or it is tentative)", p.IfName, p.IPv6)
	}
	routes, err := netlinksafe.RouteList(link, unix.AF_INET6)
	if err != nil {
		return err
	}
	for _, r := range routes {
		if (r.Dst == nil || maskBits(r.Dst.Mask) == 0) && r.Gw.Equal(GatewayIPv6.AsSlice()) {
			return nil
		}
	}
	return fmt.Errorf("pod has no IPv6 default route via %v", GatewayIPv6)
}

func maskBits(m net.IPMask) int {
	ones, _ := m.Size()
	return ones
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
