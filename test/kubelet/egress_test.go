package kubelet

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/aliasip/aliasip/test/framework"
)

// The outside host of hack/cluster.sh: beyond the VPC's router on RFC
// 2544's 198.18.0.0/15, routing back only to the node subnet.
const (
	outsideIP    = "198.18.0.10"
	outsideURL   = "http://" + outsideIP + "/"
	outsideNetNS = "/run/netns/aliasip-outside"
	masqCM       = "ip-masq-agent" // the chart's egress.configMapName
)

// An IPv4 peer, or an IPv6 one in brackets (net/http RemoteAddr).
var seenFrom = regexp.MustCompile(`\(seen from \[?([0-9a-f.:]+?)\]?:[0-9]+\)`)

// execNetcheck runs netcheck in a running netcheck pod, as kubectl exec.
func execNetcheck(e *clusterEnv, pod string, args ...string) (string, error) {
	out, err := exec.Command(e.tool("kubectl"), append([]string{"--kubeconfig", e.Kubeconfig, "exec", "-n", testNS, pod, "--", "/netcheck"}, args...)...).CombinedOutput()
	return string(out), err
}

// peerOf GETs url from pod and returns the address the server saw.
func peerOf(e *clusterEnv, pod, url string) (string, error) {
	out, err := execNetcheck(e, pod, "get", "--retries", "0", url)
	if err != nil {
		return "", fmt.Errorf("%v: %s", err, out)
	}
	m := seenFrom.FindStringSubmatch(out)
	if m == nil {
		return "", fmt.Errorf("no peer in %q", out)
	}
	return m[1], nil
}

func nodeInternalIP(t *testing.T, ctx context.Context, e *clusterEnv, node string) string {
	t.Helper()
	n, err := e.Client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range n.Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			return a.Address
		}
	}
	t.Fatalf("node %s has no InternalIP", node)
	return ""
}

// nodeNFT is `nft list table ip aliasip` in the node's network namespace
// ("" when there is no such table).
func nodeNFT(t *testing.T, node string) string { return nodeNFTOf(t, node, "ip") }

// nodeNFTOf is `nft list table FAMILY aliasip` in the node's network
// namespace ("" when there is no such table).
func nodeNFTOf(t *testing.T, node, family string) string {
	t.Helper()
	var out []byte
	var err error
	nodeNetNS(t, node).Do(func(ns.NetNS) error {
		runtime.LockOSThread()
		out, err = exec.Command("nft", "list", "table", family, "aliasip").CombinedOutput()
		return nil
	})
	if err != nil {
		return ""
	}
	return string(out)
}

