package integration

import (
	"os/exec"
	"strings"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/aliasip/aliasip/controller/apis/aliasip/v1alpha1"
	"github.com/aliasip/aliasip/controller/generated/clientset/versioned"
	"github.com/aliasip/aliasip/test/framework"
)

func i32(v int32) *int32 { return &v }

// podRangeClient is the generated clientset on the test control plane.
func podRangeClient(t *testing.T) versioned.Interface {
	t.Helper()
	return versioned.NewForConfigOrDie(cp.Config)
}

// The PodRange CRD's schema and CEL rules, enforced by the real API
// server: good objects are stored, bad ones refused with a message that
// says what to fix.
func TestPodRangeValidation(t *testing.T) {
	e := newEnv(t, "10.96.0.0/16")
	prs := podRangeClient(t).AliasipV1alpha1().PodRanges()
	all := metav1.LabelSelector{}
	pool := metav1.LabelSelector{MatchLabels: map[string]string{"pool": "a"}}
	for _, c := range []struct {
		name string
		spec v1alpha1.PodRangeSpec
		want string // "" = accepted; otherwise part of the refusal
	}{
		{"cidr-mask", v1alpha1.PodRangeSpec{CIDR: "10.64.0.0/14", MaskSize: i32(24), NodeSelector: pool}, ""},
		{"cidr-maxpods", v1alpha1.PodRangeSpec{CIDR: "10.68.0.0/20", MaxPodsPerNode: i32(110), NodeSelector: all}, ""},
		{"cidr-maxpods-fits-exactly", v1alpha1.PodRangeSpec{CIDR: "10.69.0.0/24", MaxPodsPerNode: i32(110), NodeSelector: all}, ""},
		{"gce-maxpods", v1alpha1.PodRangeSpec{SecondaryRangeName: "pods-b", MaxPodsPerNode: i32(32), NodeSelector: all, Priority: 10}, ""},
		{"ipv6", v1alpha1.PodRangeSpec{CIDR: "fd00:10::/48", MaskSize: i32(64), NodeSelector: all}, ""},

		{"both-ranges", v1alpha1.PodRangeSpec{CIDR: "10.64.0.0/14", SecondaryRangeName: "pods", MaskSize: i32(24), NodeSelector: all},
			"exactly one of cidr (fake cloud) and secondaryRangeName (GCE) must be set"},
		{"no-range", v1alpha1.PodRangeSpec{MaskSize: i32(24), NodeSelector: all},
			"exactly one of cidr (fake cloud) and secondaryRangeName (GCE) must be set"},
		{"both-sizes", v1alpha1.PodRangeSpec{CIDR: "10.64.0.0/14", MaskSize: i32(24), MaxPodsPerNode: i32(110), NodeSelector: all},
			"exactly one of maskSize and maxPodsPerNode must be set"},
		{"no-size", v1alpha1.PodRangeSpec{CIDR: "10.64.0.0/14", NodeSelector: all},
			"exactly one of maskSize and maxPodsPerNode must be set"},
		{"not-a-cidr", v1alpha1.PodRangeSpec{CIDR: "banana", MaskSize: i32(24), NodeSelector: all},
			"cidr must be a network in CIDR notation"},
		{"host-bits", v1alpha1.PodRangeSpec{CIDR: "10.64.1.0/14", MaskSize: i32(24), NodeSelector: all},
			"cidr must be the network address of its prefix"},
		{"block-larger-than-range", v1alpha1.PodRangeSpec{CIDR: "10.64.0.0/20", MaskSize: i32(16), NodeSelector: all},
			"maskSize must be at least the prefix length of cidr"},
		{"mask-past-ipv4", v1alpha1.PodRangeSpec{CIDR: "10.64.0.0/20", MaskSize: i32(33), NodeSelector: all},
			"maskSize must be at most 30 for an IPv4 cidr"},
		// The agent's IPAM cannot use a /31 (internal/blocksize).
		{"mask-31-ipv4", v1alpha1.PodRangeSpec{CIDR: "10.64.0.0/20", MaskSize: i32(31), NodeSelector: all},
			"maskSize must be at most 30 for an IPv4 cidr"},
		{"mask-127-ipv6", v1alpha1.PodRangeSpec{CIDR: "fd00:10::/112", MaskSize: i32(127), NodeSelector: all},
			"spec.maskSize: Invalid value"},
		{"mask-past-ipv6", v1alpha1.PodRangeSpec{CIDR: "fd00:10::/48", MaskSize: i32(129), NodeSelector: all},
			"spec.maskSize: Invalid value"},
		{"too-many-blocks", v1alpha1.PodRangeSpec{CIDR: "fd00:10::/48", MaskSize: i32(96), NodeSelector: all},
			"the range holds more than 2^24 blocks"},
		{"gce-mask-past-ipv4", v1alpha1.PodRangeSpec{SecondaryRangeName: "pods", MaskSize: i32(40), NodeSelector: all},
			"maskSize must be at most 30: GCE secondary ranges are IPv4"},
		{"gce-mask-31", v1alpha1.PodRangeSpec{SecondaryRangeName: "pods", MaskSize: i32(31), NodeSelector: all},
			"maskSize must be at most 30: GCE secondary ranges are IPv4"},
		{"gce-bad-name", v1alpha1.PodRangeSpec{SecondaryRangeName: "Pods_B", MaskSize: i32(24), NodeSelector: all},
			"spec.secondaryRangeName: Invalid value"},
		{"maxpods-block-larger-than-range", v1alpha1.PodRangeSpec{CIDR: "10.64.0.0/26", MaxPodsPerNode: i32(110), NodeSelector: all},
			"the block maxPodsPerNode needs (at least twice as many addresses as pods) is larger than cidr"},
		{"maxpods-below-gke-minimum", v1alpha1.PodRangeSpec{CIDR: "10.64.0.0/14", MaxPodsPerNode: i32(4), NodeSelector: all},
			"spec.maxPodsPerNode: Invalid value: 4: spec.maxPodsPerNode in body should be greater than or equal to 8"},
		{"default", v1alpha1.PodRangeSpec{CIDR: "10.64.0.0/14", MaskSize: i32(24), NodeSelector: all},
			`the name "default" is reserved`},
	} {
		t.Run(c.name, func(t *testing.T) {
			pr := &v1alpha1.PodRange{ObjectMeta: metav1.ObjectMeta{Name: c.name}, Spec: c.spec}
			_, err := prs.Create(e.ctx, pr, metav1.CreateOptions{})
			t.Cleanup(func() { prs.Delete(e.ctx, c.name, metav1.DeleteOptions{}) })
			switch {
			case c.want == "" && err != nil:
				t.Errorf("refused: %v", err)
			case c.want != "" && err == nil:
				t.Errorf("accepted; want a refusal with %q", c.want)
			case c.want != "" && (!apierrors.IsInvalid(err) || !strings.Contains(err.Error(), c.want)):
				t.Errorf("refused with %v; want Invalid with %q", err, c.want)
			}
		})
	}
}

