package controller

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"

	"github.com/aliasip/aliasip/cloud"
	"github.com/aliasip/aliasip/fake"
)

// A transient cloud failure keeps the node's reservation: the retry asks for
// the same block, so a write that did land is not doubled elsewhere.
func TestTransientAddFailureKeepsBlock(t *testing.T) {
	h := newHarness(t, "10.0.0.0/16", "n1")
	h.cloud.Inject("AddAlias", fake.Fault{Err: cloud.ErrUnavailable, Times: 1})
	if err := h.syncNode("n1"); !errors.Is(err, cloud.ErrUnavailable) {
		t.Fatalf("first sync: %v, want the cloud error", err)
	}
	if err := h.syncNode("n1"); err != nil {
		t.Fatal(err)
	}
	if a := adds(h.cloud); len(a) != 2 || a[0] != a[1] {
		t.Fatalf("retry asked for %v, want the same block twice", a)
	}
	if got := h.podCIDR("n1"); got != adds(h.cloud)[0].String() {
		t.Fatalf("podCIDR %q, alias %v", got, adds(h.cloud)[0])
	}
	if ev := h.events(); !strings.Contains(ev, EventCloudAliasFailed) || !strings.Contains(ev, EventCIDRAssigned) {
		t.Errorf("events: %s", ev)
	}
}

// A failed podCIDR patch leaves the alias in place; the next sync adopts it.
func TestPatchFailureThenAdopt(t *testing.T) {
	h := newHarness(t, "10.0.0.0/16", "n1")
	failed := false
	h.client.PrependReactor("patch", "nodes", func(k8stesting.Action) (bool, runtime.Object, error) {
		if !failed {
			failed = true
			return true, nil, errors.New("injected API failure")
		}
		return false, nil, nil
	})
	if err := h.syncNode("n1"); err == nil || !strings.Contains(err.Error(), "injected") {
		t.Fatalf("first sync: %v", err)
	}
	aliases, _ := h.cloud.Aliases(h.ctx, cloud.InstanceRef{Name: "n1"})
	if len(aliases) != 1 {
		t.Fatalf("aliases after a failed patch: %v", aliases)
	}
	if err := h.syncNode("n1"); err != nil {
		t.Fatal(err)
	}
	if got := h.podCIDR("n1"); got != aliases[0].CIDR.String() {
		t.Fatalf("adopted %q, alias is %v", got, aliases[0].CIDR)
	}
	if testutil.ToFloat64(h.metrics.Allocations.WithLabelValues("adopted")) != 1 {
		t.Error("adoption not counted")
	}
	if a := adds(h.cloud); len(a) != 1 {
		t.Errorf("%d alias writes, want 1", len(a))
	}
}

// A block the cloud says someone else holds is never handed out; the node
// gets another.
func TestConflictingBlockNeverReused(t *testing.T) {
	h := newHarness(t, "10.0.0.0/22", "n1", "n2")
	h.cloud.Inject("AddAlias", fake.Fault{Err: cloud.ErrRangeConflict, Times: 1})
	if err := h.syncNode("n1"); !errors.Is(err, cloud.ErrRangeConflict) {
		t.Fatalf("first sync: %v", err)
	}
	bad := adds(h.cloud)[0]
	until, held := h.ctrl.blocks.coolingUntil(bad)
	if !held || time.Until(until) < conflictHold-time.Minute {
		t.Errorf("the conflicting block is not held back for %v (cooling until %v, %v)", conflictHold, until, held)
	}
	for _, n := range []string{"n1", "n2"} {
		if err := h.syncNode(n); err != nil {
			t.Fatal(err)
		}
		if got := h.podCIDR(n); got == bad.String() || got == "" {
			t.Errorf("%s got %q (the conflicting block is %v)", n, got, bad)
		}
	}
}

