package controller

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"

	"github.com/aliasip/aliasip/cloud"
	"github.com/aliasip/aliasip/controller/allocator"
	aliasipv1 "github.com/aliasip/aliasip/controller/apis/aliasip/v1alpha1"
	"github.com/aliasip/aliasip/controller/generated/clientset/versioned"
	aliasipinformers "github.com/aliasip/aliasip/controller/generated/informers/externalversions"
	aliasipv1informers "github.com/aliasip/aliasip/controller/generated/informers/externalversions/aliasip/v1alpha1"
	aliasiplisters "github.com/aliasip/aliasip/controller/generated/listers/aliasip/v1alpha1"
	"github.com/aliasip/aliasip/internal/blocksize"
)

// Event reasons recorded on PodRanges.
const (
	// EventPodRangeNearlyExhausted: at least 80 % of the range's blocks are used.
	EventPodRangeNearlyExhausted = "PodRangeNearlyExhausted"
	// EventPodRangeExhausted: the range has no free block.
	EventPodRangeExhausted = "PodRangeExhausted"
	// EventPodRangeNotReady: the controller does not allocate from the
	// range; the Ready condition says why.
	EventPodRangeNotReady = "PodRangeNotReady"
)

// nearlyExhaustedPercent is the share of used blocks from which a range
// is reported as nearly exhausted.
const nearlyExhaustedPercent = 80

// crdPollInterval is how often the controller looks for the PodRange CRD
// when it was not installed at start.
var crdPollInterval = 30 * time.Second

// podRanges is the controller's view of the PodRange objects: their
// informer (started once the API serves the CRD), the client that writes
// their status and finalizer, and the queue of ranges to sync.
type podRanges struct {
	client   versioned.Interface
	disc     discovery.DiscoveryInterface
	informer cache.SharedIndexInformer
	lister   aliasiplisters.PodRangeLister
	queue    workqueue.TypedRateLimitingInterface[string]
	once     sync.Once
	// nodeBlocks is the NodeBlocks informer, run with the PodRanges' (the
	// chart installs both CRDs); nil when not used.
	nodeBlocks       cache.SharedIndexInformer
	nodeBlocksServed atomic.Bool
}

// UsePodRanges makes the controller allocate from PodRange objects as
// well as from the default range. Call it before Run. Without the CRD
// installed the controller runs with the default range only and starts
// using PodRanges when the CRD appears.
func (c *Controller) UsePodRanges(client versioned.Interface, disc discovery.DiscoveryInterface, resync time.Duration) {
	f := aliasipinformers.NewSharedInformerFactory(client, resync).Aliasip().V1alpha1()
	c.usePodRanges(client, disc, f.PodRanges())
	c.useNodeBlocks(client, f.NodeBlocks())
}

// usePodRanges is UsePodRanges with the PodRange informer given (a test
// gives one it seeds itself).
func (c *Controller) usePodRanges(client versioned.Interface, disc discovery.DiscoveryInterface, inf aliasipv1informers.PodRangeInformer) {
	r := &podRanges{
		client:   client,
		disc:     disc,
		informer: inf.Informer(),
		lister:   inf.Lister(),
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.DefaultTypedControllerRateLimiter[string](),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "aliasip-podranges"}),
	}
	enqueue := func(obj any) {
		if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
			r.queue.Add(key)
		}
	}
	// A PodRange the range worker has not made a pool of yet (just
	// created, or its resolution failed and is retried) already holds
	// back the nodes it selects: they wait for it rather than take a
	// block of the default range, which they would keep.
	pending := func(obj any) {
		if pr, ok := obj.(*aliasipv1.PodRange); ok {
			sel, err := metav1.LabelSelectorAsSelector(&pr.Spec.NodeSelector)
			if err != nil {
				sel = nil
			}
			c.blocks.setPending(pr.Name, sel)
		}
	}
	inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { pending(obj); enqueue(obj) },
		UpdateFunc: func(_, cur any) { pending(cur); enqueue(cur) },
		DeleteFunc: enqueue,
	})
	c.ranges = r
}

