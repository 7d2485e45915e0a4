package controller

import (
	"errors"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/aliasip/aliasip/cloud"
	"github.com/aliasip/aliasip/fake"
)

// TestNodeMetricsByFamily: aliasip_node_podcidrs counts the nodes with a
// block of each family, and aliasip_nodes_waiting_ipv6 the dual-stack
// nodes waiting for their NIC's IPv6 range — until it comes, or the node
// is deleted.
func TestNodeMetricsByFamily(t *testing.T) {
	old := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "old"}, // single-stack from before --dual-stack
		Spec: corev1.NodeSpec{PodCIDR: "10.0.9.0/24", PodCIDRs: []string{"10.0.9.0/24"}}}
	h := startHarness(t, harnessConfig{cluster: "10.0.0.0/16", dualStack: true,
		nodes: []*corev1.Node{{ObjectMeta: metav1.ObjectMeta{Name: "n"}}, {ObjectMeta: metav1.ObjectMeta{Name: "w"}},
			{ObjectMeta: metav1.ObjectMeta{Name: "gone"}}, old},
		prep: func(fc *fake.Cloud) {
			for _, vm := range []string{"n", "w", "gone", "old"} {
				fc.RegisterInstance(vm)
			}
			for _, vm := range []string{"w", "gone"} {
				if err := fc.SetIPv6(vm, netip.Prefix{}); err != nil {
					t.Fatal(err)
				}
			}
		}})
	want := func(v4, v6, waiting int) {
		t.Helper()
		h.caughtUp()
		exp := "# HELP aliasip_node_podcidrs " + metricHelp(t, h, "aliasip_node_podcidrs") + "\n" +
			"# TYPE aliasip_node_podcidrs gauge\n" +
			"aliasip_node_podcidrs{family=\"ipv4\"} " + itoa(v4) + "\n" +
			"aliasip_node_podcidrs{family=\"ipv6\"} " + itoa(v6) + "\n" +
			"# HELP aliasip_nodes_waiting_ipv6 " + metricHelp(t, h, "aliasip_nodes_waiting_ipv6") + "\n" +
			"# TYPE aliasip_nodes_waiting_ipv6 gauge\n" +
			"aliasip_nodes_waiting_ipv6 " + itoa(waiting) + "\n"
		if err := testutil.GatherAndCompare(h.reg, strings.NewReader(exp), "aliasip_node_podcidrs", "aliasip_nodes_waiting_ipv6"); err != nil {
			t.Fatal(err)
		}
	}
	want(1, 0, 0)
	if err := h.syncNode("n"); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"w", "gone"} {
		if err := h.syncNode(n); !errors.Is(err, errWaitIPv6) {
			t.Fatalf("sync %s: %v, want errWaitIPv6", n, err)
		}
	}
	want(2, 1, 2)
	if err := h.client.CoreV1().Nodes().Delete(h.ctx, "gone", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	want(2, 1, 1) // gone from the cache: no longer counted, before any sync
	if err := h.syncNode("gone"); err != nil {
		t.Fatal(err)
	}
	if _, err := h.cloud.AssignIPv6("w"); err != nil {
		t.Fatal(err)
	}
	if err := h.syncNode("w"); err != nil {
		t.Fatal(err)
	}
	want(3, 2, 0)
	h.ctrl.mu.Lock()
	defer h.ctrl.mu.Unlock()
	if len(h.ctrl.ipv6Waiting) != 0 {
		t.Errorf("still waiting: %v", h.ctrl.ipv6Waiting)
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

// metricHelp is the help text name is registered with.
func metricHelp(t *testing.T, h *harness, name string) string {
	t.Helper()
	mfs, err := h.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetHelp()
		}
	}
	t.Fatalf("%s is not registered", name)
	return ""
}

// TestCloudViewReportsIPv6: kubectl aliasip check reads each NIC's IPv6
// range and whether the controller runs dual-stack from the admin
// socket's cloud view, to judge the Nodes' IPv6 podCIDRs.
func TestCloudViewReportsIPv6(t *testing.T) {
	for _, dual := range []bool{false, true} {
		h := startHarness(t, harnessConfig{cluster: "10.0.0.0/16", dualStack: true,
			nodes: []*corev1.Node{{ObjectMeta: metav1.ObjectMeta{Name: "v6"}}, {ObjectMeta: metav1.ObjectMeta{Name: "v4"}}},
			prep: func(fc *fake.Cloud) {
				fc.RegisterInstance("v6")
				fc.RegisterInstance("v4")
				if err := fc.SetIPv6("v4", netip.Prefix{}); err != nil {
					t.Fatal(err)
				}
			}})
		h.ctrl.cfg.DualStack = dual
		nic, err := h.cloud.IPv6Range(h.ctx, cloud.InstanceRef{Name: "v6"})
		if err != nil || !nic.IsValid() {
			t.Fatalf("v6's NIC range %v, %v", nic, err)
		}
		v, err := h.ctrl.cloudView(h.ctx)
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]string{}
		for _, in := range v.Instances {
			got[in.Node] = in.IPv6
		}
		if v.DualStack != dual || got["v6"] != nic.String() || got["v4"] != "" {
			t.Errorf("dual-stack %v: view dualStack %v, NIC ranges %v; want v6: %v, v4: none", dual, v.DualStack, got, nic)
		}
	}
}
