package kubectlplugin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/remotecommand"

	"github.com/aliasip/aliasip/controller/adminapi"
	"github.com/aliasip/aliasip/internal/sockrpc"
	"github.com/aliasip/aliasip/node-agent/api"
)

// Execer runs a command in a pod's container and returns its stdout.
type Execer interface {
	Exec(ctx context.Context, namespace, pod, container string, cmd []string) ([]byte, error)
}

// PodExec is kubectl exec: the pods/exec subresource over WebSocket, with
// SPDY when the server cannot upgrade to it — the fallback kubectl exec
// itself makes (kubernetes/kubectl, pkg/cmd/exec/exec.go, createExecutor;
// client-go tools/remotecommand/fallback.go).
type PodExec struct {
	Config *rest.Config
	Client kubernetes.Interface
}

// Exec implements Execer.
func (e PodExec) Exec(ctx context.Context, namespace, pod, container string, cmd []string) ([]byte, error) {
	req := e.Client.CoreV1().RESTClient().Post().Resource("pods").Namespace(namespace).Name(pod).SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{Container: container, Command: cmd, Stdout: true, Stderr: true}, scheme.ParameterCodec)
	spdy, err := remotecommand.NewSPDYExecutor(e.Config, "POST", req.URL())
	if err != nil {
		return nil, err
	}
	ws, err := remotecommand.NewWebSocketExecutor(e.Config, "GET", req.URL().String())
	if err != nil {
		return nil, err
	}
	ex, err := remotecommand.NewFallbackExecutor(ws, spdy, func(err error) bool {
		return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
	})
	if err != nil {
		return nil, err
	}
	// When ctx ends, StreamWithContext returns while its stream copiers
	// may still write: the buffers are read under their lock.
	var stdout, stderr lockedBuffer
	if err := ex.StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: &stdout, Stderr: &stderr}); err != nil {
		if msg := strings.TrimSpace(string(stderr.Bytes())); msg != "" {
			return nil, fmt.Errorf("%s: %w", msg, err)
		}
		return nil, err
	}
	return stdout.Bytes(), nil
}

// lockedBuffer is a bytes.Buffer safe for one writer and one reader.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// Bytes returns a copy of what was written so far.
func (b *lockedBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.buf.Bytes())
}

// Source is where check reads from: the cluster (client), the release's
// namespace and name (as helm installed it), and how to run commands in
// its pods.
type Source struct {
	Client kubernetes.Interface
	// Dynamic reads the NodeBlocks (growable ranges' extra blocks); nil:
	// not read.
	Dynamic   dynamic.Interface
	Exec      Execer
	Namespace string
	Release   string
	// Parallel is how many agents are read at once.
	Parallel int
	// Timeout bounds each exec.
	Timeout time.Duration
}

// target is a daemon's pod: the container to exec in, its binary and the
// socket its admin subcommand should call.
type target struct {
	pod, container, binary, socket string
	current                        bool // the pod is not terminating
}

// targetIn finds the container running binary (by its command) in pod and
// the value of socketFlag in its arguments.
func targetIn(pod *corev1.Pod, binary, socketFlag string) (target, error) {
	for _, c := range pod.Spec.Containers {
		if len(c.Command) == 0 || !strings.HasSuffix(c.Command[0], binary) {
			continue
		}
		t := target{pod: pod.Name, container: c.Name, binary: c.Command[0]}
		for _, a := range c.Args {
			if v, ok := strings.CutPrefix(a, "--"+socketFlag+"="); ok {
				t.socket = v
			}
		}
		if t.socket == "" {
			return t, fmt.Errorf("pod %s: container %s runs without --%s (a release before kubectl aliasip support?)", pod.Name, c.Name, socketFlag)
		}
		return t, nil
	}
	return target{}, fmt.Errorf("pod %s runs no %s container", pod.Name, binary)
}

