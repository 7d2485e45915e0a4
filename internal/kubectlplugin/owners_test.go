package kubectlplugin

import (
	"context"
	"slices"
	"strings"
	"testing"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/aliasip/aliasip/controller/adminapi"
	"github.com/aliasip/aliasip/node-agent/api"
)

// forged is a pod anyone who may create pods in the release namespace can
// make: the daemon's labels, name, command and arguments, and whatever
// ownerReferences its author writes.
func forged(p *corev1.Pod, name string, owners []metav1.OwnerReference) *corev1.Pod {
	p = p.DeepCopy()
	p.Name, p.OwnerReferences = name, owners
	return p
}

// TestDaemonsAreIdentifiedByTheirOwner: check and release ask only the
// pods the release's workloads made — the agent DaemonSet's pod on each
// node, the controller Deployment's pods — not whatever carries their
// labels. Forged pods with the right labels but no owner, or another
// owner, are never asked; a forged pod that claims the DaemonSet as its
// controller next to the real agent makes the node unread, never read
// from the forgery. Before, every forged pod below was asked, and the
// last agent pod listed for a node was the one read.
func TestDaemonsAreIdentifiedByTheirOwner(t *testing.T) {
	ctx := context.Background()
	src, ex := releaseCluster(t)
	real := agentPod("agent-a", "a")
	for _, p := range []*corev1.Pod{
		forged(real, "agent-a-forged", nil),
		forged(real, "agent-b-forged", ownedBy("DaemonSet", "aliasip-agent", "another-daemonset")),
		forged(controllerPod("ctrl-0", ""), "ctrl-forged", ownedBy("ReplicaSet", "aliasip-controller-5d8f", "another-replicaset")),
	} {
		if p.Name == "agent-b-forged" {
			p.Spec.NodeName = "b"
		}
		if _, err := src.Client.CoreV1().Pods("kube-system").Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	allocs := &api.Allocations{Node: "a", PodCIDR: "10.0.1.0/24", Allocations: []api.AllocationEntry{}}
	ex.answers["agent-a list"] = allocs
	forgedView := adminapi.CloudView{Ready: true}
	for _, name := range []string{"agent-a-forged", "agent-b-forged"} {
		ex.answers[name+" list"] = &api.Allocations{Node: "a", PodCIDR: "10.0.9.0/24"}
	}
	ex.answers["ctrl-forged cloud"] = forgedView

	snap, err := src.Read(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if snap.leader == nil || snap.leader.pod != "ctrl-0" || len(snap.Agents) != 1 || snap.Agents["a"] == nil || snap.Agents["a"].PodCIDR != "10.0.1.0/24" {
		t.Fatalf("leader %+v, agents %v, unread %v", snap.leader, snap.Agents, snap.Unread)
	}
	for _, c := range ex.calls {
		if strings.Contains(c, "forged") {
			t.Errorf("asked a forged pod: %s", c)
		}
	}

	// The lease names a host where only a forged controller runs: no
	// leader is read.
	holder := "ctrl-forged_77aa"
	if _, err := src.Client.CoordinationV1().Leases("kube-system").Update(ctx, &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "aliasip-controller"},
		Spec:       coordinationv1.LeaseSpec{HolderIdentity: &holder}}, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := src.leader(ctx); err == nil {
		t.Error("a forged controller named in the lease was read as the leader")
	}

	// A pod that names the agent DaemonSet as its controller, beside the
	// real agent: the node is not read, from either.
	ex.calls = nil
	if _, err := src.Client.CoreV1().Pods("kube-system").Create(ctx, forged(real, "agent-a-claims-ds", real.OwnerReferences), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ex.answers["agent-a-claims-ds list"] = &api.Allocations{Node: "a", PodCIDR: "10.0.9.0/24"}
	targets, bad, err := src.agents(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := targets["a"]; ok || !strings.Contains(bad["a"], "agent-a, agent-a-claims-ds") {
		t.Errorf("node a with two current agent pods: target %+v, unread %q", targets["a"], bad["a"])
	}

	// The lease back on ctrl-0: the real leader is read, and the forged
	// controller is still not asked.
	holder = "ctrl-0_6b1f"
	if _, err := src.Client.CoordinationV1().Leases("kube-system").Update(ctx, &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "aliasip-controller"},
		Spec:       coordinationv1.LeaseSpec{HolderIdentity: &holder}}, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := src.leader(ctx); err != nil {
		t.Fatalf("the real leader: %v", err)
	}
	if slices.ContainsFunc(ex.calls, func(c string) bool { return strings.Contains(c, "forged") }) {
		t.Errorf("asked a forged pod: %v", ex.calls)
	}
}

// TestTwoLeadersAreNotRead: the lease names one holder; when two of the
// Deployment's pods on its host both answer Ready, check reads neither.
func TestTwoLeadersAreNotRead(t *testing.T) {
	ctx := context.Background()
	src, ex := releaseCluster(t)
	holder := "node-1.example_6b1f"
	if _, err := src.Client.CoordinationV1().Leases("kube-system").Update(ctx, &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "aliasip-controller"},
		Spec:       coordinationv1.LeaseSpec{HolderIdentity: &holder}}, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := src.Client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1"},
		Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeHostName, Address: "node-1.example"}}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"ctrl-x", "ctrl-y"} {
		if _, err := src.Client.CoreV1().Pods("kube-system").Create(ctx, controllerPod(name, "node-1"), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		ex.answers[name+" cloud"] = ex.answers["ctrl-0 cloud"]
	}
	if _, _, err := src.leader(ctx); err == nil || !strings.Contains(err.Error(), "ctrl-x, ctrl-y") {
		t.Fatalf("two pods answering as the leader: %v", err)
	}
}
