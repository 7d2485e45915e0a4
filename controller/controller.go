// Package controller is aliasip's cluster controller: it gives every Node a
// block of the pod range, attaches that block to the node's VM NIC as an
// alias IP range through package cloud, and writes spec.podCIDR(s).
//
// # The state table
//
// For each node, sync reads the node's podCIDR and the alias ranges from the
// pod range on its NIC, and acts on exactly one row:
//
//	podCIDR  alias on NIC      action
//	empty    none              reserve a block, add the alias (wait), patch podCIDR
//	set      missing           add the alias for the podCIDR (repair)
//	empty    present           adopt: patch podCIDR from the alias
//	set      present, equal    nothing (in sync); the label below set if
//	                           missing or naming another range
//	set      present, differs  nothing; Warning CIDRMismatch and a metric
//	set      equal + others    remove the others, cool their blocks down
//	any      another's podCIDR nothing; Warning CIDRMismatch (claim conflict)
//	any      another's reserve retry; Normal CIDRPending (claim, reserved)
//	deleted  —                 release: remove the alias, cool the block,
//	                           or hand it to a live node whose podCIDR it is
//
// A podCIDR outside every range is foreign: Warning CIDROutOfRange, nothing
// else is touched. So is one inside a range that is not one of its blocks
// (CIDRWrongSize): a kubelet may create its own Node with any podCIDR, and
// a prefix of another size overlaps other nodes' blocks.
//
// # Ranges
//
// Blocks come from pools (pools.go): the default range given by flags,
// and one per PodRange object (ranges.go), added and removed while the
// controller runs. A new node gets its block from the PodRanges whose
// selector matches its labels, highest priority first, then the one with
// the most free blocks; from the default range when no PodRange selects
// it; from none (it waits, with CIDRNotAvailable) when only PodRanges that
// hand out nothing select it (overlapping, invalid, being deleted, not
// made a pool yet: just created, or its resolution is retried). Its
// podCIDR patch also sets the label aliasip.io/pod-range. A PodRange
// overlapping an older range is not used, and says so in its status; one
// being deleted keeps its finalizer until no node holds a block of it.
//
// # Where a block could leak, and how it is recovered
//
//   - Crash after the alias is added but before the podCIDR patch: on restart
//     the rebuild marks the alias's block used, and the node's sync takes the
//     "adopt" row.
//   - Patch fails: the reservation is kept for the node; the retry adopts.
//   - Alias add fails with a transient error: the reservation is kept, so the
//     retry asks for the same block (the call is idempotent).
//   - The cloud refuses the node whatever the block (cloud.ErrInvalid,
//     ErrQuotaExceeded, ErrTooManyAliases): nothing was applied, so the block
//     goes straight back to the pool; a node that keeps failing holds at
//     most one. A refusal after an attempt of unknown outcome is reported as
//     transient instead, keeping the reservation.
//   - The cloud says another resource holds the block (ErrRangeConflict): it
//     stays out of the pool for conflictHold, then comes back.
//   - Node deleted while the controller is down, or its alias removal never
//     succeeds: the alias stays on an instance with no Node; the leak
//     collector removes it after --leak-grace-period, frees the block from
//     the deleted node's ownership, and the block cools down.
//   - Leader change or restart during a sync: syncs run on their own context
//     (bounded by SyncTimeout) and Run returns only once they finished, so
//     the Lease is released after them; an alias an interrupted process still
//     added is the "extra" row above, removed at the next sync.
//   - Blocks cooling down when the controller restarts: the cooling set is
//     persisted (Config.Cooling, a ConfigMap) on every change and restored by
//     the rebuild, those of a range removed meanwhile included. Only a crash
//     between the alias removal and that write loses one block's cooldown;
//     next-fit allocation makes its immediate reuse unlikely.
//   - An operation a killed process started that finishes after the
//     rebuild: its block may be reserved again for another node. The node
//     whose NIC carries it retries its claim while that reservation is in
//     flight (CIDRPending) — the other write fails on the alias and gives
//     the block up — and the leak collector's list re-queues any node whose
//     NIC drifted from its state (requeueIfDrifted).
//   - A podCIDR of another size (a kubelet's own Node): foreign, never
//     marked used nor freed; releases free only blocks no node holds.
//   - Two Nodes with one podCIDR: the older holds it; at its deletion the
//     block passes to the younger rather than cooling.
//   - A PodRange deleted while instances carry its aliases: the finalizer
//     stays (InUse) until the leak collector removed them.
//   - A PodRange whose range cannot be read at the rebuild: pending, as at
//     run time; only its nodes wait.
//   - An incomplete instance list (cloud.ErrPartialList): the missing zones
//     are unknown; the cloud refuses a block they carry (held back), and the
//     next complete list marks it used.
package controller

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"runtime/debug"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"

	"github.com/aliasip/aliasip/cloud"
	"github.com/aliasip/aliasip/controller/allocator"
	aliasipv1 "github.com/aliasip/aliasip/controller/apis/aliasip/v1alpha1"
	"github.com/aliasip/aliasip/internal/blocksize"
)

