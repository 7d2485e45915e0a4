package controller

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"github.com/aliasip/aliasip/cloud"
	"github.com/aliasip/aliasip/controller/allocator"
	aliasipv1 "github.com/aliasip/aliasip/controller/apis/aliasip/v1alpha1"
	"github.com/aliasip/aliasip/controller/generated/clientset/versioned"
	aliasipv1informers "github.com/aliasip/aliasip/controller/generated/informers/externalversions/aliasip/v1alpha1"
	aliasiplisters "github.com/aliasip/aliasip/controller/generated/listers/aliasip/v1alpha1"
)

// Growable PodRanges (spec.growth): a node of such a range starts with
// one block, its podCIDR, and is given extra blocks of the same size as
// its agent reports it runs low. Each extra block is one more alias range
// on the node's NIC and is recorded in the node's NodeBlocks status,
// which only the controller writes; the agent reports its usage in the
// NodeBlocks spec. The rows (README "State table"):
//
//   - granted: the node runs low (free < lowWater, or an ADD waits) and
//     holds fewer than maxBlocksPerNode blocks → reserve a block of its
//     range, add the alias (waiting for the cloud), then record it Active;
//   - attached: a recorded block on the NIC → nothing;
//   - missing: a recorded block not on the NIC → add the alias back;
//   - draining: an Active extra block with no address for returnAfter,
//     whose node keeps lowWater free without it → record it Draining (the
//     agent allocates no more from it);
//   - reactivated: the node runs low while it holds a Draining block →
//     that block is recorded Active again instead of a grant (the report
//     that let it drain may have been a moment old, or the pods came
//     back); a drained acknowledgement for the old drain no longer
//     matches, so it cannot give the block back;
//   - given back: a Draining block the agent reports drained (for that
//     same drain) → drop the record, cool the block down, remove the alias;
//   - leftover: an alias of the range on the NIC that is neither the
//     podCIDR nor recorded (a grant whose record never landed) → removed
//     and cooled down (the extra-alias row).
//
// The order of each write is what makes a crash safe: a grant is recorded
// only after its alias is on the NIC, so a record never names a block the
// NIC may lack for long (missing repairs it); an alias added but not
// recorded was never used by the agent (it allocates only from recorded
// Active blocks) and is a leftover; a given-back block's record goes
// first, so the agent (which already stopped using it) can never see it
// again, and its alias then goes as a leftover if the removal is lost.

// growthCapCondition reasons.
const (
	reasonCapReached = "CapReached"
	reasonBelowCap   = "BelowCap"
)

// Event reasons of growable ranges.
const (
	// EventBlockGranted (Normal): an extra block was attached to the node.
	EventBlockGranted = "BlockGranted"
	// EventBlockDraining (Normal): an extra block is being given back.
	EventBlockDraining = "BlockDraining"
	// EventBlockReturned (Normal): a drained extra block was removed from
	// the NIC; it cools down before reuse.
	EventBlockReturned = "BlockReturned"
	// EventBlockCapReached (Warning): the node runs low and holds its
	// range's maxBlocksPerNode blocks.
	EventBlockCapReached = "BlockCapReached"
	// EventBlockReactivated (Normal): a draining extra block was made
	// Active again because the node ran low (no new block needed).
	EventBlockReactivated = "BlockReactivated"
)

// nodeBlocks is the controller's view of the NodeBlocks objects.
type nodeBlocks struct {
	client   versioned.Interface
	informer cache.SharedIndexInformer
	lister   aliasiplisters.NodeBlocksLister
	// idleSince: when each Active extra block was first reported empty
	// (by block; in memory only: a restart only delays a return). The
	// workers sync different nodes at once: mu guards it.
	mu        sync.Mutex
	idleSince map[netip.Prefix]time.Time
}

