package egress

import (
	"testing"
)

// TestIntervalEdgeCasesRoundTrip programs interval sets with edge cases in
// a fresh namespace and checks that Read renders exactly what Describe
// does and that a second Sync writes nothing (else every pass would
// rewrite the table and count a repair, and the agent's own write would
// come back as a monitor event: a rewrite loop).
func TestIntervalEdgeCasesRoundTrip(t *testing.T) {
	cases := map[string][]string{
		"empty":                 nil,
		"everything":            {"0.0.0.0/0"},
		"first address":         {"0.0.0.0/32"},
		"last address":          {"255.255.255.255/32"},
		"first and last":        {"0.0.0.0/32", "255.255.255.255/32"},
		"upper half":            {"128.0.0.0/1"},
		"lower half":            {"0.0.0.0/1"},
		"both halves":           {"0.0.0.0/1", "128.0.0.0/1"},
		"adjacent":              {"10.0.0.0/24", "10.0.1.0/24"},
		"overlapping":           {"10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24"},
		"one-address gap":       {"10.0.0.0/32", "10.0.0.2/32"},
		"single addresses":      {"10.0.0.1/32", "10.0.0.3/32", "10.0.0.5/32"},
		"non-prefix range":      {"10.0.0.0/24", "10.0.1.0/25"},
		"class E to the end":    {"240.0.0.0/4", "10.0.0.0/8"},
		"host bits":             {"10.0.0.7/24"},
		"ipv6 only":             {"fd00::/8"},
		"ipv6 mixed":            {"fd00::/8", "10.0.0.0/8"},
		"gap before last":       {"255.255.255.254/32"},
		"zero to one below top": {"0.0.0.0/1", "128.0.0.0/2", "192.0.0.0/3", "224.0.0.0/4", "240.0.0.0/5", "248.0.0.0/6", "252.0.0.0/7", "254.0.0.0/8", "255.0.0.0/9"},
	}
	for name, cidrs := range cases {
		t.Run(name, func(t *testing.T) {
			n := newNetNS(t)
			tb := NewTable(int(n.Fd()))
			var ps []string
			ps = append(ps, cidrs...)
			want := Rules{PodBlocks: prefixes(ps...), NonMasquerade: prefixes(ps...)}
			if _, err := tb.Sync(want); err != nil {
				t.Fatalf("Sync: %v", err)
			}
			got, err := tb.Read()
			if err != nil {
				t.Fatal(err)
			}
			if got != Describe(want) {
				t.Errorf("Read != Describe\nread:\n%s\ndescribe:\n%s\nnft:\n%s", got, Describe(want), nftList(t, n))
			}
			changed, err := tb.Sync(want)
			if err != nil || changed {
				t.Errorf("second Sync = %v, %v; want no write", changed, err)
			}
		})
	}
}
