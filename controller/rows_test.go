package controller

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	k8sfake "k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/record"

	"github.com/aliasip/aliasip/cloud"
	aliasipv1 "github.com/aliasip/aliasip/controller/apis/aliasip/v1alpha1"
	"github.com/aliasip/aliasip/fake"
)

// One sync per row of the state table. The informer's indexer is seeded
// directly (no informer running, no polling); the test compares the Node
// writes the client saw, the events recorded and the fake cloud's aliases.
func TestStateTableRows(t *testing.T) {
	const podRange = "10.0.0.0/16"
	node := func(name, podCIDR, providerID string) *corev1.Node {
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, UID: types.UID("uid-" + name), CreationTimestamp: metav1.NewTime(time.Unix(2, 0))}, Spec: corev1.NodeSpec{PodCIDR: podCIDR, ProviderID: providerID}}
		if podCIDR != "" {
			n.Spec.PodCIDRs = []string{podCIDR}
		}
		return n
	}
	// older makes a node the first registered: the rebuild gives a block
	// claimed twice to the older node.
	older := func(n *corev1.Node) *corev1.Node {
		n.CreationTimestamp = metav1.NewTime(time.Unix(1, 0))
		return n
	}
	// ranged gives a node the pod-range label.
	ranged := func(rng string, n *corev1.Node) *corev1.Node {
		n.Labels = map[string]string{aliasipv1.NodeLabel: rng}
		return n
	}
	for _, tc := range []struct {
		name      string
		nodes     []*corev1.Node
		aliases   map[string][]string // instance -> alias CIDRs before
		owned     map[string]string   // node -> block held before (deleted nodes)
		cooling   []string            // blocks cooling down before
		inflight  map[string]string   // block -> node whose alias write runs
		dualStack bool                // the cluster is dual-stack
		noIPv6    []string            // instances whose NIC has no IPv6 range
		patch6    string              // the IPv6 podCIDR the patch must carry
		sync      string
		wantErr   error
		patch     string              // podCIDR patched on the synced node ("" none)
		label     string              // pod-range label patched alone ("" none)
		after     map[string][]string // instance -> alias CIDRs after
		events    []string            // "Type Reason", in order
	}{
		{
			name:  "empty, none: assign",
			nodes: []*corev1.Node{node("n", "", "")},
			sync:  "n", patch: "10.0.0.0/24",
			after:  map[string][]string{"n": {"10.0.0.0/24"}},
			events: []string{"Normal CIDRAssigned"},
		},
		{
			name:    "empty, present: adopt",
			nodes:   []*corev1.Node{node("n", "", "")},
			aliases: map[string][]string{"n": {"10.0.7.0/24"}},
			sync:    "n", patch: "10.0.7.0/24",
			after:  map[string][]string{"n": {"10.0.7.0/24"}},
			events: []string{"Normal CIDRAssigned"},
		},
		{
			name:   "set, missing: repair",
			nodes:  []*corev1.Node{node("n", "10.0.3.0/24", "")},
			sync:   "n",
			after:  map[string][]string{"n": {"10.0.3.0/24"}},
			events: []string{"Normal CIDRAssigned"},
		},
		{
			name:    "set, present, equal: nothing",
			nodes:   []*corev1.Node{ranged("default", node("n", "10.0.3.0/24", ""))},
			aliases: map[string][]string{"n": {"10.0.3.0/24"}},
			sync:    "n",
			after:   map[string][]string{"n": {"10.0.3.0/24"}},
		},
		{
			name:    "set, present, equal, no pod-range label: label it",
			nodes:   []*corev1.Node{node("n", "10.0.3.0/24", "")},
			aliases: map[string][]string{"n": {"10.0.3.0/24"}},
			sync:    "n", label: "default",
			after: map[string][]string{"n": {"10.0.3.0/24"}},
		},
		{
			name:    "set, present, equal, label names another range: relabel",
			nodes:   []*corev1.Node{ranged("pool-b", node("n", "10.0.3.0/24", ""))},
			aliases: map[string][]string{"n": {"10.0.3.0/24"}},
			sync:    "n", label: "default",
			after: map[string][]string{"n": {"10.0.3.0/24"}},
		},
		{
			name:    "set, equal plus another: remove the other",
			nodes:   []*corev1.Node{ranged("default", node("n", "10.0.3.0/24", ""))},
			aliases: map[string][]string{"n": {"10.0.3.0/24", "10.0.9.0/24"}},
			sync:    "n",
			after:   map[string][]string{"n": {"10.0.3.0/24"}},
			events:  []string{"Warning ExtraAliasRemoved"},
		},
		{
			name:    "set, present, different: report, touch nothing",
			nodes:   []*corev1.Node{node("n", "10.0.3.0/24", "")},
			aliases: map[string][]string{"n": {"10.0.4.0/24"}},
			sync:    "n",
			after:   map[string][]string{"n": {"10.0.4.0/24"}},
			events:  []string{"Warning CIDRMismatch"},
		},
		{
			name:   "podCIDR outside the pod range: foreign",
			nodes:  []*corev1.Node{node("n", "192.168.0.0/24", "")},
			sync:   "n",
			after:  map[string][]string{"n": nil},
			events: []string{"Warning CIDROutOfRange"},
		},
		{
			name:    "podCIDR of another node: report",
			nodes:   []*corev1.Node{older(node("a", "10.0.3.0/24", "")), node("b", "10.0.3.0/24", "")},
			aliases: map[string][]string{"a": {"10.0.3.0/24"}},
			sync:    "b",
			after:   map[string][]string{"a": {"10.0.3.0/24"}, "b": nil},
			events:  []string{"Warning CIDRMismatch"},
		},
		{
			name:   "podCIDR of another size inside the range: foreign",
			nodes:  []*corev1.Node{node("n", "10.0.4.0/22", "")},
			sync:   "n",
			after:  map[string][]string{"n": nil},
			events: []string{"Warning CIDRWrongSize"},
		},
		{
			name:    "podCIDR a /25 inside a live node's block: foreign, the block untouched",
			nodes:   []*corev1.Node{older(node("a", "10.0.3.0/24", "")), node("b", "10.0.3.128/25", "")},
			aliases: map[string][]string{"a": {"10.0.3.0/24"}},
			sync:    "b",
			after:   map[string][]string{"a": {"10.0.3.0/24"}, "b": nil},
			events:  []string{"Warning CIDRWrongSize"},
		},
		{
			name:     "empty, present, the block reserved for a node whose write runs: retry",
			nodes:    []*corev1.Node{node("n", "", ""), node("m", "", "")},
			aliases:  map[string][]string{"n": {"10.0.6.0/24"}},
			owned:    map[string]string{"m": "10.0.6.0/24"},
			inflight: map[string]string{"10.0.6.0/24": "m"},
			sync:     "n", wantErr: errPending,
			after:  map[string][]string{"n": {"10.0.6.0/24"}},
			events: []string{"Normal CIDRPending"},
		},
		{
			name:    "empty, present, the block reserved for a node whose write does not run: adopt",
			nodes:   []*corev1.Node{node("n", "", ""), node("m", "", "")},
			aliases: map[string][]string{"n": {"10.0.6.0/24"}},
			owned:   map[string]string{"m": "10.0.6.0/24"},
			sync:    "n", patch: "10.0.6.0/24",
			after:  map[string][]string{"n": {"10.0.6.0/24"}},
			events: []string{"Normal CIDRAssigned"},
		},
		{
			name:    "deleted node whose block is a live node's podCIDR: hand over, not cooled",
			nodes:   []*corev1.Node{node("young", "10.0.5.0/24", "")},
			aliases: map[string][]string{"gone": {"10.0.5.0/24"}},
			owned:   map[string]string{"gone": "10.0.5.0/24"},
			sync:    "gone",
			after:   map[string][]string{"gone": nil},
			events:  []string{"Normal AliasReleased"},
		},
		{
			name:    "set, missing, the block cooling down: wait for its cooldown",
			nodes:   []*corev1.Node{node("n", "10.0.8.0/24", "")},
			cooling: []string{"10.0.8.0/24"},
			sync:    "n", wantErr: errExhausted,
			after:  map[string][]string{"n": nil},
			events: []string{"Normal CIDRPending"},
		},
		{
			name:      "dual-stack, empty, none: assign IPv4 and the NIC's first /112 in one patch",
			nodes:     []*corev1.Node{node("n", "", "")},
			dualStack: true,
			sync:      "n", patch: "10.0.0.0/24", patch6: "fd20:0:0:1::/112",
			after:  map[string][]string{"n": {"10.0.0.0/24"}},
			events: []string{"Normal CIDRAssigned"},
		},
		{
			name:      "dual-stack, empty, present: adopt with the IPv6 /112",
			nodes:     []*corev1.Node{node("n", "", "")},
			aliases:   map[string][]string{"n": {"10.0.7.0/24"}},
			dualStack: true,
			sync:      "n", patch: "10.0.7.0/24", patch6: "fd20:0:0:1::/112",
			after:  map[string][]string{"n": {"10.0.7.0/24"}},
			events: []string{"Normal CIDRAssigned"},
		},
		{
			name:      "dual-stack, the NIC has no IPv6 range yet: wait, no block, no alias",
			nodes:     []*corev1.Node{node("n", "", "")},
			noIPv6:    []string{"n"},
			dualStack: true,
			sync:      "n", wantErr: errWaitIPv6,
			after:  map[string][]string{"n": nil},
			events: []string{"Warning IPv6NotAssigned"},
		},
		{
			name: "dual-stack, in sync, an IPv6 podCIDR that is not the NIC's: report, touch nothing",
			nodes: []*corev1.Node{func() *corev1.Node {
				n := ranged("default", node("n", "10.0.3.0/24", ""))
				n.Spec.PodCIDRs = []string{"10.0.3.0/24", "fd99::/112"}
				return n
			}()},
			aliases:   map[string][]string{"n": {"10.0.3.0/24"}},
			dualStack: true,
			sync:      "n",
			after:     map[string][]string{"n": {"10.0.3.0/24"}},
			events:    []string{"Warning IPv6CIDRMismatch"},
		},
		{
			// The fake's first instance gets fd20:0:0:1::/96, the next
			// fd20:0:0:1:0:1::/96: n's podCIDR names the next one's /112.
			name: "dual-stack, in sync, an IPv6 podCIDR not inside the NIC's /96: report, touch nothing",
			nodes: []*corev1.Node{func() *corev1.Node {
				n := ranged("default", node("n", "10.0.3.0/24", ""))
				n.Spec.PodCIDRs = []string{"10.0.3.0/24", "fd20:0:0:1:0:1::/112"}
				return n
			}()},
			aliases:   map[string][]string{"n": {"10.0.3.0/24"}},
			dualStack: true,
			sync:      "n",
			after:     map[string][]string{"n": {"10.0.3.0/24"}},
			events:    []string{"Warning IPv6CIDRMismatch"},
		},
		{
			name: "dual-stack, in sync, a later /112 of the NIC's /96: report, touch nothing",
			nodes: []*corev1.Node{func() *corev1.Node {
				n := ranged("default", node("n", "10.0.3.0/24", ""))
				n.Spec.PodCIDRs = []string{"10.0.3.0/24", "fd20:0:0:1::1:0/112"}
				return n
			}()},
			aliases:   map[string][]string{"n": {"10.0.3.0/24"}},
			dualStack: true,
			sync:      "n",
			after:     map[string][]string{"n": {"10.0.3.0/24"}},
			events:    []string{"Warning IPv6CIDRMismatch"},
		},
		{
			name:      "dual-stack, in sync, no IPv6 podCIDR (set before dual-stack): report, touch nothing",
			nodes:     []*corev1.Node{ranged("default", node("n", "10.0.3.0/24", ""))},
			aliases:   map[string][]string{"n": {"10.0.3.0/24"}},
			dualStack: true,
			sync:      "n",
			after:     map[string][]string{"n": {"10.0.3.0/24"}},
			events:    []string{"Warning IPv6CIDRMismatch"},
		},
		{
			name: "dual-stack, in sync, the NIC's own /112: nothing",
			nodes: []*corev1.Node{func() *corev1.Node {
				n := ranged("default", node("n", "10.0.3.0/24", ""))
				n.Spec.PodCIDRs = []string{"10.0.3.0/24", "fd20:0:0:1::/112"}
				return n
			}()},
			aliases:   map[string][]string{"n": {"10.0.3.0/24"}},
			dualStack: true,
			sync:      "n",
			after:     map[string][]string{"n": {"10.0.3.0/24"}},
		},
		{
			name:   "providerID naming another node's VM: refused, that VM untouched",
			nodes:  []*corev1.Node{node("v", "", ""), node("evil", "", "fake://v")},
			sync:   "evil",
			after:  map[string][]string{"v": nil},
			events: []string{"Warning InstanceNotNode"},
		},
		{
			name:   "providerID of another cloud: instance not found",
			nodes:  []*corev1.Node{node("n", "", "gce://p/z/n")},
			sync:   "n",
			events: []string{"Warning InstanceNotFound"},
		},
		{
			name:    "deleted node: release",
			aliases: map[string][]string{"gone": {"10.0.5.0/24"}},
			owned:   map[string]string{"gone": "10.0.5.0/24"},
			sync:    "gone",
			after:   map[string][]string{"gone": nil},
			events:  []string{"Normal AliasReleased"},
		},
		{
			name:    "pool exhausted: wait",
			nodes:   []*corev1.Node{node("full", "", "")},
			aliases: map[string][]string{"other": {podRange}},
			sync:    "full", wantErr: errExhausted,
			events: []string{"Warning CIDRNotAvailable"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			var objs []runtime.Object
			for _, n := range tc.nodes {
				objs = append(objs, n)
			}
			client := k8sfake.NewClientset(objs...)
			fc, err := fake.New(fake.Options{PodRange: netip.MustParsePrefix(podRange), AutoRegister: true, ProviderSchemes: []string{"fake"},
				IPv6Range: netip.MustParsePrefix("fd20:0:0:1::/64")})
			if err != nil {
				t.Fatal(err)
			}
			for inst, cidrs := range tc.aliases {
				fc.RegisterInstance(inst)
				for _, c := range cidrs {
					if err := fc.AddAlias(ctx, cloud.InstanceRef{Name: inst}, cloud.AliasRange{CIDR: netip.MustParsePrefix(c), RangeName: "pods"}); err != nil {
						t.Fatal(err)
					}
				}
			}
			informer := informers.NewSharedInformerFactory(client, 0).Core().V1().Nodes()
			for _, n := range tc.nodes {
				informer.Informer().GetIndexer().Add(n)
			}
			for _, inst := range tc.noIPv6 {
				fc.RegisterInstance(inst)
				if err := fc.SetIPv6(inst, netip.Prefix{}); err != nil {
					t.Fatal(err)
				}
			}
			recorder := record.NewFakeRecorder(10)
			c := New(Config{MaskSize: 24, Workers: 1, CloudQPS: 1e6, CloudBurst: 1e6}, client, informer, fc, recorder, NewMetrics(prometheus.NewRegistry()))
			c.cfg.DualStack = tc.dualStack
			if err := c.rebuild(ctx); err != nil {
				t.Fatal(err)
			}
			for cidr, n := range tc.inflight {
				c.blocks.writing(n, netip.MustParsePrefix(cidr), false)
			}
			for _, cidr := range tc.cooling {
				p := netip.MustParsePrefix(cidr)
				if err := c.blocks.occupy(p); err != nil {
					t.Fatal(err)
				}
				c.blocks.cooling[p] = time.Now().Add(time.Hour)
			}
			for n, cidr := range tc.owned {
				p := netip.MustParsePrefix(cidr)
				c.blocks.owned[n] = assignment{cidr: p, inst: cloud.InstanceRef{Name: n}}
				c.blocks.owner[p] = n
			}
			client.ClearActions()

			err = c.sync(ctx, tc.sync)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("sync: %v, want %v", err, tc.wantErr)
			}
			var patches []string
			for _, a := range client.Actions() {
				if p, ok := a.(k8stesting.PatchAction); ok {
					patches = append(patches, p.GetName()+" "+string(p.GetPatch()))
				} else if a.GetVerb() != "get" && a.GetVerb() != "list" && a.GetVerb() != "watch" {
					t.Errorf("unexpected client action %s %s", a.GetVerb(), a.GetResource().Resource)
				}
			}
			switch {
			case tc.patch == "" && tc.label == "" && len(patches) > 0:
				t.Errorf("Node writes %v, want none", patches)
			case tc.patch != "" && (len(patches) != 1 || !strings.Contains(patches[0], `"podCIDR":"`+tc.patch+`"`)):
				t.Errorf("Node writes %v, want one patch to %s", patches, tc.patch)
			case tc.patch6 != "" && !strings.Contains(patches[0], `"podCIDRs":["`+tc.patch+`","`+tc.patch6+`"]`):
				t.Errorf("Node writes %v, want podCIDRs [%s, %s] in one patch", patches, tc.patch, tc.patch6)
			case tc.patch != "" && tc.patch6 == "" && !strings.Contains(patches[0], `"podCIDRs":["`+tc.patch+`"]`):
				t.Errorf("Node writes %v, want podCIDRs [%s] alone", patches, tc.patch)
			case tc.label != "":
				want := fmt.Sprintf(`%s {"metadata":{"labels":{%q:%q}}}`, tc.sync, aliasipv1.NodeLabel, tc.label)
				if len(patches) != 1 || patches[0] != want {
					t.Errorf("Node writes %v, want only %s", patches, want)
				}
			}
			for inst, want := range tc.after {
				got, _ := fc.Aliases(ctx, cloud.InstanceRef{Name: inst})
				var gs []string
				for _, a := range got {
					gs = append(gs, a.CIDR.String())
				}
				sort.Strings(gs)
				if strings.Join(gs, ",") != strings.Join(want, ",") {
					t.Errorf("instance %s holds %v, want %v", inst, gs, want)
				}
			}
			var evs []string
			for done := false; !done; {
				select {
				case e := <-recorder.Events:
					f := strings.Fields(e)
					evs = append(evs, f[0]+" "+f[1])
				default:
					done = true
				}
			}
			if strings.Join(evs, "; ") != strings.Join(tc.events, "; ") {
				t.Errorf("events %v, want %v", evs, tc.events)
			}
		})
	}
}