// call runs "BINARY admin --socket S OP [BODY]" in t and decodes stdout.
func (s Source) call(ctx context.Context, t target, op sockrpc.Op, in, out any) error {
	// The daemon's own call timeout is this exec's: a large cloud's
	// listing may take longer than the admin subcommand's default.
	cmd := []string{t.binary, "admin", "--socket", t.socket, "--timeout", s.timeout().String(), string(op)}
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		cmd = append(cmd, string(b))
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout())
	defer cancel()
	stdout, err := s.Exec.Exec(ctx, s.Namespace, t.pod, t.container, cmd)
	if err != nil {
		return fmt.Errorf("exec in pod %s: %w", t.pod, err)
	}
	if err := json.Unmarshal(stdout, out); err != nil {
		return fmt.Errorf("pod %s answered %s with %q: %w", t.pod, op, bytes.TrimSpace(stdout), err)
	}
	return nil
}

func (s Source) timeout() time.Duration {
	if s.Timeout <= 0 {
		return 2 * time.Minute
	}
	return s.Timeout
}

// leader finds the controller that holds the lease and reads its view:
// the chart runs it with --leader-elect-name=RELEASE-controller in the
// release namespace, and its identity is its hostname, "_" and a UUID
// (controller/app/app.go). The chart's controller runs with hostNetwork,
// so that hostname is its node's, not its pod's name: then each controller
// pod of the release on that node is asked, and the one that answers
// Ready (a standby answers not ready) is the leader. Only pods of the
// release's controller Deployment count (see daemonPod): a pod named like
// the holder, or labelled like the controller, is not asked otherwise.
func (s Source) leader(ctx context.Context) (target, adminapi.CloudView, error) {
	var v adminapi.CloudView
	name := s.Release + "-controller"
	lease, err := s.Client.CoordinationV1().Leases(s.Namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return target{}, v, fmt.Errorf("controller lease %s/%s: %w", s.Namespace, name, err)
	}
	id := holder(lease)
	i := strings.LastIndex(id, "_")
	if i <= 0 {
		return target{}, v, fmt.Errorf("controller lease %s/%s has no holder (%q): no controller leads", s.Namespace, name, id)
	}
	host := id[:i]
	owned, err := s.controllerPods(ctx)
	if err != nil {
		return target{}, v, err
	}
	var pods []*corev1.Pod
	for _, p := range owned {
		if p.Name == host {
			pods = []*corev1.Pod{p}
			break
		}
		if p.Status.Phase == corev1.PodRunning && p.Spec.NodeName != "" && (p.Spec.NodeName == host || s.nodeHostname(ctx, p.Spec.NodeName) == host) {
			pods = append(pods, p)
		}
	}
	if len(pods) == 0 {
		return target{}, v, fmt.Errorf("leading controller %q: no pod of Deployment %s/%s of that name, nor a running one on a node of that hostname", host, s.Namespace, name)
	}
	var errs []error
	var leaders []target
	var view adminapi.CloudView
	for _, p := range pods {
		var v adminapi.CloudView
		t, err := targetIn(p, "aliasip-controller", "admin-socket")
		if err == nil {
			err = s.call(ctx, t, adminapi.OpCloud, nil, &v)
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if v.Ready {
			leaders, view = append(leaders, t), v
			continue
		}
		errs = append(errs, fmt.Errorf("pod %s: not the leader, or its state not rebuilt yet", t.pod))
	}
	switch len(leaders) {
	case 1:
		return leaders[0], view, nil
	case 0:
		return target{}, v, errors.Join(errs...)
	default:
		// One lease, one leader: two that say so cannot both be read.
		var names []string
		for _, t := range leaders {
			names = append(names, t.pod)
		}
		return target{}, v, fmt.Errorf("pods %s all answer as the leading controller: not read", strings.Join(names, ", "))
	}
}

// The release's daemons are the pods its workloads made, not whatever
// carries their labels in the namespace: a pod's labels and name are its
// author's to choose. A workload's pods carry a controller
// ownerReference to it (apps/v1; a Deployment's through its ReplicaSet,
// itself controlled by the Deployment), matched here by UID, so a pod of
// the same labels, made by hand or by another workload, is never asked.
// An author may write ownerReferences too; such a pod is then one the
// DaemonSet controller counts as its own, and it deletes all but the
// oldest daemon pod on a node (kubernetes/kubernetes
// pkg/controller/daemon/daemon_controller.go, podsShouldBeOnNode), while
// check reports a node with two current agent pods as unread rather than
// choose (agents), and two controllers that both answer as the leader as
// well (leader).

// controlledBy reports whether o's controller is the apps/v1 kind with uid.
func controlledBy(o metav1.Object, kind string, uid types.UID) bool {
	ref := metav1.GetControllerOfNoCopy(o)
	return ref != nil && ref.Kind == kind && ref.UID == uid && strings.HasPrefix(ref.APIVersion, appsv1.GroupName+"/")
}

// controllerPods returns the pods of the release's controller Deployment
// (RELEASE-controller): those controlled by a ReplicaSet that the
// Deployment controls.
func (s Source) controllerPods(ctx context.Context) ([]*corev1.Pod, error) {
	name := s.Release + "-controller"
	d, err := s.Client.AppsV1().Deployments(s.Namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("controller Deployment %s/%s: %w", s.Namespace, name, err)
	}
	sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
	if err != nil {
		return nil, fmt.Errorf("controller Deployment %s/%s: %w", s.Namespace, name, err)
	}
	sets, err := s.Client.AppsV1().ReplicaSets(s.Namespace).List(ctx, metav1.ListOptions{LabelSelector: sel.String()})
	if err != nil {
		return nil, fmt.Errorf("list controller ReplicaSets: %w", err)
	}
	ours := map[types.UID]bool{}
	for i := range sets.Items {
		if controlledBy(&sets.Items[i], "Deployment", d.UID) {
			ours[sets.Items[i].UID] = true
		}
	}
	list, err := s.Client.CoreV1().Pods(s.Namespace).List(ctx, metav1.ListOptions{LabelSelector: sel.String()})
	if err != nil {
		return nil, fmt.Errorf("list controller pods: %w", err)
	}
	var out []*corev1.Pod
	for i := range list.Items {
		p := &list.Items[i]
		if ref := metav1.GetControllerOfNoCopy(p); ref != nil && ours[ref.UID] && controlledBy(p, "ReplicaSet", ref.UID) {
			out = append(out, p)
		}
	}
	return out, nil
}

// nodeHostname returns the Hostname address of a Node ("" when unknown).
func (s Source) nodeHostname(ctx context.Context, name string) string {
	n, err := s.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return ""
	}
	for _, a := range n.Status.Addresses {
		if a.Type == corev1.NodeHostName {
			return a.Address
		}
	}
	return ""
}

