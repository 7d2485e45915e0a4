package agent

import (
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	k8sfake "k8s.io/client-go/kubernetes/fake"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"

	"github.com/aliasip/aliasip/internal/sockrpc"
	"github.com/aliasip/aliasip/node-agent/api"
	"github.com/aliasip/aliasip/node-agent/datapath"
	"github.com/aliasip/aliasip/node-agent/ipam"
)

// gcAgent is an agent on node n1 with an open store, no grace period, an
// informer cache seeded with the client's pods, and the host's veths
// from veths.
func gcAgent(t *testing.T, client kubernetes.Interface, veths func() (map[string]string, error)) (*Agent, *ipam.Store) {
	t.Helper()
	a := New(Config{NodeName: "n1"}, client, record.NewFakeRecorder(100), NewMetrics(prometheus.NewRegistry()))
	store, err := ipam.Open(filepath.Join(t.TempDir(), "ipam.json"), netip.MustParsePrefix("10.0.1.0/24"), 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	indexer := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	list, err := client.CoreV1().Pods("").List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range list.Items {
		if err := indexer.Add(&list.Items[i]); err != nil {
			t.Fatal(err)
		}
	}
	a.store, a.pods = store, corelisters.NewPodLister(indexer)
	if veths != nil {
		a.veths = veths
	}
	return a, store
}

// staticUID is a static pod's UID: the kubelet's hash of its manifest
// (kubernetes/kubernetes pkg/kubelet/config/common.go, applyDefaults), what
// the runtime passes as K8S_POD_UID.
const staticUID = "6f3b9c1e2d7a4b5c8e9f0a1b2c3d4e5f"

// TestPodGCKeepsSandboxTheHostHolds: a static pod runs with no mirror in
// the API (the kubelet has not created it yet, or cannot). Its host veth
// still names its container, so neither pod GC nor release-leak may free
// its address — whatever the API shows under its name: nothing, or a pod
// a user created with that name (no annotation, a forged mirror annotation
// naming another UID, bound to another node). Once its veth is gone or
// names another container, the API decides as before. Before the fix, the
// first rows lost their address ("pod_gone", "pod_replaced").
func TestPodGCKeepsSandboxTheHostHolds(t *testing.T) {
	const veth, container = "alistatic0001", "static-sandbox"
	userPod := func(uid, node string, ann map[string]string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "etcd-n1", UID: types.UID(uid), Annotations: ann},
			Spec: corev1.PodSpec{NodeName: node}, Status: corev1.PodStatus{Phase: corev1.PodRunning}}
	}
	for _, tc := range []struct {
		name   string
		api    []*corev1.Pod
		veths  map[string]string
		reason string // "": kept
	}{
		{name: "no mirror, veth names the container", veths: map[string]string{veth: container}},
		{name: "a user's pod of its name", veths: map[string]string{veth: container},
			api: []*corev1.Pod{userPod("2b7e1c40-0000-4000-8000-000000000001", "n1", nil)}},
		{name: "a user's pod of its name, forged mirror annotation", veths: map[string]string{veth: container},
			api: []*corev1.Pod{userPod("2b7e1c40-0000-4000-8000-000000000002", "n1", map[string]string{mirrorAnnotation: "another-hash"})}},
		{name: "a user's pod of its name on another node", veths: map[string]string{veth: container},
			api: []*corev1.Pod{userPod("2b7e1c40-0000-4000-8000-000000000003", "n2", nil)}},
		{name: "a user's pod of its name, finished", veths: map[string]string{veth: container},
			api: []*corev1.Pod{func() *corev1.Pod {
				p := userPod("2b7e1c40-0000-4000-8000-000000000004", "n1", map[string]string{mirrorAnnotation: staticUID})
				p.Status.Phase = corev1.PodFailed
				return p
			}()}},
		// The sandbox is gone from the host: the API decides.
		{name: "veth gone, no pod", veths: map[string]string{}, reason: "pod_gone"},
		{name: "veth gone, another pod of its name", veths: map[string]string{},
			api: []*corev1.Pod{userPod("2b7e1c40-0000-4000-8000-000000000005", "n1", nil)}, reason: "pod_replaced"},
		{name: "veth gone, the mirror runs", veths: map[string]string{},
			api: []*corev1.Pod{userPod("mirror-uid", "n1", map[string]string{mirrorAnnotation: staticUID})}},
		{name: "veth names a newer sandbox", veths: map[string]string{veth: "newer-sandbox"}, reason: "veth_reused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var objs []runtime.Object
			for _, p := range tc.api {
				objs = append(objs, p)
			}
			a, store := gcAgent(t, k8sfake.NewClientset(objs...), func() (map[string]string, error) { return tc.veths, nil })
			allocate := func(container string) ipam.Allocation {
				al, err := store.Allocate(ipam.Request{Key: ipam.Key{ContainerID: container, IfName: "eth0"},
					Namespace: "kube-system", Pod: "etcd-n1", PodUID: staticUID, HostVeth: veth})
				if err != nil {
					t.Fatal(err)
				}
				return al
			}
			al := allocate(container)
			a.collectPods(context.Background())
			if _, held := store.Get(al.Key); held != (tc.reason == "") {
				t.Fatalf("pod GC: still allocated %v, want %v", held, tc.reason == "")
			}
			if tc.reason != "" {
				if n := testutil.ToFloat64(a.metrics.GCReleased.WithLabelValues(tc.reason)); n != 1 {
					t.Errorf("pod GC released with reason %s %v times, want 1", tc.reason, n)
				}
				al = allocate(container + "-again") // release-leak decides alike
			}
			res, err := a.releaseLeak(context.Background(), store, api.LeakRequest{Attachment: api.Attachment{ContainerID: al.ContainerID, IfName: "eth0"}, IP: al.IP.String()})
			if err != nil {
				t.Fatal(err)
			}
			if res.Released != (tc.reason != "") {
				t.Fatalf("release-leak: %+v, want released=%v", res, tc.reason != "")
			}
			if want := tc.reason; want == "" && !strings.Contains(res.Reason, "still holds it") || want != "" && res.Reason != want {
				t.Errorf("release-leak reason %q, want %q", res.Reason, tc.reason)
			}
		})
	}
}

