package v1alpha1

import "testing"

// GKE's table (flexible-pod-cidr): maximum pods per node → node CIDR.
func TestMaskSizeForMaxPods(t *testing.T) {
	for _, c := range []struct {
		maxPods  int32
		addrBits int
		want     int
	}{
		{8, 32, 28},
		{9, 32, 27}, {16, 32, 27},
		{17, 32, 26}, {32, 32, 26},
		{33, 32, 25}, {64, 32, 25},
		{65, 32, 24}, {110, 32, 24}, {128, 32, 24},
		{129, 32, 23}, {256, 32, 23},
		{110, 128, 120},
		{1, 32, 31},
	} {
		if got := MaskSizeForMaxPods(c.maxPods, c.addrBits); got != c.want {
			t.Errorf("MaskSizeForMaxPods(%d, %d) = /%d, want /%d", c.maxPods, c.addrBits, got, c.want)
		}
	}
}

func TestBlockMaskSize(t *testing.T) {
	i := func(v int32) *int32 { return &v }
	for _, c := range []struct {
		spec PodRangeSpec
		want int
		err  bool
	}{
		{PodRangeSpec{MaskSize: i(26)}, 26, false},
		{PodRangeSpec{MaxPodsPerNode: i(110)}, 24, false},
		{PodRangeSpec{}, 0, true},
	} {
		got, err := c.spec.BlockMaskSize(32)
		if got != c.want || (err != nil) != c.err {
			t.Errorf("%+v: /%d, %v; want /%d (error %v)", c.spec, got, err, c.want, c.err)
		}
	}
}
