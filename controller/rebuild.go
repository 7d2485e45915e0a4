package controller

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/klog/v2"

	"github.com/aliasip/aliasip/cloud"
	"github.com/aliasip/aliasip/controller/allocator"
	aliasipv1 "github.com/aliasip/aliasip/controller/apis/aliasip/v1alpha1"
	"github.com/aliasip/aliasip/internal/blocksize"
)

// rangesHeld returns the names of the pools some instance carries an
// alias of (its secondary range name, inside its range). It reads the
// cloud, not the Nodes: a kubelet may register its own Node with any
// podCIDR and set the pod-range label on it, so Node fields would let one
// node's credentials decide which of two overlapping ranges stays in use.
func rangesHeld(pools []*pool, instances []cloud.Instance) map[string]bool {
	held := map[string]bool{}
	for _, in := range instances {
		for _, a := range in.Aliases {
			for _, pl := range pools {
				if pl.holds(a) {
					held[pl.name] = true
				}
			}
		}
	}
	return held
}

// rebuild marks every block in use by a Node's podCIDR or by an alias on a
// known instance, so no block is handed out twice across restarts.
func (c *Controller) rebuild(ctx context.Context) error {
	logger := klog.FromContext(ctx)
	podRange, rangeName, err := c.cloud.PodRange(ctx)
	if err != nil {
		return fmt.Errorf("read pod range: %w", err)
	}
	alloc, err := allocator.New(podRange, c.cfg.MaskSize)
	if err != nil {
		return fmt.Errorf("%w: pod range %v: %w", errConfig, podRange, err)
	}
	if err := blocksize.CheckMask(c.cfg.MaskSize, podRange.Addr().BitLen()); err != nil {
		return fmt.Errorf("%w: pod range %v: %w", errConfig, podRange, err)
	}
	// The state is rebuilt in a blocks of its own, through its restore
	// methods, and installed whole (reset) once complete.
	st := newBlocks()
	st.restorePool(&pool{name: aliasipv1.DefaultRangeName, cidr: podRange.Masked(), cloudName: rangeName, maskSize: c.cfg.MaskSize, alloc: alloc})
	unusable := map[string]labels.Selector{}
	instances, err := c.cloud.ListInstances(ctx)
	if errors.Is(err, cloud.ErrPartialList) {
		// Some zones could not be read: their instances' aliases are
		// unknown. Allocation goes on (one zone's outage must not stop
		// every node); a block one of them carries is refused by the
		// cloud when handed out (held back, ErrRangeConflict), and the
		// leak collector's next complete list marks it used.
		logger.Error(err, "Rebuild: instance list incomplete; the missing zones' aliases are checked by the cloud and the next list")
		c.metrics.PartialLists.Inc()
	} else if err != nil {
		return fmt.Errorf("list instances: %w", err)
	}
	if c.ranges != nil {
		// Of two overlapping ranges the one that was in use stays in use
		// (the other's status says why it is not). At run time that is
		// the one made a pool first, not always the older one: a range
		// created while an older one was unusable (it overlapped a third,
		// since gone) is used, and the older one is then refused. So the
		// ranges some instance carries an alias of come first (the cloud
		// says so, not a Node field a kubelet could write), then the
		// rest, each in creation order.
		var resolved []*pool
		for _, pr := range c.ranges.sorted() {
			pl, _, _, err := c.resolve(ctx, pr)
			if err != nil {
				// As at run time (syncRange retries it): a range that
				// cannot be resolved now — its secondary range cannot be
				// read — holds back the nodes it selects, and only those.
				// Its nodes' blocks lie in no pool, so none is handed out.
				logger.Error(err, "PodRange not resolved at rebuild; its nodes wait, the others allocate", "podRange", pr.Name)
				sel, serr := metav1.LabelSelectorAsSelector(&pr.Spec.NodeSelector)
				if serr != nil {
					sel = labels.Nothing()
				}
				unusable[pr.Name] = sel
				continue
			}
			if pl == nil {
				if sel, err := metav1.LabelSelectorAsSelector(&pr.Spec.NodeSelector); err == nil {
					unusable[pr.Name] = sel
				}
				continue
			}
			pl.deleting = pr.DeletionTimestamp != nil
			resolved = append(resolved, pl)
		}
		held := rangesHeld(resolved, instances)
		sort.SliceStable(resolved, func(i, j int) bool { return held[resolved[i].name] && !held[resolved[j].name] })
		for _, pl := range resolved {
			if !st.restorePool(pl) {
				unusable[pl.name] = pl.selector // it overlaps a range taken first
			}
		}
	}
	c.accepting.Store(true) // events from here on are queued; the list covers the rest
	nodes, err := c.nodes.List(everything)
	if err != nil {
		return err
	}
	// The older node keeps a block two nodes claim; ties (timestamps have
	// one-second resolution) go by name, so every rebuild decides alike.
	sort.Slice(nodes, func(i, j int) bool {
		if !nodes[i].CreationTimestamp.Equal(&nodes[j].CreationTimestamp) {
			return nodes[i].CreationTimestamp.Before(&nodes[j].CreationTimestamp)
		}
		return nodes[i].Name < nodes[j].Name
	})
	// The extra blocks of growable ranges, as their NodeBlocks record them,
	// for the nodes alive (a deleted node's are its release's and the leak
	// collector's): first those the node's own NIC carries — the cloud's
	// fact, which a podCIDR a kubelet wrote into its own Node must not
	// beat — then, after the podCIDRs, the recorded ones missing from the
	// NIC (the repair row puts them back), each unless already held.
	onNIC := map[string]map[netip.Prefix]bool{}
	for _, in := range instances {
		m := map[netip.Prefix]bool{}
		for _, a := range in.Aliases {
			m[a.CIDR] = true
		}
		onNIC[in.Ref.String()] = m
	}
	// Each node's instance, resolved once, in the nodes' order: with the
	// fake cloud in memory (the chart's) an instance is made on its first
	// lookup and gets the next IPv6 range, so the lookups' order must not
	// depend on which nodes grow (growable nodes first gave them other
	// ranges than their Nodes' IPv6 podCIDRs after a controller restart).
	type resolvedInstance struct {
		ref cloud.InstanceRef
		err error
	}
	instanceOf := map[string]resolvedInstance{}
	for _, n := range nodes {
		inst, err := c.cloud.InstanceFor(ctx, n.Spec.ProviderID, n.Name)
		instanceOf[n.Name] = resolvedInstance{inst, err}
	}
	extras := 0
	restoreExtras := func(carried bool) error {
		if c.growth == nil || !c.growth.informer.HasSynced() {
			return nil
		}
		for _, n := range nodes {
			nb, err := c.growth.lister.Get(n.Name)
			if err != nil || !ownedBy(nb, n) {
				continue
			}
			inst, ierr := instanceOf[n.Name].ref, instanceOf[n.Name].err
			for _, b := range nb.Status.Blocks {
				p, err := netip.ParsePrefix(b.CIDR)
				if err != nil {
					continue
				}
				if carried != (ierr == nil && instanceOfNode(inst, n.Name) && onNIC[inst.String()][p]) {
					continue
				}
				ok, err := st.restoreExtra(n.Name, p)
				if err != nil {
					return fmt.Errorf("node %s: extra block %v: %w", n.Name, p, err)
				}
				if ok {
					extras++
				}
			}
		}
		return nil
	}
	if err := restoreExtras(true); err != nil {
		return err
	}
	for _, n := range nodes {
		p, err := netip.ParsePrefix(n.Spec.PodCIDR)
		if err != nil || !st.isBlock(p) {
			continue // foreign (another size included): never marked used, never freed
		}
		// Held without an instance when it cannot be resolved: the node's
		// sync reports it, and a release has no alias to remove (the leak
		// collector looks).
		inst, err := instanceOf[n.Name].ref, instanceOf[n.Name].err
		if err == nil && !instanceOfNode(inst, n.Name) {
			err = fmt.Errorf("providerID names instance %s, not the node's own", inst)
		}
		if err != nil {
			logger.V(2).Info("Node's instance not resolved at rebuild", "node", n.Name, "err", err)
			inst = cloud.InstanceRef{}
		}
		// Two nodes claiming one block: the first (older) holds it, the
		// younger's sync reports it, and when the older goes the block
		// passes to the younger (release) rather than cooling.
		if err := st.restoreNode(n.Name, p, inst); err != nil {
			return fmt.Errorf("node %s: podCIDR %v: %w", n.Name, p, err)
		}
	}
	if err := restoreExtras(false); err != nil {
		return err
	}
	aliases := 0
	for _, in := range instances {
		for _, a := range in.Aliases {
			ok, err := st.restoreAlias(a)
			if err != nil {
				return fmt.Errorf("instance %s: alias %v: %w", in.Ref, a.CIDR, err)
			}
			if ok {
				aliases++
			}
		}
	}
	cooling := 0
	if c.cfg.Cooling != nil {
		saved, err := c.cfg.Cooling.Load(ctx)
		if err != nil {
			if r, ok := c.cfg.Cooling.(interface {
				Ref() *corev1.ObjectReference
			}); ok && errors.Is(err, ErrCoolingCorrupt) {
				c.recorder.Eventf(r.Ref(), corev1.EventTypeWarning, EventCoolingStateInvalid,
					"Cannot read the blocks cooling down; the controller stays not ready: %v", err)
			}
			return err
		}
		now := time.Now()
		for cidr, until := range saved {
			restored, err := st.restoreCooling(cidr, until, now)
			if err != nil {
				return fmt.Errorf("cooling block %v: %w", cidr, err)
			}
			if restored {
				cooling++
			}
		}
	}
	c.blocks.reset(st, unusable)
	c.mu.Lock()
	c.podRange, c.rangeName = podRange, rangeName
	c.ready = true
	c.mu.Unlock()
	logger.Info("Rebuilt allocation state", "podRange", podRange, "rangeName", rangeName,
		"maskSize", c.cfg.MaskSize, "nodes", len(nodes), "instances", len(instances),
		"aliases", aliases, "extraBlocks", extras, "cooling", cooling, "blocksUsed", alloc.Used(), "blocksFree", alloc.Free(), "podRanges", st.poolCount()-1)
	if c.ranges != nil {
		c.ranges.enqueueAll()
	}
	// Nodes waiting for a block go first: a node that joined during the
	// restart must not wait behind thousands of in-sync checks.
	for _, n := range nodes {
		if n.Spec.PodCIDR == "" {
			c.queue.Add(n.Name)
		}
	}
	for _, n := range nodes {
		if n.Spec.PodCIDR != "" {
			c.queue.Add(n.Name)
		}
	}
	return nil
}