// served reports whether the API server serves PodRanges.
func (r *podRanges) served() (bool, error) {
	list, err := r.disc.ServerResourcesForGroupVersion(aliasipv1.SchemeGroupVersion.String())
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	served := false
	for _, res := range list.APIResources {
		switch res.Name {
		case "podranges":
			served = true
		case "nodeblocks":
			r.nodeBlocksServed.Store(true)
		}
	}
	return served, nil
}

// start runs the informer and waits for its cache when the CRD is served;
// otherwise it looks again every crdPollInterval in the background and
// returns at once.
func (r *podRanges) start(ctx context.Context) error {
	logger := klog.FromContext(ctx)
	ok, err := r.served()
	if err != nil {
		return fmt.Errorf("discover PodRanges: %w", err)
	}
	if ok {
		r.run(ctx)
		if !cache.WaitForCacheSync(ctx.Done(), r.informer.HasSynced) {
			return errors.New("PodRange informer never synced")
		}
		if r.nodeBlocks != nil && r.nodeBlocksServed.Load() {
			// The rebuild restores the extra blocks from their records.
			if !cache.WaitForCacheSync(ctx.Done(), r.nodeBlocks.HasSynced) {
				return errors.New("NodeBlocks informer never synced")
			}
		}
		return nil
	}
	logger.Info("PodRange CRD not installed: allocating from the default range only until it is", "lookEvery", crdPollInterval)
	go wait.UntilWithContext(ctx, func(ctx context.Context) {
		if ok, _ := r.served(); ok {
			logger.Info("PodRange CRD installed: watching PodRanges")
			r.run(ctx)
		}
	}, crdPollInterval)
	return nil
}

func (r *podRanges) run(ctx context.Context) {
	r.once.Do(func() {
		go r.informer.RunWithContext(ctx)
		// Only when served: the chart's CRDs are not upgraded by helm, so
		// a controller newer than its CRDs runs without growable ranges
		// (their nodes keep their first block) rather than wait forever.
		if r.nodeBlocks != nil && r.nodeBlocksServed.Load() {
			go r.nodeBlocks.RunWithContext(ctx)
		}
	})
}

// sorted returns the PodRanges oldest first (then by name).
func (r *podRanges) sorted() []*aliasipv1.PodRange {
	if !r.informer.HasSynced() {
		return nil
	}
	list, err := r.lister.List(everything)
	if err != nil {
		return nil
	}
	sort.Slice(list, func(i, j int) bool {
		a, b := list[i], list[j]
		if !a.CreationTimestamp.Equal(&b.CreationTimestamp) {
			return a.CreationTimestamp.Before(&b.CreationTimestamp)
		}
		return a.Name < b.Name
	})
	return list
}

// enqueueAll queues every PodRange.
func (r *podRanges) enqueueAll() {
	for _, pr := range r.sorted() {
		r.queue.Add(pr.Name)
	}
}

// runRanges syncs PodRanges (one worker: ranges are few) and queues the
// ranges whose block counts changed, at most once a second, so their
// status follows the allocations without a write per node.
func (c *Controller) runRanges(ctx context.Context) {
	r := c.ranges
	go func() {
		<-ctx.Done()
		r.queue.ShutDown()
	}()
	go wait.UntilWithContext(ctx, func(context.Context) {
		for _, name := range c.blocks.takeChanged() {
			if name != aliasipv1.DefaultRangeName {
				r.queue.Add(name)
			}
		}
	}, time.Second)
	for {
		key, quit := r.queue.Get()
		if quit {
			return
		}
		err := c.syncRange(ctx, key)
		if err == nil {
			r.queue.Forget(key)
		} else {
			klog.FromContext(ctx).V(2).Info("PodRange sync failed, will retry", "podRange", key, "err", err)
			r.queue.AddRateLimited(key)
		}
		r.queue.Done(key)
	}
}

