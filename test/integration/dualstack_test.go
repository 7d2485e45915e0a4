package integration

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/aliasip/aliasip/cloud/gce/gcetest"
	"github.com/aliasip/aliasip/controller"
	"github.com/aliasip/aliasip/test/framework"
)

// Dual-stack on GCE (issue 23), through the real compute client and the
// test server's dual-stack subnetwork (each NIC a /96 of its /64): nodes
// get [IPv4 block, the first /112 of their NIC's /96] in one patch, as
// GKE's allocator writes them; a node whose NIC has no IPv6 range yet gets
// nothing and waits (IPv6NotAssigned), then gets both once the range is
// there.
func TestGCEDualStackNodes(t *testing.T) {
	e, s := newGCEEnv(t, "10.24.0.0/16", gcetest.Options{OpDelay: 10 * time.Millisecond,
		IPv6Range: netip.MustParsePrefix("fd20:0:0:5::/64")})
	nics := map[string]netip.Prefix{}
	for _, n := range []string{"d-1", "d-2"} {
		nics[n] = s.AddInstanceDualStack(gceZone, n)
	}
	s.AddInstance(gceZone, "late") // IPv4-only for now
	if err := framework.CreateNodes(e.ctx, e.client, []string{"d-1", "d-2", "late"}, func(n *corev1.Node) {
		n.Spec.ProviderID = fmt.Sprintf("gce://%s/%s/%s", gceProject, gceZone, n.Name)
	}); err != nil {
		t.Fatal(err)
	}
	c := e.startController("controller", "--dual-stack", "--leader-elect=false")
	waitPodCIDRs(t, e, "d-1", "d-2")
	e.waitEvent("late", corev1.EventTypeWarning, controller.EventIPv6NotAssigned, 30*time.Second)
	check := func(name string) {
		t.Helper()
		n, err := e.client.CoreV1().Nodes().Get(e.ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		want6 := netip.PrefixFrom(nics[name].Addr(), 112).String()
		if len(n.Spec.PodCIDRs) != 2 || n.Spec.PodCIDRs[0] != n.Spec.PodCIDR || n.Spec.PodCIDRs[1] != want6 ||
			!netip.MustParsePrefix(n.Spec.PodCIDR).Addr().Is4() {
			t.Errorf("node %s podCIDRs %v, want [its IPv4 block, %s]", name, n.Spec.PodCIDRs, want6)
		}
	}
	check("d-1")
	check("d-2")
	if p := e.snapshot().PodCIDR["late"]; p != "" {
		t.Fatalf("late got %s without an IPv6 range", p)
	}
	if a := s.Aliases()["late"]; len(a) != 0 {
		t.Fatalf("late's NIC got %v while it waits for IPv6", a)
	}
	// Its NIC gets its IPv6 range: the next list (--gc-interval 1s here)
	// shows it, and the node gets both.
	nics["late"] = s.NextIPv6()
	s.SetIPv6(gceZone, "late", nics["late"])
	waitPodCIDRs(t, e, "late")
	check("late")
	e.snapshot().CheckInvariants(t, e.cluster, true)

	// A SIGKILL and a new process: the rebuild takes every dual-stack
	// node as in sync — no write, no IPv6CIDRMismatch — and a node
	// registering afterwards gets its own NIC's /112 beside a fresh IPv4
	// block.
	before := e.snapshot().PodCIDR
	c.Kill()
	c2 := e.startController("controller-2", "--dual-stack", "--leader-elect=false")
	nics["after"] = s.AddInstanceDualStack(gceZone, "after")
	if err := framework.CreateNodes(e.ctx, e.client, []string{"after"}, func(n *corev1.Node) {
		n.Spec.ProviderID = fmt.Sprintf("gce://%s/%s/%s", gceProject, gceZone, n.Name)
	}); err != nil {
		t.Fatal(err)
	}
	waitPodCIDRs(t, e, "after")
	check("after")
	for _, n := range []string{"d-1", "d-2", "late"} {
		check(n)
		if got := e.snapshot().PodCIDR[n]; got != before[n] {
			t.Errorf("node %s podCIDR %s after the restart, was %s", n, got, before[n])
		}
		if bad, _ := framework.HasEvent(e.ctx, e.client, n, corev1.EventTypeWarning, controller.EventIPv6CIDRMismatch); bad {
			t.Errorf("node %s got IPv6CIDRMismatch after the restart", n)
		}
	}
	if v, ok := c2.metric("aliasip_node_writes_total", ""); !ok || v != 1 {
		t.Errorf("the restarted controller wrote %v nodes (ok=%v); want 1, the new node only", v, ok)
	}
	e.snapshot().CheckInvariants(t, e.cluster, true)
}