// Event reasons recorded on Nodes.
const (
	// EventCIDRAssigned: the node got (or adopted, or had repaired) its block.
	EventCIDRAssigned = "CIDRAssigned"
	// EventCIDRNotAvailable: the pod range has no free block for the node.
	EventCIDRNotAvailable = "CIDRNotAvailable"
	// EventCIDRMismatch: the node's podCIDR differs from the alias on its NIC.
	EventCIDRMismatch = "CIDRMismatch"
	// EventCIDROutOfRange: the node's podCIDR lies outside the pod range.
	EventCIDROutOfRange = "CIDROutOfRange"
	// EventCIDRWrongSize: the node's podCIDR lies inside a range but is not
	// one of its blocks (another size, or not aligned): foreign.
	EventCIDRWrongSize = "CIDRWrongSize"
	// EventCIDRPending: the block on the node's NIC is reserved for another
	// node whose alias operation has not finished; the node retries.
	EventCIDRPending = "CIDRPending"
	// EventCloudAliasFailed: an alias change failed (transient, or the block
	// is held by another resource).
	EventCloudAliasFailed = "CloudAliasFailed"
	// EventCloudAliasRefused: the cloud refused the node's alias for a
	// reason of its own (invalid for its NIC, quota): the block went back.
	EventCloudAliasRefused = "CloudAliasRefused"
	// EventInstanceNotFound: the node's providerID names no known instance.
	EventInstanceNotFound = "InstanceNotFound"
	// EventAliasReleased: a deleted node's alias was removed from its NIC.
	EventAliasReleased = "AliasReleased"
	// EventCoolingStateInvalid (on the cooling ConfigMap): it cannot be read.
	EventCoolingStateInvalid = "CoolingStateInvalid"
	// EventExtraAliasRemoved: the NIC held a second alias from the pod range
	// besides the node's podCIDR; it was removed.
	EventExtraAliasRemoved = "ExtraAliasRemoved"
)

// maxRetries is the number of failed syncs in a row after which a node is
// reported as failing (it is still retried, once a minute).
const maxRetries = 15

// Config configures a Controller.
type Config struct {
	// MaskSize is the node block mask size (e.g. 24).
	MaskSize int
	// Workers is the number of concurrent node syncs.
	Workers int
	// ReleaseCooldown is how long a freed block waits before reuse.
	ReleaseCooldown time.Duration
	// LeakGracePeriod is how long an alias from the pod range may sit on an
	// instance with no Node before it is removed.
	LeakGracePeriod time.Duration
	// GCInterval is how often leaked aliases are looked for.
	GCInterval time.Duration
	// CloudQPS and CloudBurst are the client-side budget for cloud calls.
	CloudQPS   float64
	CloudBurst int
	// CloudBudgeted: the cloud applies the QPS budget itself (per request).
	CloudBudgeted bool
	// Cooling, if set, persists the blocks cooling down so the cooldown
	// survives restarts and leader changes.
	Cooling CoolingStore
	// SyncTimeout bounds one node's sync, cloud operations included, so a
	// hung call cannot hold a worker forever (default 3m).
	SyncTimeout time.Duration
}