// resolve turns a PodRange into a pool, or says why it cannot be one
// (reason and message for its Ready condition). An error is a failure to
// find out (the subnetwork could not be read), to retry.
//
// With GCE a range is a secondary range of the nodes' subnetwork, its CIDR
// read from the subnetwork and its aliases named after it (alias IP
// ranges name the secondary range they come from:
// https://cloud.google.com/vpc/docs/alias-ip, "Subnet secondary CIDR ranges").
// The fake cloud has no subnetwork: a range is a cidr, its aliases named
// podrange-<name>.
func (c *Controller) resolve(ctx context.Context, pr *aliasipv1.PodRange) (*pool, string, string, error) {
	sel, err := metav1.LabelSelectorAsSelector(&pr.Spec.NodeSelector)
	if err != nil {
		return nil, aliasipv1.ReasonInvalidSelector, fmt.Sprintf("nodeSelector: %v", err), nil
	}
	subnetRanges := c.cloud.secondaryRanges()
	var cidr netip.Prefix
	var cloudName string
	switch {
	case pr.Spec.SecondaryRangeName != "" && !subnetRanges:
		return nil, aliasipv1.ReasonUnsupported,
			"secondaryRangeName needs GCE; with the fake cloud give the range as cidr", nil
	case pr.Spec.SecondaryRangeName != "":
		cidr, err = c.cloud.SecondaryRange(ctx, pr.Spec.SecondaryRangeName)
		if errors.Is(err, cloud.ErrNoSecondaryRange) {
			return nil, aliasipv1.ReasonSecondaryRangeNotFound, err.Error(), nil
		}
		if err != nil {
			return nil, "", "", fmt.Errorf("PodRange %s: %w", pr.Name, err)
		}
		cloudName = pr.Spec.SecondaryRangeName
	case subnetRanges:
		return nil, aliasipv1.ReasonUnsupported,
			"a cidr range needs the fake cloud; on GCE name the subnetwork's secondary range (secondaryRangeName)", nil
	default:
		cidr, err = netip.ParsePrefix(pr.Spec.CIDR)
		if err != nil || cidr != cidr.Masked() {
			return nil, aliasipv1.ReasonUnsupported, fmt.Sprintf("cidr %q is not a network in CIDR notation", pr.Spec.CIDR), nil
		}
		cloudName = "podrange-" + pr.Name
	}
	// Dual-stack, a node's IPv6 block is the first /112 of its NIC's IPv6
	// range, not a block of a pool: a PodRange is the IPv4 side, as the
	// flags' range is (an IPv6 one would give a node two IPv6 podCIDRs,
	// which the API refuses).
	if c.cfg.DualStack && cidr.Addr().Is6() {
		return nil, aliasipv1.ReasonUnsupported, fmt.Sprintf(
			"%v is an IPv6 range; with --dual-stack a PodRange is the IPv4 side (each node's IPv6 block is the first /112 of its NIC's IPv6 range)", cidr), nil
	}
	mask, err := pr.Spec.BlockMaskSize(cidr.Addr().BitLen())
	if err != nil {
		return nil, aliasipv1.ReasonBlockSizeDoesNotFit, err.Error(), nil
	}
	// The agent's rule (the schema checks a cidr's; a secondary range's
	// family is known only here).
	if err := blocksize.CheckMask(mask, cidr.Addr().BitLen()); err != nil {
		return nil, aliasipv1.ReasonBlockSizeDoesNotFit, err.Error(), nil
	}
	alloc, err := allocator.New(cidr, mask)
	if err != nil {
		return nil, aliasipv1.ReasonBlockSizeDoesNotFit, fmt.Sprintf("/%d blocks in %v: %v", mask, cidr, err), nil
	}
	return &pool{name: pr.Name, cidr: cidr, cloudName: cloudName, maskSize: mask,
		priority: pr.Spec.Priority, selector: sel, alloc: alloc}, "", "", nil
}

