package agent

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"k8s.io/client-go/tools/record"

	"github.com/aliasip/aliasip/node-agent/datapath"
	"github.com/aliasip/aliasip/node-agent/ipam"
)

// newNetNS returns a fresh network namespace, removed when the test ends;
// the test is skipped when not root.
func newNetNS(t *testing.T) ns.NetNS {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces and links")
	}
	n, err := testutils.NewNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close(); testutils.UnmountNS(n) })
	return n
}

// TestReconcileKeepsPodAddedDuringPass: a pod whose ADD completes while a
// reconcile pass runs keeps its route. The pass is held inside, before it
// reads the host's routes (its first sysctl read blocks on a FIFO), while
// the "plugin" does what aliasip-cni does: allocate, make the host veth,
// add the /32 route. Reading the allocations before the routes, the pass
// took that route for a vanished pod's and removed it; the pod was
// unreachable until the next pass put it back (seen in
// BenchmarkAgentRestart's setup, 250 pods eight at a time, as
// "routesRemoved=2" then "routesRepaired=2" 0.6 s later).
func TestReconcileKeepsPodAddedDuringPass(t *testing.T) {
	host := newNetNS(t)
	const veth = "alitestpod001"
	if err := host.Do(func(ns.NetNS) error {
		return upVeth("eth0", "uplink")
	}); err != nil {
		t.Fatal(err)
	}

	// The agent's sysctls, in a directory of its own: all as they should
	// be, except that ip_forward (the pass's first read) is a FIFO.
	dir := t.TempDir()
	procSys := filepath.Join(dir, "sys")
	for key, value := range map[string]string{
		"net/ipv4/conf/eth0/rp_filter":            "2",
		"net/ipv4/conf/" + veth + "/proxy_arp":    "1",
		"net/ipv4/neigh/" + veth + "/proxy_delay": "0",
		"net/ipv4/conf/" + veth + "/forwarding":   "1",
		"net/ipv6/conf/" + veth + "/accept_ra":    "0",
	} {
		path := filepath.Join(procSys, key)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(value+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	fifo := filepath.Join(procSys, "net/ipv4/ip_forward")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	saved := datapath.ProcSys
	t.Cleanup(func() { datapath.ProcSys = saved })

	podCIDR := netip.MustParsePrefix("10.98.0.0/24")
	store, err := ipam.Open(filepath.Join(dir, "ipam.json"), podCIDR, 0)
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{NodeName: "n", NetNS: host.Path(), ProcSys: procSys, CNIConfDir: dir, CNIBinDir: dir, Socket: filepath.Join(dir, "agent.sock")}
	a := New(cfg, nil, record.NewFakeRecorder(10), NewMetrics(prometheus.NewRegistry()))
	a.nodeNS, a.store, a.podCIDR, a.iface, a.guestProto = host, store, podCIDR, "eth0", datapath.ProtoGCEGuestAgent

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		a.reconcile(ctx)
	}()
	// The pass is inside once it waits on the FIFO: opening it for
	// writing blocks until a reader has it open.
	opened := make(chan *os.File, 1)
	go func() {
		f, err := os.OpenFile(fifo, os.O_WRONLY, 0)
		if err != nil {
			t.Error(err)
		}
		opened <- f
	}()
	// unblock frees a blocked open (a reader's open wakes it) on failure.
	unblock := func() {
		if r, err := os.OpenFile(fifo, os.O_RDONLY|unix.O_NONBLOCK, 0); err == nil {
			r.Close()
		}
	}
	var w *os.File
	select {
	case w = <-opened:
	case <-done:
		unblock()
		t.Fatal("the reconcile pass ended without reading ip_forward")
	case <-ctx.Done():
		unblock()
		t.Fatal("the reconcile pass never read ip_forward")
	}
	if w == nil {
		t.FailNow()
	}

	// The ADD, as aliasip-cni makes it: allocate, then the veth (up), then
	// ip route replace IP/32 dev VETH scope link.
	al, err := store.Allocate(ipam.Request{Key: ipam.Key{ContainerID: "c1", IfName: "eth0"}, Namespace: "default", Pod: "p1", HostVeth: veth})
	if err != nil {
		t.Fatal(err)
	}
	if err := host.Do(func(ns.NetNS) error {
		if err := upVeth(veth, "podside"); err != nil {
			return err
		}
		l, err := netlink.LinkByName(veth)
		if err != nil {
			return err
		}
		return netlink.RouteReplace(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: netlink.NewIPNet(al.IP.AsSlice()), Scope: netlink.SCOPE_LINK})
	}); err != nil {
		t.Fatal(err)
	}

	// Let the pass go on.
	if _, err := w.WriteString("1\n"); err != nil {
		t.Fatal(err)
	}
	w.Close()
	select {
	case <-done:
	case <-ctx.Done():
		t.Fatal("the reconcile pass did not finish")
	}

	var routes []netlink.Route
	if err := host.Do(func(ns.NetNS) error {
		var err error
		routes, err = netlink.RouteListFiltered(unix.AF_INET, &netlink.Route{Dst: netlink.NewIPNet(al.IP.AsSlice())}, netlink.RT_FILTER_DST)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if len(routes) != 1 {
		t.Errorf("the route of pod p1 (%v), added during the pass: %d routes, want 1", al.IP, len(routes))
	}
	if n := testutil.ToFloat64(a.metrics.RoutesRemoved); n != 0 {
		t.Errorf("routes removed: %v, want 0 (no pod vanished)", n)
	}
}

// upVeth makes a veth pair in the current namespace and brings both ends up.
func upVeth(name, peer string) error {
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: peer}); err != nil {
		return err
	}
	for _, n := range []string{name, peer} {
		l, err := netlink.LinkByName(n)
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
	}
	return nil
}
