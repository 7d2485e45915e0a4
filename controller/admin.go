package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/aliasip/aliasip/controller/adminapi"
	"github.com/aliasip/aliasip/internal/sockrpc"
)

// AdminHandler answers kubectl aliasip on the controller's administrative
// socket (adminapi). The socket is reachable only inside the controller's
// pod, so who may call it is who may exec into that pod (RBAC pods/exec).
func (c *Controller) AdminHandler() sockrpc.Handler {
	return func(ctx context.Context, op sockrpc.Op, body json.RawMessage) (any, error) {
		switch op {
		case adminapi.OpCloud:
			return c.cloudView(ctx)
		case adminapi.OpReleaseAlias:
			var req adminapi.AliasLeak
			if err := json.Unmarshal(body, &req); err != nil {
				return nil, &sockrpc.Error{Code: sockrpc.CodeInvalid, Message: "bad request: " + err.Error()}
			}
			return c.releaseAlias(ctx, req)
		default:
			return nil, &sockrpc.Error{Code: sockrpc.CodeInvalid, Message: fmt.Sprintf("unknown call %q", op)}
		}
	}
}

// cloudView lists the cloud's instances (one listing at a time, under the
// cloud budget like every other call) with the Node each belongs to.
func (c *Controller) cloudView(ctx context.Context) (adminapi.CloudView, error) {
	out := adminapi.CloudView{Ready: c.Ready(), DualStack: c.cfg.DualStack, Ranges: []adminapi.Range{}, Instances: []adminapi.Instance{}}
	if !out.Ready {
		return out, nil // a standby has no state: ask the leader
	}
	c.adminMu.Lock()
	defer c.adminMu.Unlock()
	stats := c.blocks.stats()
	for _, pl := range c.blocks.poolList() {
		st := stats[pl.name]
		out.Ranges = append(out.Ranges, adminapi.Range{Name: pl.name, CIDR: pl.cidr.String(), CloudName: pl.cloudName,
			MaskSize: pl.maskSize, Default: pl.isDefault(), Total: st.Total, Used: st.Used, Free: st.Free, Cooling: st.Cooling, Nodes: st.Nodes})
	}
	nodeOf, err := c.instanceNodes(ctx)
	if err != nil {
		return out, err
	}
	instances, err := c.cloud.ListInstances(ctx)
	if err != nil {
		return out, fmt.Errorf("list instances: %w", err)
	}
	for _, in := range instances {
		vi := adminapi.Instance{Ref: in.Ref.String(), Node: nodeOf[in.Ref.String()], Aliases: []adminapi.Alias{}}
		if in.IPv6.IsValid() {
			vi.IPv6 = in.IPv6.String()
		}
		for _, a := range in.Aliases {
			va := adminapi.Alias{CIDR: a.CIDR.String(), CloudName: a.RangeName}
			if c.blocks.ours(a) {
				va.Range, _, _ = c.blocks.rangeContaining(a.CIDR)
			}
			vi.Aliases = append(vi.Aliases, va)
		}
		out.Instances = append(out.Instances, vi)
	}
	return out, nil
}

// releaseAlias removes an alias that kubectl aliasip check reported leaked,
// only if it still is: the instance still carries it, it is one of our
// ranges', and no Node resolves to the instance — what the leak collector
// decides, without its grace period.
func (c *Controller) releaseAlias(ctx context.Context, req adminapi.AliasLeak) (adminapi.LeakResult, error) {
	cidr, err := netip.ParsePrefix(req.CIDR)
	if err != nil {
		return adminapi.LeakResult{}, &sockrpc.Error{Code: sockrpc.CodeInvalid, Message: fmt.Sprintf("cidr %q: %v", req.CIDR, err)}
	}
	if !c.Ready() {
		return adminapi.LeakResult{}, &sockrpc.Error{Code: sockrpc.CodeNotReady, Message: "this controller is not the leader (or has not rebuilt its state yet)"}
	}
	c.adminMu.Lock()
	defer c.adminMu.Unlock()
	instances, err := c.cloud.ListInstances(ctx)
	if err != nil {
		return adminapi.LeakResult{}, fmt.Errorf("list instances: %w", err)
	}
	// The Nodes are read from the API, not the informer's cache: the leak
	// collector's grace period covers a Node the cache has not seen yet
	// (a VM that registers as the alias is reported), this call has none.
	nodeOf, unresolved, err := c.liveInstanceNodes(ctx)
	if err != nil {
		return adminapi.LeakResult{}, err
	}
	for _, in := range instances {
		if in.Ref.String() != req.Instance {
			continue
		}
		if n := nodeOf[req.Instance]; n != "" {
			return adminapi.LeakResult{Reason: "Node " + n + " now belongs to the instance"}, nil
		}
		for n, p := range unresolved {
			if p.IsValid() && p.Overlaps(cidr) {
				return adminapi.LeakResult{Reason: fmt.Sprintf("Node %s holds %v and its instance cannot be resolved: it may be this one", n, p)}, nil
			}
		}
		for _, a := range in.Aliases {
			if a.CIDR != cidr {
				continue
			}
			if !c.blocks.ours(a) {
				return adminapi.LeakResult{Reason: "the alias is not from one of our ranges"}, nil
			}
			if err := c.removeLeak(ctx, in.Ref, cidr, time.Now()); err != nil {
				return adminapi.LeakResult{}, err
			}
			return adminapi.LeakResult{Released: true, Reason: "alias on an instance without a Node"}, nil
		}
		return adminapi.LeakResult{Reason: "the instance no longer carries it"}, nil
	}
	return adminapi.LeakResult{Reason: "no such instance any more"}, nil
}

// liveInstanceNodes maps each instance a Node resolves to (by
// InstanceRef.String) to that Node's name, from a live list of the Nodes;
// unresolved holds the podCIDR (invalid when none) of each Node whose
// instance cannot be resolved.
func (c *Controller) liveInstanceNodes(ctx context.Context) (map[string]string, map[string]netip.Prefix, error) {
	nodes, err := listNodesTrimmed(ctx, c.client, metav1.ListOptions{})
	if err != nil {
		return nil, nil, fmt.Errorf("list nodes: %w", err)
	}
	nodeOf, unresolved := map[string]string{}, map[string]netip.Prefix{}
	for _, n := range nodes.Items {
		inst, err := c.cloud.InstanceFor(ctx, n.Spec.ProviderID, n.Name)
		if err != nil {
			p, _ := netip.ParsePrefix(n.Spec.PodCIDR)
			unresolved[n.Name] = p.Masked()
			continue
		}
		nodeOf[inst.String()] = n.Name
	}
	return nodeOf, unresolved, nil
}