// idle returns when p was first seen empty, recording now if it was not.
func (g *nodeBlocks) idle(p netip.Prefix, now time.Time) (since time.Time, seen bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	since, seen = g.idleSince[p]
	if !seen {
		g.idleSince[p] = now
	}
	return since, seen
}

// busy forgets that p was seen empty.
func (g *nodeBlocks) busy(p netip.Prefix) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.idleSince, p)
}

// useNodeBlocks gives the controller the NodeBlocks informer (started
// with the PodRanges') and the client that writes their status.
func (c *Controller) useNodeBlocks(client versioned.Interface, inf aliasipv1informers.NodeBlocksInformer) {
	nb := &nodeBlocks{client: client, informer: inf.Informer(), lister: inf.Lister(), idleSince: map[netip.Prefix]time.Time{}}
	// An agent's report queues its node.
	enqueue := func(obj any) {
		if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
			c.queue.Add(key)
		}
	}
	inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, cur any) { enqueue(cur) },
	})
	c.growth = nb
	if c.ranges != nil {
		c.ranges.nodeBlocks = nb.informer
	}
}

// growthSettings are a growable range's settings, defaults applied.
type growthSettings struct {
	maxBlocks   int
	lowWater    int
	returnAfter time.Duration
}

// growthOf returns the settings of the named range when it grows.
func (c *Controller) growthOf(rangeName string) (growthSettings, bool) {
	if c.ranges == nil || c.growth == nil || rangeName == aliasipv1.DefaultRangeName || !c.growth.informer.HasSynced() {
		return growthSettings{}, false
	}
	pr, err := c.ranges.lister.Get(rangeName)
	if err != nil || pr.Spec.Growth == nil {
		return growthSettings{}, false
	}
	g := pr.Spec.Growth
	s := growthSettings{maxBlocks: int(g.MaxBlocksPerNode), lowWater: int(g.LowWater), returnAfter: time.Duration(g.ReturnAfterSeconds) * time.Second}
	if s.maxBlocks < 2 {
		s.maxBlocks = 8 // the CRD's default, for an object written without it
	}
	s.maxBlocks = min(s.maxBlocks, cloud.MaxAliasRangesPerNIC-1)
	return s, true
}

// blockCapacity is the number of pod addresses the agent's IPAM serves
// from a block when it has not reported it (internal/blocksize: size − 3).
func blockCapacity(p netip.Prefix) int {
	bits := p.Addr().BitLen() - p.Bits()
	if bits >= 30 {
		return 1 << 30
	}
	return max(1<<bits-3, 0)
}