// syncRange brings one PodRange's pool, finalizer and status up to date.
func (c *Controller) syncRange(ctx context.Context, name string) error {
	logger := klog.FromContext(ctx)
	pr, err := c.ranges.lister.Get(name)
	if apierrors.IsNotFound(err) {
		// Gone without our finalizer's consent (removed by hand): nodes
		// keep their blocks; the pool goes once none does.
		c.blocks.clearUnusable(name)
		c.wakeWaiting()
		if _, active := c.blocks.pool(name); active {
			if holders := c.blocks.removePool(name); len(holders) > 0 {
				logger.Info("PodRange deleted while nodes hold blocks of it", "podRange", name, "nodes", len(holders))
				return nil
			}
			c.ranges.enqueueAll() // a range it overlapped may be used now
		}
		return nil
	}
	if err != nil {
		return err
	}
	if pr.DeletionTimestamp != nil {
		return c.deleteRange(ctx, pr)
	}
	if !slices.Contains(pr.Finalizers, aliasipv1.Finalizer) {
		pr = pr.DeepCopy()
		pr.Finalizers = append(pr.Finalizers, aliasipv1.Finalizer)
		if pr, err = c.ranges.client.AliasipV1alpha1().PodRanges().Update(ctx, pr, metav1.UpdateOptions{FieldManager: fieldManager}); err != nil {
			return fmt.Errorf("add finalizer to PodRange %s: %w", name, err)
		}
	}
	if cur, active := c.blocks.pool(name); active {
		// The range and block size are immutable (the CRD's rules), so an
		// active pool is resolved once: a status refresh costs no cloud
		// call. Only the selector and the priority may change.
		sel, err := metav1.LabelSelectorAsSelector(&pr.Spec.NodeSelector)
		if err != nil {
			// It keeps the selector it had.
			return c.writeRangeStatus(ctx, pr, true, metav1.ConditionFalse, aliasipv1.ReasonInvalidSelector, fmt.Sprintf("nodeSelector: %v", err))
		}
		c.blocks.setPolicy(name, func(p *pool) { p.priority, p.selector, p.deleting = pr.Spec.Priority, sel, false })
		if cur.priority != pr.Spec.Priority || cur.selector.String() != sel.String() || cur.deleting {
			c.wakeWaiting() // a waiting node may get a block now, or from another range
		}
		return c.writeRangeStatus(ctx, pr, true, metav1.ConditionTrue, aliasipv1.ReasonValid,
			fmt.Sprintf("allocating /%d blocks of %v to the nodes it selects", cur.maskSize, cur.cidr))
	}
	pl, reason, msg, err := c.resolve(ctx, pr)
	if err != nil {
		return err
	}
	if pl == nil {
		sel, _ := metav1.LabelSelectorAsSelector(&pr.Spec.NodeSelector)
		if c.blocks.setUnusable(name, sel) {
			c.wakeWaiting() // a node its old selector held back may use another range now
		}
		return c.writeRangeStatus(ctx, pr, false, metav1.ConditionFalse, reason, msg)
	}
	if other := c.blocks.overlapping(name, pl.cidr); other != "" {
		c.blocks.setUnusable(name, pl.selector)
		return c.writeRangeStatus(ctx, pr, false, metav1.ConditionFalse, aliasipv1.ReasonOverlaps, c.overlapMessage(pl, other))
	}
	used, err := c.usedIn(ctx, pl)
	if err != nil {
		return err
	}
	other, err := c.blocks.addPool(pl, used)
	if err != nil {
		return err
	}
	if other != "" {
		c.blocks.setUnusable(name, pl.selector)
		return c.writeRangeStatus(ctx, pr, false, metav1.ConditionFalse, aliasipv1.ReasonOverlaps, c.overlapMessage(pl, other))
	}
	c.blocks.clearUnusable(name)
	logger.Info("Allocating from PodRange", "podRange", name, "cidr", pl.cidr, "maskSize", pl.maskSize,
		"priority", pl.priority, "selector", pl.selector.String(), "blocksUsed", len(used))
	// Nodes waiting for a block may get one here; nodes whose podCIDR
	// lies in the range claim it.
	c.wakeWaiting()
	nodes, _ := c.nodes.List(everything)
	for _, n := range nodes {
		if p, err := netip.ParsePrefix(n.Spec.PodCIDR); err == nil && pl.contains(p) {
			c.queue.Add(n.Name)
		}
	}
	return c.writeRangeStatus(ctx, pr, true, metav1.ConditionTrue, aliasipv1.ReasonValid,
		fmt.Sprintf("allocating /%d blocks of %v to the nodes it selects", pl.maskSize, pl.cidr))
}

