package netns

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"

	"github.com/aliasip/aliasip/node-agent/datapath"
	"github.com/aliasip/aliasip/test/framework"
)

// fabricTable lists the node's main-table routes of both families as
// "DST via GW proto N" (DST "default" for a default route).
func fabricTable(t *testing.T, n *framework.Node) []string {
	t.Helper()
	var out []string
	if err := n.NS.Do(func(ns.NetNS) error {
		for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
			routes, err := netlink.RouteListFiltered(fam, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
			if err != nil {
				return err
			}
			for _, r := range routes {
				if r.Gw == nil {
					continue // connected and pod routes
				}
				dst := "default"
				if r.Dst != nil {
					if ones, _ := r.Dst.Mask.Size(); ones > 0 {
						dst = r.Dst.String()
					}
				}
				out = append(out, fmt.Sprintf("%s via %s proto %d", dst, r.Gw, r.Protocol))
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

// A kubelet may create its own Node with any spec.podCIDRs and any
// status.addresses (NodeRestriction lets it). Such Nodes must not make
// the other agents' --fabric=routes send traffic for someone else's block,
// the node's own block, or the whole Internet to them: a newer Node
// claiming an older node's block (or a more specific part of it), this
// node's own blocks, ::/0 or 0.0.0.0/0 (which replaced the default
// route), an IPv4 block outside the pod ranges (11.0.0.0/8, a PodRange
// the controller has not accepted) or not of its range's block size, or
// an IPv6 block that is no /112 inside the IPv6 pod range (8000::/1: half
// the Internet) gets no route. A block of an accepted PodRange (its
// status) is routed. The genuine node's routes stay, and so does this
// node's default route.
func TestFabricForeignClaims(t *testing.T) {
	e := newEnv(t)
	// A PodRange the controller accepted (status.cidr, status.maskSize /26,
	// written here as the controller would) and one it has not (no
	// status), both there before A's agent starts.
	if err := framework.InstallCRDs(e.ctx, cp.Config, framework.CRDDir()); err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(cp.Config)
	if err != nil {
		t.Fatal(err)
	}
	gvr := schema.GroupVersionResource{Group: "aliasip.io", Version: "v1alpha1", Resource: "podranges"}
	prName := fmt.Sprintf("fabric-review-%d", time.Now().UnixNano())
	for i, cidr := range []string{"10.241.0.0/16", "10.242.0.0/16"} {
		name := fmt.Sprintf("%s-%d", prName, i)
		pr, err := dyn.Resource(gvr).Create(e.ctx, &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "aliasip.io/v1alpha1", "kind": "PodRange",
			"metadata": map[string]any{"name": name},
			"spec": map[string]any{"cidr": cidr, "maskSize": int64(26),
				"nodeSelector": map[string]any{"matchLabels": map[string]any{"fabric-review": name}}},
		}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { dyn.Resource(gvr).Delete(context.Background(), name, metav1.DeleteOptions{}) })
		if i > 0 {
			continue
		}
		pr.Object["status"] = map[string]any{"cidr": cidr, "maskSize": int64(26),
			"conditions": []any{map[string]any{"type": "Ready", "status": "True", "reason": "Valid", "message": "in use",
				"lastTransitionTime": time.Now().UTC().Format(time.RFC3339)}}}
		if _, err := dyn.Resource(gvr).UpdateStatus(e.ctx, pr, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	a := e.dualStackNode("10.210.31.0/24", "fd00:210:31::/112", "fd00:fab::31", "--fabric", "routes",
		"--cluster-cidr", "10.210.0.0/16,fd00:210::/32", "--node-cidr-mask-size", "24", "--resync-period", "1s")
	gw6 := netip.MustParseAddr("fd00:fab::1")
	if err := a.NS.Do(func(ns.NetNS) error {
		eth0, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		return netlink.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}, Gw: gw6.AsSlice()})
	}); err != nil {
		t.Fatal(err)
	}
	b := e.dualStackNode("10.210.32.0/24", "fd00:210:32::/112", "fd00:fab::32")
	wantB := []string{
		fmt.Sprintf("10.210.32.0/24 via %s proto %d", b.IP, datapath.ProtoFabric),
		fmt.Sprintf("fd00:210:32::/112 via fd00:fab::32 proto %d", datapath.ProtoFabric),
	}
	if err := framework.Eventually(e.ctx, 20*time.Second, func() (bool, error) {
		have := fabricTable(t, a)
		return slices.Contains(have, wantB[0]) && slices.Contains(have, wantB[1]), nil
	}); err != nil {
		t.Fatalf("A never routed B's blocks: %v", fabricTable(t, a))
	}
	before := fabricTable(t, a)
	// creationTimestamp has a resolution of one second: the claims below
	// must be strictly newer than B, so wait until the API server stamps a
	// new object with a later second than B's.
	bObj, err := e.client.CoreV1().Nodes().Get(e.ctx, b.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	probes := e.client.CoreV1().ConfigMaps("default")
	if err := framework.Eventually(e.ctx, 10*time.Second, func() (bool, error) {
		cm, err := probes.Create(e.ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{GenerateName: "clock-"}}, metav1.CreateOptions{})
		if err != nil {
			return false, err
		}
		probes.Delete(e.ctx, cm.Name, metav1.DeleteOptions{})
		return bObj.CreationTimestamp.Before(&cm.CreationTimestamp), nil
	}); err != nil {
		t.Fatalf("the API server's clock never passed B's creationTimestamp: %v", err)
	}

	sub := e.fabric.Subnet.Addr().As4()
	// routed4/routed6: what A should route of each claim.
	claims := []struct {
		v4, v6           string
		routed4, routed6 bool
	}{
		{"0.0.0.0/0", "::/0", false, false},                     // everything
		{"10.210.32.0/24", "fd00:210:32::/112", false, false},   // B's blocks, exactly
		{"10.210.32.128/25", "fd00:210:32::/113", false, false}, // inside B's blocks
		{"10.210.31.0/24", "fd00:210:31::/112", false, false},   // A's own blocks
		{"11.0.0.0/8", "8000::/1", false, false},                // someone else's network; half the Internet
		{"10.210.35.0/25", "fd00:210:35::/64", false, false},    // no /24; no /112
		{"10.242.0.0/26", "2001:4860:4860::/112", false, false}, // an unaccepted PodRange; a /112 outside the pod range
		{"10.241.1.0/24", "fd00:210:36::/112", false, true},     // no /26 of the accepted PodRange
		{"10.210.37.0/24", "fd00:210:37::/112", true, true},     // genuine-looking: routed
		{"10.241.0.64/26", "fd00:210:38::/112", true, true},     // a block of the accepted PodRange: routed
	}
	var names []string
	for i, c := range claims {
		name := fmt.Sprintf("foreign-claim-%d", i)
		names = append(names, name)
		via4 := netip.AddrFrom4([4]byte{sub[0], sub[1], sub[2], byte(200 + i)})
		via6 := fmt.Sprintf("fd00:fab::%d", 200+i)
		obj := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.NodeSpec{PodCIDR: c.v4, PodCIDRs: []string{c.v4, c.v6}}}
		if _, err := e.client.CoreV1().Nodes().Create(e.ctx, obj, metav1.CreateOptions{}); err != nil {
			t.Fatalf("creating %s with podCIDRs %v: %v", name, obj.Spec.PodCIDRs, err)
		}
		t.Cleanup(func() { e.client.CoreV1().Nodes().Delete(context.Background(), name, metav1.DeleteOptions{}) })
		obj, err := e.client.CoreV1().Nodes().Get(e.ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		obj.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: via4.String()}, {Type: corev1.NodeInternalIP, Address: via6}}
		if _, err := e.client.CoreV1().Nodes().UpdateStatus(e.ctx, obj, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	last := len(claims) - 1
	sentinel := fmt.Sprintf("%s via fd00:fab::%d proto %d", claims[last].v6, 200+last, datapath.ProtoFabric)
	if err := framework.Eventually(e.ctx, 20*time.Second, func() (bool, error) {
		return slices.Contains(fabricTable(t, a), sentinel), nil
	}); err != nil {
		t.Fatalf("A never routed the last Node's IPv6 block: %v", fabricTable(t, a))
	}
	want := slices.Clone(before)
	for i, c := range claims {
		if c.routed4 {
			want = append(want, fmt.Sprintf("%s via %s proto %d", c.v4, netip.AddrFrom4([4]byte{sub[0], sub[1], sub[2], byte(200 + i)}), datapath.ProtoFabric))
		}
		if c.routed6 {
			want = append(want, fmt.Sprintf("%s via fd00:fab::%d proto %d", c.v6, 200+i, datapath.ProtoFabric))
		}
	}
	sort.Strings(want)
	// Three more full passes of A's fabric loop (its counter), the table
	// checked after each: a route flapping between claims would show.
	passes := agentMetric(t, a, "aliasip_fabric_passes_total", "")
	for i := 1; i <= 3; i++ {
		if err := framework.Eventually(e.ctx, 20*time.Second, func() (bool, error) {
			return agentMetric(t, a, "aliasip_fabric_passes_total", "") >= passes+float64(i), nil
		}); err != nil {
			t.Fatalf("A's fabric loop made no pass %d: %v", i, err)
		}
		if got := fabricTable(t, a); !slices.Equal(got, want) {
			t.Fatalf("A's routes after the foreign claims %v (pass %d):\n got %q\nwant %q", names, i, got, want)
		}
	}
	// Every claim A does not route is counted as refused (B's own two are
	// routed, so not among them).
	refused := 0
	for _, c := range claims {
		for _, routed := range []bool{c.routed4, c.routed6} {
			if !routed {
				refused++
			}
		}
	}
	if got := agentMetric(t, a, "aliasip_fabric_claims_refused", ""); got != float64(refused) {
		t.Errorf("aliasip_fabric_claims_refused on A = %v, want %d", got, refused)
	}
}
