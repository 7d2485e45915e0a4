package agent

import (
	"context"
	"encoding/json"
	"fmt"

	"k8s.io/klog/v2"

	"github.com/aliasip/aliasip/internal/sockrpc"
	"github.com/aliasip/aliasip/node-agent/api"
	"github.com/aliasip/aliasip/node-agent/ipam"
)

// isAdmin says whether op is one of kubectl aliasip's calls.
func isAdmin(op sockrpc.Op) bool { return op == api.OpList || op == api.OpReleaseLeak }

// admin serves kubectl aliasip: "list" (for check) and "release-leak" (for
// release --from-report). They reach the agent through its root-only
// socket, from a process kubectl exec starts in the agent's pod, so who may
// call them is who may exec into that pod (RBAC pods/exec).
func (a *Agent) admin(ctx context.Context, op sockrpc.Op, body json.RawMessage) (any, error) {
	switch op {
	case api.OpList:
		out := api.Allocations{Node: a.cfg.NodeName, Allocations: []api.AllocationEntry{}}
		st := a.Status()
		out.Ready, out.PodCIDR = st.Ready, st.PodCIDR
		store := a.storeOrNil()
		if store == nil {
			return out, nil
		}
		out.PodCIDR = store.PodCIDR().String()
		if blocks := store.PodCIDRs(); len(blocks) > 1 {
			out.PodCIDRIPv6 = blocks[1].String()
		}
		for _, al := range store.List() {
			out.Allocations = append(out.Allocations, api.AllocationEntry{
				IP: al.IP.String(), IPv6: addrString(al.IPv6), ContainerID: al.ContainerID, IfName: al.IfName,
				Namespace: al.Namespace, Pod: al.Pod, PodUID: al.PodUID, HostVeth: al.HostVeth, Created: al.Created,
			})
		}
		return out, nil
	default: // api.OpReleaseLeak
		var req api.LeakRequest
		if err := decode(body, &req); err != nil {
			return nil, err
		}
		store, err := a.openStore()
		if err != nil {
			return nil, err
		}
		return a.releaseLeak(ctx, store, req)
	}
}

// releaseLeak releases req's allocation only if the store still holds it
// with the same address, its sandbox is gone from the host, and a live
// read of the API confirms its pod is gone — what pod GC would decide,
// without its grace period. The report
// it comes from may be old: the attachment may have been released and
// handed out again since, or its pod may be back.
func (a *Agent) releaseLeak(ctx context.Context, store *ipam.Store, req api.LeakRequest) (api.LeakResult, error) {
	key := ipam.Key{ContainerID: req.ContainerID, IfName: req.IfName}
	al, ok := store.Get(key)
	switch {
	case !ok:
		return api.LeakResult{Reason: "not allocated any more"}, nil
	case al.IP.String() != req.IP:
		return api.LeakResult{Reason: fmt.Sprintf("the attachment now holds %v, not %s", al.IP, req.IP)}, nil
	case al.Pod == "":
		// Without a pod name nothing can confirm it is gone: CNI GC, from
		// the runtime that made it, releases it.
		return api.LeakResult{Reason: "the allocation names no pod (not made for a kubelet); left to CNI GC"}, nil
	}
	vethAliases, err := a.veths()
	if err != nil {
		return api.LeakResult{}, fmt.Errorf("list host veths: %w", err)
	}
	if alias, ok := vethAliases[al.HostVeth]; ok && alias == al.ContainerID {
		// Whatever the API says: see deadReason.
		return api.LeakResult{Reason: fmt.Sprintf("the runtime still holds it: host veth %s names container %s, whose sandbox is not torn down (left to CNI DEL and GC)", al.HostVeth, al.ContainerID)}, nil
	}
	reason := a.deadReason(ctx, al, nil, vethAliases)
	if reason == "" {
		return api.LeakResult{Reason: fmt.Sprintf("pod %s/%s still holds it (or the API could not confirm it is gone)", al.Namespace, al.Pod)}, nil
	}
	// The same attachment may have been released and allocated again
	// between Get and here: only this very allocation goes.
	gone, err := store.Retain(func(x ipam.Allocation) bool {
		return x.Key != al.Key || x.IP != al.IP || !x.Created.Equal(al.Created)
	})
	if err != nil {
		return api.LeakResult{}, err
	}
	if len(gone) == 0 {
		return api.LeakResult{Reason: "released meanwhile"}, nil
	}
	klog.FromContext(ctx).Info("Leak released on request", "reason", reason, "pod", al.Namespace+"/"+al.Pod, "ip", al.IP)
	a.tearDownReleased(ctx, gone, func(ipam.Allocation) string { return reason })
	return api.LeakResult{Released: true, Reason: reason}, nil
}

// mirrorAnnotation marks a static pod's mirror in the API and names the
// UID the kubelet runs the pod under (kubernetes/kubernetes,
// pkg/kubelet/types/pod_update.go ConfigMirrorAnnotationKey; see
// deadReason).
const mirrorAnnotation = "kubernetes.io/config.mirror"