// assignment is a block the controller holds for a node.
// Controller is the node IPAM controller. Create it with New, start it with Run.
type Controller struct {
	cfg      Config
	client   kubernetes.Interface
	cloud    *budgetCloud
	nodes    corelisters.NodeLister
	synced   cache.InformerSynced
	queue    workqueue.TypedRateLimitingInterface[string]
	recorder record.EventRecorder
	metrics  *Metrics

	blocks *blocks    // the pools, owners, cooling blocks and waiting nodes
	ranges *podRanges // PodRange objects (nil: only the default range)

	saveMu    sync.Mutex           // serializes saveCooling
	mu        sync.Mutex           // guards the fields below
	podRange  netip.Prefix         // the default range
	rangeName string               // its secondary range name
	leakSeen  map[string]time.Time // instance|cidr -> first seen leaked
	// adminMu: one administrative listing or release at a time.
	adminMu sync.Mutex
	ready   bool
	wakeCh  chan struct{}
	// accepting: informer events are queued (from the rebuild's list on).
	accepting atomic.Bool
}

// New builds a controller. client is used for Node writes only; events go
// through recorder (give it its own client so they never eat the write budget).
func New(cfg Config, client kubernetes.Interface, nodeInformer coreinformers.NodeInformer,
	cl cloud.Interface, recorder record.EventRecorder, m *Metrics) *Controller {
	if cfg.Workers <= 0 {
		cfg.Workers = 1
	}
	if cfg.GCInterval <= 0 {
		cfg.GCInterval = time.Minute
	}
	if cfg.SyncTimeout <= 0 {
		cfg.SyncTimeout = 3 * time.Minute
	}
	c := &Controller{
		cfg:    cfg,
		client: client,
		cloud:  newBudgetCloud(cl, cfg.CloudQPS, cfg.CloudBurst, cfg.CloudBudgeted, m),
		nodes:  nodeInformer.Lister(),
		synced: nodeInformer.Informer().HasSynced,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedMaxOfRateLimiter(
				workqueue.NewTypedItemExponentialFailureRateLimiter[string](50*time.Millisecond, time.Minute),
				&workqueue.TypedBucketRateLimiter[string]{Limiter: rate.NewLimiter(50, 500)},
			),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "aliasip-nodes"}),
		recorder: recorder,
		metrics:  m,
		blocks:   newBlocks(),
		leakSeen: map[string]time.Time{},
		wakeCh:   make(chan struct{}, 1),
	}
	m.poolSource = c.blocks.stats
	nodeInformer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: c.enqueue,
		UpdateFunc: func(old, cur any) {
			o, n := old.(*corev1.Node), cur.(*corev1.Node)
			// Status heartbeats change nothing we look at; resyncs (same
			// resourceVersion), spec changes and label changes are worth a
			// sync: labels pick a waiting node's PodRange, and an in-sync
			// node's pod-range label is put back if edited.
			if o.ResourceVersion == n.ResourceVersion || o.Spec.PodCIDR != n.Spec.PodCIDR ||
				o.Spec.ProviderID != n.Spec.ProviderID || !maps.Equal(o.Labels, n.Labels) {
				c.enqueue(cur)
			}
		},
		DeleteFunc: c.enqueue,
	})
	return c
}

func (c *Controller) enqueue(obj any) {
	// Before the rebuild lists the Nodes, events are dropped: the rebuild
	// queues every node itself, those without a podCIDR first (the queue
	// is FIFO, and the informer's initial adds would otherwise put a new
	// node behind thousands of in-sync ones).
	if !c.accepting.Load() {
		return
	}
	key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
	if err != nil {
		utilruntime.HandleError(err)
		return
	}
	c.queue.Add(key)
}