// TestPodGCFollowsTheHost, in network namespaces: a static pod's sandbox
// built as aliasip-cni builds it, with no pod of its name in the API,
// keeps its address through pod GC and release-leak for as long as its
// namespace lives; once the runtime removes the namespace (the kernel
// destroys its veths), pod GC frees it.
func TestPodGCFollowsTheHost(t *testing.T) {
	host := newNetNS(t)
	pod, err := testutils.NewNS()
	if err != nil {
		t.Fatal(err)
	}
	podGone := false
	t.Cleanup(func() {
		if !podGone {
			pod.Close()
			testutils.UnmountNS(pod)
		}
	})
	a, store := gcAgent(t, k8sfake.NewClientset(), nil)
	a.nodeNS = host
	const container = "static-sandbox"
	veth := datapath.HostVethName("kube-system", "etcd-n1")
	al, err := store.Allocate(ipam.Request{Key: ipam.Key{ContainerID: container, IfName: "eth0"},
		Namespace: "kube-system", Pod: "etcd-n1", PodUID: staticUID, HostVeth: veth})
	if err != nil {
		t.Fatal(err)
	}
	if err := host.Do(func(ns.NetNS) error {
		_, err := datapath.SetupPod(datapath.Pod{NetNS: pod.Path(), IfName: "eth0", HostVeth: veth, ContainerID: container, IP: al.IP})
		return err
	}); err != nil {
		t.Fatalf("SetupPod: %v", err)
	}

	ctx := context.Background()
	a.collectPods(ctx)
	if _, held := store.Get(al.Key); !held {
		t.Fatal("pod GC released the address of a running static pod without a mirror")
	}
	res, err := a.releaseLeak(ctx, store, api.LeakRequest{Attachment: api.Attachment{ContainerID: container, IfName: "eth0"}, IP: al.IP.String()})
	if err != nil || res.Released {
		t.Fatalf("release-leak of a running static pod: %+v, %v", res, err)
	}

	// The runtime removes the sandbox without a DEL reaching the agent.
	pod.Close()
	if err := testutils.UnmountNS(pod); err != nil {
		t.Fatal(err)
	}
	podGone = true
	if err := wait.PollUntilContextTimeout(ctx, 10*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		var gone bool
		err := host.Do(func(ns.NetNS) error {
			_, err := netlink.LinkByName(veth)
			_, gone = err.(netlink.LinkNotFoundError)
			if gone {
				return nil
			}
			return err
		})
		return gone, err
	}); err != nil {
		t.Fatalf("the host veth outlived its pod's namespace: %v", err)
	}
	a.collectPods(ctx)
	if _, held := store.Get(al.Key); held {
		t.Error("pod GC kept the address of a sandbox gone from the host and the API")
	}
	if n := testutil.ToFloat64(a.metrics.GCReleased.WithLabelValues("pod_gone")); n != 1 {
		t.Errorf("released with reason pod_gone %v times, want 1", n)
	}
}

