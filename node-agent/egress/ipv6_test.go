package egress

import (
	"fmt"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/google/go-cmp/cmp"
)

// TestParseIPv6: ip-masq-agent's IPv6 fields — IPv6 nonMasqueradeCIDRs
// entries kept beside the IPv4 ones (each table takes its family's),
// masqLinkLocalIPv6 read on its own (not from masqLinkLocal), IPv6 CIDRs
// with host bits refused like IPv4 ones.
func TestParseIPv6(t *testing.T) {
	tests := []struct {
		name, data string
		want       Config
		wantErr    string
	}{{
		name: "mixed families",
		data: "nonMasqueradeCIDRs:\n  - 10.0.0.0/8\n  - 2001:db8::/32\n  - fd00::/8\n",
		want: Config{NonMasqueradeCIDRs: prefixes("10.0.0.0/8", "2001:db8::/32", "fd00::/8"), ResyncInterval: DefaultResyncInterval},
	}, {
		name: "masqLinkLocalIPv6 alone",
		data: `{"masqLinkLocalIPv6": true}`,
		want: Config{MasqLinkLocalIPv6: true, ResyncInterval: DefaultResyncInterval},
	}, {
		name: "masqLinkLocal does not set the IPv6 one",
		data: "masqLinkLocal: true\n",
		want: Config{MasqLinkLocal: true, ResyncInterval: DefaultResyncInterval},
	}, {
		name: "both",
		data: "masqLinkLocal: true\nmasqLinkLocalIPv6: true\nnonMasqueradeCIDRs: ['2001:db8:1::/48']\n",
		want: Config{NonMasqueradeCIDRs: prefixes("2001:db8:1::/48"), MasqLinkLocal: true, MasqLinkLocalIPv6: true, ResyncInterval: DefaultResyncInterval},
	}, {
		name:    "IPv6 host bits",
		data:    "nonMasqueradeCIDRs: ['2001:db8::1/32']\n",
		wantErr: `nonMasqueradeCIDRs: "2001:db8::1/32" has host bits set (the network is 2001:db8::/32)`,
	}, {
		name:    "IPv6 not a CIDR",
		data:    "nonMasqueradeCIDRs: ['2001:db8::']\n",
		wantErr: `nonMasqueradeCIDRs: "2001:db8::" is not a CIDR`,
	}, {
		name:    "masqLinkLocalIPv6 not a bool",
		data:    "masqLinkLocalIPv6: maybe\n",
		wantErr: "masqLinkLocalIPv6",
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Parse([]byte(tc.data), FakeDefaults())
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Parse = %+v, %v; want an error with %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("Parse = %+v; want %+v", got, tc.want)
			}
		})
	}
	// GKE's defaults are IPv4 only: no IPv6 destination is left alone by
	// default (ip-masq-agent NewMasqConfig).
	for _, p := range GCEDefaults().NonMasqueradeCIDRs {
		if !p.Addr().Is4() {
			t.Errorf("GCE default %v is not IPv4", p)
		}
	}
}

