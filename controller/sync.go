package controller

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	"github.com/aliasip/aliasip/cloud"
	"github.com/aliasip/aliasip/controller/allocator"
	aliasipv1 "github.com/aliasip/aliasip/controller/apis/aliasip/v1alpha1"
)

// row is one row of the state table (the package comment lists them).
type row int

const (
	rowAssign     row = iota // podCIDR empty, no block of ours on the NIC
	rowAdopt                 // podCIDR empty, a block of ours on the NIC
	rowOutOfRange            // podCIDR in no range: foreign
	rowWrongSize             // podCIDR inside a range, not one of its blocks: foreign
	rowCooling               // podCIDR a block cooling down, alias missing: wait
	rowRepair                // podCIDR set, alias missing
	rowInSync                // podCIDR set, alias equal
	rowExtras                // podCIDR set, alias equal plus leftovers of ours (not its extra blocks)
	rowMismatch              // podCIDR set, aliases of ours, none equal
)

// nodeState is what sync reads of one node: its podCIDR and the aliases
// of ours on its NIC (blocks: those that are blocks of a pool).
type nodeState struct {
	node         *corev1.Node
	inst         cloud.InstanceRef
	podCIDR      netip.Prefix
	ours, blocks []netip.Prefix
	// extras are the node's extra blocks of a growable range (growth.go):
	// on its NIC beside the podCIDR, but not leftovers.
	extras []netip.Prefix
}

// leftovers are the aliases of ours on the NIC that are neither the
// podCIDR nor one of the node's extra blocks.
func (st nodeState) leftovers() []netip.Prefix {
	var out []netip.Prefix
	for _, p := range st.ours {
		if p != st.podCIDR && !containsPrefix(st.extras, p) {
			out = append(out, p)
		}
	}
	return out
}

// sync brings one node to its row of the state table: it resolves the
// node's instance and the aliases from the pod ranges on its NIC, picks
// the row (classify) and runs the row's method, from one switch. A deleted
// node is released. Rows with a podCIDR first claim it (claim: the claim
// conflict and the reserved-in-flight rows).
func (c *Controller) sync(ctx context.Context, name string) error {
	node, err := c.nodes.Get(name)
	if apierrors.IsNotFound(err) {
		c.mu.Lock()
		delete(c.ipv6Waiting, name) // a deleted node waits for nothing
		c.mu.Unlock()
		return c.release(ctx, name)
	}
	if err != nil {
		return err
	}
	st, done, err := c.read(ctx, node)
	if done || err != nil {
		return err
	}
	r := c.classify(st)
	switch r {
	case rowRepair, rowInSync, rowExtras, rowMismatch:
		conflict, err := c.claim(node, st.podCIDR, st.inst)
		if err != nil {
			return err
		}
		if conflict != "" {
			c.mismatch(node, EventCIDRMismatch, "podCIDR %v is also the podCIDR of node %s; leaving both untouched", st.podCIDR, conflict)
			return nil
		}
	}
	switch r {
	case rowAssign, rowAdopt:
		v6, err := c.ipv6PodCIDR(ctx, node, st.inst)
		if err != nil {
			return err
		}
		if r == rowAssign {
			return c.assign(ctx, node, st.inst, v6)
		}
		return c.adopt(ctx, node, st.inst, st.blocks, st.ours, v6)
	case rowOutOfRange:
		return c.outOfRange(node)
	case rowWrongSize:
		return c.wrongSize(node, st.podCIDR)
	case rowCooling:
		return c.coolingWait(node, st.podCIDR)
	case rowRepair:
		return c.repair(ctx, node, st.inst, st.podCIDR)
	case rowInSync:
		if err := c.inSync(ctx, node, st); err != nil {
			return err
		}
		return c.syncGrowth(ctx, node, st)
	case rowExtras:
		if err := c.extras(ctx, node, st); err != nil {
			return err
		}
		return c.syncGrowth(ctx, node, st)
	default:
		return c.differs(node, st)
	}
}