// syncGrowth runs the growth rows for a node in sync whose podCIDR is a
// block of a growable range: it is called after the podCIDR rows, with
// the aliases of ours on its NIC (st.ours).
func (c *Controller) syncGrowth(ctx context.Context, node *corev1.Node, st nodeState) error {
	rng, _, ok := c.blocks.rangeOf(st.podCIDR)
	gs, grows := c.growthOf(rng)
	if !ok || !grows {
		// Extra blocks held under this name belong to a Node of the same
		// name that is gone (deleted and registered again before its
		// release ran): never this node's.
		return c.dropStaleExtras(ctx, node, st, "its podCIDR is not in a growable range")
	}
	logger := klog.FromContext(ctx)
	// Read from the API, not the cache: a record just written (a grant, a
	// give-back) must not come back from a stale copy.
	nb, err := c.growth.client.AliasipV1alpha1().NodeBlocks().Get(ctx, node.Name, metav1.GetOptions{})
	if err == nil && !ownedBy(nb, node) {
		// Left by a deleted Node of the same name: its blocks are not
		// this node's. Deleted; the next sync creates this node's.
		if err := c.dropStaleExtras(ctx, node, st, "its NodeBlocks belonged to a deleted Node of the same name"); err != nil {
			return err
		}
		if err := c.growth.client.AliasipV1alpha1().NodeBlocks().Delete(ctx, node.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &nb.UID}}); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete the stale NodeBlocks of %s: %w", node.Name, err)
		}
		return fmt.Errorf("stale NodeBlocks of %s deleted: %w", node.Name, errRequeue)
	}
	if apierrors.IsNotFound(err) {
		nb, err = c.createNodeBlocks(ctx, node, rng)
	}
	if err != nil {
		return fmt.Errorf("NodeBlocks of %s: %w", node.Name, err)
	}
	status := nb.Status.DeepCopy()
	status.PodRange = rng
	now := time.Now()
	// One entry per block (an edited status may repeat one).
	seen := map[string]bool{}
	status.Blocks = slices.DeleteFunc(status.Blocks, func(b aliasipv1.GrantedBlock) bool {
		dup := seen[b.CIDR]
		seen[b.CIDR] = true
		return dup
	})

	// Recorded blocks the process does not hold yet (a grant recorded by
	// another process): held now, unless another node holds the block.
	for i := 0; i < len(status.Blocks); i++ {
		p, perr := netip.ParsePrefix(status.Blocks[i].CIDR)
		other := ""
		if perr == nil {
			other, err = c.blocks.recordExtra(node.Name, p)
		}
		if perr != nil || err != nil || other != "" {
			c.mismatch(node, EventCIDRMismatch, "NodeBlocks records block %q that is not this node's to hold (held by %q, %v); dropping the record", status.Blocks[i].CIDR, other, errors.Join(perr, err))
			status.Blocks = slices.Delete(status.Blocks, i, i+1)
			i--
		}
	}
	// Blocks the process granted whose record did not land: recorded now.
	for _, p := range c.blocks.extrasOf(node.Name) {
		if !slices.ContainsFunc(status.Blocks, func(b aliasipv1.GrantedBlock) bool { return b.CIDR == p.String() }) {
			status.Blocks = append(status.Blocks, aliasipv1.GrantedBlock{CIDR: p.String(), State: aliasipv1.BlockActive, GrantedAt: metav1.NewTime(now)})
		}
	}

	// Given back: Draining, and the agent reports it drained for this drain.
	for i := 0; i < len(status.Blocks); i++ {
		b := status.Blocks[i]
		if b.State != aliasipv1.BlockDraining || b.DrainingSince == nil || !drainedAck(nb.Spec.Drained, b) {
			continue
		}
		p := netip.MustParsePrefix(b.CIDR)
		status.Blocks = slices.Delete(status.Blocks, i, i+1)
		i--
		if nb, err = c.writeNodeBlocksStatus(ctx, nb, status); err != nil {
			return err
		}
		c.blocks.dropExtra(node.Name, p, now.Add(c.cfg.ReleaseCooldown))
		c.saveCooling(ctx)
		c.wake()
		c.growth.busy(p)
		if err := c.cloud.RemoveAlias(ctx, st.inst, p); err != nil {
			// Not recorded any more: the next sync removes it as a leftover.
			return fmt.Errorf("remove given-back block %v from %s: %w", p, st.inst, err)
		}
		c.metrics.Growth.WithLabelValues("returned").Inc()
		c.recorder.Eventf(node, corev1.EventTypeNormal, EventBlockReturned, "Removed drained block %v from %s; it cools down for %v", p, st.inst, c.cfg.ReleaseCooldown)
		logger.Info("Extra block given back", "node", node.Name, "cidr", p)
	}

	// Missing: recorded but not on the NIC.
	for _, b := range status.Blocks {
		p := netip.MustParsePrefix(b.CIDR)
		if containsPrefix(st.ours, p) {
			continue
		}
		if err := c.addAlias(ctx, node.Name, st.inst, p); err != nil {
			c.metrics.Growth.WithLabelValues("failed").Inc()
			c.recorder.Eventf(node, corev1.EventTypeWarning, EventCloudAliasFailed, "Add extra block %v back to %s: %v", p, st.inst, err)
			return fmt.Errorf("repair extra block %v on %s: %w", p, st.inst, err)
		}
		c.metrics.Growth.WithLabelValues("repaired").Inc()
		c.recorder.Eventf(node, corev1.EventTypeNormal, EventCIDRAssigned, "Repaired extra block %v on %s", p, st.inst)
	}

	// The agent's report: free addresses in the blocks it may allocate
	// from. A block it has not reported yet (just granted) counts as
	// free, so one report never earns two grants.
	usage := map[string]aliasipv1.BlockUsage{}
	for _, u := range nb.Spec.Blocks {
		usage[u.CIDR] = u
	}
	free, blocksHeld := 0, 1+len(status.Blocks)
	active := []netip.Prefix{st.podCIDR}
	for _, b := range status.Blocks {
		if b.State == aliasipv1.BlockActive {
			active = append(active, netip.MustParsePrefix(b.CIDR))
		}
	}
	capOf := func(p netip.Prefix) int {
		if u, ok := usage[p.String()]; ok {
			return int(u.Capacity)
		}
		return blockCapacity(p)
	}
	for _, p := range active {
		u, ok := usage[p.String()]
		if !ok {
			free += blockCapacity(p)
			continue
		}
		free += max(int(u.Capacity-u.Allocated), 0)
	}
	low := gs.lowWater
	if low == 0 {
		low = blockCapacity(st.podCIDR) / 2
	}
	// A block granted but not in the report yet: the agent has not seen
	// it, so the report says nothing about what it still needs. The ADDs
	// waiting take addresses first: free − waiting is what is left after
	// them (an ADD waits only when nothing is free, so a report with both
	// free addresses and ADDs waiting was written as a block was taken up,
	// before they took from it: no grant for those).
	allSeen := !slices.ContainsFunc(active, func(p netip.Prefix) bool { _, ok := usage[p.String()]; return !ok })
	short := allSeen && free-int(nb.Spec.Waiting) < low
	reactivated := false
	if short {
		// A Draining block is capacity the node still holds: made Active
		// again (the one with the most addresses in use) before any grant.
		best := -1
		for i, b := range status.Blocks {
			if b.State == aliasipv1.BlockDraining && (best < 0 || usage[b.CIDR].Allocated > usage[status.Blocks[best].CIDR].Allocated) {
				best = i
			}
		}
		if best >= 0 {
			b := &status.Blocks[best]
			p := netip.MustParsePrefix(b.CIDR)
			b.State, b.DrainingSince = aliasipv1.BlockActive, nil
			free += max(capOf(p)-int(usage[b.CIDR].Allocated), 0)
			c.growth.busy(p)
			reactivated = true
			c.metrics.Growth.WithLabelValues("reactivated").Inc()
			c.recorder.Eventf(node, corev1.EventTypeNormal, EventBlockReactivated, "Draining block %v made active again: the node runs low (%d free, %d ADDs waiting)", p, free, nb.Spec.Waiting)
			logger.Info("Draining block reactivated", "node", node.Name, "cidr", p, "free", free, "waiting", nb.Spec.Waiting)
		}
	}
	switch {
	case reactivated:
		meta.SetStatusCondition(&status.Conditions, metav1.Condition{Type: aliasipv1.ConditionCapReached, Status: metav1.ConditionFalse,
			Reason: reasonBelowCap, Message: fmt.Sprintf("%d of %d blocks held, %d addresses free", blocksHeld, gs.maxBlocks, free)})
	case short && blocksHeld >= gs.maxBlocks:
		if !meta.IsStatusConditionTrue(status.Conditions, aliasipv1.ConditionCapReached) {
			c.metrics.Growth.WithLabelValues("cap_reached").Inc()
			c.recorder.Eventf(node, corev1.EventTypeWarning, EventBlockCapReached,
				"The node runs low (%d free, %d ADDs waiting) and holds its range's maxBlocksPerNode (%d) blocks; no more are added", free, nb.Spec.Waiting, gs.maxBlocks)
		}
		meta.SetStatusCondition(&status.Conditions, metav1.Condition{Type: aliasipv1.ConditionCapReached, Status: metav1.ConditionTrue,
			Reason: reasonCapReached, Message: fmt.Sprintf("%d of %d blocks held, %d addresses free", blocksHeld, gs.maxBlocks, free)})
	case short:
		p, err := c.grantBlock(ctx, node, st.inst, rng)
		if err != nil {
			if _, werr := c.writeNodeBlocksStatus(ctx, nb, status); werr != nil {
				return errors.Join(err, werr)
			}
			return err
		}
		status.Blocks = append(status.Blocks, aliasipv1.GrantedBlock{CIDR: p.String(), State: aliasipv1.BlockActive, GrantedAt: metav1.NewTime(now)})
		blocksHeld++
		logger.Info("Extra block granted", "node", node.Name, "cidr", p, "free", free, "waiting", nb.Spec.Waiting, "blocks", blocksHeld)
		fallthrough
	default:
		meta.SetStatusCondition(&status.Conditions, metav1.Condition{Type: aliasipv1.ConditionCapReached, Status: metav1.ConditionFalse,
			Reason: reasonBelowCap, Message: fmt.Sprintf("%d of %d blocks held, %d addresses free", blocksHeld, gs.maxBlocks, free)})
	}

	// Draining: the Active extra blocks empty for returnAfter, newest
	// first (the older blocks hold the longer-lived pods), as long as the
	// node keeps lowWater free without them.
	if !short && !reactivated {
		for i := len(status.Blocks) - 1; i >= 0; i-- {
			b := &status.Blocks[i]
			p := netip.MustParsePrefix(b.CIDR)
			u, reported := usage[b.CIDR]
			if b.State != aliasipv1.BlockActive || !reported || u.Allocated > 0 {
				c.growth.busy(p)
				continue
			}
			since, ok := c.growth.idle(p, now)
			if !ok {
				c.queue.AddAfter(node.Name, gs.returnAfter)
				continue
			}
			if idle := now.Sub(since); idle < gs.returnAfter {
				// Looked at again when it is due: a delayed add of the same
				// node for another block, due earlier, may have taken this
				// one's place in the queue (one entry per key).
				c.queue.AddAfter(node.Name, gs.returnAfter-idle)
				continue
			}
			if free-capOf(p) < low {
				continue
			}
			free -= capOf(p)
			b.State, b.DrainingSince = aliasipv1.BlockDraining, &metav1.Time{Time: now.Truncate(time.Second)}
			c.growth.busy(p)
			c.metrics.Growth.WithLabelValues("draining").Inc()
			c.recorder.Eventf(node, corev1.EventTypeNormal, EventBlockDraining, "Block %v empty for %v: draining it to give it back", p, gs.returnAfter)
		}
	}
	status.ActiveBlocks, status.DrainingBlocks = 1, 0
	for _, b := range status.Blocks {
		if b.State == aliasipv1.BlockActive {
			status.ActiveBlocks++
		} else {
			status.DrainingBlocks++
		}
	}
	_, err = c.writeNodeBlocksStatus(ctx, nb, status)
	return err
}