// TestDescribeByFamily: each table takes only its family's prefixes, and
// the ip6 rule reads the IPv6 header's addresses (offsets 8 and 24, 16
// bytes).
func TestDescribeByFamily(t *testing.T) {
	want := Rules{
		PodBlocks:     prefixes("10.244.1.0/24", "fd00:244:1::/112"),
		NonMasquerade: prefixes("10.0.0.0/8", "fe80::/10", "fd00:244::/32", "fd00:244:1::/112", "::ffff:0:0/96"),
	}
	const v4 = "table ip aliasip\nset nonmasq {10.0.0.0/8}\nset pod_blocks {10.244.1.0/24}\n" +
		"chain postrouting type=nat hook=4 priority=110 policy=1\n" +
		"rule payload(base=1,off=12,len=4) lookup(@pod_blocks,invert=false) payload(base=1,off=16,len=4) lookup(@nonmasq,invert=true) masq(random=false,fully-random=true,persistent=false,ports=false)\n"
	const v6 = "table ip6 aliasip\nset nonmasq {fd00:244::/32,fe80::/10}\nset pod_blocks {fd00:244:1::/112}\n" +
		"chain postrouting type=nat hook=4 priority=110 policy=1\n" +
		"rule payload(base=1,off=8,len=16) lookup(@pod_blocks,invert=false) payload(base=1,off=24,len=16) lookup(@nonmasq,invert=true) masq(random=false,fully-random=true,persistent=false,ports=false)\n"
	if diff := cmp.Diff(v4, NewTable(-1).Describe(want)); diff != "" {
		t.Errorf("ip (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(v4, Describe(want)); diff != "" {
		t.Errorf("Describe (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(v6, NewTable6(-1).Describe(want)); diff != "" {
		t.Errorf("ip6 (-want +got):\n%s", diff)
	}
}

func nftList6(t *testing.T, n ns.NetNS) (string, error) {
	t.Helper()
	var out []byte
	err := n.Do(func(ns.NetNS) error {
		runtime.LockOSThread()
		var err error
		out, err = exec.Command("nft", "list", "table", "ip6", TableName).CombinedOutput()
		return err
	})
	return string(out), err
}

// TestTable6Golden pins the ip6 table as nft prints it, beside an ip table
// it leaves alone; repairs of the ip6 table; Delete of the ip6 table
// leaves the ip one, Delete of the ip table removes both.
func TestTable6Golden(t *testing.T) {
	n := newNetNS(t)
	tb4, tb6 := NewTable(int(n.Fd())), NewTable6(int(n.Fd()))
	want4 := Rules{PodBlocks: prefixes("10.244.1.0/24"), NonMasquerade: prefixes("10.244.0.0/16")}
	want6 := Rules{
		PodBlocks:     prefixes("fd00:244:1::/112"),
		NonMasquerade: prefixes("fe80::/10", "fd00:244::/32", "fd00:244:1::/112", "2001:db8:5::/64", "10.0.0.0/8"),
	}
	if _, err := tb4.Sync(want4); err != nil {
		t.Fatal(err)
	}
	golden4 := nftList(t, n)
	if changed, err := tb6.Sync(want6); err != nil || !changed {
		t.Fatalf("first Sync of ip6 = %v, %v; want a write", changed, err)
	}
	const golden6 = `table ip6 aliasip {
	set pod_blocks {
		type ipv6_addr
		flags interval
		elements = { fd00:244:1::/112 }
	}

	set nonmasq {
		type ipv6_addr
		flags interval
		elements = { 2001:db8:5::/64,
			     fd00:244::/32,
			     fe80::/10 }
	}

	chain postrouting {
		type nat hook postrouting priority srcnat + 10; policy accept;
		ip6 saddr @pod_blocks ip6 daddr != @nonmasq masquerade fully-random
	}
}
`
	got, err := nftList6(t, n)
	if err != nil {
		t.Fatalf("nft list table ip6: %v\n%s", err, got)
	}
	if diff := cmp.Diff(golden6, got); diff != "" {
		t.Errorf("nft list table ip6 aliasip (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(golden4, nftList(t, n)); diff != "" {
		t.Errorf("the ip6 table's write changed the ip table (-want +got):\n%s", diff)
	}
	if changed, err := tb6.Sync(want6); err != nil || changed {
		t.Errorf("second Sync of ip6 = %v, %v; want no write", changed, err)
	}
	if changed, err := tb4.Sync(want4); err != nil || changed {
		t.Errorf("Sync of ip after the ip6 write = %v, %v; want no write", changed, err)
	}
	// Edits of the ip6 table are repaired.
	for _, args := range [][]string{
		{"flush", "table", "ip6", TableName},
		{"delete", "element", "ip6", TableName, setNonMasq, "{ 2001:db8:5::/64 }"},
		{"add", "element", "ip6", TableName, setNonMasq, "{ 2001:db8:6::/64 }"},
		{"delete", "table", "ip6", TableName},
	} {
		if err := n.Do(func(ns.NetNS) error {
			runtime.LockOSThread()
			out, err := exec.Command("nft", args...).CombinedOutput()
			if err != nil {
				t.Fatalf("nft %s: %v\n%s", strings.Join(args, " "), err, out)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if changed, err := tb6.Sync(want6); err != nil || !changed {
			t.Fatalf("Sync after nft %s = %v, %v; want a repair", strings.Join(args, " "), changed, err)
		}
		if got, _ := nftList6(t, n); got != golden6 {
			t.Errorf("after nft %s and a repair:\n%s", strings.Join(args, " "), got)
		}
	}
	// The ip6 table's Delete leaves the ip table.
	if existed, err := tb6.Delete(); err != nil || !existed {
		t.Fatalf("ip6 Delete = %v, %v", existed, err)
	}
	if got, err := tb6.Read(); err != nil || got != "" {
		t.Errorf("ip6 Read after Delete = %q, %v", got, err)
	}
	if diff := cmp.Diff(golden4, nftList(t, n)); diff != "" {
		t.Errorf("ip6 Delete changed the ip table (-want +got):\n%s", diff)
	}
	// The ip table's Delete (masquerade off, aliasip-agent cleanup)
	// takes both; with only the ip6 one left it still reports it.
	if _, err := tb6.Sync(want6); err != nil {
		t.Fatal(err)
	}
	if existed, err := tb4.Delete(); err != nil || !existed {
		t.Fatalf("ip Delete = %v, %v", existed, err)
	}
	for _, tb := range []*Table{tb4, tb6} {
		if got, err := tb.Read(); err != nil || got != "" {
			t.Errorf("%s Read after the ip table's Delete = %q, %v", tb.Family(), got, err)
		}
	}
	if _, err := tb6.Sync(want6); err != nil {
		t.Fatal(err)
	}
	if existed, err := tb4.Delete(); err != nil || !existed {
		t.Errorf("ip Delete with only the ip6 table = %v, %v; want true", existed, err)
	}
	if got, _ := tb6.Read(); got != "" {
		t.Errorf("ip6 table left:\n%s", got)
	}
	if existed, err := tb4.Delete(); err != nil || existed {
		t.Errorf("ip Delete with nothing left = %v, %v; want false", existed, err)
	}
}

// TestIntervalEdgeCasesRoundTrip6: IPv6 interval sets read back as
// written, whatever their edges (a second Sync writes nothing).
func TestIntervalEdgeCasesRoundTrip6(t *testing.T) {
	cases := map[string][]string{
		"empty":           nil,
		"everything":      {"::/0"},
		"first address":   {"::/128"},
		"last address":    {"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128"},
		"upper half":      {"8000::/1"},
		"both halves":     {"::/1", "8000::/1"},
		"adjacent":        {"fd00::/112", "fd00::1:0/112"},
		"overlapping":     {"fd00::/8", "fd00:1::/32"},
		"one-address gap": {"fd00::/128", "fd00::2/128"},
		"ipv4 mixed":      {"fd00::/8", "10.0.0.0/8"},
		"ipv4 only":       {"10.0.0.0/8"},
	}
	for name, cidrs := range cases {
		t.Run(name, func(t *testing.T) {
			n := newNetNS(t)
			tb := NewTable6(int(n.Fd()))
			want := Rules{PodBlocks: prefixes(cidrs...), NonMasquerade: prefixes(cidrs...)}
			if _, err := tb.Sync(want); err != nil {
				t.Fatalf("Sync: %v", err)
			}
			got, err := tb.Read()
			if err != nil {
				t.Fatal(err)
			}
			if got != tb.Describe(want) {
				nft, _ := nftList6(t, n)
				t.Errorf("Read != Describe\nread:\n%s\ndescribe:\n%s\nnft:\n%s", got, tb.Describe(want), nft)
			}
			if changed, err := tb.Sync(want); err != nil || changed {
				t.Errorf("second Sync = %v, %v; want no write", changed, err)
			}
		})
	}
}
