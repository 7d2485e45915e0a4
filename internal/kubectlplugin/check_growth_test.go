package kubectlplugin

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aliasip/aliasip/controller/adminapi"
)

// grown is healthy() with node b in a growable range: an extra block
// 10.1.0.64/26 recorded in its NodeBlocks, on its instance, with a pod's
// address in it.
func grown() Snapshot {
	s := healthy()
	s.ExtraBlocks = map[string][]netip.Prefix{"b": {netip.MustParsePrefix("10.1.0.64/26")}}
	s.Cloud.Instances[1].Aliases = append(s.Cloud.Instances[1].Aliases, adminapi.Alias{CIDR: "10.1.0.64/26", CloudName: "pods-b", Range: "pool-b"})
	s.Pods = append(s.Pods, pod("default", "late", "u7", "b", "10.1.0.70"))
	s.Agents["b"].Allocations = append(s.Agents["b"].Allocations, alloc("10.1.0.70", "default", "late", "u7", "c7", time.Hour))
	return s
}

// check knows growable ranges' extra blocks: an extra block on the NIC is
// not an alias too many, an address in it is not outside the node's
// blocks; a recorded block missing from the NIC, or overlapping another
// node's block, is reported.
func TestCheckExtraBlocks(t *testing.T) {
	if r := Check(grown()); len(r.Findings) != 0 {
		t.Fatalf("findings on a consistent growable node: %+v", r.Findings)
	}
	for _, tc := range []struct {
		name   string
		break_ func(*Snapshot)
		want   []string
		match  string
	}{
		{"an extra block not on the NIC", func(s *Snapshot) {
			s.Cloud.Instances[1].Aliases = s.Cloud.Instances[1].Aliases[:1]
		}, []string{"mismatch/alias-missing"}, "extra block 10.1.0.64/26"},
		{"another node's podCIDR inside an extra block", func(s *Snapshot) { s.Nodes[2].Spec.PodCIDR = "10.1.0.64/26" },
			[]string{"duplicate/duplicate-podcidr", "mismatch/alias-missing"}, "overlapping"},
		{"an address outside every block of the node", func(s *Snapshot) {
			s.Agents["b"].Allocations = append(s.Agents["b"].Allocations, alloc("10.1.0.200", "", "", "", "raw2", time.Hour))
		}, []string{"mismatch/allocation-outside"}, "and the extra blocks [10.1.0.64/26]"},
		{"without its record the extra alias is one too many", func(s *Snapshot) { s.ExtraBlocks = nil },
			[]string{"mismatch/alias-extra", "mismatch/allocation-outside"}, "besides"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := grown()
			tc.break_(&s)
			r := Check(s)
			if got := kinds(r); !slices.Equal(got, tc.want) {
				t.Fatalf("findings %v, want %v\n%+v", got, tc.want, r.Findings)
			}
			if !strings.Contains(r.Findings[0].Message, tc.match) {
				t.Errorf("message %q does not say %q", r.Findings[0].Message, tc.match)
			}
		})
	}
}