// Ready reports whether the allocation state has been rebuilt.
func (c *Controller) Ready() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ready
}

// Run waits for the informer caches, rebuilds the allocation state from all
// Nodes and all alias ranges in the cloud, then runs the workers, the cooldown
// releaser and the leak collector until ctx is done.
func (c *Controller) Run(ctx context.Context) error {
	defer utilruntime.HandleCrash()
	defer c.queue.ShutDown()
	logger := klog.FromContext(ctx)

	if !cache.WaitForCacheSync(ctx.Done(), c.synced) {
		return errors.New("node informer never synced")
	}
	// The PodRanges, when their CRD is served, are known before the
	// rebuild: a node of a PodRange's range must not look foreign.
	if c.ranges != nil {
		if err := c.ranges.start(ctx); err != nil {
			return err
		}
	}
	// The rebuild must succeed before the first allocation; an unreachable
	// cloud is retried with backoff rather than guessed around.
	backoff := wait.Backoff{Duration: 500 * time.Millisecond, Factor: 2, Jitter: 0.2, Steps: 1 << 30, Cap: 30 * time.Second}
	err := wait.ExponentialBackoffWithContext(ctx, backoff, func(ctx context.Context) (bool, error) {
		if err := c.rebuild(ctx); err != nil {
			if errors.Is(err, errConfig) {
				return false, err
			}
			logger.Error(err, "Rebuilding allocation state, will retry")
			return false, nil
		}
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("rebuild allocation state: %w", err)
	}

	var wg sync.WaitGroup
	for i := 0; i < c.cfg.Workers; i++ {
		wg.Go(func() {
			for c.processNext(ctx) {
			}
		})
	}
	wg.Go(func() { c.runCooldown(ctx) })
	wg.Go(func() { wait.UntilWithContext(ctx, c.collectLeaks, c.cfg.GCInterval) })
	wg.Go(func() {
		level := 0
		wait.UntilWithContext(ctx, func(context.Context) { level = c.alertDefaultRange(level) }, time.Second)
	})
	if c.ranges != nil {
		wg.Go(func() { c.runRanges(ctx) })
	}
	logger.Info("Controller running", "workers", c.cfg.Workers)
	<-ctx.Done()
	// Stop taking nodes, and wait for the syncs in flight: they run on a
	// context of their own (bounded by SyncTimeout), so a cloud operation
	// they started is seen through and recorded before Run returns — and
	// before the caller releases the leader lease.
	logger.Info("Stopping: waiting for the node syncs in flight")
	c.queue.ShutDown()
	wg.Wait()
	return nil
}

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
	def := &pool{name: aliasipv1.DefaultRangeName, cidr: podRange.Masked(), cloudName: rangeName, maskSize: c.cfg.MaskSize, alloc: alloc}
	pools := []*pool{def}
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
			overlaps := false
			for _, other := range pools {
				overlaps = overlaps || other.cidr.Overlaps(pl.cidr)
			}
			if overlaps {
				unusable[pl.name] = pl.selector
				continue
			}
			pools = append(pools, pl)
		}
	}
	poolOf := func(p netip.Prefix) *pool {
		for _, pl := range pools {
			if pl.contains(p) {
				return pl
			}
		}
		return nil
	}
	c.accepting.Store(true) // events from here on are queued; the list covers the rest
	nodes, err := c.nodes.List(everything)
	if err != nil {
		return err
	}
	owned := map[string]assignment{}
	owner := map[netip.Prefix]string{}
	// The older node keeps a block two nodes claim; ties (timestamps have
	// one-second resolution) go by name, so every rebuild decides alike.
	sort.Slice(nodes, func(i, j int) bool {
		if !nodes[i].CreationTimestamp.Equal(&nodes[j].CreationTimestamp) {
			return nodes[i].CreationTimestamp.Before(&nodes[j].CreationTimestamp)
		}
		return nodes[i].Name < nodes[j].Name
	})
	for _, n := range nodes {
		p, err := netip.ParsePrefix(n.Spec.PodCIDR)
		if err != nil || poolOf(p) == nil || !poolOf(p).isBlock(p) {
			continue // foreign (another size included): never marked used, never freed
		}
		if _, err := poolOf(p).alloc.Occupy(p); err != nil {
			return fmt.Errorf("node %s: podCIDR %v: %w", n.Name, p, err)
		}
		if _, taken := owner[p]; taken {
			// Two nodes claim one block: the older holds it, the younger's
			// sync reports it, and when the older goes the block passes to
			// the younger (release) rather than cooling.
			continue
		}
		inst, err := c.cloud.InstanceFor(ctx, n.Spec.ProviderID, n.Name)
		if err != nil {
			// Held without an instance: the node's sync reports it, and a
			// release has no alias to remove (the leak collector looks).
			logger.V(2).Info("Node's instance not resolved at rebuild", "node", n.Name, "err", err)
			inst = cloud.InstanceRef{}
		}
		owned[n.Name] = assignment{cidr: p, inst: inst}
		owner[p] = n.Name
	}
	aliases := 0
	for _, in := range instances {
		for _, a := range in.Aliases {
			if pl := poolOf(a.CIDR); pl != nil && pl.holds(a) {
				if _, err := pl.alloc.Occupy(a.CIDR); err != nil {
					return fmt.Errorf("instance %s: alias %v: %w", in.Ref, a.CIDR, err)
				}
				aliases++
			}
		}
	}
	cooling := map[netip.Prefix]time.Time{}
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
			if _, held := owner[cidr]; held || !now.Before(until) {
				continue
			}
			// A block of a range removed meanwhile cools on (addPool marks
			// it used if the range comes back before it expires).
			if pl := poolOf(cidr); pl != nil {
				if _, err := pl.alloc.Occupy(cidr); err != nil {
					return fmt.Errorf("cooling block %v: %w", cidr, err)
				}
			}
			cooling[cidr] = until
		}
	}
	// Resume handing out blocks where the previous process stood.
	for _, pl := range pools {
		pl.alloc.SeekAfterLastUsed()
	}
	c.blocks.reset(pools, unusable, owned, owner, cooling)
	c.mu.Lock()
	c.podRange, c.rangeName = podRange, rangeName
	c.ready = true
	c.mu.Unlock()
	logger.Info("Rebuilt allocation state", "podRange", podRange, "rangeName", rangeName,
		"maskSize", c.cfg.MaskSize, "nodes", len(nodes), "instances", len(instances),
		"aliases", aliases, "cooling", len(cooling), "blocksUsed", alloc.Used(), "blocksFree", alloc.Free(), "podRanges", len(pools)-1)
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

