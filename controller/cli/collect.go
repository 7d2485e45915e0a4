package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/remotecommand"

	"github.com/aliasip/aliasip/controller/adminapi"
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
	Client    kubernetes.Interface
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
func (s Source) call(ctx context.Context, t target, op api.Op, in, out any) error {
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
// Ready (a standby answers not ready) is the leader.
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
	var pods []corev1.Pod
	if pod, err := s.Client.CoreV1().Pods(s.Namespace).Get(ctx, host, metav1.GetOptions{}); err == nil {
		pods = append(pods, *pod)
	} else {
		list, err := s.Client.CoreV1().Pods(s.Namespace).List(ctx, metav1.ListOptions{
			LabelSelector: "app.kubernetes.io/component=controller,app.kubernetes.io/instance=" + s.Release})
		if err != nil {
			return target{}, v, fmt.Errorf("list controller pods: %w", err)
		}
		for _, p := range list.Items {
			if p.Status.Phase == corev1.PodRunning && p.Spec.NodeName != "" && (p.Spec.NodeName == host || s.nodeHostname(ctx, p.Spec.NodeName) == host) {
				pods = append(pods, p)
			}
		}
		if len(pods) == 0 {
			return target{}, v, fmt.Errorf("leading controller %q: no pod of that name, and no running controller pod of release %s on a node of that hostname", host, s.Release)
		}
	}
	var errs []error
	for i := range pods {
		t, err := targetIn(&pods[i], "aliasip-controller", "admin-socket")
		if err == nil {
			err = s.call(ctx, t, adminapi.OpCloud, nil, &v)
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if v.Ready {
			return t, v, nil
		}
		errs = append(errs, fmt.Errorf("pod %s: not the leader, or its state not rebuilt yet", t.pod))
	}
	return target{}, v, errors.Join(errs...)
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

// agents finds each node's agent pod.
func (s Source) agents(ctx context.Context) (map[string]target, map[string]string, error) {
	pods, err := s.Client.CoreV1().Pods(s.Namespace).List(ctx, metav1.ListOptions{
		LabelSelector: "app.kubernetes.io/component=agent,app.kubernetes.io/instance=" + s.Release})
	if err != nil {
		return nil, nil, fmt.Errorf("list agent pods: %w", err)
	}
	out, bad := map[string]target{}, map[string]string{}
	for i := range pods.Items {
		p := &pods.Items[i]
		if p.Spec.NodeName == "" || p.Status.Phase != corev1.PodRunning {
			continue
		}
		// During a rolling update a node may run the old agent pod,
		// terminating, next to the new one: the new one answers.
		if cur, ok := out[p.Spec.NodeName]; ok && p.DeletionTimestamp != nil && cur.current {
			continue
		}
		t, err := targetIn(p, "aliasip-agent", "socket")
		if err != nil {
			bad[p.Spec.NodeName] = err.Error()
			continue
		}
		t.current = p.DeletionTimestamp == nil
		out[p.Spec.NodeName] = t
		delete(bad, p.Spec.NodeName)
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
	return snap, nil
}
