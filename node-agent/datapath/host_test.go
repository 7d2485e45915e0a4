package datapath

import (
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
)

// TestReconcileLeavesVethBeingSetUp: a wanted pod whose host veth exists
// but is still down is an ADD in progress (SetupPod brings the veth up just
// before it adds the route). Reconcile leaves it to the plugin — no sysctls
// written, no route, nothing reported, no error — and repairs it once the
// veth is up. Before, such a pass "repaired" the veth's sysctls (a false
// DataPathRepaired) and failed on the route (ENETDOWN).
func TestReconcileLeavesVethBeingSetUp(t *testing.T) {
	host := newHost(t)
	const veth = "alisetup00001"
	ip := netip.MustParseAddr("10.99.1.9")
	want := func() []PodRoute { return []PodRoute{{IP: ip, HostVeth: veth}} }
	reconcile := func() (Report, error) {
		var rep Report
		err := host.Do(func(ns.NetNS) error {
			var err error
			rep, err = Reconcile(podCIDR, "eth0", want, ProtoGCEGuestAgent)
			return err
		})
		return rep, err
	}
	// The host-wide settings first, so that the passes below are about
	// the pod only.
	if err := host.Do(func(ns.NetNS) error {
		_, err := Reconcile(podCIDR, "eth0", func() []PodRoute { return nil }, ProtoGCEGuestAgent)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	// The plugin has made the veth pair, not yet brought it up.
	if err := host.Do(func(ns.NetNS) error {
		return netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: veth}, PeerName: "podside"})
	}); err != nil {
		t.Fatal(err)
	}
	proxyARP := func() string {
		var v []byte
		host.Do(func(ns.NetNS) error {
			var err error
			v, err = os.ReadFile("/proc/sys/net/ipv4/conf/" + veth + "/proxy_arp")
			return err
		})
		return strings.TrimSpace(string(v))
	}
	before := render(t, host, []string{veth})
	rep, err := reconcile()
	if err != nil {
		t.Errorf("Reconcile during the ADD: %v", err)
	}
	if rep != (Report{}) {
		t.Errorf("Reconcile during the ADD reported %+v, want nothing", rep)
	}
	if after := render(t, host, []string{veth}); after != before {
		t.Errorf("Reconcile during the ADD changed the host:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if v := proxyARP(); v != "0" {
		t.Fatalf("test setup: proxy_arp of a new veth is %q, want 0", v)
	}

	// Up, and the plugin gone (say it was killed): the pass repairs it.
	linksUp(t, host, veth, "podside")
	rep, err = reconcile()
	if err != nil {
		t.Fatalf("Reconcile with the veth up: %v", err)
	}
	if rep.RoutesRepaired != 1 || rep.SysctlsRepaired == 0 {
		t.Errorf("Reconcile with the veth up reported %+v, want the route and sysctls repaired", rep)
	}
	if v := proxyARP(); v != "1" {
		t.Errorf("proxy_arp after the repair: %q, want 1", v)
	}
}

// TestReconcileLeavesSettlingPod: a pod whose address was allocated
// moments ago has its veth up before the plugin sets its sysctls and adds
// its route. A pass in that window changes nothing and reports nothing
// repaired — only that one settling pod lacks its route — and once the pod
// has settled (the plugin died, say) the pass repairs it. Before, such a
// pass counted a repair and raised a false DataPathRepaired Warning.
func TestReconcileLeavesSettlingPod(t *testing.T) {
	host := newHost(t)
	const veth = "alisettle0001"
	ip := netip.MustParseAddr("10.99.1.11")
	settling := true
	reconcile := func() Report {
		var rep Report
		if err := host.Do(func(ns.NetNS) error {
			var err error
			rep, err = Reconcile(podCIDR, "eth0", func() []PodRoute { return []PodRoute{{IP: ip, HostVeth: veth, Settling: settling}} }, ProtoGCEGuestAgent)
			return err
		}); err != nil {
			t.Fatalf("Reconcile: %v", err)
		}
		return rep
	}
	reconcile() // the host-wide settings
	if err := host.Do(func(ns.NetNS) error {
		return netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: veth}, PeerName: "podside"})
	}); err != nil {
		t.Fatal(err)
	}
	linksUp(t, host, veth, "podside")
	before := render(t, host, []string{veth})
	if rep := reconcile(); rep != (Report{Settling: 1}) {
		t.Errorf("pass while the pod settles reported %+v, want only Settling 1", rep)
	}
	if after := render(t, host, []string{veth}); after != before {
		t.Errorf("pass while the pod settles changed the host:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	settling = false
	if rep := reconcile(); rep.RoutesRepaired != 1 || rep.SysctlsRepaired == 0 || rep.Settling != 0 {
		t.Errorf("pass once it settled reported %+v, want its route and sysctls repaired", rep)
	}
	// Settling again with its route in place: nothing to report, and the
	// route is kept (it is wanted).
	settling = true
	if rep := reconcile(); rep != (Report{}) {
		t.Errorf("pass over a settling pod with its route reported %+v, want nothing", rep)
	}
	if !strings.Contains(render(t, host, []string{veth}), "10.99.1.11 dev "+veth) {
		t.Errorf("a settling pod's route was removed:\n%s", render(t, host, []string{veth}))
	}
}

// linksUp brings the named links of host up ("ip link set dev NAME up").
func linksUp(t *testing.T, host ns.NetNS, names ...string) {
	t.Helper()
	if err := host.Do(func(ns.NetNS) error {
		for _, n := range names {
			l, err := netlink.LinkByName(n)
			if err != nil {
				return err
			}
			if err := netlink.LinkSetUp(l); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}