// The Node informer's list reads pages of listPageSize, from one snapshot,
// and keeps only the trimmed Nodes.
func TestListNodesTrimmedPages(t *testing.T) {
	var objs []runtime.Object
	for i := 0; i < 1203; i++ {
		objs = append(objs, &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("n-%04d", i), Annotations: map[string]string{"big": "x"}},
			Spec:       corev1.NodeSpec{PodCIDR: "10.0.0.0/24"},
			Status:     corev1.NodeStatus{Images: []corev1.ContainerImage{{Names: []string{"img"}}}},
		})
	}
	client := k8sfake.NewClientset(objs...)
	var limits []int64
	client.PrependReactor("list", "nodes", func(a k8stesting.Action) (bool, runtime.Object, error) {
		limits = append(limits, a.(k8stesting.ListActionImpl).GetListOptions().Limit)
		return false, nil, nil
	})
	list, err := listNodesTrimmed(context.Background(), client, metav1.ListOptions{ResourceVersion: "0"})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != 1203 {
		t.Fatalf("%d nodes, want 1203", len(list.Items))
	}
	if len(limits) == 0 || limits[0] != listPageSize {
		t.Errorf("list limits %v, want pages of %d", limits, listPageSize)
	}
	for _, n := range list.Items {
		if len(n.Status.Images) != 0 || n.Annotations != nil || n.Spec.PodCIDR == "" {
			t.Fatalf("node not trimmed as it should be: %+v", n)
		}
	}
}
