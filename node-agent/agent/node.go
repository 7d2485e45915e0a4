package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/netip"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/klog/v2"
)

// checkOwnNode follows this node's Node object once the agent serves a
// block. If it is deleted or loses its podCIDR, ADD is refused at once (a
// Node deleted and re-registered may get another block, and the controller
// hands ours to another node after its cooldown). Back with the same
// podCIDR, the agent serves again. With another podCIDR, it stops serving
// and ends Run with ErrPodCIDRChanged; on restart the old state is moved
// aside and the old block's pods torn down.
func (a *Agent) checkOwnNode(ctx context.Context) {
	a.mu.Lock()
	cur, cur6, lost := a.podCIDR, a.podCIDR6, a.nodeLost
	a.mu.Unlock()
	if !cur.IsValid() {
		return // not serving yet: waitPodCIDR decides
	}
	node, err := a.nodes.Get(a.cfg.NodeName)
	if err != nil || node.Spec.PodCIDR == "" {
		if !lost {
			reason := fmt.Sprintf("this node's Node object is gone or has no podCIDR; not serving addresses of %v", cur)
			klog.FromContext(ctx).Info("Not ready", "reason", reason)
			a.mu.Lock()
			a.nodeLost = true
			a.mu.Unlock()
			a.setNotReady(reason)
		}
		return
	}
	p, err := netip.ParsePrefix(node.Spec.PodCIDR)
	p6, err6 := nodeIPv6Block(node)
	if err == nil && p.Masked() == cur && err6 == nil && p6 == cur6 {
		a.checkMaxPods(ctx, node, cur)
		if lost {
			a.mu.Lock()
			a.nodeLost = false
			a.ready, a.reason = true, ""
			a.mu.Unlock()
			a.metrics.Ready.Set(1)
			klog.FromContext(ctx).Info("Node back with the same podCIDR: serving again", "podCIDR", cur)
			go a.ensureNetworkAvailable(ctx)
		}
		return
	}
	// A changed IPv6 block (added, dropped or another) is handled like a
	// changed podCIDR: the agent restarts on the node's new blocks.
	old, now := cur.String(), node.Spec.PodCIDR
	if cur6.IsValid() || len(node.Spec.PodCIDRs) > 1 {
		old, now = fmt.Sprint(blocksOf(cur, cur6)), fmt.Sprint(node.Spec.PodCIDRs)
	}
	reason := fmt.Sprintf("podCIDR changed from %v to %q", old, now)
	a.setNotReady(reason)
	a.event(corev1.EventTypeWarning, EventPodCIDRChanged, "The node's podCIDR changed from %v to %s; the agent stops serving %v and restarts on the new block", old, now, old)
	klog.FromContext(ctx).Info("PodCIDR changed; stopping", "old", old, "new", now)
	a.mu.Lock()
	stop := a.stop
	a.mu.Unlock()
	if stop != nil {
		stop(ErrPodCIDRChanged)
	}
}

// blocksOf lists the node's blocks the way spec.podCIDRs does: the IPv4
// block, then the IPv6 block if there is one.
func blocksOf(v4, v6 netip.Prefix) []string {
	if v6.IsValid() {
		return []string{v4.String(), v6.String()}
	}
	return []string{v4.String()}
}

// nodeIPv6Block returns the node's IPv6 podCIDR: the IPv6 entry of
// spec.podCIDRs (the controller's --dual-stack writes [IPv4 block, IPv6
// block]; the API server allows at most one per family), masked, or the
// zero Prefix when it has none — the node is single-stack. An entry that
// does not parse is an error: the node's blocks cannot be known.
func nodeIPv6Block(node *corev1.Node) (netip.Prefix, error) {
	for _, c := range node.Spec.PodCIDRs {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("podCIDRs entry %q: %w", c, err)
		}
		if p.Addr().Is6() && !p.Addr().Is4In6() {
			return p.Masked(), nil
		}
	}
	return netip.Prefix{}, nil
}

// checkMaxPods warns when the kubelet may run more pods than the node's
// block has addresses: the extra pods would wait in ContainerCreating with
// "pod IP range exhausted". The kubelet reports its --max-pods (maxPods in
// its config) as the Node's capacity "pods" (kubernetes,
// pkg/kubelet/nodestatus/setters.go, MachineInfo). One Event per value; the
// gauge aliasip_max_pods_over_block says whether it holds now.
func (a *Agent) checkMaxPods(ctx context.Context, node *corev1.Node, block netip.Prefix) {
	q, ok := node.Status.Capacity[corev1.ResourcePods]
	if !ok {
		return
	}
	maxPods := q.Value()
	usable := int64(1)<<(32-block.Bits()) - 3 // network, gateway, broadcast
	// A node of a growable range may be given maxBlocksPerNode-1 more
	// blocks of the same size, every address of which serves pods
	// (node-agent/ipam Usage).
	a.mu.Lock()
	followed := a.ranges != nil
	a.mu.Unlock()
	if a.dyn != nil && !followed {
		return // PodRanges not read yet (a growable range may hold more): Run checks again after startPodRanges
	}
	grows := false
	for _, r := range a.podRanges() {
		if r.maxBlocks > 1 && block.Addr().Is4() && r.cidr.Contains(block.Addr()) {
			usable += int64(r.maxBlocks-1) << (32 - block.Bits())
			grows = true
		}
	}
	over := maxPods > usable
	a.metrics.MaxPodsOverBlock.Set(map[bool]float64{true: 1}[over])
	key := fmt.Sprintf("%d/%v/%d", maxPods, block, usable)
	a.mu.Lock()
	seen := a.maxPodsWarned == key
	a.maxPodsWarned = key
	a.mu.Unlock()
	if !over || seen {
		return
	}
	klog.FromContext(ctx).Info("The kubelet's maxPods exceeds the node's block", "maxPods", maxPods, "podCIDR", block, "usable", usable)
	if grows {
		a.event(corev1.EventTypeWarning, EventMaxPodsExceedBlock,
			"The kubelet may run %d pods but the node's blocks (%v and at most its range's maxBlocksPerNode-1 more) hold %d pod addresses: pods past that fail in ContainerCreating once the cap is reached. Lower the kubelet's maxPods or raise the range's spec.growth.maxBlocksPerNode.", maxPods, block, usable)
		return
	}
	a.event(corev1.EventTypeWarning, EventMaxPodsExceedBlock,
		"The kubelet may run %d pods but the node's block %v has %d pod addresses: pods past that fail in ContainerCreating (pod IP range exhausted). Lower the kubelet's maxPods or give the node pool a larger block (about twice maxPods, as GKE sizes them).", maxPods, block, usable)
}

