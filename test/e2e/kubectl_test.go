package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/aliasip/aliasip/cloud"
	"github.com/aliasip/aliasip/internal/kubectlplugin"
	"github.com/aliasip/aliasip/node-agent/api"
	"github.com/aliasip/aliasip/node-agent/datapath"
	"github.com/aliasip/aliasip/test/framework"
)

// localExec runs the "kubectl exec" of kubectl aliasip on this machine:
// the daemons here are processes, not containers. The pods' command names
// the image's binary (/aliasip-agent); bins maps it to the built one.
// The kubelet suite (test/kubelet) runs the same commands through the
// real pods/exec of real kubelets and containerd.
type localExec struct {
	bins  map[string]string
	calls []string
}

func (l *localExec) Exec(ctx context.Context, namespace, pod, container string, cmd []string) ([]byte, error) {
	bin, ok := l.bins[cmd[0]]
	if !ok {
		return nil, fmt.Errorf("no binary for %s", cmd[0])
	}
	call := cmd[2:] // after BINARY admin: the flags, then the call and its body
	for len(call) >= 2 && strings.HasPrefix(call[0], "--") {
		call = call[2:]
	}
	l.calls = append(l.calls, namespace+"/"+pod+"/"+container+": "+strings.Join(call, " "))
	var stderr bytes.Buffer
	c := exec.CommandContext(ctx, bin, cmd[1:]...)
	c.Stderr = &stderr
	out, err := c.Output()
	if err != nil {
		return nil, fmt.Errorf("%v: %s", err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// daemonPod creates a Running pod object like the chart's, for a daemon
// that runs here as a process: kubectl aliasip finds its container,
// binary and socket from it. owner is the workload that controls it (its
// controller ownerReference, as the DaemonSet and ReplicaSet controllers
// write it): kubectl aliasip asks only the release's workloads' pods.
func daemonPod(t *testing.T, ctx context.Context, client kubernetes.Interface, name, node, container string, labels map[string]string, owner metav1.OwnerReference, cmd string, args ...string) {
	t.Helper()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: name, Labels: labels, OwnerReferences: []metav1.OwnerReference{owner}},
		Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{
			{Name: container, Image: "aliasip:test", Command: []string{cmd}, Args: args}}},
	}
	created, err := client.CoreV1().Pods("kube-system").Create(ctx, p, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	created.Status.Phase = corev1.PodRunning
	if _, err := client.CoreV1().Pods("kube-system").UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// controllerRef is the controller ownerReference a workload controller
// writes on what it makes.
func controllerRef(kind string, o metav1.Object) metav1.OwnerReference {
	return *metav1.NewControllerRef(o, appsv1.SchemeGroupVersion.WithKind(kind))
}

// The labels the chart's workloads select their pods by (release aliasip).
var (
	agentLabels      = map[string]string{"app.kubernetes.io/instance": "aliasip", "app.kubernetes.io/component": "agent"}
	controllerLabels = map[string]string{"app.kubernetes.io/instance": "aliasip", "app.kubernetes.io/component": "controller"}
)

// releaseWorkloads creates the workloads of release aliasip in kube-system
// as the chart and kube-controller-manager would have them: the agent
// DaemonSet, the controller Deployment and a ReplicaSet it controls. No
// kube-controller-manager runs here, so they make no pods; it returns the
// ownerReferences the agent pods and the controller pod carry.
func releaseWorkloads(t *testing.T, ctx context.Context, client kubernetes.Interface) (agent, controller metav1.OwnerReference) {
	t.Helper()
	template := func(labels map[string]string, name string) corev1.PodTemplateSpec {
		return corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: name, Image: "aliasip:test"}}}}
	}
	ds, err := client.AppsV1().DaemonSets("kube-system").Create(ctx, &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "aliasip-agent", Labels: agentLabels},
		Spec: appsv1.DaemonSetSpec{Selector: &metav1.LabelSelector{MatchLabels: agentLabels},
			Template: template(agentLabels, "agent")},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	d, err := client.AppsV1().Deployments("kube-system").Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "aliasip-controller", Labels: controllerLabels},
		Spec: appsv1.DeploymentSpec{Selector: &metav1.LabelSelector{MatchLabels: controllerLabels},
			Template: template(controllerLabels, "controller")},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// The Deployment controller names its ReplicaSet after the pod
	// template's hash and adds that label to it and its pods' selector.
	rsLabels := map[string]string{"pod-template-hash": "5d8f7c9b6"}
	maps.Copy(rsLabels, controllerLabels)
	rs, err := client.AppsV1().ReplicaSets("kube-system").Create(ctx, &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "aliasip-controller-5d8f7c9b6", Labels: rsLabels,
			OwnerReferences: []metav1.OwnerReference{controllerRef("Deployment", d)}},
		Spec: appsv1.ReplicaSetSpec{Selector: &metav1.LabelSelector{MatchLabels: rsLabels},
			Template: template(rsLabels, "controller")},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return controllerRef("DaemonSet", ds), controllerRef("ReplicaSet", rs)
}