func TestExhaustedAndPanicRecovered(t *testing.T) {
	h := newHarness(t, "10.0.0.0/23", "a", "b", "c")
	for _, n := range []string{"a", "b"} {
		if err := h.syncNode(n); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.syncNode("c"); !errors.Is(err, errExhausted) {
		t.Fatalf("third node: %v, want errExhausted", err)
	}
	if ev := h.events(); !strings.Contains(ev, "Warning "+EventCIDRNotAvailable) {
		t.Errorf("no CIDRNotAvailable warning: %s", ev)
	}
	if !h.ctrl.blocks.isWaiting("c") {
		t.Error("node c is not marked as waiting for a block")
	}
	// A panic on one node's path is that node's error, not a crash.
	p := newHarness(t, "10.1.0.0/16", "boom", "fine")
	p.cloud.Inject("AddAlias", fake.Fault{Panic: true, Instance: "boom"})
	if err := p.ctrl.safeSync(p.ctx, "boom"); err == nil || !strings.Contains(err.Error(), "panic") {
		t.Fatalf("panicking sync: %v", err)
	}
	if testutil.ToFloat64(p.metrics.Panics) != 1 {
		t.Error("panic not counted")
	}
	if err := p.syncNode("fine"); err != nil || p.podCIDR("fine") == "" {
		t.Fatalf("the next node after a panic: %v", err)
	}
}

// A node waiting for a free block is not a failing node: however often it
// syncs while the pool is exhausted, it is never counted toward the retry
// limit nor dropped.
func TestExhaustedNodeNeverDropped(t *testing.T) {
	h := newHarness(t, "10.0.0.0/24", "a", "b")
	if err := h.syncNode("a"); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < maxRetries+5; i++ {
		err := h.ctrl.safeSync(h.ctx, "b")
		if !errors.Is(err, errExhausted) {
			t.Fatalf("sync %d: %v, want errExhausted", i, err)
		}
		h.ctrl.handleErr(h.ctx, "b", err)
	}
	if n := h.ctrl.queue.NumRequeues("b"); n != 0 {
		t.Errorf("%d requeues counted for a waiting node", n)
	}
	if v := testutil.ToFloat64(h.metrics.Dropped); v != 0 {
		t.Errorf("a waiting node was dropped (%v)", v)
	}
}

// A second alias from the pod range beside the podCIDR's (an operation a
// previous leader started and never recorded) is removed and its block
// cools down; the podCIDR's alias stays.
func TestExtraAliasRemoved(t *testing.T) {
	h := newHarness(t, "10.0.0.0/16", "n1")
	if err := h.syncNode("n1"); err != nil {
		t.Fatal(err)
	}
	podCIDR := netip.MustParsePrefix(h.podCIDR("n1"))
	extra := netip.MustParsePrefix("10.0.200.0/24")
	if err := h.cloud.AddAlias(h.ctx, cloud.InstanceRef{Name: "n1"}, cloud.AliasRange{CIDR: extra, RangeName: "pods"}); err != nil {
		t.Fatal(err)
	}
	if err := h.syncNode("n1"); err != nil {
		t.Fatal(err)
	}
	aliases, _ := h.cloud.Aliases(h.ctx, cloud.InstanceRef{Name: "n1"})
	if len(aliases) != 1 || aliases[0].CIDR != podCIDR {
		t.Fatalf("aliases %v, want only the podCIDR %v", aliases, podCIDR)
	}
	_, cooling := h.ctrl.blocks.coolingUntil(extra)
	if !cooling {
		t.Errorf("the extra block %v does not cool down", extra)
	}
	if ev := h.events(); !strings.Contains(ev, "Warning "+EventExtraAliasRemoved) {
		t.Errorf("no ExtraAliasRemoved warning: %s", ev)
	}
}

// A deleted node whose release is still pending must not remove the alias
// from the node that has since adopted the block on the same instance.
func TestGhostOwnerReleaseSparesNewHolder(t *testing.T) {
	h := newHarness(t, "10.0.0.0/16", "old")
	if err := h.syncNode("old"); err != nil {
		t.Fatal(err)
	}
	cidr := netip.MustParsePrefix(h.podCIDR("old"))
	// The instance is re-registered under a new name before the old Node's
	// deletion is handled.
	inst := cloud.InstanceRef{Name: "old"}
	h.deleteNode("old")
	// (Under its FQDN: the instance is the name's first label.)
	h.createNode(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "old.new"}, Spec: corev1.NodeSpec{ProviderID: "fake://old"}})
	if err := h.ctrl.safeSync(h.ctx, "old.new"); err != nil {
		t.Fatal(err)
	}
	if got := h.podCIDR("old.new"); got != cidr.String() {
		t.Fatalf("new node got %q, want to adopt %v", got, cidr)
	}
	if err := h.ctrl.safeSync(h.ctx, "old"); err != nil {
		t.Fatal(err)
	}
	aliases, _ := h.cloud.Aliases(h.ctx, inst)
	if len(aliases) != 1 || aliases[0].CIDR != cidr {
		t.Fatalf("the old node's release removed the new holder's alias: %v", aliases)
	}
}

