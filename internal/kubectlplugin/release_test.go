package kubectlplugin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	k8sfake "k8s.io/client-go/kubernetes/fake"

	"github.com/aliasip/aliasip/controller/adminapi"
)

// fakeExec answers the daemons' admin calls by pod and call, and records
// them ("pod call").
type fakeExec struct {
	answers map[string]any // "pod call" -> answer; an error is returned as the exec's
	calls   []string
	timeout string
}

func (f *fakeExec) Exec(_ context.Context, _, pod, _ string, cmd []string) ([]byte, error) {
	call := cmd[2:]
	for len(call) >= 2 && strings.HasPrefix(call[0], "--") {
		if call[0] == "--timeout" {
			f.timeout = call[1]
		}
		call = call[2:]
	}
	k := pod + " " + call[0]
	f.calls = append(f.calls, k)
	switch a := f.answers[k].(type) {
	case nil:
		return nil, errors.New("no answer for " + k)
	case error:
		return nil, a
	default:
		return json.Marshal(a)
	}
}

// The release's workloads, as the chart makes them: the agent DaemonSet,
// the controller Deployment and its ReplicaSet.
const (
	agentDSUID      types.UID = "ds-4f1c"
	controllerRSUID types.UID = "rs-9a07"
)

// ownedBy is the controller ownerReference a workload's controller writes
// on what it makes.
func ownedBy(kind, name string, uid types.UID) []metav1.OwnerReference {
	controller := true
	return []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: kind, Name: name, UID: uid, Controller: &controller}}
}

func releaseWorkloads() []runtime.Object {
	agentLabels := map[string]string{"app.kubernetes.io/component": "agent", "app.kubernetes.io/instance": "aliasip"}
	ctrlLabels := map[string]string{"app.kubernetes.io/component": "controller", "app.kubernetes.io/instance": "aliasip"}
	return []runtime.Object{
		&appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "aliasip-agent", UID: agentDSUID},
			Spec: appsv1.DaemonSetSpec{Selector: &metav1.LabelSelector{MatchLabels: agentLabels}}},
		&appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "aliasip-controller", UID: "deploy-22b1"},
			Spec: appsv1.DeploymentSpec{Selector: &metav1.LabelSelector{MatchLabels: ctrlLabels}}},
		&appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "aliasip-controller-5d8f", UID: controllerRSUID,
			Labels: ctrlLabels, OwnerReferences: ownedBy("Deployment", "aliasip-controller", "deploy-22b1")}},
	}
}

// controllerPod is a pod of the release's controller Deployment.
func controllerPod(name, node string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: name,
		Labels:          map[string]string{"app.kubernetes.io/component": "controller", "app.kubernetes.io/instance": "aliasip"},
		OwnerReferences: ownedBy("ReplicaSet", "aliasip-controller-5d8f", controllerRSUID)},
		Spec: corev1.PodSpec{NodeName: node, HostNetwork: true,
			Containers: []corev1.Container{{Name: "controller", Command: []string{"/aliasip-controller"}, Args: []string{"--admin-socket=/run/a/c.sock"}}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning}}
}

// agentPod is a pod of the release's agent DaemonSet on node.
func agentPod(name, node string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: name,
		Labels:          map[string]string{"app.kubernetes.io/component": "agent", "app.kubernetes.io/instance": "aliasip"},
		OwnerReferences: ownedBy("DaemonSet", "aliasip-agent", agentDSUID)},
		Spec:   corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "agent", Command: []string{"/aliasip-agent"}, Args: []string{"--socket=/run/aliasip/a.sock"}}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning}}
}

func releaseCluster(t *testing.T) (Source, *fakeExec) {
	t.Helper()
	holder := "ctrl-0_6b1f"
	client := k8sfake.NewClientset(append(releaseWorkloads(),
		&coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "aliasip-controller"},
			Spec: coordinationv1.LeaseSpec{HolderIdentity: &holder}},
		controllerPod("ctrl-0", ""),
		agentPod("agent-a", "a"),
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "a"}, Spec: corev1.NodeSpec{PodCIDR: "10.0.1.0/24"}},
	)...)
	ex := &fakeExec{answers: map[string]any{
		"ctrl-0 cloud": adminapi.CloudView{Ready: true,
			Ranges: []adminapi.Range{{Name: "default", CIDR: "10.0.0.0/16", MaskSize: 24}},
			Instances: []adminapi.Instance{
				{Ref: "p/z/a", Node: "a", Aliases: []adminapi.Alias{{CIDR: "10.0.1.0/24", Range: "default"}}},
				{Ref: "p/z/ghost", Aliases: []adminapi.Alias{{CIDR: "10.0.7.0/24", Range: "default"}}},
			}},
		"ctrl-0 release-alias": adminapi.LeakResult{Released: true, Reason: "alias on an instance without a Node"},
		"agent-a list":         errors.New("command terminated with exit code 1: aliasip-agent admin list: agent unreachable"),
	}}
	return Source{Client: client, Exec: ex, Namespace: "kube-system", Release: "aliasip", Parallel: 2}, ex
}