// TestAddNeverTakesARunningPodsVeth: the host veth's name comes from the
// pod's namespace/name, so a pod a user names like a static pod without a
// mirror (and binds to its node) asks for the static pod's veth. ADD must
// not take it while the static pod's sandbox holds it — SetupPod would
// delete it, cutting the running pod off, and pod GC would then free its
// address as veth_reused. The refusal is "try again later" for the
// plugin. A new sandbox of the same pod (same UID) still replaces an
// earlier one's veth, and a veth no sandbox holds any more is free.
// Before the fix every row was allocated.
func TestAddNeverTakesARunningPodsVeth(t *testing.T) {
	veth := datapath.HostVethName("kube-system", "etcd-n1")
	for _, tc := range []struct {
		name    string
		uid     string
		veths   map[string]string
		refused bool
	}{
		{"another pod of the name, the static sandbox runs", "2b7e1c40-0000-4000-8000-000000000009", map[string]string{veth: "static-sandbox"}, true},
		{"a new sandbox of the same pod", staticUID, map[string]string{veth: "static-sandbox"}, false},
		{"another pod of the name, the static sandbox gone", "2b7e1c40-0000-4000-8000-000000000009", map[string]string{}, false},
		{"another pod of the name, the veth already another's", "2b7e1c40-0000-4000-8000-000000000009", map[string]string{veth: "someone-else"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, store := gcAgent(t, k8sfake.NewClientset(), func() (map[string]string, error) { return tc.veths, nil })
			a.ready, a.podCIDR = true, store.PodCIDR()
			if _, err := store.Allocate(ipam.Request{Key: ipam.Key{ContainerID: "static-sandbox", IfName: "eth0"},
				Namespace: "kube-system", Pod: "etcd-n1", PodUID: staticUID, HostVeth: veth}); err != nil {
				t.Fatal(err)
			}
			body, _ := json.Marshal(api.AllocateRequest{Attachment: api.Attachment{ContainerID: "newcomer", IfName: "eth0"},
				Namespace: "kube-system", Pod: "etcd-n1", PodUID: tc.uid, HostVeth: veth})
			_, err := a.call(context.Background(), api.OpAllocate, body)
			var ae *sockrpc.Error
			if refused := errors.As(err, &ae) && ae.Code == api.CodeHostVethHeld; refused != tc.refused {
				t.Fatalf("ADD: %v, want refused=%v", err, tc.refused)
			}
			if !tc.refused && err != nil {
				t.Fatal(err)
			}
			if _, allocated := store.Get(ipam.Key{ContainerID: "newcomer", IfName: "eth0"}); allocated == tc.refused {
				t.Errorf("newcomer allocated: %v", allocated)
			}
		})
	}
}