func (c *Controller) processNext(ctx context.Context) bool {
	key, quit := c.queue.Get()
	if quit {
		return false
	}
	defer c.queue.Done(key)
	if ctx.Err() != nil {
		return false // stopping: leave the node to the next leader
	}
	// A sync is not cut short by shutdown, only by its own deadline.
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.SyncTimeout)
	defer cancel()
	start := time.Now()
	err := c.safeSync(sctx, key)
	result := "ok"
	if err != nil {
		result = "error"
	}
	c.metrics.SyncLatency.WithLabelValues(result).Observe(time.Since(start).Seconds())
	c.handleErr(ctx, key, err)
	return true
}

func (c *Controller) handleErr(ctx context.Context, key string, err error) {
	if err == nil {
		c.queue.Forget(key)
		return
	}
	logger := klog.FromContext(ctx)
	if errors.Is(err, errExhausted) {
		// Not a failure of the node: it waits in c.waiting and is queued
		// again as soon as a block is freed (runCooldown), or at the next
		// resync. It is never dropped for waiting.
		c.queue.Forget(key)
		return
	}
	if c.queue.NumRequeues(key) < maxRetries {
		logger.V(2).Info("Node sync failed, will retry", "node", key, "err", err)
		c.queue.AddRateLimited(key)
		return
	}
	// A node never leaves the queue while its row is unresolved: past
	// maxRetries it is still retried, at the rate limiter's cap (a minute).
	if c.queue.NumRequeues(key) == maxRetries {
		logger.Error(err, "Node keeps failing; retrying every minute", "node", key)
		c.metrics.Dropped.Inc()
	}
	c.queue.AddRateLimited(key)
}