// wakeWaiting queues the nodes waiting for a block: the ranges changed.
func (c *Controller) wakeWaiting() {
	for _, n := range c.blocks.waitingNodes() {
		c.queue.Add(n)
	}
}

func (c *Controller) overlapMessage(pl *pool, other string) string {
	desc := other
	if o, ok := c.blocks.pool(other); ok {
		desc = fmt.Sprintf("%s (%v)", other, o.cidr)
	}
	return fmt.Sprintf("%v overlaps range %s, which was there first; nothing is allocated from this range", pl.cidr, desc)
}

// usedIn returns the blocks of a new pool already in use: nodes' podCIDRs
// and aliases of its secondary range on the instances.
func (c *Controller) usedIn(ctx context.Context, pl *pool) ([]netip.Prefix, error) {
	var used []netip.Prefix
	nodes, err := c.nodes.List(everything)
	if err != nil {
		return nil, err
	}
	for _, n := range nodes {
		// Only a block: a podCIDR of another size is foreign (sync).
		if p, err := netip.ParsePrefix(n.Spec.PodCIDR); err == nil && pl.isBlock(p) {
			used = append(used, p)
		}
	}
	instances, err := c.cloud.ListInstances(ctx)
	if errors.Is(err, cloud.ErrPartialList) {
		// As at the rebuild: the missing zones' aliases are refused by
		// the cloud if handed out, and marked by the next complete list.
		klog.FromContext(ctx).Error(err, "New PodRange: instance list incomplete", "podRange", pl.name)
		c.metrics.PartialLists.Inc()
	} else if err != nil {
		return nil, fmt.Errorf("list instances: %w", err)
	}
	for _, in := range instances {
		for _, a := range in.Aliases {
			if pl.holds(a) {
				used = append(used, a.CIDR)
			}
		}
	}
	return used, nil
}

