package kubelet

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/aliasip/aliasip/node-agent/ipam"
	"github.com/aliasip/aliasip/test/framework"
)

const (
	testNS       = "aliasip-e2e"
	netcheckName = "netcheck"
	releaseNS    = "kube-system"
)

func (e *clusterEnv) tool(name string) string {
	return filepath.Join(framework.CacheDir(), "bin", name)
}

// kubectl runs kubectl against the cluster and returns its output.
func (e *clusterEnv) kubectl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(e.tool("kubectl"), append([]string{"--kubeconfig", e.Kubeconfig}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// helm runs helm against the cluster.
func (e *clusterEnv) helm(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(e.tool("helm"), append([]string{"--kubeconfig", e.Kubeconfig}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// chartInstallArgs is the README's kind section's helm install command.
func chartInstallArgs() []string {
	return []string{"install", "aliasip", filepath.Join(framework.RepoRoot(), "charts", "aliasip"), "-n", releaseNS,
		"--set", "cloud=fake", "--set", "clusterCIDR=10.244.0.0/16", "--set", "image.pullPolicy=Never",
		// Dual-stack, as hack/cluster.sh installs it.
		"--set", "ipv6.enabled=true", "--set", "ipv6.range=fd00:10:244::/64"}
}

func eventually(t *testing.T, ctx context.Context, timeout time.Duration, what string, cond func() (bool, error)) {
	t.Helper()
	if err := framework.Eventually(ctx, timeout, cond); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func imageTag(t *testing.T) string {
	v, err := chartAppVersion(framework.RepoRoot())
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func ensureNamespace(t *testing.T, ctx context.Context, e *clusterEnv) {
	t.Helper()
	_, err := e.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: testNS}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	// The namespace's default ServiceAccount comes from kube-controller-manager.
	eventually(t, ctx, time.Minute, "default ServiceAccount", func() (bool, error) {
		_, err := e.Client.CoreV1().ServiceAccounts(testNS).Get(ctx, "default", metav1.GetOptions{})
		return err == nil, nil
	})
}

func netcheckContainer(t *testing.T, args ...string) corev1.Container {
	return corev1.Container{
		Name: "netcheck", Image: "aliasip-netcheck:" + imageTag(t), ImagePullPolicy: corev1.PullNever,
		Args: args,
		Env: []corev1.EnvVar{
			{Name: "POD_IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}},
			{Name: "NODE_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}},
		},
	}
}

// ensureNetcheck creates (or scales) the netcheck Deployment, spread evenly
// over the nodes, and waits until every replica is ready.
func ensureNetcheck(t *testing.T, ctx context.Context, e *clusterEnv, replicas int32) []corev1.Pod {
	t.Helper()
	ensureNamespace(t, ctx, e)
	labels := map[string]string{"app": netcheckName}
	c := netcheckContainer(t, "serve")
	c.Ports = []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}
	// The kubelet probes the pod from the node: the host route to its /32.
	c.ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromInt32(8080)}}, PeriodSeconds: 1}
	grace := int64(2)
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: netcheckName, Namespace: testNS},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					Containers:                    []corev1.Container{c},
					TerminationGracePeriodSeconds: &grace,
					TopologySpreadConstraints: []corev1.TopologySpreadConstraint{{
						MaxSkew: 1, TopologyKey: "kubernetes.io/hostname", WhenUnsatisfiable: corev1.DoNotSchedule,
						LabelSelector: &metav1.LabelSelector{MatchLabels: labels},
					}},
				},
			},
		},
	}
	_, err := e.Client.AppsV1().Deployments(testNS).Create(ctx, d, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		var cur *appsv1.Deployment
		if cur, err = e.Client.AppsV1().Deployments(testNS).Get(ctx, netcheckName, metav1.GetOptions{}); err == nil && *cur.Spec.Replicas != replicas {
			cur.Spec.Replicas = &replicas
			_, err = e.Client.AppsV1().Deployments(testNS).Update(ctx, cur, metav1.UpdateOptions{})
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	var pods []corev1.Pod
	eventually(t, ctx, 3*time.Minute, fmt.Sprintf("%d netcheck pods ready", replicas), func() (bool, error) {
		pods = readyPods(ctx, e, "app="+netcheckName)
		all, _ := e.Client.CoreV1().Pods(testNS).List(ctx, metav1.ListOptions{LabelSelector: "app=" + netcheckName})
		return len(pods) == int(replicas) && len(all.Items) == int(replicas), nil
	})
	return pods
}

// readyPods lists the ready, not terminating pods matching selector.
func readyPods(ctx context.Context, e *clusterEnv, selector string) []corev1.Pod {
	list, err := e.Client.CoreV1().Pods(testNS).List(ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		return nil
	}
	var out []corev1.Pod
	for _, p := range list.Items {
		if p.DeletionTimestamp != nil || p.Status.PodIP == "" {
			continue
		}
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
				out = append(out, p)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func podURLs(pods []corev1.Pod) []string {
	var urls []string
	for _, p := range pods {
		urls = append(urls, fmt.Sprintf("http://%s:8080/", p.Status.PodIP))
	}
	return urls
}

// runJobOn runs netcheck with args in a Job pinned to node and waits for it
// to finish; a failed Job fails the test with the pod's log.
func runJobOn(t *testing.T, ctx context.Context, e *clusterEnv, node, name string, args ...string) string {
	t.Helper()
	// A Job of that name from an earlier run goes first.
	deleteJob(ctx, e, name)
	eventually(t, ctx, time.Minute, "old job "+name+" gone", func() (bool, error) {
		_, err := e.Client.BatchV1().Jobs(testNS).Get(ctx, name, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	zero := int32(0)
	deadline := int64(180)
	job := &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: testNS},
		Spec: batchv1.JobSpec{
			BackoffLimit: &zero, ActiveDeadlineSeconds: &deadline,
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"job": name}},
				Spec: corev1.PodSpec{
					RestartPolicy: corev1.RestartPolicyNever,
					NodeSelector:  map[string]string{"kubernetes.io/hostname": node},
					Containers:    []corev1.Container{netcheckContainer(t, args...)},
				},
			},
		},
	}
	if _, err := e.Client.BatchV1().Jobs(testNS).Create(ctx, job, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var done *batchv1.Job
	eventually(t, ctx, 3*time.Minute, "job "+name+" to finish", func() (bool, error) {
		j, err := e.Client.BatchV1().Jobs(testNS).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		done = j
		return j.Status.Succeeded > 0 || j.Status.Failed > 0, nil
	})
	logs := jobLogs(ctx, e, name)
	if done.Status.Succeeded == 0 {
		t.Fatalf("job %s on %s failed:\n%s", name, node, logs)
	}
	return logs
}

func jobLogs(ctx context.Context, e *clusterEnv, job string) string {
	pods, err := e.Client.CoreV1().Pods(testNS).List(ctx, metav1.ListOptions{LabelSelector: "job=" + job})
	if err != nil || len(pods.Items) == 0 {
		return fmt.Sprintf("(no pod: %v)", err)
	}
	var b strings.Builder
	for _, p := range pods.Items {
		fmt.Fprintf(&b, "pod %s (%s, IP %s, node %s):\n", p.Name, p.Status.Phase, p.Status.PodIP, p.Spec.NodeName)
		rc, err := e.Client.CoreV1().Pods(testNS).GetLogs(p.Name, &corev1.PodLogOptions{}).Stream(ctx)
		if err != nil {
			fmt.Fprintf(&b, "(logs: %v)\n", err)
			continue
		}
		io.Copy(&b, rc)
		rc.Close()
	}
	return b.String()
}

func deleteJob(ctx context.Context, e *clusterEnv, name string) {
	bg := metav1.DeletePropagationBackground
	e.Client.BatchV1().Jobs(testNS).Delete(ctx, name, metav1.DeleteOptions{PropagationPolicy: &bg})
}

// nodePodCIDR returns the node's podCIDR from the API.
func nodePodCIDR(t *testing.T, ctx context.Context, e *clusterEnv, node string) netip.Prefix {
	t.Helper()
	n, err := e.Client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p, err := netip.ParsePrefix(n.Spec.PodCIDR)
	if err != nil {
		t.Fatalf("node %s podCIDR %q: %v", node, n.Spec.PodCIDR, err)
	}
	return p
}

// blockSet is the IPv4 blocks a node serves pods from.
type blockSet []netip.Prefix

// Contains reports whether one of the blocks holds ip.
func (s blockSet) Contains(ip netip.Addr) bool {
	return slices.ContainsFunc(s, func(p netip.Prefix) bool { return p.Contains(ip) })
}

func (s blockSet) String() string { return fmt.Sprint([]netip.Prefix(s)) }

// nodeBlocks returns the node's IPv4 blocks: its podCIDR and, on a node
// of a growable range (pool-g), the extra blocks its NodeBlocks status
// grants, draining ones included (they may still hold pods).
func nodeBlocks(t *testing.T, ctx context.Context, e *clusterEnv, node string) blockSet {
	t.Helper()
	out := blockSet{nodePodCIDR(t, ctx, e, node)}
	nb, err := e.Ranges.AliasipV1alpha1().NodeBlocks().Get(ctx, node, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return out
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range nb.Status.Blocks {
		p, err := netip.ParsePrefix(b.CIDR)
		if err != nil {
			t.Fatalf("NodeBlocks %s grants %q: %v", node, b.CIDR, err)
		}
		out = append(out, p)
	}
	return out
}

// nodeNetNS opens a node's network namespace (made by hack/cluster.sh).
func nodeNetNS(t *testing.T, node string) ns.NetNS {
	t.Helper()
	n, err := ns.GetNS("/run/netns/aliasip-" + node)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// httpClientIn returns an HTTP client whose connections are made from
// inside netns (the socket belongs to the namespace it was created in).
func httpClientIn(netns ns.NetNS, timeout time.Duration) *http.Client {
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			DisableKeepAlives: true,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				var c net.Conn
				err := netns.Do(func(ns.NetNS) error {
					var err error
					c, err = (&net.Dialer{Timeout: timeout}).DialContext(ctx, network, addr)
					return err
				})
				return c, err
			},
		},
	}
}

// nodeDataPath is what one node's host holds for its pods: the agent's
// allocations (from its state file), the /32 routes and the ali* veths.
type nodeDataPath struct {
	Allocations map[string]int // pod IP -> allocations holding it
	Routes      map[string]int // pod IP -> /32 routes to it
	Veths       int
}

func readDataPath(t *testing.T, e *clusterEnv, node string, blocks blockSet) nodeDataPath {
	t.Helper()
	dp := nodeDataPath{Allocations: map[string]int{}, Routes: map[string]int{}}
	// The node's /var/lib/aliasip is a private bind mount of this directory.
	// Snapshot and journal, as the agent would read them on restart.
	allocs, err := ipam.ReadAllocations(filepath.Join(e.Dir, "nodes", node, "fs", "var", "lib", "aliasip", "ipam.json"))
	if err != nil {
		t.Fatalf("agent state of %s: %v", node, err)
	}
	for _, a := range allocs {
		dp.Allocations[a.IP.String()]++
	}
	err = nodeNetNS(t, node).Do(func(ns.NetNS) error {
		routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		for _, r := range routes {
			if r.Dst == nil {
				continue
			}
			if ones, _ := r.Dst.Mask.Size(); ones != 32 {
				continue
			}
			ip, _ := netip.AddrFromSlice(r.Dst.IP.To4())
			if blocks.Contains(ip) {
				dp.Routes[ip.String()]++
			}
		}
		links, err := netlink.LinkList()
		if err != nil {
			return err
		}
		for _, l := range links {
			if strings.HasPrefix(l.Attrs().Name, "ali") {
				dp.Veths++
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return dp
}

// podNetworkPodsOn lists the running pods on node that have a pod-network
// address (not hostNetwork), in every namespace.
func podNetworkPodsOn(ctx context.Context, e *clusterEnv, node string) ([]corev1.Pod, error) {
	list, err := e.Client.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + node})
	if err != nil {
		return nil, err
	}
	var out []corev1.Pod
	for _, p := range list.Items {
		if p.Spec.HostNetwork || p.Status.Phase != corev1.PodRunning {
			continue
		}
		out = append(out, p)
	}
	return out, nil
}

// checkOnePerPod waits until, on every node, each running pod has exactly
// one allocation, one /32 route and one veth, and nothing else has any.
func checkOnePerPod(t *testing.T, ctx context.Context, e *clusterEnv, nodes []string) {
	t.Helper()
	for _, node := range nodes {
		var last string
		err := framework.Eventually(ctx, time.Minute, func() (bool, error) {
			pods, err := podNetworkPodsOn(ctx, e, node)
			if err != nil {
				return false, nil
			}
			dp := readDataPath(t, e, node, nodeBlocks(t, ctx, e, node))
			want := map[string]int{}
			for _, p := range pods {
				if p.Status.PodIP == "" {
					last = "pod " + p.Name + " has no IP yet"
					return false, nil
				}
				want[p.Status.PodIP] = 1
			}
			last = fmt.Sprintf("pods %v; allocations %v; /32 routes %v; %d ali* veths", want, dp.Allocations, dp.Routes, dp.Veths)
			return fmt.Sprint(want) == fmt.Sprint(dp.Allocations) && fmt.Sprint(want) == fmt.Sprint(dp.Routes) && dp.Veths == len(want), nil
		})
		if err != nil {
			t.Errorf("%s: not one allocation, route and veth per pod: %s", node, last)
		}
	}
}