// TestReleaseUnverifiedWhenTheOwnerIsUnread: a leak whose owner the new
// check could not read is not "no longer leaked": release says it could
// not verify it, touches nothing of it, and exits 3 (not 0, which a script
// takes for "nothing left").
func TestReleaseUnverifiedWhenTheOwnerIsUnread(t *testing.T) {
	src, ex := releaseCluster(t)
	report := Report{Findings: []Finding{
		{Kind: KindAliasLeak, Class: ClassLeak, Instance: "p/z/ghost", CIDR: "10.0.7.0/24", Message: "ghost"},
		{Kind: KindAllocationLeak, Class: ClassLeak, Node: "a", IP: "10.0.1.9", Namespace: "default", Pod: "gone", ContainerID: "c9", IfName: "eth0", Message: "gone"},
	}}
	var out bytes.Buffer
	code, err := Release(context.Background(), src, report, 0, false, &out)
	if err != nil || code != ExitIncomplete {
		t.Fatalf("exit %d (%v), want %d:\n%s", code, err, ExitIncomplete, out.String())
	}
	if !strings.Contains(out.String(), "released  ghost") || !strings.Contains(out.String(), "unverified gone: its owner could not be read (exec in pod agent-a: command terminated") {
		t.Errorf("output:\n%s", out.String())
	}
	if slices.Contains(ex.calls, "agent-a release-leak") || !slices.Contains(ex.calls, "ctrl-0 release-alias") {
		t.Errorf("calls %v", ex.calls)
	}
}

// TestCallPassesTheTimeout: the daemon's admin subcommand gets the exec's
// timeout (its own default, 30s, cut a large cloud's listing short).
func TestCallPassesTheTimeout(t *testing.T) {
	src, ex := releaseCluster(t)
	src.Timeout = 5 * 60e9
	var v adminapi.CloudView
	if err := src.call(context.Background(), target{pod: "ctrl-0", binary: "/aliasip-controller", socket: "/s"}, adminapi.OpCloud, nil, &v); err != nil {
		t.Fatal(err)
	}
	if ex.timeout != "5m0s" {
		t.Fatalf("--timeout %q, want 5m0s", ex.timeout)
	}
}

// TestLeaderOnHostNetwork: the chart's controller runs with hostNetwork,
// so the lease names its node's hostname, not its pod. check asks the
// controller pods on that node and reads the one that answers Ready; the
// standby there is not taken for the leader.
func TestLeaderOnHostNetwork(t *testing.T) {
	src, ex := releaseCluster(t)
	ctx := context.Background()
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
	for _, name := range []string{"aliasip-controller-standby", "aliasip-controller-leader", "aliasip-controller-elsewhere"} {
		node := "node-1"
		if name == "aliasip-controller-elsewhere" {
			node = "a"
		}
		if _, err := src.Client.CoreV1().Pods("kube-system").Create(ctx, controllerPod(name, node), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	ex.answers["aliasip-controller-standby cloud"] = adminapi.CloudView{Ready: false}
	ex.answers["aliasip-controller-leader cloud"] = ex.answers["ctrl-0 cloud"]
	ex.answers["aliasip-controller-elsewhere cloud"] = ex.answers["ctrl-0 cloud"]
	snap, err := src.Read(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if snap.Cloud == nil || !snap.Cloud.Ready || snap.leader == nil || snap.leader.pod != "aliasip-controller-leader" {
		t.Fatalf("cloud %+v from %+v (unread: %v; calls %v)", snap.Cloud, snap.leader, snap.Unread, ex.calls)
	}
	if slices.Contains(ex.calls, "aliasip-controller-elsewhere cloud") {
		t.Errorf("asked a controller on another node: %v", ex.calls)
	}
}