// A hung cloud call ends at the sync deadline, and shutdown does not cut a
// sync short: it runs to its own end.
func TestSyncDeadline(t *testing.T) {
	h := newHarness(t, "10.0.0.0/16", "n1")
	ctrl := New(Config{MaskSize: 24, Workers: 1, CloudQPS: 1000, CloudBurst: 1000, SyncTimeout: 200 * time.Millisecond},
		h.client, nodeInformer{newTestInformer(&corev1.Node{})}, h.cloud, h.recorder, NewMetrics(prometheus.NewRegistry()))
	ctrl.nodes, ctrl.blocks, ctrl.podRange, ctrl.rangeName = h.ctrl.nodes, h.ctrl.blocks, h.ctrl.podRange, h.ctrl.rangeName
	h.cloud.Inject("AddAlias", fake.Fault{Delay: time.Hour}) // hangs until the sync's context ends
	ctrl.queue.Add("n1")
	ctx, cancel := context.WithCancel(h.ctx)
	cancel() // already shutting down once the item is taken: not processed
	if ctrl.processNext(ctx) {
		t.Fatal("a stopping controller took a new node")
	}
	ctrl.queue.Add("n1")
	start := time.Now()
	ctrl.processNext(h.ctx)
	if d := time.Since(start); d < 150*time.Millisecond || d > 5*time.Second {
		t.Errorf("a hung sync took %v, want about the 200ms deadline", d)
	}
	if ctrl.queue.NumRequeues("n1") != 1 {
		t.Errorf("the timed-out sync was not retried")
	}
}

func TestTrimNode(t *testing.T) {
	n := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "n", UID: "u", ResourceVersion: "7", Labels: map[string]string{"a": "b"},
			Annotations: map[string]string{"big": strings.Repeat("x", 1000)}},
		Spec: corev1.NodeSpec{ProviderID: "gce://p/z/n", PodCIDR: "10.0.0.0/24", PodCIDRs: []string{"10.0.0.0/24"}, Taints: []corev1.Taint{{Key: "k"}}},
		Status: corev1.NodeStatus{Images: []corev1.ContainerImage{{Names: []string{"img"}, SizeBytes: 1}},
			Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady}}},
	}
	out, err := TrimNode(n)
	if err != nil {
		t.Fatal(err)
	}
	got := out.(*corev1.Node)
	want := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "n", UID: "u", ResourceVersion: "7", Labels: map[string]string{"a": "b"}},
		Spec:       corev1.NodeSpec{ProviderID: "gce://p/z/n", PodCIDR: "10.0.0.0/24", PodCIDRs: []string{"10.0.0.0/24"}},
	}
	if !equality.Semantic.DeepEqual(got, want) {
		t.Errorf("trimmed %+v, want %+v", got, want)
	}
	tomb := cache.DeletedFinalStateUnknown{Key: "n", Obj: n}
	if out, _ := TrimNode(tomb); out != any(tomb) {
		t.Error("a tombstone was changed")
	}
}