// outsideSaw asks the outside host which sources sent token over UDP.
func outsideSaw(t *testing.T, token string) []string {
	t.Helper()
	o, err := ns.GetNS(outsideNetNS)
	if err != nil {
		t.Fatalf("the outside host's namespace: %v", err)
	}
	defer o.Close()
	resp, err := httpClientIn(o, 3*time.Second).Get(outsideURL + "seen?token=" + token)
	if err != nil {
		t.Fatalf("asking the outside host: %v", err)
	}
	defer resp.Body.Close()
	var s struct {
		Sources []string `json:"sources"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		t.Fatal(err)
	}
	return s.Sources
}

// agentMetricOn scrapes the agent of node (host network, :9982).
func agentMetricOn(t *testing.T, ctx context.Context, e *clusterEnv, node, name string) float64 {
	t.Helper()
	resp, err := httpClientIn(nodeNetNS(t, node), 3*time.Second).Get("http://" + nodeInternalIP(t, ctx, e, node) + ":9982/metrics")
	if err != nil {
		t.Fatalf("agent metrics of %s: %v", node, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	v, _ := framework.ScrapeMetric(string(b), name, "")
	return v
}

func agentPods(t *testing.T, ctx context.Context, e *clusterEnv) map[string]string {
	t.Helper()
	list, err := e.Client.CoreV1().Pods(releaseNS).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=agent"})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, p := range list.Items {
		restarts := int32(0)
		for _, c := range p.Status.ContainerStatuses {
			restarts += c.RestartCount
		}
		out[p.Spec.NodeName] = fmt.Sprintf("%s/%d", p.UID, restarts)
	}
	return out
}

// TestEgress: pods on every node of both pools reach the outside host as
// their node; pod to pod across nodes and pod to a ClusterIP Service keep
// the pod's own address; the outside's range added to the ip-masq-agent
// ConfigMap changes what the outside sees without restarting an agent (the
// pod's own address arrives, no reply comes back), and removing it brings
// masquerade back; a flushed table is restored.
func TestEgress(t *testing.T) {
	e, ctx := setup(t, 10*time.Minute)
	byNode := ensureProbes(t, ctx, e)
	// 1. The outside sees each node's address.
	for _, node := range e.Nodes {
		p := byNode[node]
		want := nodeInternalIP(t, ctx, e, node)
		eventually(t, ctx, 30*time.Second, "pod on "+node+" reaches the outside", func() (bool, error) {
			peer, err := peerOf(e, p.Name, outsideURL)
			if err != nil {
				return false, nil
			}
			if peer != want {
				return false, fmt.Errorf("the outside saw the pod on %s (%s) as %s; want the node's %s", node, p.Status.PodIP, peer, want)
			}
			return true, nil
		})
	}
	// 2. Pod to pod across nodes (and pools), and through a ClusterIP
	// Service: the pod's own address.
	svc := ensureProbeService(t, ctx, e)
	for i, node := range e.Nodes {
		from, to := byNode[node], byNode[e.Nodes[(i+1)%len(e.Nodes)]]
		if peer, err := peerOf(e, from.Name, fmt.Sprintf("http://%s:8080/", to.Status.PodIP)); err != nil || peer != from.Status.PodIP {
			t.Errorf("%s -> %s across nodes seen as %q (%v); want %s", from.Name, to.Name, peer, err, from.Status.PodIP)
		}
		// A Service just created is answered once kube-proxy on the node
		// has its endpoints.
		eventually(t, ctx, 30*time.Second, from.Name+" -> Service "+svc, func() (bool, error) {
			peer, err := peerOf(e, from.Name, fmt.Sprintf("http://%s/", svc))
			if err != nil {
				return false, nil
			}
			if peer != from.Status.PodIP {
				return false, fmt.Errorf("%s -> Service %s seen as %q; want its own %s", from.Name, svc, peer, from.Status.PodIP)
			}
			return true, nil
		})
	}

	// 3. The outside's range joins nonMasqueradeCIDRs in the ConfigMap.
	before := agentPods(t, ctx, e)
	cms := e.Client.CoreV1().ConfigMaps(releaseNS)
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: masqCM},
		Data: map[string]string{"config": "nonMasqueradeCIDRs:\n  - 198.18.0.0/15\nmasqLinkLocal: false\nresyncInterval: 60s\n"}}
	if _, err := cms.Create(ctx, cm, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cms.Delete(context.Background(), masqCM, metav1.DeleteOptions{}) })
	for _, node := range e.Nodes {
		eventually(t, ctx, 30*time.Second, "198.18.0.0/15 in the table of "+node, func() (bool, error) {
			return strings.Contains(nodeNFT(t, node), "198.18.0.0/15"), nil
		})
	}
	for _, node := range e.Nodes {
		p := byNode[node]
		token := fmt.Sprintf("%s-%d", node, time.Now().UnixNano())
		eventually(t, ctx, 20*time.Second, "a datagram from "+p.Name+" at the outside", func() (bool, error) {
			if out, err := execNetcheck(e, p.Name, "udp", "--count", "3", outsideIP+":9", token); err != nil {
				return false, fmt.Errorf("%v: %s", err, out)
			}
			return len(outsideSaw(t, token)) > 0, nil
		})
		if got := outsideSaw(t, token); len(got) != 1 || got[0] != p.Status.PodIP {
			t.Errorf("with 198.18.0.0/15 not masqueraded the outside saw %v from the pod on %s; want only its own %s", got, node, p.Status.PodIP)
		}
		if out, err := execNetcheck(e, p.Name, "get", "--timeout", "2s", "--retries", "0", outsideURL); err == nil {
			t.Errorf("the pod on %s got an answer from its own address, which the outside cannot route back to: %s", node, out)
		}
	}
	if after := agentPods(t, ctx, e); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("agents restarted for a ConfigMap change: before %v, after %v", before, after)
	}
	// Without the ConfigMap the defaults are back: masqueraded again.
	if err := cms.Delete(ctx, masqCM, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
	for _, node := range e.Nodes {
		eventually(t, ctx, 30*time.Second, "the defaults back on "+node, func() (bool, error) {
			tbl := nodeNFT(t, node)
			return tbl != "" && !strings.Contains(tbl, "198.18.0.0/15"), nil
		})
		want := nodeInternalIP(t, ctx, e, node)
		eventually(t, ctx, 20*time.Second, "the pod on "+node+" masqueraded again", func() (bool, error) {
			peer, err := peerOf(e, byNode[node].Name, outsideURL)
			return err == nil && peer == want, nil
		})
	}

	// 4. A flushed table comes back, counted.
	node := e.Nodes[0]
	good := nodeNFT(t, node)
	repaired := agentMetricOn(t, ctx, e, node, "aliasip_egress_rules_repaired_total")
	err := nodeNetNS(t, node).Do(func(ns.NetNS) error {
		runtime.LockOSThread()
		out, err := exec.Command("nft", "flush", "table", "ip", "aliasip").CombinedOutput()
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, ctx, 30*time.Second, "the flushed table restored on "+node, func() (bool, error) {
		return nodeNFT(t, node) == good && agentMetricOn(t, ctx, e, node, "aliasip_egress_rules_repaired_total") > repaired, nil
	})
	eventually(t, ctx, 30*time.Second, "a Warning EgressRulesRepaired on "+node, func() (bool, error) {
		return framework.HasEvent(ctx, e.Client, node, "Warning", "EgressRulesRepaired")
	})
}

// TestEgressAcrossAgentRollout: a pod's established TCP connection to the
// outside host (HTTP keep-alive, a request every 200 ms) carries on while
// every agent is restarted by a rollout: the table stays in place while no
// agent runs, and the new agent finds it right.
func TestEgressAcrossAgentRollout(t *testing.T) {
	e, ctx := setup(t, 10*time.Minute)
	p := ensureProbes(t, ctx, e)[e.Nodes[0]]
	cmd := exec.CommandContext(ctx, e.tool("kubectl"), "--kubeconfig", e.Kubeconfig, "exec", "-i", "-n", testNS, p.Name, "--", "/netcheck", "hold", outsideURL)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	before := agentPods(t, ctx, e)
	e.kubectl(t, "-n", releaseNS, "rollout", "restart", "daemonset/aliasip-agent")
	e.kubectl(t, "-n", releaseNS, "rollout", "status", "daemonset/aliasip-agent", "--timeout=5m")
	if after := agentPods(t, ctx, e); after[p.Spec.NodeName] == before[p.Spec.NodeName] {
		t.Fatalf("the agent on %s was not replaced (%v)", p.Spec.NodeName, after)
	}
	stdin.Close()
	err = cmd.Wait()
	t.Logf("%s", strings.TrimSpace(out.String()))
	if err != nil || !strings.Contains(out.String(), " 0 failed, 1 connections") {
		t.Errorf("the established connection of %s (on %s) to the outside did not survive the agent rollout: %v", p.Name, p.Spec.NodeName, err)
	}
}

// ensureProbes runs one netcheck server pod pinned to each node (its own,
// not the shared netcheck Deployment, which other tests scale) and returns
// them by node once all are ready.
func ensureProbes(t *testing.T, ctx context.Context, e *clusterEnv) map[string]corev1.Pod {
	t.Helper()
	ensureNamespace(t, ctx, e)
	grace := int64(1)
	for _, node := range e.Nodes {
		c := netcheckContainer(t, "serve")
		c.ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromInt32(8080)}}, PeriodSeconds: 1}
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "egress-" + node, Namespace: testNS, Labels: map[string]string{"app": "egress-probe"}},
			Spec: corev1.PodSpec{
				NodeSelector:                  map[string]string{"kubernetes.io/hostname": node},
				Containers:                    []corev1.Container{c},
				TerminationGracePeriodSeconds: &grace,
			},
		}
		// One of an earlier test may still be terminating: create anew once
		// it is gone.
		eventually(t, ctx, time.Minute, "probe pod "+pod.Name+" created", func() (bool, error) {
			cur, err := e.Client.CoreV1().Pods(testNS).Get(ctx, pod.Name, metav1.GetOptions{})
			switch {
			case apierrors.IsNotFound(err):
				_, err = e.Client.CoreV1().Pods(testNS).Create(ctx, pod, metav1.CreateOptions{})
				return err == nil, nil
			case err != nil:
				return false, nil
			default:
				return cur.DeletionTimestamp == nil, nil
			}
		})
	}
	// Bare pods would hold up a later drain (TestNodeDrainDelete): gone
	// with the test.
	t.Cleanup(func() {
		zero := int64(0)
		e.Client.CoreV1().Pods(testNS).DeleteCollection(context.Background(), metav1.DeleteOptions{GracePeriodSeconds: &zero},
			metav1.ListOptions{LabelSelector: "app=egress-probe"})
	})
	out := map[string]corev1.Pod{}
	eventually(t, ctx, 3*time.Minute, "an egress probe pod ready on every node", func() (bool, error) {
		for _, p := range readyPods(ctx, e, "app=egress-probe") {
			out[p.Spec.NodeName] = p
		}
		return len(out) == len(e.Nodes), nil
	})
	return out
}

// ensureProbeService is a ClusterIP Service in front of the probe pods.
func ensureProbeService(t *testing.T, ctx context.Context, e *clusterEnv) string {
	t.Helper()
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "egress-probe", Namespace: testNS},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "egress-probe"},
			Ports:    []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}},
		},
	}
	if _, err := e.Client.CoreV1().Services(testNS).Create(ctx, svc, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	got, err := e.Client.CoreV1().Services(testNS).Get(ctx, "egress-probe", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return got.Spec.ClusterIP
}

// TestEgressOffByHelm is the documented way to remove the masquerade
// rules, for Cloud NAT set-ups and before an uninstall: helm upgrade with
// egress.masquerade=false rolls the agents, which delete their table on
// every node; pods' traffic then leaves with their own addresses (the
// outside sees them). Turned back on, the tables return.
func TestEgressOffByHelm(t *testing.T) {
	e, ctx := setup(t, 10*time.Minute)
	chart := filepath.Join(framework.RepoRoot(), "charts", "aliasip")
	byNode := ensureProbes(t, ctx, e)
	e.helm(t, "upgrade", "aliasip", chart, "-n", releaseNS, "--reuse-values", "--set", "egress.masquerade=false", "--wait", "--timeout", "4m")
	t.Cleanup(func() {
		e.helm(t, "upgrade", "aliasip", chart, "-n", releaseNS, "--reuse-values", "--set", "egress.masquerade=true", "--wait", "--timeout", "4m")
	})
	e.kubectl(t, "-n", releaseNS, "rollout", "status", "daemonset/aliasip-agent", "--timeout=5m")
	for _, node := range e.Nodes {
		eventually(t, ctx, time.Minute, "no masquerade table on "+node, func() (bool, error) {
			return nodeNFT(t, node) == "", nil
		})
	}
	p := byNode[e.Nodes[0]]
	token := fmt.Sprintf("off-%d", time.Now().UnixNano())
	eventually(t, ctx, 20*time.Second, "a datagram from "+p.Name+" at the outside", func() (bool, error) {
		if out, err := execNetcheck(e, p.Name, "udp", "--count", "3", outsideIP+":9", token); err != nil {
			return false, fmt.Errorf("%v: %s", err, out)
		}
		return len(outsideSaw(t, token)) > 0, nil
	})
	if got := outsideSaw(t, token); got[0] != p.Status.PodIP {
		t.Errorf("with masquerade off the outside saw %v; want the pod's own %s", got, p.Status.PodIP)
	}
	e.helm(t, "upgrade", "aliasip", chart, "-n", releaseNS, "--reuse-values", "--set", "egress.masquerade=true", "--wait", "--timeout", "4m")
	e.kubectl(t, "-n", releaseNS, "rollout", "status", "daemonset/aliasip-agent", "--timeout=5m")
	for _, node := range e.Nodes {
		eventually(t, ctx, time.Minute, "the masquerade table back on "+node, func() (bool, error) {
			return strings.Contains(nodeNFT(t, node), "masquerade fully-random"), nil
		})
	}
}