// read resolves the node's instance and the aliases of ours on its NIC.
// done is true when the node cannot be looked at (its instance is not
// found: reported, retried at the next resync).
func (c *Controller) read(ctx context.Context, node *corev1.Node) (st nodeState, done bool, err error) {
	st.node = node
	inst, err := c.cloud.InstanceFor(ctx, node.Spec.ProviderID, node.Name)
	if err != nil {
		c.recorder.Eventf(node, corev1.EventTypeWarning, EventInstanceNotFound,
			"Cannot resolve instance of node (providerID %q): %v", node.Spec.ProviderID, err)
		if errors.Is(err, cloud.ErrInstanceNotFound) {
			return st, true, nil // not retried hot: the periodic resync looks again
		}
		return st, true, err
	}
	if !instanceOfNode(inst, node.Name) {
		c.recorder.Eventf(node, corev1.EventTypeWarning, EventInstanceNotNode,
			"providerID %q names instance %s, not this node's own (its name's first label, %q); aliasip does not act on another node's VM",
			node.Spec.ProviderID, inst, canonicalInstanceName(node.Name))
		return st, true, nil
	}
	st.inst = inst
	aliases, err := c.cloud.Aliases(ctx, inst)
	if err != nil {
		if errors.Is(err, cloud.ErrInstanceNotFound) {
			c.recorder.Eventf(node, corev1.EventTypeWarning, EventInstanceNotFound, "Instance %s not found: %v", inst, err)
			return st, true, nil
		}
		return st, true, fmt.Errorf("read aliases of %s: %w", inst, err)
	}
	for _, a := range aliases {
		if c.blocks.ours(a) {
			st.ours = append(st.ours, a.CIDR)
			if _, _, ok := c.blocks.rangeOf(a.CIDR); ok {
				st.blocks = append(st.blocks, a.CIDR)
			}
		}
	}
	if node.Spec.PodCIDR != "" {
		st.podCIDR, _ = netip.ParsePrefix(node.Spec.PodCIDR)
	}
	st.extras = c.blocks.extrasOf(node.Name)
	return st, false, nil
}

// instanceOfNode reports whether inst is the node's own VM: its name is
// the node name's first DNS label. A kubelet may register its own Node
// with any spec.providerID (NodeRestriction does not check it), so a
// providerID naming another VM would let one node's credentials put
// blocks on — and lock — another's NIC. GCE names a node's instance after
// the node: the GCE cloud provider maps a NodeName to an instance name by
// a plain cast and canonicalizes an FQDN to its first label
// (kubernetes/legacy-cloud-providers gce/gce_util.go,
// mapNodeNameToInstanceName and canonicalizeInstanceName; the same in
// kubernetes/cloud-provider-gcp providers/gce/gce_util.go). kind's
// providerID ends with the node's name too (kind://docker/<cluster>/<node>).
func instanceOfNode(inst cloud.InstanceRef, nodeName string) bool {
	return inst.Name == canonicalInstanceName(nodeName)
}

// canonicalInstanceName is a node name's first DNS label.
func canonicalInstanceName(nodeName string) string {
	name, _, _ := strings.Cut(nodeName, ".")
	return name
}

// classify picks the node's row.
func (c *Controller) classify(st nodeState) row {
	if st.node.Spec.PodCIDR == "" {
		// Only a block is adopted; an alias of another size from the
		// range is an extra, removed once the node has its block.
		if len(st.blocks) > 0 {
			return rowAdopt
		}
		return rowAssign
	}
	p := st.podCIDR
	if _, _, isBlock := c.blocks.rangeOf(p); !isBlock {
		if _, _, inside := c.blocks.rangeContaining(p); p.IsValid() && inside {
			return rowWrongSize
		}
		return rowOutOfRange
	}
	switch {
	case len(st.ours) == 0:
		if _, cooling := c.blocks.coolingUntil(p); cooling {
			return rowCooling
		}
		return rowRepair
	case !containsPrefix(st.ours, p):
		return rowMismatch
	case len(st.leftovers()) > 0:
		return rowExtras
	default:
		return rowInSync
	}
}

// errWaitIPv6 marks a dual-stack node whose NIC has no IPv6 range yet.
var errWaitIPv6 = errors.New("waiting for the NIC's IPv6 range")