func holder(l *coordinationv1.Lease) string {
	if l.Spec.HolderIdentity == nil {
		return ""
	}
	return *l.Spec.HolderIdentity
}

// agents finds each node's agent: the pod of the release's agent
// DaemonSet (RELEASE-agent) running on that node, by its controller
// ownerReference (see controlledBy). A node where two such pods run and
// neither is terminating is reported in bad, not read: one of them is not
// the DaemonSet's (it runs one agent a node, and the agent's state
// directory admits one).
func (s Source) agents(ctx context.Context) (map[string]target, map[string]string, error) {
	name := s.Release + "-agent"
	ds, err := s.Client.AppsV1().DaemonSets(s.Namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, nil, fmt.Errorf("agent DaemonSet %s/%s: %w", s.Namespace, name, err)
	}
	sel, err := metav1.LabelSelectorAsSelector(ds.Spec.Selector)
	if err != nil {
		return nil, nil, fmt.Errorf("agent DaemonSet %s/%s: %w", s.Namespace, name, err)
	}
	pods, err := s.Client.CoreV1().Pods(s.Namespace).List(ctx, metav1.ListOptions{LabelSelector: sel.String()})
	if err != nil {
		return nil, nil, fmt.Errorf("list agent pods: %w", err)
	}
	// Per node, the DaemonSet's running pods: current first.
	byNode := map[string][]*corev1.Pod{}
	for i := range pods.Items {
		p := &pods.Items[i]
		if p.Spec.NodeName == "" || p.Status.Phase != corev1.PodRunning || !controlledBy(p, "DaemonSet", ds.UID) {
			continue
		}
		byNode[p.Spec.NodeName] = append(byNode[p.Spec.NodeName], p)
	}
	out, bad := map[string]target{}, map[string]string{}
	for node, ps := range byNode {
		var current, terminating []*corev1.Pod
		for _, p := range ps {
			if p.DeletionTimestamp == nil {
				current = append(current, p)
			} else {
				terminating = append(terminating, p)
			}
		}
		var p *corev1.Pod
		switch {
		case len(current) > 1:
			var names []string
			for _, c := range current {
				names = append(names, c.Name)
			}
			slices.Sort(names)
			bad[node] = fmt.Sprintf("pods %s all claim to be DaemonSet %s's agent on node %s: not read", strings.Join(names, ", "), name, node)
			continue
		case len(current) == 1:
			p = current[0]
		default:
			// During a rolling update a node may run only the old agent
			// pod, terminating: it still answers.
			p = terminating[0]
		}
		t, err := targetIn(p, "aliasip-agent", "socket")
		if err != nil {
			bad[node] = err.Error()
			continue
		}
		t.current = p.DeletionTimestamp == nil
		out[node] = t
	}
	return out, bad, nil
}

