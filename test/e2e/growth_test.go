package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/aliasip/aliasip/cloud"
	"github.com/aliasip/aliasip/controller/apis/aliasip/v1alpha1"
	"github.com/aliasip/aliasip/controller/generated/clientset/versioned"
	aliasipv1client "github.com/aliasip/aliasip/controller/generated/clientset/versioned/typed/aliasip/v1alpha1"
	"github.com/aliasip/aliasip/test/framework"
)

// A growable PodRange end to end: the controller and two real agents in
// network namespaces, pods added through libcni. A node's pods fill its
// /28 podCIDR (13 addresses), then its agent reports it short and the
// controller grants /28s: every ADD succeeds, none gets an address twice,
// the pods past the first 13 get addresses of the granted blocks, and a
// pod on the other node reaches them through its fabric route to the
// extra block. Once those pods are gone the extra block is drained, the
// agent reports it drained, and the controller takes it back: off the
// NIC, out of the record, out of the other node's routes — across an
// agent restart in the middle of the drain.
func TestGrowableRangeEndToEnd(t *testing.T) {
	lc, ctx, prs := growCluster(t, v1alpha1.GrowthSpec{MaxBlocksPerNode: 4, LowWater: 1, ReturnAfterSeconds: 2})
	nodes := addNodes(t, ctx, lc, "grow", 2)
	a, b := nodes[0], nodes[1]
	first := netip.MustParsePrefix(lc.PodCIDR(ctx, a))
	if first.Bits() != 28 {
		t.Fatalf("node %s got %v, not a /28 of the growable range", a.Name, first)
	}
	// 20 pods on a: 13 fit its podCIDR, 7 need another block.
	var pods []*framework.Pod
	seen := map[netip.Addr]string{}
	for i := 0; i < 20; i++ {
		p, err := lc.RunPod(ctx, a, fmt.Sprintf("dense-%d", i))
		if err != nil {
			t.Fatalf("pod %d: %v", i, err)
		}
		t.Cleanup(p.Close)
		if other, dup := seen[p.IP]; dup {
			t.Fatalf("%v given to %s and %s", p.IP, other, p.Name)
		}
		seen[p.IP] = p.Name
		pods = append(pods, p)
		// Egress follows the blocks from a new block's first pod: the
		// table is written before the block serves one (read at once).
		if !first.Contains(p.IP) && !masqueraded(t, a, p.IP) {
			t.Errorf("pod %s (%v), just started, is not in %s's masquerade sources (nft set pod_blocks):\n%s", p.Name, p.IP, a.Name, nftTable(t, a))
		}
	}
	nb, err := prs.NodeBlocks().Get(ctx, a.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var extra []netip.Prefix
	for _, blk := range nb.Status.Blocks {
		extra = append(extra, netip.MustParsePrefix(blk.CIDR))
	}
	if len(extra) == 0 {
		t.Fatalf("20 pods on a /28 and no block granted: %+v", nb.Status)
	}
	var outside []*framework.Pod
	for _, p := range pods {
		if first.Contains(p.IP) {
			continue
		}
		if !slices.ContainsFunc(extra, func(x netip.Prefix) bool { return x.Contains(p.IP) }) {
			t.Errorf("pod %s got %v: in neither %v nor the granted blocks %v", p.Name, p.IP, first, extra)
		}
		outside = append(outside, p)
	}
	if len(outside) != 7 {
		t.Errorf("%d pods outside the podCIDR, want 7", len(outside))
	}
	// Egress follows the blocks: a pod of an extra block is masqueraded on
	// its way out like one of the podCIDR.
	for _, p := range append(outside, pods[0]) {
		if !masqueraded(t, a, p.IP) {
			t.Errorf("pod %s (%v) is not in %s's masquerade sources (nft set pod_blocks):\n%s", p.Name, p.IP, a.Name, nftTable(t, a))
		}
	}
	// Across nodes: b routes a's extra blocks via a, both ways work.
	if err := framework.Eventually(ctx, 30*time.Second, func() (bool, error) {
		routes := fabricRoutes(t, b)
		for _, x := range extra {
			if routes[x.String()] != a.IP.String() {
				return false, nil
			}
		}
		return true, nil
	}); err != nil {
		t.Fatalf("b never routed a's extra blocks %v: %v", extra, fabricRoutes(t, b))
	}
	// The IPAM state is lost (truncated, as by a power loss) and the agent
	// restarts: it rebuilds the allocations from the host's pod routes, in
	// its podCIDR and in its extra blocks (read from its NodeBlocks), so
	// no address of a running pod is handed out again.
	a.Agent.Stop()
	if err := os.Truncate(filepath.Join(a.State, "ipam.json"), 0); err != nil {
		t.Fatal(err)
	}
	if err := lc.StartAgent(a); err != nil {
		t.Fatal(err)
	}
	if err := lc.WaitAgentReady(ctx, a, time.Minute); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		p, err := lc.RunPod(ctx, a, fmt.Sprintf("after-loss-%d", i))
		if err != nil {
			t.Fatalf("pod after the state loss: %v", err)
		}
		t.Cleanup(p.Close)
		if other, dup := seen[p.IP]; dup {
			t.Fatalf("after the state loss %v was given to %s, still held by %s", p.IP, p.Name, other)
		}
		seen[p.IP] = p.Name
		pods = append(pods, p)
		if !first.Contains(p.IP) {
			outside = append(outside, p)
		}
	}

	probe, err := lc.RunPod(ctx, b, "probe")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(probe.Close)
	pingAll(t, []*framework.Pod{probe, outside[0], outside[len(outside)-1], pods[0]})

	// The pods outside the podCIDR go, and three of the podCIDR's: the
	// extra blocks empty and are not needed (3 free ≥ lowWater 1 without
	// them), are drained (after 2 s), the agent's addresses cool down
	// (2 s), and they are given back.
	for _, p := range append(outside, pods[1:4]...) {
		if err := a.Del(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	// The agent restarts while the blocks drain: its store keeps the
	// extra blocks and the cooling addresses (journal), and it reports
	// them drained only once empty.
	a.Agent.Stop()
	if err := lc.StartAgent(a); err != nil {
		t.Fatal(err)
	}
	if err := lc.WaitAgentReady(ctx, a, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := framework.Eventually(ctx, 60*time.Second, func() (bool, error) {
		nb, err := prs.NodeBlocks().Get(ctx, a.Name, metav1.GetOptions{})
		return err == nil && len(nb.Status.Blocks) == 0, nil
	}); err != nil {
		nb, _ := prs.NodeBlocks().Get(ctx, a.Name, metav1.GetOptions{})
		t.Fatalf("the empty extra blocks were never given back: %+v / %+v", nb.Spec, nb.Status)
	}
	if err := framework.Eventually(ctx, 30*time.Second, func() (bool, error) {
		routes := fabricRoutes(t, b)
		for _, x := range extra {
			if _, ok := routes[x.String()]; ok {
				return false, nil
			}
		}
		return true, nil
	}); err != nil {
		t.Errorf("b still routes a's given-back blocks: %v", fabricRoutes(t, b))
	}
	// The record goes first, then the alias (growth.go's write order): the
	// NIC is waited on, not read at once.
	var aliases []cloud.AliasRange
	if err := framework.Eventually(ctx, 30*time.Second, func() (bool, error) {
		var err error
		aliases, err = lc.Cloud.Aliases(ctx, mustInstance(t, lc, a.Name))
		return err == nil && len(aliases) == 1 && aliases[0].CIDR == first, err
	}); err != nil {
		t.Errorf("a's NIC after the give-back: %v, want only %v (%v)", aliases, first, err)
	}
	// The pods that stayed still answer.
	pingAll(t, []*framework.Pod{probe, pods[0], pods[12]})
}

// mustInstance resolves a node's instance on the cluster's fake cloud.
func mustInstance(t *testing.T, lc *framework.LocalCluster, node string) cloud.InstanceRef {
	t.Helper()
	ref, err := lc.Cloud.InstanceFor(t.Context(), "", node)
	if err != nil {
		t.Fatal(err)
	}
	return ref
}

// growCluster starts a LocalCluster with the CRDs and the growable
// PodRange "grow" (/28 blocks of 10.110.0.0/24, every node), taken up.
func growCluster(t *testing.T, growth v1alpha1.GrowthSpec) (*framework.LocalCluster, context.Context, aliasipv1client.AliasipV1alpha1Interface) {
	t.Helper()
	lc, ctx := startCluster(t, framework.LocalClusterOptions{ClusterCIDR: "10.100.0.0/16"})
	// The CRDs, as the chart installs them, and the controller restarted
	// to take them up at once (it looks for them every 30 s otherwise).
	if err := framework.InstallCRDs(ctx, lc.CP.Config, framework.CRDDir()); err != nil {
		t.Fatal(err)
	}
	lc.Controller.Stop()
	if err := lc.StartController(); err != nil {
		t.Fatal(err)
	}
	prs := versioned.NewForConfigOrDie(lc.CP.Config).AliasipV1alpha1()
	mask := int32(28)
	if _, err := prs.PodRanges().Create(ctx, &v1alpha1.PodRange{ObjectMeta: metav1.ObjectMeta{Name: "grow"},
		Spec: v1alpha1.PodRangeSpec{CIDR: "10.110.0.0/24", MaskSize: &mask, NodeSelector: metav1.LabelSelector{},
			Growth: &growth}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := framework.Eventually(ctx, 60*time.Second, func() (bool, error) {
		pr, err := prs.PodRanges().Get(ctx, "grow", metav1.GetOptions{})
		return err == nil && pr.Status.CIDR != "", nil
	}); err != nil {
		t.Fatalf("PodRange grow never taken up: %v", err)
	}
	return lc, ctx, prs
}

// At maxBlocksPerNode a node that runs out of addresses gets no block: the
// ADD waits for one, then fails with the exhausted CNI error naming the
// wait, and only then; the NodeBlocks says CapReached.
func TestGrowableRangeCap(t *testing.T) {
	lc, ctx, prs := growCluster(t, v1alpha1.GrowthSpec{MaxBlocksPerNode: 2, LowWater: 1, ReturnAfterSeconds: 3600})
	n := addNodes(t, ctx, lc, "cap", 1)[0]
	for i := 0; i < 13+16; i++ {
		p, err := lc.RunPod(ctx, n, fmt.Sprintf("fill-%d", i))
		if err != nil {
			t.Fatalf("pod %d of the 29 two /28s hold: %v", i, err)
		}
		t.Cleanup(p.Close)
	}
	_, err := lc.RunPod(ctx, n, "one-too-many")
	if err == nil || !strings.Contains(err.Error(), "exhausted") || !strings.Contains(err.Error(), "none was granted") {
		t.Fatalf("the ADD past the cap: %v, want the exhausted CNI error after the wait for a block", err)
	}
	nb, err := prs.NodeBlocks().Get(ctx, n.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !meta.IsStatusConditionTrue(nb.Status.Conditions, v1alpha1.ConditionCapReached) || len(nb.Status.Blocks) != 1 {
		t.Errorf("at the cap: %+v", nb.Status)
	}
}

// masqueraded reports whether ip is in the node's masquerade sources: the
// ip aliasip table's pod_blocks set (node-agent/egress), asked of the
// kernel with nft get element (nft(8), SETS: "get element" lists an
// element, failing when the set does not hold it).
func masqueraded(t *testing.T, n *framework.Node, ip netip.Addr) bool {
	t.Helper()
	var err error
	nsErr := n.NS.Do(func(ns.NetNS) error {
		runtime.LockOSThread()
		err = exec.Command("nft", "get", "element", "ip", "aliasip", "pod_blocks", "{", ip.String(), "}").Run()
		return nil
	})
	if nsErr != nil {
		t.Fatal(nsErr)
	}
	return err == nil
}

// nftTable prints the node's ip aliasip table (for a failure message).
func nftTable(t *testing.T, n *framework.Node) string {
	t.Helper()
	var out []byte
	_ = n.NS.Do(func(ns.NetNS) error {
		runtime.LockOSThread()
		out, _ = exec.Command("nft", "list", "table", "ip", "aliasip").CombinedOutput()
		return nil
	})
	return string(out)
}
