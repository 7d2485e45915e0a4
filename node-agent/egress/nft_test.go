package egress

import (
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/google/go-cmp/cmp"
)

// newNetNS returns a fresh network namespace, removed at the end of the
// test; the test is skipped when not root.
func newNetNS(t *testing.T) ns.NetNS {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: nftables in a network namespace needs root (CI runs as root)")
	}
	n, err := testutils.NewNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close(); testutils.UnmountNS(n) })
	return n
}

// nftList runs `nft list table ip aliasip` in the namespace: the
// netfilter project's own rendering of what the kernel holds, independent
// of the code under test.
func nftList(t *testing.T, n ns.NetNS) string {
	t.Helper()
	nft, err := exec.LookPath("nft")
	if err != nil {
		t.Fatalf("nft not found (make deps installs Debian's nftables): %v", err)
	}
	var out []byte
	err = n.Do(func(ns.NetNS) error {
		runtime.LockOSThread()
		var err error
		out, err = exec.Command(nft, "list", "table", "ip", TableName).CombinedOutput()
		return err
	})
	if err != nil {
		t.Fatalf("nft list table: %v\n%s", err, out)
	}
	return string(out)
}

func prefixes(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

// TestTableGolden pins the programmed rule set as literal text, as nft
// prints it: GKE's default non-masquerade list (with 240.0.0.0/4, which
// runs to the last address), link-local, overlapping pod ranges merged.
func TestTableGolden(t *testing.T) {
	n := newNetNS(t)
	tb := NewTable(int(n.Fd()))
	want := Rules{
		PodBlocks:     prefixes("10.244.1.0/24"),
		NonMasquerade: append(GCEDefaults().NonMasqueradeCIDRs, prefixes("169.254.0.0/16", "10.244.0.0/16", "10.64.0.0/16", "192.168.90.0/24")...),
	}
	changed, err := tb.Sync(want)
	if err != nil || !changed {
		t.Fatalf("first Sync = %v, %v; want a write", changed, err)
	}
	const golden = `table ip aliasip {
	set pod_blocks {
		type ipv4_addr
		flags interval
		elements = { 10.244.1.0/24 }
	}

	set nonmasq {
		type ipv4_addr
		flags interval
		elements = { 10.0.0.0/8, 100.64.0.0/10,
			     169.254.0.0/16, 172.16.0.0/12,
			     192.0.0.0/24, 192.0.2.0/24,
			     192.88.99.0/24, 192.168.0.0/16,
			     198.18.0.0/15, 198.51.100.0/24,
			     203.0.113.0/24, 240.0.0.0/4 }
	}

	chain postrouting {
		type nat hook postrouting priority srcnat + 10; policy accept;
		ip saddr @pod_blocks ip daddr != @nonmasq masquerade fully-random
	}
}
`
	if diff := cmp.Diff(golden, nftList(t, n)); diff != "" {
		t.Errorf("nft list table ip aliasip (-want +got):\n%s", diff)
	}
	got, err := tb.Read()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(Describe(want), got); diff != "" {
		t.Errorf("Read after Sync differs from Describe (-want +got):\n%s", diff)
	}
	if changed, err := tb.Sync(want); err != nil || changed {
		t.Errorf("second Sync of the same rules = %v, %v; want no write", changed, err)
	}
}

// TestTableRepairedAfterEdits: whatever someone does to the table — flush
// it, delete its rule, add a rule, add or remove a set element, delete it
// — the next Sync sees the difference and writes the wanted rules back.
func TestTableRepairedAfterEdits(t *testing.T) {
	n := newNetNS(t)
	tb := NewTable(int(n.Fd()))
	want := Rules{PodBlocks: prefixes("10.244.1.0/24"), NonMasquerade: prefixes("10.244.0.0/16", "192.168.90.0/24")}
	if _, err := tb.Sync(want); err != nil {
		t.Fatal(err)
	}
	golden := nftList(t, n)
	edits := map[string][]string{
		"flush table":    {"flush", "table", "ip", TableName},
		"delete table":   {"delete", "table", "ip", TableName},
		"flush chain":    {"flush", "chain", "ip", TableName, chainName},
		"add rule":       {"add", "rule", "ip", TableName, chainName, "ip", "saddr", "10.0.0.0/8", "masquerade"},
		"insert rule":    {"insert", "rule", "ip", TableName, chainName, "ip", "daddr", "198.18.0.0/15", "return"},
		"add element":    {"add", "element", "ip", TableName, setNonMasq, "{ 198.18.0.0/15 }"},
		"delete element": {"delete", "element", "ip", TableName, setNonMasq, "{ 192.168.90.0/24 }"},
		"flush set":      {"flush", "set", "ip", TableName, setPodBlocks},
	}
	for name, args := range edits {
		t.Run(name, func(t *testing.T) {
			err := n.Do(func(ns.NetNS) error {
				runtime.LockOSThread()
				out, err := exec.Command("nft", args...).CombinedOutput()
				if err != nil {
					t.Fatalf("nft %s: %v\n%s", strings.Join(args, " "), err, out)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			changed, err := tb.Sync(want)
			if err != nil || !changed {
				t.Fatalf("Sync after %q = %v, %v; want a repair", name, changed, err)
			}
			if diff := cmp.Diff(golden, nftList(t, n)); diff != "" {
				t.Errorf("after repair (-want +got):\n%s", diff)
			}
		})
	}
}

// TestTableChangeAndDelete: new rules replace the old in one write, and
// Delete removes the table (twice is fine).
func TestTableChangeAndDelete(t *testing.T) {
	n := newNetNS(t)
	tb := NewTable(int(n.Fd()))
	if _, err := tb.Sync(Rules{PodBlocks: prefixes("10.244.1.0/24"), NonMasquerade: prefixes("10.244.0.0/16")}); err != nil {
		t.Fatal(err)
	}
	next := Rules{PodBlocks: prefixes("10.244.1.0/24"), NonMasquerade: prefixes("10.244.0.0/16", "198.18.0.0/15")}
	if changed, err := tb.Sync(next); err != nil || !changed {
		t.Fatalf("Sync of new rules = %v, %v; want a write", changed, err)
	}
	if !strings.Contains(nftList(t, n), "elements = { 10.244.0.0/16, 198.18.0.0/15 }") {
		t.Errorf("nonmasq does not hold the new range:\n%s", nftList(t, n))
	}
	for i, want := range []bool{true, false} {
		existed, err := tb.Delete()
		if err != nil || existed != want {
			t.Fatalf("Delete #%d = %v, %v; want %v, nil", i+1, existed, err, want)
		}
	}
	if got, err := tb.Read(); err != nil || got != "" {
		t.Errorf("Read after Delete = %q, %v; want nothing", got, err)
	}
}
