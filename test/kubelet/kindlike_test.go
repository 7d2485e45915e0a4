package kubelet

import (
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// TestNodesLikeKind: each node has its own hostname, which hostNetwork
// pods report (the chart's agents are such pods), and the CNI portmap
// plugin, so a hostPort on one node answers from another node's pod.
func TestNodesLikeKind(t *testing.T) {
	e, ctx := setup(t, 5*time.Minute)
	ensureNamespace(t, ctx, e)
	for _, node := range e.Nodes {
		if got := hostNetworkHostname(t, ctx, e, node); got != node {
			t.Errorf("a hostNetwork pod on %s has hostname %q; want the node's name", node, got)
		}
	}

	// A hostPort through portmap, chained by the agent now that the node has it.
	server := e.Nodes[1]
	c := netcheckContainer(t, "serve")
	c.Ports = []corev1.ContainerPort{{ContainerPort: 8080, HostPort: 18080}}
	c.ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromInt32(8080)}}, PeriodSeconds: 1}
	grace := int64(1)
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "hostport", Namespace: testNS, Labels: map[string]string{"app": "hostport"}},
		Spec:       corev1.PodSpec{NodeSelector: map[string]string{"kubernetes.io/hostname": server}, Containers: []corev1.Container{c}, TerminationGracePeriodSeconds: &grace},
	}
	if _, err := e.Client.CoreV1().Pods(testNS).Create(ctx, pod, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		zero := int64(0)
		e.Client.CoreV1().Pods(testNS).Delete(ctx, "hostport", metav1.DeleteOptions{GracePeriodSeconds: &zero})
	})
	var ready []corev1.Pod
	eventually(t, ctx, 2*time.Minute, "the hostPort pod ready", func() (bool, error) {
		ready = readyPods(ctx, e, "app=hostport")
		return len(ready) == 1, nil
	})
	url := fmt.Sprintf("http://%s:18080/", nodeInternalIP(t, ctx, e, server))
	logs := runJobOn(t, ctx, e, e.Nodes[0], "hostport-get", "get", "--retries", "5", url)
	if !strings.Contains(logs, "OK "+url+" -> "+ready[0].Status.PodIP) {
		t.Errorf("hostPort %s did not reach the pod %s:\n%s", url, ready[0].Status.PodIP, logs)
	}
}

// hostNetworkHostname runs `netcheck hostname` in a hostNetwork pod on node
// and returns what it printed.
func hostNetworkHostname(t *testing.T, ctx context.Context, e *clusterEnv, node string) string {
	t.Helper()
	name := "hostname-" + node
	zero := int64(0)
	pods := e.Client.CoreV1().Pods(testNS)
	pods.Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
	eventually(t, ctx, time.Minute, "old pod "+name+" gone", func() (bool, error) {
		_, err := pods.Get(ctx, name, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: testNS},
		Spec: corev1.PodSpec{
			HostNetwork: true, RestartPolicy: corev1.RestartPolicyNever,
			NodeSelector: map[string]string{"kubernetes.io/hostname": node},
			Tolerations:  []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
			Containers:   []corev1.Container{netcheckContainer(t, "hostname")},
		},
	}
	if _, err := pods.Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pods.Delete(context.Background(), name, metav1.DeleteOptions{GracePeriodSeconds: &zero}) })
	eventually(t, ctx, 2*time.Minute, name+" done", func() (bool, error) {
		p, err := pods.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		if p.Status.Phase == corev1.PodFailed {
			return false, fmt.Errorf("pod %s failed", name)
		}
		return p.Status.Phase == corev1.PodSucceeded, nil
	})
	rc, err := pods.GetLogs(name, &corev1.PodLogOptions{}).Stream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, _ := io.ReadAll(rc)
	return strings.TrimSpace(string(b))
}
