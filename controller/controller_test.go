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
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/informers"
	k8sfake "k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/record"

	"github.com/aliasip/aliasip/cloud"
	"github.com/aliasip/aliasip/fake"
)

// faultyCloud wraps the fake cloud and fails chosen calls, recording them.
type faultyCloud struct {
	*fake.Cloud
	mu       sync.Mutex
	addFails []error // returned by the next AddAlias calls, in order
	adds     []netip.Prefix
	panicOn  string
}

func (f *faultyCloud) AddAlias(ctx context.Context, inst cloud.InstanceRef, cidr netip.Prefix) error {
	f.mu.Lock()
	f.adds = append(f.adds, cidr)
	if inst.Name == f.panicOn {
		f.mu.Unlock()
		panic("injected panic")
	}
	var err error
	if len(f.addFails) > 0 {
		err, f.addFails = f.addFails[0], f.addFails[1:]
	}
	f.mu.Unlock()
	if err != nil {
		return err
	}
	return f.Cloud.AddAlias(ctx, inst, cidr)
}

type harness struct {
	t        *testing.T
	ctx      context.Context
	client   *k8sfake.Clientset
	cloud    *faultyCloud
	ctrl     *Controller
	recorder *record.FakeRecorder
	metrics  *Metrics
}

func newHarness(t *testing.T, cluster string, nodes ...string) *harness {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	var objs []runtime.Object
	for _, n := range nodes {
		objs = append(objs, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n}})
	}
	client := k8sfake.NewClientset(objs...)
	fc, err := fake.New(fake.Options{PodRange: netip.MustParsePrefix(cluster), AutoRegister: true})
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, ctx: ctx, client: client, cloud: &faultyCloud{Cloud: fc}, recorder: record.NewFakeRecorder(100)}
	factory := informers.NewSharedInformerFactory(client, 0)
	h.metrics = NewMetrics(prometheus.NewRegistry())
	h.ctrl = New(Config{MaskSize: 24, Workers: 1, CloudQPS: 1000, CloudBurst: 1000}, client, factory.Core().V1().Nodes(), h.cloud, h.recorder, h.metrics)
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())
	if err := h.ctrl.rebuild(ctx); err != nil {
		t.Fatal(err)
	}
	return h
}

// syncSeen syncs once the informer shows want for the node's podCIDR.
func (h *harness) syncSeen(node, wantPodCIDR string) error {
	h.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		n, err := h.ctrl.nodes.Get(node)
		if err == nil && n.Spec.PodCIDR == wantPodCIDR {
			break
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("informer never showed podCIDR %q on %s", wantPodCIDR, node)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return h.ctrl.safeSync(h.ctx, node)
}

func (h *harness) podCIDR(node string) string {
	n, err := h.client.CoreV1().Nodes().Get(h.ctx, node, metav1.GetOptions{})
	if err != nil {
		h.t.Fatal(err)
	}
	return n.Spec.PodCIDR
}

func (h *harness) events() string {
	var out []string
	for {
		select {
		case e := <-h.recorder.Events:
			out = append(out, e)
		default:
			return strings.Join(out, "\n")
		}
	}
}

// A transient cloud failure keeps the node's reservation: the retry asks for
// the same block, so a write that did land is not doubled elsewhere.
func TestTransientAddFailureKeepsBlock(t *testing.T) {
	h := newHarness(t, "10.0.0.0/16", "n1")
	h.cloud.addFails = []error{cloud.ErrUnavailable}
	if err := h.syncSeen("n1", ""); !errors.Is(err, cloud.ErrUnavailable) {
		t.Fatalf("first sync: %v, want the cloud error", err)
	}
	if err := h.syncSeen("n1", ""); err != nil {
		t.Fatal(err)
	}
	if len(h.cloud.adds) != 2 || h.cloud.adds[0] != h.cloud.adds[1] {
		t.Fatalf("retry asked for %v, want the same block twice", h.cloud.adds)
	}
	if got := h.podCIDR("n1"); got != h.cloud.adds[0].String() {
		t.Fatalf("podCIDR %q, alias %v", got, h.cloud.adds[0])
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
	if err := h.syncSeen("n1", ""); err == nil || !strings.Contains(err.Error(), "injected") {
		t.Fatalf("first sync: %v", err)
	}
	aliases, _ := h.cloud.Aliases(h.ctx, cloud.InstanceRef{Name: "n1"})
	if len(aliases) != 1 {
		t.Fatalf("aliases after a failed patch: %v", aliases)
	}
	if err := h.syncSeen("n1", ""); err != nil {
		t.Fatal(err)
	}
	if got := h.podCIDR("n1"); got != aliases[0].CIDR.String() {
		t.Fatalf("adopted %q, alias is %v", got, aliases[0].CIDR)
	}
	if testutil.ToFloat64(h.metrics.Allocations.WithLabelValues("adopted")) != 1 {
		t.Error("adoption not counted")
	}
	if len(h.cloud.adds) != 1 {
		t.Errorf("%d alias writes, want 1", len(h.cloud.adds))
	}
}

// A block the cloud says someone else holds is never handed out; the node
// gets another.
func TestConflictingBlockNeverReused(t *testing.T) {
	h := newHarness(t, "10.0.0.0/22", "n1", "n2")
	h.cloud.addFails = []error{cloud.ErrRangeConflict}
	if err := h.syncSeen("n1", ""); !errors.Is(err, cloud.ErrRangeConflict) {
		t.Fatalf("first sync: %v", err)
	}
	bad := h.cloud.adds[0]
	for _, n := range []string{"n1", "n2"} {
		if err := h.syncSeen(n, ""); err != nil {
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
		if err := h.syncSeen(n, ""); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.syncSeen("c", ""); !errors.Is(err, errExhausted) {
		t.Fatalf("third node: %v, want errExhausted", err)
	}
	if ev := h.events(); !strings.Contains(ev, "Warning "+EventCIDRNotAvailable) {
		t.Errorf("no CIDRNotAvailable warning: %s", ev)
	}
	h.ctrl.mu.Lock()
	waiting := h.ctrl.waiting["c"]
	h.ctrl.mu.Unlock()
	if !waiting {
		t.Error("node c is not marked as waiting for a block")
	}
	// A panic on one node's path is that node's error, not a crash.
	p := newHarness(t, "10.1.0.0/16", "boom", "fine")
	p.cloud.panicOn = "boom"
	if err := p.ctrl.safeSync(p.ctx, "boom"); err == nil || !strings.Contains(err.Error(), "panic") {
		t.Fatalf("panicking sync: %v", err)
	}
	if testutil.ToFloat64(p.metrics.Panics) != 1 {
		t.Error("panic not counted")
	}
	if err := p.syncSeen("fine", ""); err != nil || p.podCIDR("fine") == "" {
		t.Fatalf("the next node after a panic: %v", err)
	}
}