// Read takes a snapshot of the three views. It fails only when the API
// cannot be read; a controller or agent that cannot be read is recorded in
// the snapshot (check then reports itself incomplete).
func (s Source) Read(ctx context.Context, minAge time.Duration) (Snapshot, error) {
	snap := Snapshot{Time: time.Now(), Agents: map[string]*api.Allocations{}, Unread: map[string]string{}, MinAge: minAge}
	// The agents and the controller are read first and the API last: an
	// allocation made meanwhile has its pod in the API's answer, so it is
	// not mistaken for a leak.
	var mu sync.Mutex
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t, v, err := s.leader(ctx)
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			snap.Unread["controller"] = err.Error()
			return
		}
		snap.Cloud, snap.leader = &v, &t
	}()
	targets, bad, err := s.agents(ctx)
	if err != nil {
		wg.Wait()
		return snap, err
	}
	for n, why := range bad {
		snap.Unread[n] = why
	}
	sem := make(chan struct{}, max(s.Parallel, 1))
	for node, t := range targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			var al api.Allocations
			err := s.call(ctx, t, api.OpList, nil, &al)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				snap.Unread[node] = err.Error()
				return
			}
			snap.Agents[node] = &al
		}()
	}
	wg.Wait()
	nodes, err := s.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return snap, fmt.Errorf("list nodes: %w", err)
	}
	snap.Nodes = nodes.Items
	pods, err := s.Client.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return snap, fmt.Errorf("list pods: %w", err)
	}
	snap.Pods = pods.Items
	if s.Dynamic != nil {
		snap.ExtraBlocks = readExtraBlocks(ctx, s.Dynamic, snap.Nodes)
	}
	return snap, nil
}

// nodeBlocksGVR is the NodeBlocks resource (growable PodRanges).
var nodeBlocksGVR = schema.GroupVersionResource{Group: "aliasip.io", Version: "v1alpha1", Resource: "nodeblocks"}

// readExtraBlocks returns each Node's extra blocks as its NodeBlocks
// status (the controller's) records them, from NodeBlocks owned by that
// Node object (or by none); a cluster without the resource has none.
func readExtraBlocks(ctx context.Context, dyn dynamic.Interface, nodes []corev1.Node) map[string][]netip.Prefix {
	list, err := dyn.Resource(nodeBlocksGVR).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil
	}
	uid := map[string]types.UID{}
	for _, n := range nodes {
		uid[n.Name] = n.UID
	}
	out := map[string][]netip.Prefix{}
	for _, u := range list.Items {
		want, ok := uid[u.GetName()]
		if !ok {
			continue
		}
		owners := u.GetOwnerReferences()
		if len(owners) > 0 && !slices.ContainsFunc(owners, func(r metav1.OwnerReference) bool { return r.Kind == "Node" && r.UID == want }) {
			continue
		}
		blocks, _, _ := unstructured.NestedSlice(u.Object, "status", "blocks")
		for _, b := range blocks {
			m, _ := b.(map[string]any)
			c, _ := m["cidr"].(string)
			if p, err := netip.ParsePrefix(c); err == nil {
				out[u.GetName()] = append(out[u.GetName()], p.Masked())
			}
		}
	}
	return out
}