// A cooling ConfigMap that cannot be read keeps the controller not ready,
// with a Warning event on the ConfigMap; it never guesses.
func TestCorruptCoolingNotReady(t *testing.T) {
	h := newHarness(t, "10.0.0.0/16", "n1")
	if _, err := h.client.CoreV1().ConfigMaps("kube-system").Create(h.ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "aliasip-controller-cooling"},
		Data:       map[string]string{coolingKey: "{not json"},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	h.ctrl.mu.Lock()
	h.ctrl.ready = false
	h.ctrl.mu.Unlock()
	h.ctrl.cfg.Cooling = &ConfigMapCooling{Client: h.client, Namespace: "kube-system", Name: "aliasip-controller-cooling"}
	if err := h.ctrl.rebuild(h.ctx); !errors.Is(err, ErrCoolingCorrupt) {
		t.Fatalf("rebuild: %v, want ErrCoolingCorrupt", err)
	}
	if h.ctrl.Ready() {
		t.Error("ready with an unreadable cooling set")
	}
	if ev := h.events(); !strings.Contains(ev, "Warning "+EventCoolingStateInvalid) {
		t.Errorf("no CoolingStateInvalid warning: %s", ev)
	}
}

// flakyStore fails its first saves, and sends each set it saves on landed.
type flakyStore struct {
	mu     sync.Mutex
	fails  int
	landed chan map[netip.Prefix]time.Time
}

func (f *flakyStore) Load(context.Context) (map[netip.Prefix]time.Time, error) {
	return map[netip.Prefix]time.Time{}, nil
}

func (f *flakyStore) Save(_ context.Context, m map[netip.Prefix]time.Time) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fails > 0 {
		f.fails--
		return errors.New("injected save failure")
	}
	f.landed <- m
	return nil
}

// A failed save of the cooling set is retried until it lands, without
// waiting for the next block to start or end cooling.
func TestCoolingSaveRetried(t *testing.T) {
	old := coolingRetry
	coolingRetry = 50 * time.Millisecond
	t.Cleanup(func() { coolingRetry = old })
	h := newHarness(t, "10.0.0.0/16", "n1")
	store := &flakyStore{fails: 3, landed: make(chan map[netip.Prefix]time.Time, 100)}
	h.ctrl.cfg.Cooling = store
	h.ctrl.cfg.ReleaseCooldown = time.Hour
	if err := h.syncNode("n1"); err != nil {
		t.Fatal(err)
	}
	cidr := netip.MustParsePrefix(h.podCIDR("n1"))
	go h.ctrl.runCooldown(h.ctx)
	h.deleteNode("n1")
	if err := h.ctrl.safeSync(h.ctx, "n1"); err != nil {
		t.Fatal(err)
	}
	// Three saves fail; runCooldown retries every coolingRetry. The
	// deadline only bounds a failing test.
	deadline := time.After(10 * time.Second)
	for {
		select {
		case saved := <-store.landed:
			if _, ok := saved[cidr]; ok {
				return
			}
		case <-deadline:
			t.Fatalf("the cooling set with %v was never saved after failed saves", cidr)
		}
	}
}

// A node whose reserved block may have reached the cloud, and whose NIC
// meanwhile shows another alias of the pod range (another process's
// operation finished), adopts that alias; the reserved block cools down
// instead of returning to the pool at once.
func TestAdoptAfterReservationCoolsReserved(t *testing.T) {
	h := newHarness(t, "10.0.0.0/16", "n1")
	h.cloud.Inject("AddAlias", fake.Fault{Err: cloud.ErrUnavailable, Times: 1})
	if err := h.syncNode("n1"); !errors.Is(err, cloud.ErrUnavailable) {
		t.Fatalf("first sync: %v", err)
	}
	reserved := adds(h.cloud)[0]
	other := netip.MustParsePrefix("10.0.99.0/24")
	if err := h.cloud.AddAlias(h.ctx, cloud.InstanceRef{Name: "n1"}, cloud.AliasRange{CIDR: other, RangeName: "pods"}); err != nil {
		t.Fatal(err)
	}
	if err := h.syncNode("n1"); err != nil {
		t.Fatal(err)
	}
	if got := h.podCIDR("n1"); got != other.String() {
		t.Fatalf("podCIDR %q, want the alias %v adopted", got, other)
	}
	_, cooling := h.ctrl.blocks.coolingUntil(reserved)
	inUse := h.ctrl.blocks.inUse(reserved)
	if !cooling || !inUse {
		t.Errorf("the reserved block %v: cooling %v, in use %v; want it held back", reserved, cooling, inUse)
	}
}