// errRequeue asks for the node to be synced again soon.
var errRequeue = errors.New("requeued")

// ownedBy reports whether a NodeBlocks belongs to this Node object: it
// names the Node's UID as its owner (or names no owner: one an
// administrator created).
func ownedBy(nb *aliasipv1.NodeBlocks, node *corev1.Node) bool {
	if len(nb.OwnerReferences) == 0 {
		return true
	}
	return slices.ContainsFunc(nb.OwnerReferences, func(r metav1.OwnerReference) bool { return r.Kind == "Node" && r.UID == node.UID })
}

// dropStaleExtras gives back the extra blocks held under a node's name
// that are not this Node's: off its NIC if there, cooled down either way
// (on another VM the leak collector removes them; the cloud refuses a
// range another NIC carries meanwhile).
func (c *Controller) dropStaleExtras(ctx context.Context, node *corev1.Node, st nodeState, why string) error {
	for _, p := range c.blocks.extrasOf(node.Name) {
		if containsPrefix(st.ours, p) {
			if err := c.cloud.RemoveAlias(ctx, st.inst, p); err != nil {
				return fmt.Errorf("remove stale extra block %v from %s: %w", p, st.inst, err)
			}
		}
		c.blocks.dropExtra(node.Name, p, time.Now().Add(c.cfg.ReleaseCooldown))
		c.saveCooling(ctx)
		c.wake()
		c.mismatch(node, EventExtraAliasRemoved, "Extra block %v held under this node's name is not this Node's (%s); given back, it cools down for %v", p, why, c.cfg.ReleaseCooldown)
	}
	return nil
}

