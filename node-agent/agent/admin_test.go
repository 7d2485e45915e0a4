package agent

import (
	"context"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	k8sfake "k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/record"

	"github.com/aliasip/aliasip/node-agent/api"
	"github.com/aliasip/aliasip/node-agent/ipam"
)

// TestReleaseLeakKeepsStaticPods: the kubelet runs a static pod under its
// own UID (the config hash, passed to the plugin as K8S_POD_UID) and the
// API shows its mirror pod under another. release-leak (kubectl aliasip
// release, a forged or stale report, a direct call) must not take the
// running static pod's address; a pod really replaced under its name
// loses its predecessor's.
func TestReleaseLeakKeepsStaticPods(t *testing.T) {
	ctx := context.Background()
	running := func(name, uid string, ann map[string]string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: name, UID: types.UID(uid), Annotations: ann},
			Spec: corev1.PodSpec{NodeName: "n1"}, Status: corev1.PodStatus{Phase: corev1.PodRunning}}
	}
	client := k8sfake.NewClientset(
		running("proxy-n1", "api-server-uid", map[string]string{"kubernetes.io/config.mirror": "5f0c", "kubernetes.io/config.hash": "5f0c"}),
		running("web-0", "new-uid", nil),
	)
	a := New(Config{NodeName: "n1"}, client, record.NewFakeRecorder(10), NewMetrics(prometheus.NewRegistry()))
	store, err := ipam.Open(filepath.Join(t.TempDir(), "state.json"), netip.MustParsePrefix("10.0.1.0/24"), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	a.store = store
	for _, tc := range []struct {
		pod, uid, container string
		released            bool
		reason              string
	}{
		{"proxy-n1", "5f0c", "static", false, "still holds it"},
		{"web-0", "old-uid", "replaced", true, "pod_replaced"},
	} {
		al, err := store.Allocate(ipam.Request{Key: ipam.Key{ContainerID: tc.container, IfName: "eth0"},
			Namespace: "kube-system", Pod: tc.pod, PodUID: tc.uid, HostVeth: "alinotthere0"})
		if err != nil {
			t.Fatal(err)
		}
		res, err := a.releaseLeak(ctx, store, api.LeakRequest{Attachment: api.Attachment{ContainerID: tc.container, IfName: "eth0"}, IP: al.IP.String()})
		if err != nil {
			t.Fatal(err)
		}
		if res.Released != tc.released || !strings.Contains(res.Reason, tc.reason) {
			t.Errorf("%s: %+v, want released=%v, %q", tc.pod, res, tc.released, tc.reason)
		}
		if _, held := store.Get(al.Key); held == tc.released {
			t.Errorf("%s: still allocated: %v", tc.pod, held)
		}
	}
}

// TestPodGCKeepsStaticPods: pod GC decides with deadReason too; a running
// static pod's allocation (made under the kubelet's UID, the mirror's
// annotation) is not "replaced", however old.
func TestPodGCKeepsStaticPods(t *testing.T) {
	mirror := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "etcd-n1", UID: "mirror-uid",
		Annotations: map[string]string{"kubernetes.io/config.mirror": "7a1e", "kubernetes.io/config.hash": "7a1e"}},
		Spec: corev1.PodSpec{NodeName: "n1"}, Status: corev1.PodStatus{Phase: corev1.PodRunning}}
	a := New(Config{NodeName: "n1"}, k8sfake.NewClientset(mirror), record.NewFakeRecorder(10), NewMetrics(prometheus.NewRegistry()))
	al := ipam.Allocation{Key: ipam.Key{ContainerID: "c", IfName: "eth0"}, Namespace: "kube-system", Pod: "etcd-n1", PodUID: "7a1e"}
	for _, cached := range []*corev1.Pod{nil, mirror} {
		if r := a.deadReason(context.Background(), al, cached, nil); r != "" {
			t.Errorf("static pod (cached %v) judged %q", cached != nil, r)
		}
	}
	al.PodUID = "an-earlier-static-pod"
	if r := a.deadReason(context.Background(), al, mirror, nil); r != "pod_replaced" {
		t.Errorf("an earlier incarnation of the static pod judged %q, want pod_replaced", r)
	}
}
