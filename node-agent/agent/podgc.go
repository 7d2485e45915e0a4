package agent

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/klog/v2"

	"github.com/aliasip/aliasip/node-agent/api"
	"github.com/aliasip/aliasip/node-agent/datapath"
	"github.com/aliasip/aliasip/node-agent/ipam"
)

// gcLoop collects allocations of pods gone from the API.
func (a *Agent) gcLoop(ctx context.Context) {
	t := time.NewTicker(a.cfg.PodGCInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			a.collectPods(ctx)
		}
	}
}

// collectPods releases allocations of pods that are gone, once they are
// older than the grace period (a pod's ADD may run before the agent's cache
// has seen the pod). The cache only nominates: an allocation is released
// after a live read of its pod finds it deleted, finished, or replaced by a
// pod of the same name with another UID (K8S_POD_UID, recorded at ADD) —
// never because a stale cache missed it, and never while the runtime still
// holds its sandbox (its host veth still names its container: see
// deadReason). An allocation whose host veth now names another container
// (its name was reused) is dead too. Allocations without a pod name
// (runtimes other than Kubernetes) are left to CNI GC.
func (a *Agent) collectPods(ctx context.Context) {
	logger := klog.FromContext(ctx)
	store := a.storeOrNil()
	if store == nil {
		return
	}
	pods, err := a.pods.List(labels.Everything())
	if err != nil {
		logger.Error(err, "Pod GC: list cached pods")
		return
	}
	cached := map[string]*corev1.Pod{}
	for _, p := range pods {
		cached[p.Namespace+"/"+p.Name] = p
	}
	vethAliases, err := a.veths()
	if err != nil {
		logger.Error(err, "Pod GC: list host veths")
		return
	}
	cutoff := time.Now().Add(-a.cfg.PodGCGrace)
	dead := map[ipam.Key]string{}
	for _, al := range store.List() {
		if al.Pod == "" || al.Created.After(cutoff) {
			continue
		}
		if reason := a.deadReason(ctx, al, cached[al.Namespace+"/"+al.Pod], vethAliases); reason != "" {
			dead[al.Key] = reason
		}
	}
	if len(dead) == 0 {
		return
	}
	gone, err := store.Retain(func(al ipam.Allocation) bool { _, d := dead[al.Key]; return !d })
	if err != nil {
		logger.Error(err, "Pod GC")
		return
	}
	a.tearDownReleased(ctx, gone, func(al ipam.Allocation) string { return dead[al.Key] })
}

// tearDownReleased counts, logs and tears down the data path of
// allocations pod GC (or a leak release) took back.
func (a *Agent) tearDownReleased(ctx context.Context, gone []ipam.Allocation, reason func(ipam.Allocation) string) {
	logger := klog.FromContext(ctx)
	for _, al := range gone {
		reason := reason(al)
		a.metrics.GCReleased.WithLabelValues(reason).Inc()
		// TeardownPod removes the veth only if its alias still names this
		// container.
		if err := a.inHost(func() error { return datapath.TeardownPod(al.HostVeth, al.ContainerID) }); err != nil {
			logger.Error(err, "Pod GC: tear down", "pod", al.Namespace+"/"+al.Pod, "veth", al.HostVeth)
		}
		logger.Info("Released address of a pod gone from the API", "reason", reason, "pod", al.Namespace+"/"+al.Pod, "uid", al.PodUID, "container", al.ContainerID, "ip", al.IP)
	}
	a.signal(a.kick)
}

func terminal(p *corev1.Pod) bool {
	return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
}