// drainedAck reports whether the agent's report says b, in this drain,
// is drained.
func drainedAck(drained []aliasipv1.DrainedBlock, b aliasipv1.GrantedBlock) bool {
	return slices.ContainsFunc(drained, func(d aliasipv1.DrainedBlock) bool {
		return d.CIDR == b.CIDR && d.DrainingSince.Equal(b.DrainingSince)
	})
}

// grantBlock reserves a block of the node's range and attaches it to the
// NIC (waiting for the cloud). A GCE network interface carries a list of
// alias ranges, each naming its own subnetwork range
// (compute/v1 NetworkInterface.aliasIpRanges, AliasIpRange.ipCidrRange and
// subnetworkRangeName: https://cloud.google.com/compute/docs/reference/rest/v1/instances),
// so an extra block is one more entry of the same secondary range, written
// with the whole list (cloud/gce addAlias); kubernetes/cloud-provider-gcp
// metis/ adds /28 alias ranges to a node the same way. The per-interface
// limit on that list is cloud.MaxAliasRangesPerNIC (150: "Maximum number
// of alias IP ranges per network interface", https://cloud.google.com/vpc/docs/quota;
// every range also counts towards the VPC network's "IP aliases per VPC
// network" quota); the CRD caps maxBlocksPerNode at 100. On failure the
// block goes back to the pool when the cloud surely did not apply it,
// else it cools down.
func (c *Controller) grantBlock(ctx context.Context, node *corev1.Node, inst cloud.InstanceRef, rng string) (netip.Prefix, error) {
	p, err := c.blocks.grantExtra(node.Name, rng)
	if errors.Is(err, allocator.ErrRangeExhausted) {
		c.metrics.Growth.WithLabelValues("exhausted").Inc()
		c.recorder.Eventf(node, corev1.EventTypeWarning, EventCIDRNotAvailable, "No extra block for this node: %v", err)
		return netip.Prefix{}, errExhausted
	}
	if err != nil {
		return netip.Prefix{}, err
	}
	if err := c.addAlias(ctx, node.Name, inst, p); err != nil {
		switch {
		case errors.Is(err, cloud.ErrRangeConflict):
			c.blocks.dropExtra(node.Name, p, time.Now().Add(max(conflictHold, c.cfg.ReleaseCooldown)))
			c.saveCooling(ctx)
		case refused(err):
			c.metrics.Growth.WithLabelValues("refused").Inc()
			c.recorder.Eventf(node, corev1.EventTypeWarning, EventCloudAliasRefused,
				"The cloud refused extra block %v on %s (%s); block returned to the pool: %v", p, inst, cloud.Code(err), err)
			if uerr := c.blocks.unreserveExtra(node.Name, p); uerr != nil {
				return netip.Prefix{}, errors.Join(err, uerr)
			}
			return netip.Prefix{}, fmt.Errorf("add extra block %v to %s: %w", p, inst, err)
		default:
			// It may have reached the NIC: cooled, and removed as a
			// leftover if it did.
			c.blocks.dropExtra(node.Name, p, time.Now().Add(c.cfg.ReleaseCooldown))
			c.saveCooling(ctx)
		}
		c.metrics.Growth.WithLabelValues("failed").Inc()
		c.recorder.Eventf(node, corev1.EventTypeWarning, EventCloudAliasFailed, "Add extra block %v to %s: %v", p, inst, err)
		return netip.Prefix{}, fmt.Errorf("add extra block %v to %s: %w", p, inst, err)
	}
	c.metrics.Growth.WithLabelValues("granted").Inc()
	c.recorder.Eventf(node, corev1.EventTypeNormal, EventBlockGranted, "Extra block %v from range %s attached to %s", p, rng, inst)
	return p, nil
}