// safeSync runs sync and turns a panic into an error for this node only: one
// bad node (or bug on its path) must not take the controller down.
func (c *Controller) safeSync(ctx context.Context, key string) (err error) {
	defer func() {
		if r := recover(); r != nil {
			c.metrics.Panics.Inc()
			err = fmt.Errorf("panic while syncing node %s: %v\n%s", key, r, debug.Stack())
			klog.FromContext(ctx).Error(err, "Recovered from panic", "node", key)
		}
	}()
	return c.sync(ctx, key)
}

// conflictHold is how long a block the cloud says another resource holds
// stays out of the pool.
const conflictHold = 10 * time.Minute

// coolingRetry is how soon a failed save of the cooling set is retried.
var coolingRetry = 5 * time.Second

// errConfig marks a configuration that can never work (not retried).
var errConfig = errors.New("invalid configuration")

// errExhausted marks a sync that waits for a free block.
var errExhausted = errors.New("waiting for a free block")

// sync brings one node to its row of the state table: it resolves the
// node's instance and the aliases from the pod range on its NIC, then
// dispatches to the row's method.
func (c *Controller) sync(ctx context.Context, name string) error {
	node, err := c.nodes.Get(name)
	if apierrors.IsNotFound(err) {
		return c.release(ctx, name)
	}
	if err != nil {
		return err
	}
	inst, err := c.cloud.InstanceFor(ctx, node.Spec.ProviderID, name)
	if err != nil {
		c.recorder.Eventf(node, corev1.EventTypeWarning, EventInstanceNotFound,
			"Cannot resolve instance of node (providerID %q): %v", node.Spec.ProviderID, err)
		if errors.Is(err, cloud.ErrInstanceNotFound) {
			return nil // not retried hot: the periodic resync looks again
		}
		return err
	}
	aliases, err := c.cloud.Aliases(ctx, inst)
	if err != nil {
		if errors.Is(err, cloud.ErrInstanceNotFound) {
			c.recorder.Eventf(node, corev1.EventTypeWarning, EventInstanceNotFound, "Instance %s not found: %v", inst, err)
			return nil
		}
		return fmt.Errorf("read aliases of %s: %w", inst, err)
	}
	var ours, blocks []netip.Prefix
	for _, a := range aliases {
		if c.blocks.ours(a) {
			ours = append(ours, a.CIDR)
			if _, _, ok := c.blocks.rangeOf(a.CIDR); ok {
				blocks = append(blocks, a.CIDR)
			}
		}
	}

	if node.Spec.PodCIDR == "" {
		if len(blocks) > 0 {
			// Only a block is adopted; an alias of another size from the
			// range is an extra, removed once the node has its block.
			return c.adopt(ctx, node, inst, blocks, ours) // empty, present
		}
		return c.assign(ctx, node, inst) // empty, none
	}
	podCIDR, err := netip.ParsePrefix(node.Spec.PodCIDR)
	_, _, isBlock := c.blocks.rangeOf(podCIDR)
	if rng, mask, inside := c.blocks.rangeContaining(podCIDR); err == nil && inside && !isBlock {
		// A kubelet may create its own Node with any podCIDR (NodeRestriction
		// lets it set spec on create). A prefix of another size overlaps
		// blocks other nodes hold: it is never marked used nor freed.
		c.mismatch(node, EventCIDRWrongSize,
			"podCIDR %v lies inside range %s but is not one of its /%d blocks; aliasip leaves this node alone", podCIDR, rng, mask)
		return nil
	}
	if err != nil || podCIDR.Masked() != podCIDR || !isBlock {
		c.mu.Lock()
		podRange := c.podRange
		c.mu.Unlock()
		c.mismatch(node, EventCIDROutOfRange,
			"podCIDR %q is not inside the pod range %v nor a PodRange's; aliasip leaves this node alone", node.Spec.PodCIDR, podRange)
		return nil
	}
	if until, cooling := c.blocks.coolingUntil(podCIDR); cooling && !containsPrefix(ours, podCIDR) {
		// A podCIDR we did not give (a kubelet may register its Node with
		// one) naming a block that cools down: its cooldown is kept, as
		// for any other holder — the deleted node's pods may still answer
		// on it. The NIC carrying it (adopt, check) is the cloud's fact
		// and is not held back.
		c.recorder.Eventf(node, corev1.EventTypeNormal, EventCIDRPending,
			"podCIDR %v is a block that cools down until %v; it is repaired then", podCIDR, until.Format(time.RFC3339))
		return fmt.Errorf("podCIDR %v cools down until %v: %w", podCIDR, until, errPending)
	}
	conflict, err := c.claim(node, podCIDR, inst)
	if err != nil {
		return err
	}
	if conflict != "" {
		c.mismatch(node, EventCIDRMismatch, "podCIDR %v is also the podCIDR of node %s; leaving both untouched", podCIDR, conflict)
		return nil
	}
	if len(ours) == 0 {
		return c.repair(ctx, node, inst, podCIDR) // set, missing
	}
	return c.check(ctx, node, inst, podCIDR, ours) // set, present
}

