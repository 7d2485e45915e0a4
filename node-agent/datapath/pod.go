// Package datapath builds and checks aliasip's node data plane with netlink:
// per pod a veth whose host end carries a /32 host route and answers the
// pod's ARP by proxy-ARP (no bridge, no overlay), the host preparation
// (forwarding, loose rp_filter, GCE's alias `local` route removed), the
// reconciliation that repairs drift, and the emulated VPC fabric routes.
//
// Functions act on the calling goroutine's network namespace as "the host"
// unless they take a namespace; pod-side work runs inside ns.Do.
package datapath

import (
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
	"golang.org/x/sys/unix"
)

// GatewayIP is the pod's default gateway: a link-local address nobody owns.
// The host veth answers ARP for it by proxy-ARP.
var GatewayIP = netip.MustParseAddr("169.254.1.1")

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
	MTU         int        // 0: the kernel default
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
// the host. A stale host veth of the same name and a stale /32 route for the
// address are replaced.
func SetupPod(p Pod) (*SetupResult, error) {
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
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("create veth %s/%s: %w", p.IfName, p.HostVeth, err)
		}
		res.mark("veth", &clock)
		link, err := netlinksafe.LinkByName(p.IfName)
		if err != nil {
			return err
		}
		res.PodMAC, res.PodIfIndex = link.Attrs().HardwareAddr, link.Attrs().Index
		// ip addr add IP/32 dev eth0: the pod owns one address, no subnet,
		// so everything it sends goes to the gateway.
		if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(p.IP, 32))}); err != nil {
			return fmt.Errorf("add %v to %s: %w", p.IP, p.IfName, err)
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
	res.mark("host-link", &clock)
	if _, err := ConfigureHostVeth(p.HostVeth); err != nil {
		return nil, err
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
	return res, nil
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

// TeardownPod removes the pod's host veth (which removes its peer and its
// routes) if it belongs to containerID. Whatever is already gone is fine.
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

// CheckPod verifies the data path SetupPod built.
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
	for _, s := range hostVethSysctls[:3] {
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
		return nil
	})
}

func maskBits(m net.IPMask) int {
	ones, _ := m.Size()
	return ones
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
