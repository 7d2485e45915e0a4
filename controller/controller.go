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
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
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
	// EventIPv6NotAssigned: dual-stack, and the node's NIC has no IPv6
	// range yet: the node waits for it before getting its podCIDRs.
	EventIPv6NotAssigned = "IPv6NotAssigned"
	// EventIPv6CIDRMismatch: dual-stack, and the node's IPv6 podCIDR is not
	// the /112 of its NIC's IPv6 range (or it has none): left alone.
	EventIPv6CIDRMismatch = "IPv6CIDRMismatch"
	// EventInstanceNotNode: the node's providerID names an instance that is
	// not the node's own (another name): nothing is done for it.
	EventInstanceNotNode = "InstanceNotNode"
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
	// DualStack: a node's podCIDRs are [its IPv4 block, the first /112 of
	// its NIC's IPv6 range], written together; a node whose NIC has no
	// IPv6 range yet waits (podCIDRs are immutable once set).
	DualStack bool
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

	blocks *blocks     // the pools, owners, cooling blocks and waiting nodes
	ranges *podRanges  // PodRange objects (nil: only the default range)
	growth *nodeBlocks // NodeBlocks objects (nil: no growable ranges)

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
	// ipv6Waiting: dual-stack nodes waiting for their NIC's IPv6 range
	// (guarded by mu); the leak collector's list queues them when it comes.
	ipv6Waiting map[string]bool
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
		recorder:    recorder,
		metrics:     m,
		blocks:      newBlocks(),
		leakSeen:    map[string]time.Time{},
		ipv6Waiting: map[string]bool{},
		wakeCh:      make(chan struct{}, 1),
	}
	m.poolSource = c.blocks.stats
	m.nodeSource = c.nodeStats
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
		wait.UntilWithContext(ctx, func(context.Context) {
			level = c.alertDefaultRange(level)
			c.metrics.AlertPasses.Inc()
		}, time.Second)
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
	if errors.Is(err, errExhausted) || errors.Is(err, errWaitIPv6) {
		// Not a failure of the node: it waits in c.waiting and is queued
		// again as soon as a block is freed (runCooldown), or — waiting
		// for its NIC's IPv6 range — when the leak collector's list shows
		// the range (requeueIfDrifted), or at the next resync. It is never
		// dropped for waiting.
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

var (
	everything         = labels.Everything()
	metav1PatchOptions = metav1.PatchOptions{FieldManager: "aliasip-controller"}
)