// TestKubectlAliasipCheckAndRelease: check is clean on a consistent
// cluster; it finds an alias leaked on an instance without a Node and the
// address of a pod deleted without CNI DEL, and exits 1; release
// --dry-run changes nothing; release takes back exactly those two; the
// same report again releases nothing; check is clean again. Neither the
// agent nor the controller releases what is not leaked when asked
// directly (a forged or stale report).
func TestKubectlAliasipCheckAndRelease(t *testing.T) {
	sockDir := t.TempDir()
	ctrlSock := filepath.Join(sockDir, "controller.sock")
	lc, ctx := startCluster(t, framework.LocalClusterOptions{
		ClusterCIDR: "10.100.0.0/16",
		// Neither collector may take back the leaks before kubectl does.
		ControllerArgs: []string{"--admin-socket", ctrlSock, "--leak-grace-period", "1h"},
		AgentArgs:      []string{"--pod-gc-grace", "1h"},
	})
	binDir := t.TempDir()
	bins := map[string]string{}
	for name, pkg := range map[string]string{"aliasip-controller": "./controller/cmd/aliasip-controller", "aliasip-agent": "./node-agent/cmd/aliasip-agent"} {
		b, err := framework.BuildBinary(binDir, name, pkg)
		if err != nil {
			t.Fatal(err)
		}
		bins["/"+name] = b
	}
	nodes := addNodes(t, ctx, lc, "ka", 2)
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	// kubectl aliasip asks only the pods of the release's workloads.
	agentOwner, controllerOwner := releaseWorkloads(t, ctx, lc.Client)
	// The controller's lease identity is its hostname and a UUID.
	daemonPod(t, ctx, lc.Client, host, "", "controller", map[string]string{"pod-template-hash": "5d8f7c9b6",
		"app.kubernetes.io/component": "controller", "app.kubernetes.io/instance": "aliasip"},
		controllerOwner, "/aliasip-controller", "--cloud=fake", "--admin-socket="+ctrlSock)
	for _, n := range nodes {
		daemonPod(t, ctx, lc.Client, "aliasip-agent-"+n.Name, n.Name, "agent", agentLabels, agentOwner,
			"/aliasip-agent", "--node-name="+n.Name, "--socket="+n.Socket)
	}
	web1, err := lc.RunPod(ctx, nodes[0], "web-1")
	if err != nil {
		t.Fatal(err)
	}
	defer web1.Close()
	web2, err := lc.RunPod(ctx, nodes[1], "web-2")
	if err != nil {
		t.Fatal(err)
	}
	defer web2.Close()

	ex := &localExec{bins: bins}
	src := kubectlplugin.Source{Client: lc.Client, Exec: ex, Namespace: "kube-system", Release: "aliasip", Parallel: 4, Timeout: time.Minute}
	report := filepath.Join(t.TempDir(), "report.json")
	check := func(want int) kubectlplugin.Report {
		t.Helper()
		var out bytes.Buffer
		code, err := kubectlplugin.RunCheck(ctx, src, 0, "text", report, &out)
		if err != nil || code != want {
			t.Fatalf("check: exit %d (%v), want %d:\n%s", code, err, want, out.String())
		}
		var r kubectlplugin.Report
		b, _ := os.ReadFile(report)
		if err := json.Unmarshal(b, &r); err != nil {
			t.Fatal(err)
		}
		return r
	}
	// The controller rebuilt and every node holds its alias: clean.
	if err := framework.Eventually(ctx, time.Minute, func() (bool, error) {
		var out bytes.Buffer
		code, err := kubectlplugin.RunCheck(ctx, src, 0, "text", "", &out)
		return err == nil && code == kubectlplugin.ExitClean, nil
	}); err != nil {
		check(kubectlplugin.ExitClean) // fails with the output
	}
	if !slices.ContainsFunc(ex.calls, func(c string) bool { return strings.HasSuffix(c, "/controller: cloud") }) ||
		!slices.ContainsFunc(ex.calls, func(c string) bool { return strings.HasSuffix(c, "aliasip-agent-ka-2/agent: list") }) {
		t.Fatalf("check did not read the controller and every agent through exec: %v", ex.calls)
	}

	// Leak an alias: a VM without a Node that carries a block of ours.
	leaked := netip.MustParsePrefix("10.100.200.0/24")
	if err := lc.Cloud.RegisterInstance("ghost-vm"); err != nil {
		t.Fatal(err)
	}
	ghost := cloud.InstanceRef{Name: "ghost-vm"}
	if err := lc.Cloud.AddAlias(ctx, ghost, cloud.AliasRange{CIDR: leaked, RangeName: "pods"}); err != nil {
		t.Fatal(err)
	}
	// Leak an address: the pod is deleted and the runtime removes its
	// sandbox (its network namespace), but its DEL never comes. While the
	// namespace lived, its host veth named the container and the agent
	// would keep the address whatever the API said.
	if err := lc.Client.CoreV1().Pods("default").Delete(ctx, "web-1", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	web1.Close()
	// The kernel destroys the namespace's veths once it is freed, which it
	// does asynchronously: release needs the host veth gone.
	veth := datapath.HostVethName("default", "web-1")
	if err := framework.Eventually(ctx, 30*time.Second, func() (bool, error) {
		present := true
		err := nodes[0].NS.Do(func(ns.NetNS) error {
			_, err := netlink.LinkByName(veth)
			var notFound netlink.LinkNotFoundError
			if errors.As(err, &notFound) {
				present = false
				return nil
			}
			return err
		})
		return !present, err
	}); err != nil {
		t.Fatalf("host veth %s of the removed sandbox is still on %s: %v", veth, nodes[0].Name, err)
	}
	r := check(kubectlplugin.ExitFindings)
	var got []string
	for _, f := range r.Findings {
		got = append(got, f.Kind+" "+f.Instance+f.Node+" "+f.CIDR+f.IP)
	}
	want := []string{"alias-leak ghost-vm " + leaked.String(), "allocation-leak ka-1 " + web1.IP.String()}
	if !slices.Equal(got, want) {
		t.Fatalf("findings %q, want %q", got, want)
	}

	var out bytes.Buffer
	if code, err := kubectlplugin.Release(ctx, src, r, 0, true, &out); err != nil || code != kubectlplugin.ExitClean {
		t.Fatalf("release --dry-run: exit %d (%v)\n%s", code, err, out.String())
	}
	if aliases, _ := lc.Cloud.Aliases(ctx, ghost); len(aliases) != 1 || len(agentList(t, ctx, nodes[0]).Allocations) != 1 {
		t.Fatalf("--dry-run released something:\n%s", out.String())
	}

	out.Reset()
	if code, err := kubectlplugin.Release(ctx, src, r, 0, false, &out); err != nil || code != kubectlplugin.ExitClean {
		t.Fatalf("release: exit %d (%v)\n%s", code, err, out.String())
	}
	if n := strings.Count(out.String(), "released  "); n != 2 {
		t.Fatalf("release released %d leaks, want 2:\n%s", n, out.String())
	}
	if aliases, _ := lc.Cloud.Aliases(ctx, ghost); len(aliases) != 0 {
		t.Errorf("the leaked alias is still on ghost-vm: %v", aliases)
	}
	if l := agentList(t, ctx, nodes[0]); len(l.Allocations) != 0 {
		t.Errorf("the leaked address is still allocated: %+v", l.Allocations)
	}
	// The other node's pod kept its address and its alias.
	if l := agentList(t, ctx, nodes[1]); len(l.Allocations) != 1 || l.Allocations[0].IP != web2.IP.String() {
		t.Errorf("the live pod's allocation changed: %+v", l.Allocations)
	}

	// The same report again: nothing is leaked any more, nothing released.
	out.Reset()
	if code, err := kubectlplugin.Release(ctx, src, r, 0, false, &out); err != nil || code != kubectlplugin.ExitClean ||
		strings.Count(out.String(), "no longer leaked") != 2 {
		t.Fatalf("second release: exit %d (%v)\n%s", code, err, out.String())
	}
	check(kubectlplugin.ExitClean)

	// A forged report cannot get a live pod's address or a Node's alias
	// released: the owners check again.
	live := agentList(t, ctx, nodes[1]).Allocations[0]
	var res api.LeakResult
	admin(t, bins["/aliasip-agent"], nodes[1].Socket, "release-leak",
		fmt.Sprintf(`{"containerID":%q,"ifName":%q,"ip":%q}`, live.ContainerID, live.IfName, live.IP), &res)
	if res.Released || !strings.Contains(res.Reason, "still holds it") {
		t.Errorf("agent released a live pod's address on request: %+v", res)
	}
	var ares struct {
		Released bool
		Reason   string
	}
	admin(t, bins["/aliasip-controller"], ctrlSock, "release-alias",
		fmt.Sprintf(`{"instance":%q,"cidr":%q}`, nodes[1].Name, lc.PodCIDR(ctx, nodes[1])), &ares)
	if ares.Released || !strings.Contains(ares.Reason, "Node "+nodes[1].Name) {
		t.Errorf("controller released a Node's alias on request: %+v", ares)
	}
	if l := agentList(t, ctx, nodes[1]); len(l.Allocations) != 1 {
		t.Errorf("allocations of the live node: %+v", l.Allocations)
	}
	check(kubectlplugin.ExitClean)
}

// admin runs a daemon's admin subcommand and decodes its answer.
func admin(t *testing.T, bin, socket, op, body string, out any) {
	t.Helper()
	b, err := exec.Command(bin, "admin", "--socket", socket, op, body).Output()
	if err != nil {
		t.Fatalf("%s admin %s: %v", filepath.Base(bin), op, err)
	}
	if err := json.Unmarshal(b, out); err != nil {
		t.Fatalf("%s admin %s answered %q: %v", filepath.Base(bin), op, b, err)
	}
}

func agentList(t *testing.T, ctx context.Context, n *framework.Node) api.Allocations {
	t.Helper()
	var out api.Allocations
	if err := api.NewClient(n.Socket, 10*time.Second).Call(ctx, api.OpList, nil, &out); err != nil {
		t.Fatal(err)
	}
	return out
}