// createNodeBlocks creates a node's NodeBlocks, owned by the Node (so
// the garbage collector removes it with the Node).
func (c *Controller) createNodeBlocks(ctx context.Context, node *corev1.Node, rng string) (*aliasipv1.NodeBlocks, error) {
	nb := &aliasipv1.NodeBlocks{ObjectMeta: metav1.ObjectMeta{Name: node.Name, OwnerReferences: []metav1.OwnerReference{{
		APIVersion: "v1", Kind: "Node", Name: node.Name, UID: node.UID,
	}}}}
	created, err := c.growth.client.AliasipV1alpha1().NodeBlocks().Create(ctx, nb, metav1.CreateOptions{FieldManager: fieldManager})
	if apierrors.IsAlreadyExists(err) {
		return c.growth.client.AliasipV1alpha1().NodeBlocks().Get(ctx, node.Name, metav1.GetOptions{})
	}
	if err == nil {
		klog.FromContext(ctx).V(2).Info("Created NodeBlocks", "node", node.Name, "range", rng)
	}
	return created, err
}

// writeNodeBlocksStatus writes status when it differs from nb's, and
// returns the object as written (nb when nothing was written).
func (c *Controller) writeNodeBlocksStatus(ctx context.Context, nb *aliasipv1.NodeBlocks, status *aliasipv1.NodeBlocksStatus) (*aliasipv1.NodeBlocks, error) {
	if equality.Semantic.DeepEqual(&nb.Status, status) {
		return nb, nil
	}
	nb = nb.DeepCopy()
	nb.Status = *status.DeepCopy()
	out, err := c.growth.client.AliasipV1alpha1().NodeBlocks().UpdateStatus(ctx, nb, metav1.UpdateOptions{FieldManager: fieldManager})
	if err != nil {
		return nil, fmt.Errorf("update status of NodeBlocks %s: %w", nb.Name, err)
	}
	return out, nil
}

// releaseExtras removes a deleted node's extra blocks from its instance
// and cools them down, then deletes its NodeBlocks (the garbage
// collector would too, through its owner reference).
func (c *Controller) releaseExtras(ctx context.Context, name string, inst cloud.InstanceRef) error {
	for _, p := range c.blocks.extrasOf(name) {
		if inst.Name != "" {
			if err := c.cloud.RemoveAlias(ctx, inst, p); err != nil {
				return fmt.Errorf("remove extra block %v from %s of deleted node %s: %w", p, inst, name, err)
			}
		}
		c.blocks.dropExtra(name, p, time.Now().Add(c.cfg.ReleaseCooldown))
		c.saveCooling(ctx)
		c.wake()
		if c.growth != nil {
			c.growth.busy(p)
		}
		klog.FromContext(ctx).Info("Released extra block of deleted node", "node", name, "cidr", p, "instance", inst)
	}
	if c.growth == nil {
		return nil
	}
	err := c.growth.client.AliasipV1alpha1().NodeBlocks().Delete(ctx, name, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete NodeBlocks of deleted node %s: %w", name, err)
	}
	return nil
}
