package gce_test

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/aliasip/aliasip/cloud"
	"github.com/aliasip/aliasip/cloud/gce"
	"github.com/aliasip/aliasip/cloud/gce/gcetest"
)

// maxURL is the bound on request URLs the client keeps to: half of the
// 8192 characters Google's front ends take in a GET URL
// (googleapis/google-api-nodejs-client#972).
const maxURL = 4096

// burst adds one alias to each of n instances at once and returns when
// all are done.
func burst(t *testing.T, ctx context.Context, c *gce.Cloud, n int) {
	t.Helper()
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Go(func() {
			if err := c.AddAlias(ctx, ref(fmt.Sprintf("vm-%03d", i)), cloud.AliasRange{CIDR: netip.MustParsePrefix(fmt.Sprintf("10.%d.%d.0/24", 64+i/256, i%256)), RangeName: "pods"}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
}

// A burst of 200 operations that run 1.5 s: polls back off as the
// operations age instead of listing every PollInterval, and no list URL
// passes the bound however many operations are pending (200 GCE-length
// names are about 12 KB of filter).
func TestPollingBurstBacksOffAndBatches(t *testing.T) {
	const n = 200
	s := newServer(t, gcetest.Options{OpDelay: 1500 * time.Millisecond})
	for i := 0; i < n; i++ {
		s.AddInstance(zone, fmt.Sprintf("vm-%03d", i))
	}
	// PollInterval 20ms: the old fixed spacing would list about 75 times
	// per batch over 1.5 s.
	c := newCloud(t, s, nil, func(c *gce.Config) { c.PollInterval = 20 * time.Millisecond })
	if _, err := c.ListInstances(ctx); err != nil {
		t.Fatal(err)
	}
	burst(t, ctx, c, n)
	lists, gets := s.Count("zoneOperations.list"), s.Count("zoneOperations.get")
	t.Logf("%d operations: %d lists, %d gets, longest URL %d bytes", n, lists, gets, s.MaxURLLength())
	// Doubling from 20ms to its 320ms cap reaches 1.5 s in about 9 polls;
	// a poll needs 4 lists for 200 names of 55 characters within the URL
	// bound. 70 leaves room for operations that started later (the old
	// fixed spacing made about 90).
	if lists > 70 {
		t.Errorf("%d zoneOperations.list calls for one burst of %d operations, want at most 70", lists, n)
	}
	if gets > n/10 {
		t.Errorf("%d zoneOperations.get calls: the lists did not answer for the operations", gets)
	}
	if got := s.MaxURLLength(); got > maxURL {
		t.Errorf("a request URL of %d bytes, want at most %d", got, maxURL)
	}
}

// When the filtered-list cost quota refuses a list, the operations due are
// read one by one at once, and lists stop until the quota's window: no
// waiter stalls until the next window (here an hour away).
func TestFilteredListRefusalDoesNotStall(t *testing.T) {
	s := newServer(t, gcetest.Options{OpDelay: 100 * time.Millisecond,
		Faults: gcetest.Faults{FilteredListCost: 1, FilterCostWindow: time.Hour}})
	for i := 0; i < 10; i++ {
		s.AddInstance(zone, fmt.Sprintf("vm-%03d", i))
	}
	var obs counter
	c := newCloud(t, s, &obs, func(c *gce.Config) { c.RateLimitWindow = time.Hour })
	if _, err := c.ListInstances(ctx); err != nil {
		t.Fatal(err)
	}
	tctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	// The first burst's polls spend the quota (one list passes).
	burst(t, tctx, c, 5)
	for i := 5; i < 10; i++ {
		if err := c.AddAlias(tctx, ref(fmt.Sprintf("vm-%03d", i)), cloud.AliasRange{CIDR: netip.MustParsePrefix(fmt.Sprintf("10.64.%d.0/24", i)), RangeName: "pods"}); err != nil {
			t.Fatalf("vm-%03d after lists were refused: %v", i, err)
		}
	}
	if got := obs.get("zoneOperations.list 403"); got != 1 {
		t.Errorf("%d refused lists, want exactly 1: lists must stop until the quota's window", got)
	}
	if s.Count("zoneOperations.get") == 0 {
		t.Error("no zoneOperations.get: the operations were not read one by one")
	}
	for i := 0; i < 10; i++ {
		if got, want := serverPrefixes(s, fmt.Sprintf("vm-%03d", i)), fmt.Sprintf("pods:10.64.%d.0/24", i); got != want {
			t.Errorf("vm-%03d holds %q, want %q", i, got, want)
		}
	}
}

// Reads are one quota group: after a 403 rateLimitExceeded on a get,
// lists (and operation reads) wait for the next window too instead of
// spending calls the quota will refuse; writes, their own group, go on.
func TestReadsShareOneQuotaGate(t *testing.T) {
	// One call per group per window, and the window an hour long.
	s := newServer(t, gcetest.Options{Faults: gcetest.Faults{RateLimit: 1, RateWindow: time.Hour}})
	s.AddInstance(zone, "a")
	s.AddInstance(zone, "b")
	c := newCloud(t, s, nil, func(c *gce.Config) { c.RateLimitWindow = time.Hour; c.MaxAttempts = 20 })
	if _, err := c.Aliases(ctx, ref("a")); err != nil { // the window's one read
		t.Fatal(err)
	}
	short := func() context.Context {
		c, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		t.Cleanup(cancel)
		return c
	}
	if _, err := c.Aliases(short(), ref("b")); err == nil {
		t.Fatal("a second read in the window was not refused")
	}
	if got := s.Count("instances.get"); got != 2 {
		t.Fatalf("%d gets, want 2 (the second refused, then waiting at the gate)", got)
	}
	if _, err := c.ListInstances(short()); err == nil {
		t.Error("a list succeeded while the reads quota was spent")
	}
	if got := s.Count("instances.aggregatedList"); got != 0 {
		t.Errorf("%d aggregatedList calls sent after a read was refused for quota, want 0: lists are reads", got)
	}
	// a's NIC is cached with its fingerprint and the operation is DONE at
	// once: the write needs no read.
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := c.AddAlias(wctx, ref("a"), cloud.AliasRange{CIDR: netip.MustParsePrefix("10.64.1.0/24"), RangeName: "pods"}); err != nil {
		t.Errorf("a write waited behind the reads quota: %v", err)
	}
}