// deadReason says why al's pod is gone ("veth_reused", "pod_gone",
// "pod_replaced"), or "" when it is alive or cannot be confirmed gone.
// cached, the informer's copy of the pod (nil: none), can only keep an
// allocation: one is declared dead only after a live read of its pod.
//
// The host comes first, and the API can only confirm what the host allows:
//
//	host veth al.HostVeth             | API (live read)                  | verdict
//	names another container           | any                              | veth_reused
//	names al's container              | any (NotFound, another UID, ...) | kept: the sandbox runs
//	absent (or no alias)              | NotFound / terminal              | pod_gone
//	absent (or no alias)              | another UID or another node      | pod_replaced
//	absent (or no alias)              | same pod, or read failed         | kept
//
// aliasip-cni creates the pod's veth pair with one end in the pod's network
// namespace and writes the container ID as the host end's alias
// (datapath.SetupPod); no pod author can write a host link. "When a
// namespace is freed, the veth(4) devices that it contains are destroyed"
// (man 7 network_namespaces), and deleting one end of a pair deletes its
// peer (torvalds/linux drivers/net/veth.c, veth_dellink). So a host veth
// whose alias still names al's container means the sandbox's namespace is
// alive: the runtime has not torn it down, and its CNI DEL is still to
// come — or CNI GC, which names the attachments still valid so the plugin
// can free the rest (containernetworking/cni SPEC.md, "GC: Clean up any
// stale resources", spec 1.1). The API cannot overrule that: a static pod
// runs with no API object until the kubelet creates its mirror, which it
// may fail to do (kubernetes/kubernetes pkg/kubelet/pod/mirror_client.go,
// CreateMirrorPod; plugin/pkg/admission/noderestriction/admission.go
// refuses mirror pods that reference secrets, configmaps or service
// accounts), and whoever may create pods in its namespace can create one
// of its name, carrying any annotation. Only the host decides that a live
// data path's address is free.
func (a *Agent) deadReason(ctx context.Context, al ipam.Allocation, cached *corev1.Pod, vethAliases map[string]string) string {
	// A static pod runs under the kubelet's UID for it (the config hash,
	// pkg/kubelet/config/common.go), which is what the runtime passes as
	// K8S_POD_UID; its mirror pod in the API has a UID of its own and the
	// annotation kubernetes.io/config.mirror naming the kubelet's
	// (pkg/kubelet/pod/mirror_client.go, CreateMirrorPod). Same pod.
	sameUID := func(p *corev1.Pod) bool {
		return al.PodUID == "" || string(p.UID) == al.PodUID || (p.Annotations[mirrorAnnotation] == al.PodUID)
	}
	switch alias, ok := vethAliases[al.HostVeth]; {
	case ok && alias != "" && alias != al.ContainerID:
		return "veth_reused"
	case ok && alias == al.ContainerID:
		return "" // the runtime holds the sandbox: left to CNI DEL and GC
	}
	if cached != nil && !terminal(cached) && sameUID(cached) {
		return ""
	}
	live, err := a.client.CoreV1().Pods(al.Namespace).Get(ctx, al.Pod, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return "pod_gone"
	case err != nil:
		klog.FromContext(ctx).V(2).Info("Pod GC: cannot confirm; kept until the next pass", "pod", al.Namespace+"/"+al.Pod, "err", err)
		return ""
	case live.Spec.NodeName != "" && live.Spec.NodeName != a.cfg.NodeName:
		return "pod_replaced" // a same-named pod on another node
	case !sameUID(live):
		return "pod_replaced"
	case terminal(live):
		return "pod_gone"
	}
	return ""
}

// vethHolder returns the allocation of another pod whose sandbox still
// holds the host veth req asks for (held false: none). The host veth's
// name hashes the pod's namespace/name (datapath.HostVethName), and two
// pods of one name can run on a node at once: a static pod without a
// mirror and a pod that anyone who may create pods in its namespace names
// like it and binds to this node (spec.nodeName), or a pod deleted with
// --force whose successor starts before it stops ("the potential to
// violate the at most one semantics": kubernetes.io/docs/tasks/
// run-application/force-delete-stateful-set-pod). SetupPod replaces a
// host veth of its name — right for an earlier sandbox of the same pod
// (same UID) whose DEL never came, but for another pod it would cut a
// running pod's data path, and pod GC would then free its address
// (veth_reused). The host decides, as in deadReason: the veth's alias
// still names the other pod's container. Allocations that recorded no
// UID (runtimes other than Kubernetes name veths by container) are not
// compared.
func (a *Agent) vethHolder(store *ipam.Store, req api.AllocateRequest) (holder ipam.Allocation, held bool, err error) {
	if req.HostVeth == "" || req.PodUID == "" {
		return ipam.Allocation{}, false, nil
	}
	var others []ipam.Allocation
	for _, al := range store.List() {
		if al.HostVeth == req.HostVeth && al.ContainerID != req.ContainerID && al.PodUID != "" && al.PodUID != req.PodUID {
			others = append(others, al)
		}
	}
	if len(others) == 0 {
		return ipam.Allocation{}, false, nil
	}
	vethAliases, err := a.veths()
	if err != nil {
		return ipam.Allocation{}, false, fmt.Errorf("list host veths: %w", err)
	}
	for _, al := range others {
		if alias, ok := vethAliases[req.HostVeth]; ok && alias == al.ContainerID {
			return al, true, nil
		}
	}
	return ipam.Allocation{}, false, nil
}

// hostVethAliases maps the host's veths to the container each names in its
// alias (datapath.VethAliases, read in the host's namespace).
func (a *Agent) hostVethAliases() (map[string]string, error) {
	var out map[string]string
	err := a.inHost(func() error {
		var err error
		out, err = datapath.VethAliases()
		return err
	})
	return out, err
}
