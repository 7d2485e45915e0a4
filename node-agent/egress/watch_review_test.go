package egress

import (
	"context"
	"fmt"
	"k8s.io/apimachinery/pkg/util/wait"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
)

func nftRun(t *testing.T, n ns.NetNS, stdin string, args ...string) {
	t.Helper()
	err := n.Do(func(ns.NetNS) error {
		runtime.LockOSThread()
		cmd := exec.Command("nft", args...)
		if stdin != "" {
			cmd.Stdin = strings.NewReader(stdin)
		}
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("nft %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

var burstSets, burstRules = 20, 500

// TestWatchSurvivesEventBurst: a burst of nftables events (kube-proxy's
// first sync writes thousands of elements in one transaction) must not end
// the watch for good.
func TestWatchSurvivesEventBurst(t *testing.T) {
	n := newNetNS(t)
	tb := NewTable(int(n.Fd()))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var calls atomic.Int64
	done := make(chan error, 1)
	go func() { done <- tb.Watch(ctx, func() { calls.Add(1) }) }()
	waitWatching(t, n, tb, &calls)
	var b strings.Builder
	b.WriteString("add table ip burst\nadd set ip burst s { type ipv4_addr; }\n")
	for i := 0; i < burstSets; i++ {
		b.WriteString("add element ip burst s { ")
		for j := 0; j < 1000; j++ {
			if j > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "10.%d.%d.%d", i, j/256, j%256)
		}
		b.WriteString(" }\n")
	}
	b.WriteString("add chain ip burst c\n")
	for i := 0; i < burstRules; i++ {
		fmt.Fprintf(&b, "add rule ip burst c ip daddr 10.%d.%d.%d counter accept\n", 200+i/65536, (i/256)%256, i%256)
	}
	nftRun(t, n, b.String(), "-f", "-")
	// Still watching: a write of our table after the burst is reported.
	waitWatching(t, n, tb, &calls)
	select {
	case err := <-done:
		t.Fatalf("Watch returned during an event burst: %v", err)
	default:
	}
}

// waitWatching writes the aliasip table until the watch reports it: the
// fact that the monitor is subscribed (and still is).
func waitWatching(t *testing.T, n ns.NetNS, tb *Table, calls *atomic.Int64) {
	t.Helper()
	before := calls.Load()
	i := 0
	err := wait.PollUntilContextTimeout(context.Background(), 20*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		i++
		if _, err := tb.Sync(Rules{PodBlocks: prefixes(fmt.Sprintf("10.244.%d.0/24", i%250))}); err != nil {
			return false, err
		}
		return calls.Load() > before, nil
	})
	if err != nil {
		t.Fatalf("the watch reported no write of the table: %v", err)
	}
}

// TestDormantTableRepaired: `nft add table ip aliasip { flags dormant; }`
// turns every base chain of the table off (no masquerade) while sets,
// chain and rule stay as written; Sync must see it and write the table
// back.
func TestDormantTableRepaired(t *testing.T) {
	n := newNetNS(t)
	tb := NewTable(int(n.Fd()))
	want := Rules{PodBlocks: prefixes("10.244.1.0/24"), NonMasquerade: prefixes("10.244.0.0/16")}
	if _, err := tb.Sync(want); err != nil {
		t.Fatal(err)
	}
	nftRun(t, n, "", "add", "table", "ip", TableName, "{ flags dormant; }")
	if !strings.Contains(nftList(t, n), "flags dormant") {
		t.Fatalf("table not dormant:\n%s", nftList(t, n))
	}
	changed, err := tb.Sync(want)
	if err != nil || !changed {
		t.Errorf("Sync of a dormant table = %v, %v; want a repair", changed, err)
	}
	if strings.Contains(nftList(t, n), "dormant") {
		t.Errorf("table still dormant after Sync:\n%s", nftList(t, n))
	}
}

// TestWatchReopensWithoutLeaks: after bursts that end the kernel stream,
// the watch still reports our table's changes, and once ctx ends no
// goroutine or socket is left behind.
func TestWatchReopensWithoutLeaks(t *testing.T) {
	n := newNetNS(t)
	tb := NewTable(int(n.Fd()))
	fds := func() int {
		ents, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Fatal(err)
		}
		return len(ents)
	}
	g0, f0 := runtime.NumGoroutine(), fds()
	ctx, cancel := context.WithCancel(context.Background())
	var calls atomic.Int64
	done := make(chan error, 1)
	go func() { done <- tb.Watch(ctx, func() { calls.Add(1) }) }()
	waitWatching(t, n, tb, &calls)
	for round := 0; round < 3; round++ {
		var b strings.Builder
		fmt.Fprintf(&b, "add table ip burst%d\nadd set ip burst%d s { type ipv4_addr; }\n", round, round)
		for i := 0; i < 20; i++ {
			fmt.Fprintf(&b, "add element ip burst%d s { ", round)
			for j := 0; j < 1000; j++ {
				if j > 0 {
					b.WriteString(", ")
				}
				fmt.Fprintf(&b, "10.%d.%d.%d", i, j/256, j%256)
			}
			b.WriteString(" }\n")
		}
		nftRun(t, n, b.String(), "-f", "-")
		// After each burst (which may end the kernel stream), our table's
		// writes are still reported.
		waitWatching(t, n, tb, &calls)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Watch = %v", err)
	}
	var g, f int
	err := wait.PollUntilContextTimeout(context.Background(), 20*time.Millisecond, 5*time.Second, true, func(context.Context) (bool, error) {
		g, f = runtime.NumGoroutine(), fds()
		return g <= g0 && f <= f0, nil
	})
	if err != nil {
		t.Errorf("after Watch: %d goroutines (before %d), %d fds (before %d)", g, g0, f, f0)
	}
}
