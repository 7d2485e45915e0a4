package controller

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/aliasip/aliasip/cloud"
	aliasipv1 "github.com/aliasip/aliasip/controller/apis/aliasip/v1alpha1"
	"github.com/aliasip/aliasip/fake"
)

// The growth rows (growth.go), each from a seeded state: a node "n" of
// the growable range "grow" (/28 blocks of 10.241.0.0/24) whose podCIDR
// 10.241.0.0/28 is on its NIC, and a node "m" of the same range holding
// 10.241.0.16/28.
func TestGrowthRows(t *testing.T) {
	const first, other = "10.241.0.0/28", "10.241.0.16/28"
	ctx := context.Background()
	pool := map[string]string{"pool": "grow"}
	pr := &aliasipv1.PodRange{ObjectMeta: metav1.ObjectMeta{Name: "grow", CreationTimestamp: metav1.NewTime(time.Unix(1, 0))},
		Spec: aliasipv1.PodRangeSpec{CIDR: "10.241.0.0/24", MaskSize: func() *int32 { v := int32(28); return &v }(), NodeSelector: metav1.LabelSelector{MatchLabels: pool},
			Growth: &aliasipv1.GrowthSpec{MaxBlocksPerNode: 3, LowWater: 4}}}
	node := func(name, podCIDR string) *corev1.Node {
		return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"pool": "grow", aliasipv1.NodeLabel: "grow"}},
			Spec: corev1.NodeSpec{PodCIDR: podCIDR, PodCIDRs: []string{podCIDR}}}
	}
	onNIC := func(fc *fake.Cloud, inst string, cidrs ...string) {
		ref, err := fc.InstanceFor(ctx, "", inst)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range cidrs {
			if err := fc.AddAlias(ctx, ref, cloud.AliasRange{CIDR: netip.MustParsePrefix(c), RangeName: "podrange-grow"}); err != nil {
				t.Fatal(err)
			}
		}
	}
	usage := func(blocks ...any) aliasipv1.NodeBlocksSpec {
		var s aliasipv1.NodeBlocksSpec
		for i := 0; i < len(blocks); i += 2 {
			s.Blocks = append(s.Blocks, aliasipv1.BlockUsage{CIDR: blocks[i].(string), Capacity: 13, Allocated: int32(blocks[i+1].(int))})
		}
		return s
	}
	granted := func(state string, cidrs ...string) []aliasipv1.GrantedBlock {
		var out []aliasipv1.GrantedBlock
		for _, c := range cidrs {
			b := aliasipv1.GrantedBlock{CIDR: c, State: state, GrantedAt: metav1.NewTime(time.Unix(100, 0))}
			if state == aliasipv1.BlockDraining {
				b.DrainingSince = &metav1.Time{Time: time.Unix(200, 0)}
			}
			out = append(out, b)
		}
		return out
	}
	for _, tc := range []struct {
		name    string
		nic     []string // n's NIC besides its podCIDR
		status  []aliasipv1.GrantedBlock
		report  aliasipv1.NodeBlocksSpec
		syncs   int
		wantNIC []string // n's NIC after
		want    map[string]string
		cooling []string // blocks cooling down after
		events  []string
	}{{
		name:   "granted: short (3 free < 4) → a block on the NIC, then recorded",
		report: usage(first, 10),
		syncs:  1, wantNIC: []string{first, "10.241.0.32/28"}, want: map[string]string{"10.241.0.32/28": aliasipv1.BlockActive},
		events: []string{"Normal BlockGranted"},
	}, {
		name:   "granted for waiting ADDs: what they leave free (5 − 2) < 4",
		report: func() aliasipv1.NodeBlocksSpec { s := usage(first, 8); s.Waiting = 2; return s }(),
		syncs:  1, wantNIC: []string{first, "10.241.0.32/28"}, want: map[string]string{"10.241.0.32/28": aliasipv1.BlockActive},
		events: []string{"Normal BlockGranted"},
	}, {
		// The agent writes its report as it takes a block up, before the
		// ADDs it wakes take from it: 13 free and 6 waiting leave 7 ≥ 4.
		name:   "ADDs counted waiting beside free addresses (a block just taken up) → no grant",
		report: func() aliasipv1.NodeBlocksSpec { s := usage(first, 0); s.Waiting = 6; return s }(),
		syncs:  2, wantNIC: []string{first}, want: map[string]string{},
	}, {
		name: "reactivated: short while a block drains → that block Active again, no grant",
		nic:  []string{"10.241.0.32/28"}, status: granted(aliasipv1.BlockDraining, "10.241.0.32/28"),
		report: usage(first, 12, "10.241.0.32/28", 3),
		syncs:  1, wantNIC: []string{first, "10.241.0.32/28"}, want: map[string]string{"10.241.0.32/28": aliasipv1.BlockActive},
		events: []string{"Normal BlockReactivated"},
	}, {
		// The acknowledgement names the drain that was undone: the
		// block, Active again, is not given back.
		name: "reactivated, then the old drain's drained report → stays Active",
		nic:  []string{"10.241.0.32/28"}, status: granted(aliasipv1.BlockDraining, "10.241.0.32/28"),
		report: func() aliasipv1.NodeBlocksSpec {
			s := usage(first, 13)
			s.Waiting = 1
			return s
		}(),
		syncs: 1, wantNIC: []string{first, "10.241.0.32/28"}, want: map[string]string{"10.241.0.32/28": aliasipv1.BlockActive},
		events: []string{"Normal BlockReactivated"},
	}, {
		name: "a grant not in the report yet earns no second one",
		nic:  []string{"10.241.0.32/28"}, status: granted(aliasipv1.BlockActive, "10.241.0.32/28"),
		report: usage(first, 13),
		syncs:  2, wantNIC: []string{first, "10.241.0.32/28"}, want: map[string]string{"10.241.0.32/28": aliasipv1.BlockActive},
	}, {
		name: "attached: recorded and on the NIC, enough free → nothing",
		nic:  []string{"10.241.0.32/28"}, status: granted(aliasipv1.BlockActive, "10.241.0.32/28"),
		report: usage(first, 10, "10.241.0.32/28", 5),
		syncs:  2, wantNIC: []string{first, "10.241.0.32/28"}, want: map[string]string{"10.241.0.32/28": aliasipv1.BlockActive},
	}, {
		name:   "missing: recorded, not on the NIC → added back",
		status: granted(aliasipv1.BlockActive, "10.241.0.32/28"), report: usage(first, 10, "10.241.0.32/28", 5),
		syncs: 1, wantNIC: []string{first, "10.241.0.32/28"}, want: map[string]string{"10.241.0.32/28": aliasipv1.BlockActive},
		events: []string{"Normal CIDRAssigned"},
	}, {
		name: "leftover: on the NIC, not recorded → removed and cooled; the recorded one stays",
		nic:  []string{"10.241.0.32/28", "10.241.0.48/28"}, status: granted(aliasipv1.BlockActive, "10.241.0.32/28"),
		report: usage(first, 10, "10.241.0.32/28", 5),
		syncs:  1, wantNIC: []string{first, "10.241.0.32/28"}, want: map[string]string{"10.241.0.32/28": aliasipv1.BlockActive},
		cooling: []string{"10.241.0.48/28"}, events: []string{"Warning ExtraAliasRemoved"},
	}, {
		name: "draining: empty for returnAfter (0 here: two passes) and not needed → Draining, still on the NIC",
		nic:  []string{"10.241.0.32/28"}, status: granted(aliasipv1.BlockActive, "10.241.0.32/28"),
		report: usage(first, 0, "10.241.0.32/28", 0),
		syncs:  2, wantNIC: []string{first, "10.241.0.32/28"}, want: map[string]string{"10.241.0.32/28": aliasipv1.BlockDraining},
		events: []string{"Normal BlockDraining"},
	}, {
		name: "not drained while the node needs it (13 − 10 free without it < 4)",
		nic:  []string{"10.241.0.32/28"}, status: granted(aliasipv1.BlockActive, "10.241.0.32/28"),
		report: usage(first, 10, "10.241.0.32/28", 0),
		syncs:  3, wantNIC: []string{first, "10.241.0.32/28"}, want: map[string]string{"10.241.0.32/28": aliasipv1.BlockActive},
	}, {
		name: "given back: Draining and drained for this drain → record dropped, cooled, removed from the NIC",
		nic:  []string{"10.241.0.32/28"}, status: granted(aliasipv1.BlockDraining, "10.241.0.32/28"),
		report: func() aliasipv1.NodeBlocksSpec {
			s := usage(first, 0)
			s.Drained = []aliasipv1.DrainedBlock{{CIDR: "10.241.0.32/28", DrainingSince: metav1.NewTime(time.Unix(200, 0))}}
			return s
		}(),
		syncs: 1, wantNIC: []string{first}, want: map[string]string{}, cooling: []string{"10.241.0.32/28"},
		events: []string{"Normal BlockReturned"},
	}, {
		name: "a drained report for another drain → stays Draining",
		nic:  []string{"10.241.0.32/28"}, status: granted(aliasipv1.BlockDraining, "10.241.0.32/28"),
		report: func() aliasipv1.NodeBlocksSpec {
			s := usage(first, 0)
			s.Drained = []aliasipv1.DrainedBlock{{CIDR: "10.241.0.32/28", DrainingSince: metav1.NewTime(time.Unix(150, 0))}}
			return s
		}(),
		syncs: 1, wantNIC: []string{first, "10.241.0.32/28"}, want: map[string]string{"10.241.0.32/28": aliasipv1.BlockDraining},
	}, {
		name: "cap: 3 blocks held and short → CapReached, no grant",
		nic:  []string{"10.241.0.32/28", "10.241.0.48/28"}, status: granted(aliasipv1.BlockActive, "10.241.0.32/28", "10.241.0.48/28"),
		report: usage(first, 13, "10.241.0.32/28", 13, "10.241.0.48/28", 12),
		syncs:  1, wantNIC: []string{first, "10.241.0.32/28", "10.241.0.48/28"},
		want:   map[string]string{"10.241.0.32/28": aliasipv1.BlockActive, "10.241.0.48/28": aliasipv1.BlockActive},
		events: []string{"Warning BlockCapReached"},
	}, {
		name:   "a record naming another node's block is dropped, the block left alone",
		status: granted(aliasipv1.BlockActive, other), report: usage(first, 5),
		syncs: 1, wantNIC: []string{first}, want: map[string]string{},
		events: []string{"Warning CIDRMismatch"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			nb := &aliasipv1.NodeBlocks{ObjectMeta: metav1.ObjectMeta{Name: "n"}, Spec: tc.report,
				Status: aliasipv1.NodeBlocksStatus{PodRange: "grow", Blocks: tc.status}}
			h := startHarness(t, harnessConfig{cluster: "10.0.0.0/16", podRanges: true,
				nodes: []*corev1.Node{node("n", first), node("m", other)}, ranges: []*aliasipv1.PodRange{pr},
				nodeBlocks: []*aliasipv1.NodeBlocks{nb},
				prep: func(fc *fake.Cloud) {
					onNIC(fc, "n", append([]string{first}, tc.nic...)...)
					onNIC(fc, "m", other)
				}})
			h.events() // the rebuild's
			for i := 0; i < tc.syncs; i++ {
				if err := h.syncNode("n"); err != nil {
					t.Fatalf("sync %d: %v", i+1, err)
				}
			}
			ref, _ := h.cloud.InstanceFor(ctx, "", "n")
			aliases, err := h.cloud.Aliases(ctx, ref)
			if err != nil {
				t.Fatal(err)
			}
			var nic []string
			for _, a := range aliases {
				nic = append(nic, a.CIDR.String())
			}
			slices.Sort(nic)
			want := slices.Clone(tc.wantNIC)
			slices.Sort(want)
			if !slices.Equal(nic, want) {
				t.Errorf("n's NIC %v, want %v", nic, want)
			}
			got, err := h.prs.AliasipV1alpha1().NodeBlocks().Get(ctx, "n", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			states := map[string]string{}
			for _, b := range got.Status.Blocks {
				states[b.CIDR] = b.State
			}
			if len(states) != len(tc.want) {
				t.Errorf("recorded %v, want %v", states, tc.want)
			}
			for c, s := range tc.want {
				if states[c] != s {
					t.Errorf("recorded %v, want %v", states, tc.want)
				}
			}
			// The records and the allocator agree: every recorded block
			// is n's; m keeps its podCIDR.
			if ex := h.ctrl.blocks.extrasOf("n"); len(ex) != len(tc.want) {
				t.Errorf("n holds extra blocks %v, recorded %v", ex, states)
			}
			if h.ctrl.blocks.holder(netip.MustParsePrefix(other)) != "m" {
				t.Errorf("m's block is held by %q", h.ctrl.blocks.holder(netip.MustParsePrefix(other)))
			}
			for _, c := range tc.cooling {
				if _, ok := h.ctrl.blocks.coolingUntil(netip.MustParsePrefix(c)); !ok {
					t.Errorf("%s does not cool down", c)
				}
			}
			evs := h.events()
			for _, e := range tc.events {
				if !strings.Contains(evs, e) {
					t.Errorf("events %q lack %q", evs, e)
				}
			}
		})
	}
}