// mismatch is the one place a mismatch is reported: a Warning and a metric.
func (c *Controller) mismatch(node *corev1.Node, reason, format string, args ...any) {
	c.metrics.Mismatches.Inc()
	c.recorder.Eventf(node, corev1.EventTypeWarning, reason, format, args...)
}

// assign is the row "podCIDR empty, no alias": reserve a block, add the
// alias (waiting for the cloud), then patch the podCIDR.
func (c *Controller) assign(ctx context.Context, node *corev1.Node, inst cloud.InstanceRef) error {
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
	if err := c.addAlias(ctx, inst, cidr); err != nil {
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
	if err := c.patchPodCIDR(ctx, node, cidr, rng); err != nil {
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
func (c *Controller) adopt(ctx context.Context, node *corev1.Node, inst cloud.InstanceRef, blocks, ours []netip.Prefix) error {
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
	if err := c.patchPodCIDR(ctx, node, cidr, rng); err != nil {
		return err
	}
	c.metrics.Allocations.WithLabelValues("adopted").Inc()
	c.recorder.Eventf(node, corev1.EventTypeNormal, EventCIDRAssigned, "Adopted alias %v from %s as podCIDR", cidr, inst)
	klog.FromContext(ctx).Info("Adopted alias as podCIDR", "node", node.Name, "cidr", cidr, "instance", inst)
	return nil
}

// repair is the row "podCIDR set, alias missing": add the alias back.
func (c *Controller) repair(ctx context.Context, node *corev1.Node, inst cloud.InstanceRef, podCIDR netip.Prefix) error {
	if err := c.addAlias(ctx, inst, podCIDR); err != nil {
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

// check covers the rows with podCIDR set and aliases present: equal (in
// sync), equal plus others (remove the others), or different (report).
func (c *Controller) check(ctx context.Context, node *corev1.Node, inst cloud.InstanceRef, podCIDR netip.Prefix, ours []netip.Prefix) error {
	if err := c.blocks.occupy(ours...); err != nil {
		return err
	}
	switch {
	case !containsPrefix(ours, podCIDR):
		c.mismatch(node, EventCIDRMismatch, "podCIDR %v differs from alias range(s) %v on %s; leaving both untouched", podCIDR, ours, inst)
		return nil
	case len(ours) > 1:
		if err := c.removeExtras(ctx, node, inst, podCIDR, ours); err != nil {
			return err
		}
		return c.ensureLabel(ctx, node, podCIDR)
	default:
		return c.ensureLabel(ctx, node, podCIDR)
	}
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

// removeExtras removes the aliases from the pod range on the node's NIC
// other than its podCIDR (left by an operation a previous leader or process
// started and never recorded) and cools their blocks down.
func (c *Controller) removeExtras(ctx context.Context, node *corev1.Node, inst cloud.InstanceRef, keep netip.Prefix, ours []netip.Prefix) error {
	for _, p := range ours {
		if p == keep {
			continue
		}
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
	holder := func(n string, p netip.Prefix) holderState {
		other, err := c.nodes.Get(n)
		switch {
		case err != nil:
			return holderGone
		case other.Spec.PodCIDR == p.String():
			return holderHolding
		default:
			return holderReserving
		}
	}
	other, st, err := c.blocks.claim(node.Name, cidr, inst, holder, time.Now().Add(c.cfg.ReleaseCooldown))
	if err != nil {
		return "", err
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

// addAlias adds a block as an alias from its range's secondary range:
// the default range's through AddAlias, a PodRange's through AddRangeAlias.
func (c *Controller) addAlias(ctx context.Context, inst cloud.InstanceRef, cidr netip.Prefix) error {
	rng, cloudName, ok := c.blocks.rangeOf(cidr)
	if !ok {
		return fmt.Errorf("block %v is in no range", cidr)
	}
	if rng == aliasipv1.DefaultRangeName {
		return c.cloud.AddAlias(ctx, inst, cidr)
	}
	return c.cloud.AddRangeAlias(ctx, inst, cloud.AliasRange{CIDR: cidr, RangeName: cloudName})
}

// patchPodCIDR writes spec.podCIDR, spec.podCIDRs and the label naming the
// block's range (aliasipv1.NodeLabel) in one patch.
func (c *Controller) patchPodCIDR(ctx context.Context, node *corev1.Node, cidr netip.Prefix, rng string) error {
	patch := fmt.Sprintf(`{"metadata":{"labels":{%q:%q}},"spec":{"podCIDR":%q,"podCIDRs":[%q]}}`,
		aliasipv1.NodeLabel, rng, cidr.String(), cidr.String())
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
		c.blocks.handOver(name, a, heir)
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
		if n.Name != except && n.Spec.PodCIDR == cidr.String() {
			return n.Name
		}
	}
	return ""
}

func containsPrefix(ps []netip.Prefix, p netip.Prefix) bool {
	for _, q := range ps {
		if q == p {
			return true
		}
	}
	return false
}

var (
	everything         = labels.Everything()
	metav1PatchOptions = metav1.PatchOptions{FieldManager: "aliasip-controller"}
)

// TrimNode is the Node informer's transform: it keeps what the controller
// reads (name, UID, resourceVersion, creation time, labels, providerID,
// podCIDR(s)) and drops the rest — status with its images and conditions,
// annotations, managed fields — which at 15,000 Nodes is most of the cache.
// Tombstones and other objects pass through.
func TrimNode(obj any) (any, error) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return obj, nil
	}
	return &corev1.Node{
		TypeMeta: n.TypeMeta,
		ObjectMeta: metav1.ObjectMeta{
			Name:              n.Name,
			UID:               n.UID,
			ResourceVersion:   n.ResourceVersion,
			CreationTimestamp: n.CreationTimestamp,
			DeletionTimestamp: n.DeletionTimestamp,
			Labels:            n.Labels,
		},
		Spec: corev1.NodeSpec{
			ProviderID: n.Spec.ProviderID,
			PodCIDR:    n.Spec.PodCIDR,
			PodCIDRs:   n.Spec.PodCIDRs,
		},
	}, nil
}