// The range and the block size are immutable; the selector and the
// priority may change. Status is a subresource: a spec write leaves it,
// a status write leaves the spec.
func TestPodRangeUpdates(t *testing.T) {
	e := newEnv(t, "10.96.0.0/16")
	prs := podRangeClient(t).AliasipV1alpha1().PodRanges()
	pr, err := prs.Create(e.ctx, &v1alpha1.PodRange{
		ObjectMeta: metav1.ObjectMeta{Name: "pool-a"},
		Spec: v1alpha1.PodRangeSpec{CIDR: "10.64.0.0/14", MaskSize: i32(24),
			NodeSelector: metav1.LabelSelector{MatchLabels: map[string]string{"pool": "a"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { prs.Delete(e.ctx, "pool-a", metav1.DeleteOptions{}) })
	if pr.Spec.Priority != 0 {
		t.Errorf("priority defaulted to %d, want 0", pr.Spec.Priority)
	}
	for _, c := range []struct {
		name   string
		change func(*v1alpha1.PodRangeSpec)
		want   string
	}{
		{"cidr", func(s *v1alpha1.PodRangeSpec) { s.CIDR = "10.68.0.0/14" }, "cidr is immutable"},
		{"cidr-to-gce", func(s *v1alpha1.PodRangeSpec) { s.CIDR, s.SecondaryRangeName = "", "pods" }, "the range (cidr or secondaryRangeName) is immutable"},
		{"mask", func(s *v1alpha1.PodRangeSpec) { s.MaskSize = i32(25) }, "maskSize is immutable"},
		{"mask-to-maxpods", func(s *v1alpha1.PodRangeSpec) { s.MaskSize, s.MaxPodsPerNode = nil, i32(110) }, "the block size (maskSize or maxPodsPerNode) is immutable"},
		{"priority", func(s *v1alpha1.PodRangeSpec) { s.Priority = 5 }, ""},
		{"selector", func(s *v1alpha1.PodRangeSpec) { s.NodeSelector.MatchLabels["pool"] = "b" }, ""},
		// Whether a range grows is fixed at creation (its nodes' extra
		// blocks would otherwise be orphaned); its settings may change.
		{"growth-added", func(s *v1alpha1.PodRangeSpec) { s.Growth = &v1alpha1.GrowthSpec{MaxBlocksPerNode: 4} }, "whether the range grows (growth) is fixed at creation"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cur, err := prs.Get(e.ctx, "pool-a", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			cur = cur.DeepCopy()
			c.change(&cur.Spec)
			_, err = prs.Update(e.ctx, cur, metav1.UpdateOptions{})
			switch {
			case c.want == "" && err != nil:
				t.Errorf("refused: %v", err)
			case c.want != "" && (!apierrors.IsInvalid(err) || !strings.Contains(err.Error(), c.want)):
				t.Errorf("got %v; want Invalid with %q", err, c.want)
			}
		})
	}

	// A growable range: defaults applied, bounds enforced, settings
	// changeable, growth not removable.
	grow, err := prs.Create(e.ctx, &v1alpha1.PodRange{
		ObjectMeta: metav1.ObjectMeta{Name: "grow-a"},
		Spec: v1alpha1.PodRangeSpec{CIDR: "10.72.0.0/16", MaskSize: i32(28), Growth: &v1alpha1.GrowthSpec{},
			NodeSelector: metav1.LabelSelector{MatchLabels: map[string]string{"pool": "g"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if g := grow.Spec.Growth; g.MaxBlocksPerNode != 8 || g.ReturnAfterSeconds != 300 || g.LowWater != 0 {
		t.Errorf("growth defaults: %+v, want maxBlocksPerNode 8, returnAfterSeconds 300, lowWater 0", *g)
	}
	for _, c := range []struct {
		name   string
		change func(*v1alpha1.GrowthSpec, *v1alpha1.PodRangeSpec)
		want   string
	}{
		{"cap-too-high", func(g *v1alpha1.GrowthSpec, _ *v1alpha1.PodRangeSpec) { g.MaxBlocksPerNode = 101 }, "maxBlocksPerNode"},
		{"cap-one", func(g *v1alpha1.GrowthSpec, _ *v1alpha1.PodRangeSpec) { g.MaxBlocksPerNode = 1 }, "maxBlocksPerNode"},
		{"return-negative", func(g *v1alpha1.GrowthSpec, _ *v1alpha1.PodRangeSpec) { g.ReturnAfterSeconds = -1 }, "returnAfterSeconds"},
		{"settings", func(g *v1alpha1.GrowthSpec, _ *v1alpha1.PodRangeSpec) { g.MaxBlocksPerNode, g.LowWater = 16, 6 }, ""},
		{"growth-removed", func(_ *v1alpha1.GrowthSpec, s *v1alpha1.PodRangeSpec) { s.Growth = nil }, "whether the range grows (growth) is fixed at creation"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cur, err := prs.Get(e.ctx, "grow-a", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			cur = cur.DeepCopy()
			c.change(cur.Spec.Growth, &cur.Spec)
			_, err = prs.Update(e.ctx, cur, metav1.UpdateOptions{})
			switch {
			case c.want == "" && err != nil:
				t.Errorf("refused: %v", err)
			case c.want != "" && (!apierrors.IsInvalid(err) || !strings.Contains(err.Error(), c.want)):
				t.Errorf("got %v; want Invalid with %q", err, c.want)
			}
		})
	}
	if err := prs.Delete(e.ctx, "grow-a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}

	cur, err := prs.Get(e.ctx, "pool-a", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cur.Status = v1alpha1.PodRangeStatus{CIDR: "10.64.0.0/14", MaskSize: 24, BlocksTotal: 1024, BlocksUsed: 3, BlocksFree: 1021,
		Conditions: []metav1.Condition{{Type: v1alpha1.ConditionReady, Status: metav1.ConditionTrue, Reason: v1alpha1.ReasonValid,
			Message: "test", LastTransitionTime: metav1.Now()}}}
	cur.Spec.Priority = 99 // ignored by the status subresource
	if _, err := prs.UpdateStatus(e.ctx, cur, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("status update: %v", err)
	}
	got, err := prs.Get(e.ctx, "pool-a", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.Status.BlocksFree != 1021 || got.Spec.Priority == 99 {
		t.Errorf("status subresource: status %+v, priority %d", got.Status, got.Spec.Priority)
	}
	got.Status = v1alpha1.PodRangeStatus{}
	if _, err := prs.Update(e.ctx, got, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if again, _ := prs.Get(e.ctx, "pool-a", metav1.GetOptions{}); again.Status.BlocksFree != 1021 {
		t.Errorf("a spec update changed the status: %+v", again.Status)
	}

	// Printer columns, as an operator sees them.
	kubectl, err := framework.Binary("kubectl")
	if err != nil {
		t.Skipf("kubectl: %v", err)
	}
	out, err := exec.CommandContext(e.ctx, kubectl, "--kubeconfig", cp.Kubeconfig, "get", "podranges", "-o", "wide").CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl get podranges: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 2 {
		t.Fatalf("kubectl get podranges -o wide:\n%s", out)
	}
	header, row := strings.Fields(lines[0]), strings.Fields(lines[1])
	want := []string{"NAME", "CIDR", "MASK", "PRIORITY", "TOTAL", "USED", "FREE", "READY", "REASON", "EXHAUSTED", "AGE"}
	if strings.Join(header, " ") != strings.Join(want, " ") {
		t.Errorf("columns %v, want %v", header, want)
	}
	if len(row) < 9 || strings.Join(row[:9], " ") != "pool-a 10.64.0.0/14 24 5 1024 3 1021 True Valid" {
		t.Errorf("row %v", row)
	}
}