// deleteRange handles a PodRange being deleted: it hands out no new
// block, and its finalizer goes once no node holds a block of it.
func (c *Controller) deleteRange(ctx context.Context, pr *aliasipv1.PodRange) error {
	_, active := c.blocks.pool(pr.Name)
	c.blocks.setPolicy(pr.Name, func(p *pool) { p.deleting = true })
	if !active {
		sel, _ := metav1.LabelSelectorAsSelector(&pr.Spec.NodeSelector)
		c.blocks.setUnusable(pr.Name, sel)
		// Not a pool in this process — but it may have been one in an
		// earlier process (its range could not be read at the rebuild),
		// with nodes and aliases of it. It is resolved now and made a
		// pool being deleted, so that holders and aliases are counted
		// below; one that cannot be read keeps its finalizer.
		pl, _, _, err := c.resolve(ctx, pr)
		if err != nil {
			return c.writeRangeStatus(ctx, pr, false, metav1.ConditionFalse, aliasipv1.ReasonInUse,
				fmt.Sprintf("being deleted: its range cannot be read (%v); the range goes once it is known that no node or instance uses it", err))
		}
		if pl != nil && c.blocks.overlapping(pr.Name, pl.cidr) == "" {
			used, err := c.usedIn(ctx, pl)
			if err != nil {
				return err
			}
			pl.deleting = true
			other, err := c.blocks.addPool(pl, used)
			if err != nil {
				return err
			}
			if other == "" {
				active = true
				c.blocks.clearUnusable(pr.Name)
				nodes, _ := c.nodes.List(everything)
				for _, n := range nodes {
					if p, err := netip.ParsePrefix(n.Spec.PodCIDR); err == nil && pl.contains(p) {
						c.queue.Add(n.Name) // they claim their blocks
					}
				}
			}
		}
	}
	if active {
		// Nodes whose podCIDR is a block of it hold it, whether or not
		// their sync recorded it yet.
		if pl, ok := c.blocks.pool(pr.Name); ok {
			nodes, _ := c.nodes.List(everything)
			var users []string
			for _, n := range nodes {
				if p, err := netip.ParsePrefix(n.Spec.PodCIDR); err == nil && pl.isBlock(p) {
					users = append(users, n.Name)
				}
			}
			if len(users) > 0 {
				sort.Strings(users)
				shown := users
				if len(shown) > 5 {
					shown = shown[:5]
				}
				c.ranges.queue.AddAfter(pr.Name, c.cfg.GCInterval)
				return c.writeRangeStatus(ctx, pr, true, metav1.ConditionFalse, aliasipv1.ReasonInUse,
					fmt.Sprintf("being deleted: %d node(s) still hold blocks of it (%s); no new block is handed out, and the range goes once they are gone",
						len(users), strings.Join(shown, ", ")))
			}
		}
	}
	if holders := c.blocks.holders(pr.Name); len(holders) > 0 {
		shown := holders
		if len(shown) > 5 {
			shown = shown[:5]
		}
		return c.writeRangeStatus(ctx, pr, true, metav1.ConditionFalse, aliasipv1.ReasonInUse,
			fmt.Sprintf("being deleted: %d node(s) still hold blocks of it (%s); no new block is handed out, and the range goes once they are gone",
				len(holders), strings.Join(shown, ", ")))
	}
	if active {
		// A range is not forgotten while an instance carries one of its
		// aliases: once the pool goes, the leak collector no longer counts
		// them as ours, and a node deleted while the controller was down
		// would keep its alias forever. The finalizer stays until they are
		// collected (or the list is complete again).
		if carriers, err := c.aliasCarriers(ctx, pr.Name); err != nil || len(carriers) > 0 {
			msg := fmt.Sprintf("being deleted: the instance list is incomplete (%v); the range goes once every instance is known to carry none of its aliases", err)
			if err == nil {
				shown := carriers
				if len(shown) > 5 {
					shown = shown[:5]
				}
				msg = fmt.Sprintf("being deleted: %d instance(s) still carry aliases of it (%s); the leak collector removes those of instances without a Node after the grace period, and the range goes then",
					len(carriers), strings.Join(shown, ", "))
			}
			c.ranges.queue.AddAfter(pr.Name, c.cfg.GCInterval)
			return c.writeRangeStatus(ctx, pr, true, metav1.ConditionFalse, aliasipv1.ReasonInUse, msg)
		}
	}
	if holders := c.blocks.removePool(pr.Name); len(holders) > 0 {
		return fmt.Errorf("PodRange %s: %d node(s) took a block of it meanwhile", pr.Name, len(holders))
	}
	if active {
		klog.FromContext(ctx).Info("PodRange removed: no node holds a block of it", "podRange", pr.Name)
		c.ranges.enqueueAll() // a range it overlapped may be used now
	}
	c.blocks.clearUnusable(pr.Name)
	c.wakeWaiting() // nodes it selected get a block from another range
	if i := slices.Index(pr.Finalizers, aliasipv1.Finalizer); i >= 0 {
		pr = pr.DeepCopy()
		pr.Finalizers = slices.Delete(pr.Finalizers, i, i+1)
		if _, err := c.ranges.client.AliasipV1alpha1().PodRanges().Update(ctx, pr, metav1.UpdateOptions{FieldManager: fieldManager}); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("remove finalizer from PodRange %s: %w", pr.Name, err)
		}
	}
	return nil
}

// aliasCarriers returns the instances that carry an alias of the named
// pool's range; an incomplete instance list is an error (unknown).
func (c *Controller) aliasCarriers(ctx context.Context, name string) ([]string, error) {
	pl, ok := c.blocks.pool(name)
	if !ok {
		return nil, nil
	}
	instances, err := c.cloud.ListInstances(ctx)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, in := range instances {
		for _, a := range in.Aliases {
			if pl.holds(a) {
				out = append(out, in.Ref.String())
				break
			}
		}
	}
	sort.Strings(out)
	return out, nil
}

// fieldManager names the controller's writes.
const fieldManager = "aliasip-controller"