// ipv6PodCIDR returns, on a dual-stack cluster, the IPv6 podCIDR a node
// gets: the first /112 of its NIC's IPv6 range (a /96 on GCE). GKE's
// allocator does the same: kubernetes/cloud-provider-gcp
// providers/gce/gce_instances.go GetIPV6Address masks the NIC's IPv6
// address to /112, and pkg/controller/nodeipam/ipam/cloud_cidr_allocator.go
// writes it as the second podCIDR, IPv4 first. No alias is needed: the VPC
// routes the NIC's whole /96 to the VM. Single-stack, it is the zero
// Prefix. A NIC without an IPv6 range yet makes the node wait (an Event,
// errWaitIPv6, retried; the leak collector's list queues it once the
// range is there): podCIDRs are immutable once set, so it must not get
// its IPv4 block alone.
func (c *Controller) ipv6PodCIDR(ctx context.Context, node *corev1.Node, inst cloud.InstanceRef) (netip.Prefix, error) {
	if !c.cfg.DualStack {
		return netip.Prefix{}, nil
	}
	r, err := c.cloud.IPv6Range(ctx, inst)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("read the IPv6 range of %s: %w", inst, err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !r.IsValid() || r.Bits() > 112 {
		if !c.ipv6Waiting[node.Name] {
			c.recorder.Eventf(node, corev1.EventTypeWarning, EventIPv6NotAssigned,
				"Dual-stack: the NIC of %s has no IPv6 range yet; the node gets its podCIDRs (IPv4 and IPv6 together) once it has one", inst)
		}
		c.ipv6Waiting[node.Name] = true
		return netip.Prefix{}, fmt.Errorf("node %s: %w", node.Name, errWaitIPv6)
	}
	delete(c.ipv6Waiting, node.Name)
	return netip.PrefixFrom(r.Masked().Addr(), 112), nil
}

// checkIPv6 reports, on a dual-stack cluster, a node in sync whose IPv6
// podCIDR is missing or is not the /112 of its NIC's range (foreign: left
// alone, as podCIDRs are immutable).
func (c *Controller) checkIPv6(ctx context.Context, node *corev1.Node, inst cloud.InstanceRef) {
	if !c.cfg.DualStack {
		return
	}
	var got netip.Prefix
	for _, s := range node.Spec.PodCIDRs {
		if p, err := netip.ParsePrefix(s); err == nil && p.Addr().Is6() {
			got = p
		}
	}
	r, err := c.cloud.IPv6Range(ctx, inst)
	if err != nil {
		return
	}
	switch {
	case !got.IsValid():
		c.mismatch(node, EventIPv6CIDRMismatch, "Dual-stack, but the node's podCIDRs %v have no IPv6 prefix (set before dual-stack; podCIDRs cannot change)", node.Spec.PodCIDRs)
	case !r.IsValid() || got != netip.PrefixFrom(r.Masked().Addr(), 112):
		c.mismatch(node, EventIPv6CIDRMismatch, "IPv6 podCIDR %v is not the first /112 of the NIC's IPv6 range %v; leaving it alone", got, r)
	}
}

// outOfRange is the row "podCIDR in no range": foreign, left alone.
func (c *Controller) outOfRange(node *corev1.Node) error {
	c.mu.Lock()
	podRange := c.podRange
	c.mu.Unlock()
	c.mismatch(node, EventCIDROutOfRange,
		"podCIDR %q is not inside the pod range %v nor a PodRange's; aliasip leaves this node alone", node.Spec.PodCIDR, podRange)
	return nil
}

// wrongSize is the row "podCIDR inside a range, not one of its blocks". A
// kubelet may create its own Node with any podCIDR (NodeRestriction lets
// it set spec on create). A prefix of another size overlaps blocks other
// nodes hold: it is never marked used nor freed.
func (c *Controller) wrongSize(node *corev1.Node, p netip.Prefix) error {
	rng, mask, _ := c.blocks.rangeContaining(p)
	c.mismatch(node, EventCIDRWrongSize,
		"podCIDR %v lies inside range %s but is not one of its /%d blocks; aliasip leaves this node alone", p, rng, mask)
	return nil
}

// coolingWait is the row "podCIDR a block cooling down, alias missing": a
// podCIDR we did not give (a kubelet may register its Node with one)
// naming a block that cools down keeps its cooldown, as for any other
// holder — the deleted node's pods may still answer on it. The NIC
// carrying it (adopt, in sync) is the cloud's fact and is not held back.
func (c *Controller) coolingWait(node *corev1.Node, p netip.Prefix) error {
	// Recorded, so that the expiry gives the block to this node rather
	// than to the pool (and queues it).
	until, _ := c.blocks.waitCooling(node.Name, p)
	c.recorder.Eventf(node, corev1.EventTypeNormal, EventCIDRPending,
		"podCIDR %v is a block that cools down until %v; it is repaired then", p, until.Format(time.RFC3339))
	// Not a failure, and not retried hot: the expiry queues the node.
	return fmt.Errorf("podCIDR %v cools down until %v: %w", p, until, errExhausted)
}

// mismatch is the one place a mismatch is reported: a Warning and a metric.
func (c *Controller) mismatch(node *corev1.Node, reason, format string, args ...any) {
	c.metrics.Mismatches.Inc()
	c.recorder.Eventf(node, corev1.EventTypeWarning, reason, format, args...)
}

// assign is the row "podCIDR empty, no alias": reserve a block, add the
// alias (waiting for the cloud), then patch the podCIDR.
func (c *Controller) assign(ctx context.Context, node *corev1.Node, inst cloud.InstanceRef, v6 netip.Prefix) error {
	cidr, rng, err := c.blocks.reserve(node.Name, inst, node.Labels)
	if errors.Is(err, allocator.ErrRangeExhausted) {
		c.metrics.Allocations.WithLabelValues("exhausted").Inc()
		c.recorder.Eventf(node, corev1.EventTypeWarning, EventCIDRNotAvailable,
			"No block for this node (%v); waiting for one to be released", err)
		return errExhausted
	}
	if err != nil {
		return err
	}
	if err := c.addAlias(ctx, node.Name, inst, cidr); err != nil {
		switch {
		case errors.Is(err, cloud.ErrRangeConflict):
			// Another resource really holds this block: keep it out of the
			// pool, held back for conflictHold (a range GCE was still
			// moving, or one a leak held, comes back then), and let the
			// node try another.
			c.metrics.Allocations.WithLabelValues("conflict").Inc()
			c.recorder.Eventf(node, corev1.EventTypeWarning, EventCloudAliasFailed,
				"Block %v is held by another resource; it stays out of the pool and the node gets another: %v", cidr, err)
			c.blocks.holdBack(node.Name, cidr, time.Now().Add(max(conflictHold, c.cfg.ReleaseCooldown)))
			c.saveCooling(ctx)
		case refused(err):
			// The cloud refuses this node's write whatever the block (its
			// NIC is on another subnetwork, a quota, the range limit): the
			// block goes back to the pool at once, as nothing was applied,
			// so a node that keeps failing never holds more than one.
			c.metrics.Allocations.WithLabelValues("refused").Inc()
			c.recorder.Eventf(node, corev1.EventTypeWarning, EventCloudAliasRefused,
				"The cloud refused alias %v on %s (%s); block returned to the pool, retrying with backoff: %v", cidr, inst, cloud.Code(err), err)
			if uerr := c.blocks.unreserve(node.Name, cidr); uerr != nil {
				return fmt.Errorf("return %v to the pool: %w (after: %w)", cidr, uerr, err)
			}
		default:
			// Transient errors keep the reservation so the retry asks the
			// cloud for the same block; the alias may already be there.
			c.metrics.Allocations.WithLabelValues("failed").Inc()
			c.recorder.Eventf(node, corev1.EventTypeWarning, EventCloudAliasFailed, "Add alias %v to %s: %v", cidr, inst, err)
		}
		return fmt.Errorf("add alias %v to %s: %w", cidr, inst, err)
	}
	if err := c.patchPodCIDR(ctx, node, cidr, v6, rng); err != nil {
		return err
	}
	c.metrics.Allocations.WithLabelValues("assigned").Inc()
	c.recorder.Eventf(node, corev1.EventTypeNormal, EventCIDRAssigned, "Assigned %v from range %s, alias on %s", cidr, rng, inst)
	klog.FromContext(ctx).V(2).Info("Assigned block", "node", node.Name, "cidr", cidr, "range", rng, "instance", inst)
	return nil
}

// adopt is the row "podCIDR empty, alias present": the alias (a crash or a
// failed patch after the alias was added) becomes the podCIDR; any others
// are removed at the next sync (the extra-alias row).
func (c *Controller) adopt(ctx context.Context, node *corev1.Node, inst cloud.InstanceRef, blocks, ours []netip.Prefix, v6 netip.Prefix) error {
	cidr := blocks[0]
	conflict, err := c.claim(node, cidr, inst)
	if err != nil {
		return err
	}
	if conflict != "" {
		c.mismatch(node, EventCIDRMismatch, "Alias %v on %s is the podCIDR of node %s; not adopting it", cidr, inst, conflict)
		return nil
	}
	if err := c.blocks.occupy(ours...); err != nil {
		return err
	}
	rng, _, _ := c.blocks.rangeOf(cidr)
	if err := c.patchPodCIDR(ctx, node, cidr, v6, rng); err != nil {
		return err
	}
	c.metrics.Allocations.WithLabelValues("adopted").Inc()
	c.recorder.Eventf(node, corev1.EventTypeNormal, EventCIDRAssigned, "Adopted alias %v from %s as podCIDR", cidr, inst)
	klog.FromContext(ctx).Info("Adopted alias as podCIDR", "node", node.Name, "cidr", cidr, "instance", inst)
	return nil
}

// repair is the row "podCIDR set, alias missing": add the alias back.
func (c *Controller) repair(ctx context.Context, node *corev1.Node, inst cloud.InstanceRef, podCIDR netip.Prefix) error {
	if err := c.addAlias(ctx, node.Name, inst, podCIDR); err != nil {
		reason := EventCloudAliasFailed
		if refused(err) {
			reason = EventCloudAliasRefused
		}
		c.recorder.Eventf(node, corev1.EventTypeWarning, reason, "Add alias %v to %s: %v", podCIDR, inst, err)
		return fmt.Errorf("repair alias %v on %s: %w", podCIDR, inst, err)
	}
	c.metrics.Allocations.WithLabelValues("repaired").Inc()
	c.recorder.Eventf(node, corev1.EventTypeNormal, EventCIDRAssigned, "Repaired alias %v on %s", podCIDR, inst)
	klog.FromContext(ctx).Info("Repaired missing alias", "node", node.Name, "cidr", podCIDR, "instance", inst)
	return nil
}

// inSync is the row "podCIDR set, alias equal": nothing, but the
// pod-range label (ensureLabel).
func (c *Controller) inSync(ctx context.Context, node *corev1.Node, st nodeState) error {
	if err := c.blocks.occupy(st.ours...); err != nil {
		return err
	}
	c.checkIPv6(ctx, node, st.inst)
	return c.ensureLabel(ctx, node, st.podCIDR)
}

// extras is the row "podCIDR set, alias equal plus others": remove the
// others, cool their blocks down, then as in sync.
func (c *Controller) extras(ctx context.Context, node *corev1.Node, st nodeState) error {
	if err := c.blocks.occupy(st.ours...); err != nil {
		return err
	}
	if err := c.removeExtras(ctx, node, st.inst, st.podCIDR, st.leftovers()); err != nil {
		return err
	}
	return c.ensureLabel(ctx, node, st.podCIDR)
}

// differs is the row "podCIDR set, aliases of ours, none equal": touch
// nothing (the aliases stay marked used), report.
func (c *Controller) differs(node *corev1.Node, st nodeState) error {
	if err := c.blocks.occupy(st.ours...); err != nil {
		return err
	}
	c.mismatch(node, EventCIDRMismatch, "podCIDR %v differs from alias range(s) %v on %s; leaving both untouched", st.podCIDR, st.ours, st.inst)
	return nil
}

// ensureLabel gives an in-sync node the label naming the range that holds
// its podCIDR (aliasipv1.NodeLabel: a PodRange's name, or "default") when
// the label is missing or names another range: nodes that got their block
// before the label existed, or whose label was edited or removed. One
// patch, only when the label differs.
func (c *Controller) ensureLabel(ctx context.Context, node *corev1.Node, podCIDR netip.Prefix) error {
	rng, _, ok := c.blocks.rangeOf(podCIDR)
	if !ok || node.Labels[aliasipv1.NodeLabel] == rng {
		return nil
	}
	// A strategic merge patch of metadata.labels sets this key and leaves
	// the node's other labels as they are (maps are merged key by key:
	// https://kubernetes.io/docs/tasks/manage-kubernetes-objects/update-api-object-kubectl-patch/#notes-on-the-strategic-merge-patch).
	patch := fmt.Sprintf(`{"metadata":{"labels":{%q:%q}}}`, aliasipv1.NodeLabel, rng)
	c.metrics.NodeWrites.Inc()
	if _, err := c.client.CoreV1().Nodes().Patch(ctx, node.Name, types.StrategicMergePatchType, []byte(patch), metav1PatchOptions); err != nil {
		return fmt.Errorf("label node %s with range %s: %w", node.Name, rng, err)
	}
	klog.FromContext(ctx).V(2).Info("Labelled node with the range of its block", "node", node.Name, "cidr", podCIDR,
		"range", rng, "was", node.Labels[aliasipv1.NodeLabel])
	return nil
}

// removeExtras removes leftovers, the aliases from the pod ranges on the
// node's NIC other than its podCIDR and its extra blocks (left by an
// operation a previous leader or process started and never recorded, or
// an extra block whose record was dropped), and cools their blocks down.
func (c *Controller) removeExtras(ctx context.Context, node *corev1.Node, inst cloud.InstanceRef, keep netip.Prefix, leftovers []netip.Prefix) error {
	for _, p := range leftovers {
		if err := c.cloud.RemoveAlias(ctx, inst, p); err != nil {
			return fmt.Errorf("remove extra alias %v from %s: %w", p, inst, err)
		}
		if err := c.blocks.coolRemoved(node.Name, p, time.Now().Add(c.cfg.ReleaseCooldown)); err != nil {
			return err
		}
		c.saveCooling(ctx)
		c.wake()
		c.mismatch(node, EventExtraAliasRemoved,
			"Removed alias %v from %s: the node's podCIDR is %v; the block cools down for %v", p, inst, keep, c.cfg.ReleaseCooldown)
		klog.FromContext(ctx).Info("Removed extra alias", "node", node.Name, "cidr", p, "podCIDR", keep, "instance", inst)
	}
	return nil
}

// errPending marks a sync that waits for another node's reservation of
// its block to settle.
var errPending = errors.New("block reserved for another node")

// claim records name as the holder of cidr; it returns the name of another
// live node whose podCIDR is that block ("" when the claim succeeded).
//
// When the other node only reserved the block — its alias add has not
// settled — the node's own NIC carrying the alias is the fact: an
// operation a killed process started finished after this process rebuilt
// its state and reserved the block again. The other node's add fails on
// that alias (the cloud refuses a range another NIC carries) and gives
// the block up, so this node retries (errPending) rather than being
// reported and dropped; the other node never patched its podCIDR.
func (c *Controller) claim(node *corev1.Node, cidr netip.Prefix, inst cloud.InstanceRef) (string, error) {
	reserving := ""
	holder := func(n string, p netip.Prefix) holderState {
		other, err := c.nodes.Get(n)
		switch {
		case err != nil:
			return holderGone
		case samePrefix(other.Spec.PodCIDR, p):
			return holderHolding
		default:
			reserving = n
			return holderReserving
		}
	}
	other, st, err := c.blocks.claim(node.Name, cidr, inst, holder, time.Now().Add(c.cfg.ReleaseCooldown))
	if err != nil {
		return "", err
	}
	if other == "" && reserving != "" {
		// Its reservation lapsed (no write of it ran): it reserves anew.
		c.queue.Add(reserving)
	}
	if st == holderReserving {
		c.recorder.Eventf(node, corev1.EventTypeNormal, EventCIDRPending,
			"Block %v on %s is reserved for node %s, whose alias operation has not settled; retrying", cidr, inst, other)
		return "", fmt.Errorf("%v is reserved for node %s: %w", cidr, other, errPending)
	}
	return other, nil
}

// refused reports whether the cloud refused a write for a reason another
// block or a retry soon will not change.
func refused(err error) bool {
	return errors.Is(err, cloud.ErrInvalid) || errors.Is(err, cloud.ErrQuotaExceeded) || errors.Is(err, cloud.ErrTooManyAliases)
}

// addAlias adds a block as an alias from its range's secondary range (the
// default pool's cloudName is the name PodRange returned).
func (c *Controller) addAlias(ctx context.Context, node string, inst cloud.InstanceRef, cidr netip.Prefix) error {
	_, cloudName, ok := c.blocks.rangeOf(cidr)
	if !ok {
		return fmt.Errorf("block %v is in no range", cidr)
	}
	// While the write runs, the node's reservation holds the block
	// against another node whose NIC shows it (claim).
	c.blocks.writing(node, cidr, false)
	defer c.blocks.writing(node, cidr, true)
	return c.cloud.AddAlias(ctx, inst, cloud.AliasRange{CIDR: cidr, RangeName: cloudName})
}

// patchPodCIDR writes spec.podCIDR, spec.podCIDRs and the label naming the
// block's range (aliasipv1.NodeLabel) in one patch.
func (c *Controller) patchPodCIDR(ctx context.Context, node *corev1.Node, cidr, v6 netip.Prefix, rng string) error {
	// spec.podCIDRs holds at most one prefix per family, IPv4 first here as
	// GKE writes them, and spec.podCIDR is podCIDRs[0]
	// (https://kubernetes.io/docs/reference/kubernetes-api/cluster-resources/node-v1/#NodeSpec).
	cidrs := fmt.Sprintf("%q", cidr.String())
	if v6.IsValid() {
		cidrs += fmt.Sprintf(",%q", v6.String())
	}
	patch := fmt.Sprintf(`{"metadata":{"labels":{%q:%q}},"spec":{"podCIDR":%q,"podCIDRs":[%s]}}`,
		aliasipv1.NodeLabel, rng, cidr.String(), cidrs)
	c.metrics.NodeWrites.Inc()
	_, err := c.client.CoreV1().Nodes().Patch(ctx, node.Name, types.StrategicMergePatchType, []byte(patch), metav1PatchOptions)
	if err != nil {
		return fmt.Errorf("patch podCIDR %v on node %s: %w", cidr, node.Name, err)
	}
	return nil
}

// release handles a deleted node: its alias is removed from the instance if
// it still holds it, and the block cools down before reuse.
func (c *Controller) release(ctx context.Context, name string) error {
	a, ok := c.blocks.releasing(name)
	// Its extra blocks first (growth.go): from the instance its podCIDR
	// was on (none known: the leak collector removes them).
	if err := c.releaseExtras(ctx, name, a.inst); err != nil {
		return err
	}
	if !ok {
		return nil
	}
	if a.inst.Name != "" {
		if err := c.cloud.RemoveAlias(ctx, a.inst, a.cidr); err != nil {
			return fmt.Errorf("remove alias %v from %s of deleted node %s: %w", a.cidr, a.inst, name, err)
		}
	}
	ref := &corev1.ObjectReference{Kind: "Node", Name: name, UID: types.UID(name)}
	if heir := c.podCIDRHolder(a.cidr, name); heir != "" {
		// Another live node has this block as its podCIDR (two nodes
		// claimed it; the deleted one was older). It is that node's now,
		// not free: its sync puts the alias on its NIC.
		c.blocks.handOver(name, a, heir, time.Now().Add(c.cfg.ReleaseCooldown))
		c.queue.Add(heir)
		c.recorder.Eventf(ref, corev1.EventTypeNormal, EventAliasReleased,
			"Removed alias %v from %s; the block stays with node %s, whose podCIDR it is", a.cidr, a.inst, heir)
		klog.FromContext(ctx).Info("Released block of deleted node to the node sharing it", "node", name, "cidr", a.cidr, "heir", heir)
		return nil
	}
	c.blocks.released(name, a, time.Now().Add(c.cfg.ReleaseCooldown))
	c.saveCooling(ctx)
	c.wake()
	c.recorder.Eventf(ref, corev1.EventTypeNormal, EventAliasReleased,
		"Removed alias %v from %s; block reusable after %v", a.cidr, a.inst, c.cfg.ReleaseCooldown)
	klog.FromContext(ctx).Info("Released block of deleted node", "node", name, "cidr", a.cidr, "instance", a.inst)
	return nil
}

// podCIDRHolder returns a live node other than except whose podCIDR is
// the block ("" when none).
func (c *Controller) podCIDRHolder(cidr netip.Prefix, except string) string {
	nodes, err := c.nodes.List(everything)
	if err != nil {
		return ""
	}
	for _, n := range nodes {
		if n.Name != except && samePrefix(n.Spec.PodCIDR, cidr) {
			return n.Name
		}
	}
	return ""
}

// samePrefix reports whether a podCIDR string names the prefix, however
// it is spelled (an IPv6 podCIDR a kubelet wrote need not be canonical).
func samePrefix(podCIDR string, p netip.Prefix) bool {
	q, err := netip.ParsePrefix(podCIDR)
	return err == nil && q == p
}

func containsPrefix(ps []netip.Prefix, p netip.Prefix) bool {
	for _, q := range ps {
		if q == p {
			return true
		}
	}
	return false
}