// waitPodCIDR waits until the node has a podCIDR (and, on GCE, it is an
// alias range of this VM's NIC), and returns it and the node's IPv6 block
// (nodeIPv6Block; zero when single-stack). The IPv6 block needs no alias
// check: the VPC routes the NIC's whole IPv6 range to the VM.
func (a *Agent) waitPodCIDR(ctx context.Context) (netip.Prefix, netip.Prefix, error) {
	logger := klog.FromContext(ctx)
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	lastReason := ""
	for {
		reason := ""
		node, err := a.nodes.Get(a.cfg.NodeName)
		switch {
		case err != nil:
			reason = fmt.Sprintf("node %s not found: %v", a.cfg.NodeName, err)
		case node.Spec.PodCIDR == "":
			reason = "waiting for the node's podCIDR"
		default:
			p, err := netip.ParsePrefix(node.Spec.PodCIDR)
			if err != nil {
				reason = fmt.Sprintf("podCIDR %q: %v", node.Spec.PodCIDR, err)
				break
			}
			p6, err := nodeIPv6Block(node)
			if err != nil {
				reason = err.Error()
				break
			}
			if a.cfg.AliasCheck != nil {
				ok, err := a.cfg.AliasCheck(ctx, p)
				if err != nil || !ok {
					reason = fmt.Sprintf("podCIDR %v is not (yet) an alias range of this VM's NIC (err: %v)", p, err)
					break
				}
			}
			return p.Masked(), p6, nil
		}
		a.setNotReady(reason)
		if reason != lastReason {
			logger.Info("Not ready", "reason", reason)
			lastReason = reason
		}
		select {
		case <-ctx.Done():
			return netip.Prefix{}, netip.Prefix{}, ctx.Err()
		case <-t.C:
		}
	}
}

// ensureNetworkAvailable sets NetworkUnavailable=False, retrying with
// backoff (up to 30 s apart) until it lands or ctx ends: until then the
// scheduler keeps pods off the node.
func (a *Agent) ensureNetworkAvailable(ctx context.Context) {
	logger := klog.FromContext(ctx)
	backoff := wait.Backoff{Duration: 500 * time.Millisecond, Factor: 2, Jitter: 0.2, Steps: math.MaxInt32, Cap: 30 * time.Second}
	err := wait.ExponentialBackoffWithContext(ctx, backoff, func(ctx context.Context) (bool, error) {
		if err := a.markNetworkAvailable(ctx); err != nil {
			logger.Error(err, "Setting NetworkUnavailable=False; retrying")
			return false, nil
		}
		return true, nil
	})
	if err != nil && ctx.Err() == nil {
		logger.Error(err, "Gave up setting NetworkUnavailable=False")
	}
}

// markNetworkAvailable sets the Node's NetworkUnavailable condition False.
// Already so (an agent restart): nothing is written, and the condition's
// lastTransitionTime keeps the time it really changed.
func (a *Agent) markNetworkAvailable(ctx context.Context) error {
	a.mu.Lock()
	podCIDR, podCIDR6 := a.podCIDR, a.podCIDR6
	a.mu.Unlock()
	now := metav1.Now()
	msg := "aliasip routes this node's podCIDR " + podCIDR.String()
	if podCIDR6.IsValid() {
		msg += " and its IPv6 block " + podCIDR6.String()
	}
	cond := corev1.NodeCondition{
		Type: corev1.NodeNetworkUnavailable, Status: corev1.ConditionFalse,
		Reason: ConditionReason, Message: msg,
		LastTransitionTime: now, LastHeartbeatTime: now,
	}
	if node, err := a.nodes.Get(a.cfg.NodeName); err == nil {
		for _, c := range node.Status.Conditions {
			if c.Type != corev1.NodeNetworkUnavailable || c.Status != corev1.ConditionFalse {
				continue
			}
			if c.Reason == cond.Reason && c.Message == cond.Message {
				return nil
			}
			cond.LastTransitionTime = c.LastTransitionTime // False already
		}
	}
	patch, err := json.Marshal(map[string]any{"status": map[string]any{"conditions": []corev1.NodeCondition{cond}}})
	if err != nil {
		return err
	}
	_, err = a.client.CoreV1().Nodes().PatchStatus(ctx, a.cfg.NodeName, patch)
	return err
}
