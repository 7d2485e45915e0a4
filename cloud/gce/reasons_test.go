package gce_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	compute "google.golang.org/api/compute/v1"
	"google.golang.org/api/googleapi"
	"google.golang.org/api/option"

	"github.com/aliasip/aliasip/cloud"
	"github.com/aliasip/aliasip/cloud/gce"
	"github.com/aliasip/aliasip/cloud/gce/gcetest"
)

// Errors come back classified by their reason or operation error code, and
// only the transient ones are retried.
func TestErrorsByReason(t *testing.T) {
	for _, tc := range []struct {
		name   string
		faults gcetest.Faults
		setup  func(s *gcetest.Server)
		cidr   string
		want   error
		writes int // updateNetworkInterface calls expected; 0: not checked
	}{
		{
			name: "overlap inside the operation",
			setup: func(s *gcetest.Server) {
				s.AddInstance(zone, "other", &compute.AliasIpRange{IpCidrRange: "10.64.9.0/24", SubnetworkRangeName: "pods"})
			},
			cidr: "10.64.9.0/25", want: cloud.ErrRangeConflict, writes: 1,
		},
		{
			name:  "NIC on a subnetwork without the pod range",
			setup: func(s *gcetest.Server) { s.DeleteInstance(zone, "vm"); s.AddInstanceOn(zone, "vm", "legacy") },
			cidr:  "10.64.1.0/24", want: cloud.ErrInvalid, writes: 1,
		},
		{
			name:   "resource quota",
			faults: gcetest.Faults{OpQuotaExceeded: 1},
			cidr:   "10.64.2.0/24", want: cloud.ErrQuotaExceeded, writes: 1,
		},
		{
			name:   "not ready every time",
			faults: gcetest.Faults{OpNotReady: 1},
			cidr:   "10.64.3.0/24", want: cloud.ErrUnavailable,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newServer(t, gcetest.Options{OpDelay: 10 * time.Millisecond, Faults: tc.faults})
			s.AddInstance(zone, "vm")
			if tc.setup != nil {
				tc.setup(s)
			}
			c := newCloud(t, s, nil, func(c *gce.Config) { c.MaxAttempts = 3 })
			err := c.AddAlias(ctx, ref("vm"), cloud.AliasRange{CIDR: netip.MustParsePrefix(tc.cidr), RangeName: "pods"})
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if got := cloud.Code(err); got == "error" {
				t.Errorf("Code(%v) = %q: unclassified", err, got)
			}
			if n := s.Count("instances.updateNetworkInterface"); tc.writes > 0 && n != tc.writes {
				t.Errorf("%d writes, want %d: a refusal that will not change was retried", n, tc.writes)
			}
			if got := serverPrefixes(s, "vm"); got != "" {
				t.Errorf("a refused write left %q on the NIC", got)
			}
		})
	}
}

// After a 403 rateLimitExceeded every call waits for the next quota
// window instead of hammering the API: per window, only the calls already
// in flight can be refused.
func TestRateLimitWaitsForWindow(t *testing.T) {
	const window = 200 * time.Millisecond
	s := newServer(t, gcetest.Options{OpDelay: 10 * time.Millisecond, Faults: gcetest.Faults{RateLimit: 4, RateWindow: window}})
	for i := 0; i < 12; i++ {
		s.AddInstance(zone, fmt.Sprintf("vm-%d", i))
	}
	var obs counter
	c := newCloud(t, s, &obs, func(c *gce.Config) { c.RateLimitWindow = window; c.MaxAttempts = 50 })
	start := time.Now()
	var wg sync.WaitGroup
	for i := 0; i < 12; i++ {
		wg.Go(func() {
			if err := c.AddAlias(ctx, ref(fmt.Sprintf("vm-%d", i)), cloud.AliasRange{CIDR: netip.MustParsePrefix(fmt.Sprintf("10.64.%d.0/24", i)), RangeName: "pods"}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	windows := int(time.Since(start)/window) + 1
	refused := 0
	for k, v := range obs.n {
		if strings.HasSuffix(k, " 403") {
			refused += v
		}
	}
	if refused == 0 {
		t.Fatal("no 403 seen; the quota was not exercised")
	}
	// 12 writers and one poller can each be refused once per window.
	if limit := windows * 13; refused > limit {
		t.Errorf("%d refused calls in %d windows (limit %d): calls did not wait for the window", refused, windows, limit)
	}
	t.Logf("%d calls refused over %d windows of %v", refused, windows, window)
	for i := 0; i < 12; i++ {
		if got := serverPrefixes(s, fmt.Sprintf("vm-%d", i)); got != fmt.Sprintf("pods:10.64.%d.0/24", i) {
			t.Errorf("vm-%d holds %q", i, got)
		}
	}
}

// Calls per node: after one list (the controller's rebuild), a burst of
// adds at 200 ms operations costs one write per node plus shared polls;
// reading the NICs again costs nothing; cache misses of many nodes at once
// are served by one list, not a get each.
func TestCallsPerNode(t *testing.T) {
	const n = 300
	s := newServer(t, gcetest.Options{OpDelay: 200 * time.Millisecond, Faults: gcetest.Faults{WaitAtOnce: true}})
	for i := 0; i < n; i++ {
		s.AddInstance(zone, fmt.Sprintf("vm-%03d", i))
	}
	c := newCloud(t, s, nil, func(c *gce.Config) { c.PollInterval = 100 * time.Millisecond })
	if _, err := c.ListInstances(ctx); err != nil {
		t.Fatal(err)
	}
	total := func() int {
		sum := 0
		for _, v := range s.Counts() {
			sum += v
		}
		return sum
	}
	before := total()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 50)
	for i := 0; i < n; i++ {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			if err := c.AddAlias(ctx, ref(fmt.Sprintf("vm-%03d", i)), cloud.AliasRange{CIDR: netip.MustParsePrefix(fmt.Sprintf("10.%d.%d.0/24", 64+i/256, i%256)), RangeName: "pods"}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	calls := total() - before
	perNode := float64(calls) / n
	t.Logf("burst: %d calls for %d nodes (%.2f per node): %v", calls, n, perNode, s.Counts())
	if perNode > 1.5 {
		t.Errorf("%.2f calls per node in a burst, want at most 1.5", perNode)
	}
	if got := s.Count("instances.updateNetworkInterface"); got != n {
		t.Errorf("%d writes for %d nodes", got, n)
	}
	// A resync reads every NIC: served by the cache.
	before = total()
	for i := 0; i < n; i++ {
		got, err := c.Aliases(ctx, ref(fmt.Sprintf("vm-%03d", i)))
		if err != nil || len(got) != 1 {
			t.Fatalf("vm-%03d: %v %v", i, got, err)
		}
	}
	if calls := total() - before; calls != 0 {
		t.Errorf("a resync of %d nodes cost %d calls, want 0", n, calls)
	}
	// A fresh client (no list yet) asked for every NIC at once: one list.
	c2 := newCloud(t, s, nil)
	before = total()
	gets := s.Count("instances.get")
	for i := 0; i < n; i++ {
		wg.Go(func() {
			got, err := c2.Aliases(ctx, ref(fmt.Sprintf("vm-%03d", i)))
			if err != nil || len(got) != 1 {
				t.Errorf("vm-%03d: %v %v", i, got, err)
			}
		})
	}
	wg.Wait()
	if calls, g := total()-before, s.Count("instances.get")-gets; calls > 2 || g != 0 {
		t.Errorf("%d concurrent misses cost %d calls (%d gets); want one list", n, calls, g)
	}
	// A single miss is one get, not a list of the whole project.
	s.AddInstance(zone, "late")
	before = total()
	if _, err := c2.Aliases(ctx, ref("late")); err != nil {
		t.Fatal(err)
	}
	if got := s.Count("instances.get") - gets; total()-before != 1 || got != 1 {
		t.Errorf("one miss cost %d calls (%d gets); want one get", total()-before, got)
	}
}

// The test server's side of the rules the client relies on, through the
// raw compute client.
func TestServerFollowsEvidence(t *testing.T) {
	// The quota windows' clock, stepped by the test.
	var clockMu sync.Mutex
	clock := time.Date(2024, 1, 1, 10, 0, 0, 0, time.UTC)
	now := func() time.Time { clockMu.Lock(); defer clockMu.Unlock(); return clock }
	step := func(d time.Duration) { clockMu.Lock(); defer clockMu.Unlock(); clock = clock.Add(d) }
	s := newServer(t, gcetest.Options{OpDelay: 300 * time.Millisecond, Faults: gcetest.Faults{WaitAtOnce: true}, Now: now})
	s.AddInstance(zone, "vm", &compute.AliasIpRange{IpCidrRange: "10.64.1.0/24", SubnetworkRangeName: "pods"})
	s.AddInstance(zone, "vm2")
	svc, err := compute.NewService(ctx, option.WithEndpoint(s.Endpoint()), option.WithoutAuthentication())
	if err != nil {
		t.Fatal(err)
	}
	fp := func(name string) string {
		in, err := svc.Instances.Get("test-project", zone, name).Do()
		if err != nil {
			t.Fatal(err)
		}
		return in.NetworkInterfaces[0].Fingerprint
	}
	// waitDone waits on the server's side for the operation to end (once
	// WaitAtOnce is off, wait blocks until it is done or WaitMax passed).
	waitDone := func(op *compute.Operation) *compute.Operation {
		for op.Status != "DONE" {
			if op, err = svc.ZoneOperations.Wait("test-project", zone, op.Name).Do(); err != nil {
				t.Fatal(err)
			}
		}
		return op
	}
	// PATCH semantics: a body without aliasIpRanges leaves them unchanged
	// (so a client that forgets ForceSendFields cannot clear the last range).
	op, err := svc.Instances.UpdateNetworkInterface("test-project", zone, "vm", "nic0", &compute.NetworkInterface{Fingerprint: fp("vm")}).Do()
	if err != nil {
		t.Fatal(err)
	}
	// wait may return after zero seconds, the operation still RUNNING.
	w, err := svc.ZoneOperations.Wait("test-project", zone, op.Name).Do()
	if err != nil || w.Status == "DONE" {
		t.Errorf("wait on a 300ms operation returned %v %v at once; want RUNNING", w.Status, err)
	}
	s.SetFaults(gcetest.Faults{})
	waitDone(op)
	if got := serverPrefixes(s, "vm"); got != "pods:10.64.1.0/24" {
		t.Errorf("PATCH without aliasIpRanges changed them to %q", got)
	}
	// An overlap is reported inside the operation, not by the call.
	op, err = svc.Instances.UpdateNetworkInterface("test-project", zone, "vm2", "nic0", &compute.NetworkInterface{
		Fingerprint: fp("vm2"), AliasIpRanges: []*compute.AliasIpRange{{IpCidrRange: "10.64.1.0/25", SubnetworkRangeName: "pods"}},
	}).Do()
	if err != nil {
		t.Fatalf("the call itself failed on an overlap: %v", err)
	}
	done := waitDone(op)
	if done.Error == nil || done.Error.Errors[0].Code != "IP_IN_USE_BY_ANOTHER_RESOURCE" {
		t.Errorf("overlap: operation error %+v", done.Error)
	}
	// Operations are listed with the name regex filter, and only it.
	list, err := svc.ZoneOperations.List("test-project", zone).Filter(fmt.Sprintf(`name eq "(%s|nope)"`, op.Name)).Do()
	if err != nil || len(list.Items) != 1 || list.Items[0].Name != op.Name {
		t.Errorf("list by name: %v %v", list, err)
	}
	_, err = svc.ZoneOperations.List("test-project", zone).Filter(`status = "DONE"`).Do()
	var gerr *googleapi.Error
	if !errors.As(err, &gerr) || gerr.Code != 400 {
		t.Errorf("an unsupported filter was not refused: %v", err)
	}
	// Quota windows: refused until the next window, then served again.
	s.SetFaults(gcetest.Faults{RateLimit: 2, RateWindow: time.Minute})
	codes := []int{}
	for i := 0; i < 3; i++ {
		_, err := svc.Instances.Get("test-project", zone, "vm").Do()
		code := 200
		if errors.As(err, &gerr) {
			code = gerr.Code
			if gerr.Errors[0].Reason != "rateLimitExceeded" {
				t.Errorf("reason %q", gerr.Errors[0].Reason)
			}
		}
		codes = append(codes, code)
	}
	step(time.Minute)
	if _, err := svc.Instances.Get("test-project", zone, "vm").Do(); err != nil {
		t.Errorf("next window still refused: %v", err)
	}
	if fmt.Sprint(codes) != "[200 200 403]" {
		t.Errorf("codes in one window %v, want [200 200 403]", codes)
	}
}

// A list that runs while our write's operation is in flight sees the old
// NIC; it must not overwrite what the finished write recorded, and a
// change the cache says is already made is confirmed before it is skipped.
func TestListDuringWriteKeepsCacheTrue(t *testing.T) {
	// The list starts once the write is accepted, its operation running
	// (for 400ms).
	writing := make(chan struct{})
	var once sync.Once
	s := newServer(t, gcetest.Options{OpDelay: 400 * time.Millisecond,
		Accepted: func(string, string) { once.Do(func() { close(writing) }) }})
	s.AddInstance(zone, "vm")
	c := newCloud(t, s, nil)
	x, y := netip.MustParsePrefix("10.64.1.0/24"), netip.MustParsePrefix("10.64.2.0/24")
	listed := make(chan error, 1)
	go func() {
		<-writing
		_, err := c.ListInstances(ctx)
		listed <- err
	}()
	if err := c.AddAlias(ctx, ref("vm"), cloud.AliasRange{CIDR: x, RangeName: "pods"}); err != nil {
		t.Fatal(err)
	}
	if err := <-listed; err != nil {
		t.Fatal(err)
	}
	got, _ := c.Aliases(ctx, ref("vm"))
	if prefixes(got) != "pods:10.64.1.0/24" {
		t.Fatalf("after a list during the write the cache says %q", prefixes(got))
	}
	if err := c.RemoveAlias(ctx, ref("vm"), x); err != nil {
		t.Fatal(err)
	}
	if err := c.AddAlias(ctx, ref("vm"), cloud.AliasRange{CIDR: y, RangeName: "pods"}); err != nil {
		t.Fatal(err)
	}
	if got := serverPrefixes(s, "vm"); got != "pods:10.64.2.0/24" {
		t.Fatalf("server holds %q, want only %v", got, y)
	}
	// A stale cache that claims a range is gone: the removal is confirmed
	// with a read, not skipped.
	s.DeleteInstance(zone, "vm")
	s.AddInstance(zone, "vm", &compute.AliasIpRange{IpCidrRange: "10.64.1.0/24", SubnetworkRangeName: "pods"})
	if err := c.RemoveAlias(ctx, ref("vm"), x); err != nil {
		t.Fatal(err)
	}
	if got := serverPrefixes(s, "vm"); got != "" {
		t.Errorf("a removal skipped on a stale cache left %q", got)
	}
}

// Operations that cannot be read (no compute.zoneOperations permissions)
// never hang a caller: the wait ends, the NIC is read, and the write that
// did land is reported as done.
func TestUnreadableOperationsDoNotHang(t *testing.T) {
	s := newServer(t, gcetest.Options{OpDelay: 20 * time.Millisecond, Faults: gcetest.Faults{ForbidOperationReads: true}})
	s.AddInstance(zone, "vm")
	c := newCloud(t, s, nil)
	tctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := c.AddAlias(tctx, ref("vm"), cloud.AliasRange{CIDR: netip.MustParsePrefix("10.64.1.0/24"), RangeName: "pods"}); err != nil {
		t.Fatalf("add with unreadable operations: %v", err)
	}
	if got := serverPrefixes(s, "vm"); got != "pods:10.64.1.0/24" {
		t.Errorf("server holds %q", got)
	}
}

// refusedForGood reports whether the controller would return the block to
// the pool at once (controller.refused): only for evidence-backed refusals.
func refusedForGood(err error) bool {
	return errors.Is(err, cloud.ErrInvalid) || errors.Is(err, cloud.ErrQuotaExceeded) || errors.Is(err, cloud.ErrTooManyAliases)
}

// A refusal of the write no public evidence explains is not taken for a
// permanent refusal (the block would go back to the pool at once) nor
// retried here: it comes back unclassified, so the controller keeps the
// reservation and retries. The evidence-backed refusal reasons still are
// ErrInvalid, and the (unverified) too-many-ranges phrase still is
// ErrTooManyAliases.
func TestUnrecognisedWriteRefusal(t *testing.T) {
	for _, tc := range []struct {
		name    string
		refusal gcetest.Refusal
		want    error // nil: unclassified
	}{
		{"unknown reason", gcetest.Refusal{Code: 400, Reason: "somethingNew", Message: "Something GCE has not told us about."}, nil},
		{"unknown 409", gcetest.Refusal{Code: 409, Reason: "conflict", Message: "Something else."}, nil},
		{"invalid", gcetest.Refusal{Code: 400, Reason: "invalid", Message: "Invalid value for field 'resource.aliasIpRanges[0].ipCidrRange': '10.64.1.0/24'."}, cloud.ErrInvalid},
		{"too many ranges (unverified phrase)", gcetest.Refusal{Code: 400, Reason: "invalid", Message: "exceeded the limit of 150 alias IP ranges"}, cloud.ErrTooManyAliases},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newServer(t, gcetest.Options{Faults: gcetest.Faults{RefuseWrites: tc.refusal}})
			s.AddInstance(zone, "vm")
			c := newCloud(t, s, nil)
			err := c.AddAlias(ctx, ref("vm"), cloud.AliasRange{CIDR: netip.MustParsePrefix("10.64.1.0/24"), RangeName: "pods"})
			switch {
			case err == nil:
				t.Fatal("the refused write succeeded")
			case tc.want != nil && !errors.Is(err, tc.want):
				t.Errorf("got %v, want %v", err, tc.want)
			case tc.want == nil && (refusedForGood(err) || cloud.Code(err) != "error"):
				t.Errorf("got %v (code %s), want it unclassified: not a refusal that frees the block", err, cloud.Code(err))
			}
			if n := s.Count("instances.updateNetworkInterface"); n != 1 {
				t.Errorf("%d writes, want 1: a refusal is not retried by the client", n)
			}
		})
	}
}

// An operation ending RESOURCE_NOT_FOUND does not prove the instance is
// gone: GCE says the same of a missing subnetwork. RemoveAlias reports
// success only when instances.get confirms the instance is gone; otherwise
// the range is still on the NIC and the removal failed.
func TestOperationNotFoundIsConfirmed(t *testing.T) {
	p := netip.MustParsePrefix("10.64.1.0/24")
	t.Run("instance still there", func(t *testing.T) {
		s := newServer(t, gcetest.Options{OpDelay: 10 * time.Millisecond, Faults: gcetest.Faults{OpSubnetworkNotFound: true}})
		s.AddInstance(zone, "vm", &compute.AliasIpRange{IpCidrRange: p.String(), SubnetworkRangeName: "pods"})
		s.AddInstance(zone, "vm2")
		c := newCloud(t, s, nil)
		err := c.RemoveAlias(ctx, ref("vm"), p)
		if err == nil || errors.Is(err, cloud.ErrInstanceNotFound) {
			t.Fatalf("RemoveAlias = %v, want a failure (the alias is still on the NIC)", err)
		}
		if got := serverPrefixes(s, "vm"); got != "pods:10.64.1.0/24" {
			t.Fatalf("server holds %q", got)
		}
		err = c.AddAlias(ctx, ref("vm2"), cloud.AliasRange{CIDR: netip.MustParsePrefix("10.64.2.0/24"), RangeName: "pods"})
		if !errors.Is(err, cloud.ErrInvalid) || errors.Is(err, cloud.ErrInstanceNotFound) {
			t.Errorf("AddAlias = %v, want ErrInvalid (nothing applied, the instance exists)", err)
		}
	})
	t.Run("instance gone meanwhile", func(t *testing.T) {
		// The instance is deleted once the write is in, before its
		// operation ends.
		var s *gcetest.Server
		s = newServer(t, gcetest.Options{OpDelay: 300 * time.Millisecond, Faults: gcetest.Faults{
			OpError: gcetest.OpError{Code: "RESOURCE_NOT_FOUND", Status: 404, Message: "The resource 'projects/test-project/zones/us-central1-a/instances/vm' was not found"}},
			Accepted: func(z, name string) { s.DeleteInstance(z, name) }})
		s.AddInstance(zone, "vm", &compute.AliasIpRange{IpCidrRange: p.String(), SubnetworkRangeName: "pods"})
		c := newCloud(t, s, nil)
		if err := c.RemoveAlias(ctx, ref("vm"), p); err != nil {
			t.Errorf("RemoveAlias from an instance confirmed gone = %v, want nil", err)
		}
	})
}

// An overlap is a conflict whatever code reports it, when its message is
// GCE's "already being used by another resource"; an operation error code
// nothing public explains is neither a conflict nor a refusal that frees
// the block: it comes back unclassified (the reservation is kept).
func TestOperationErrorCodes(t *testing.T) {
	for _, tc := range []struct {
		name string
		op   gcetest.OpError
		want error // nil: unclassified
	}{
		{"overlap under another code", gcetest.OpError{Code: "RESOURCE_IN_USE_BY_ANOTHER_RESOURCE", Status: 400, Message: "IP '10.64.1.0/24' is already being used by another resource."}, cloud.ErrRangeConflict},
		{"overlap under its known code", gcetest.OpError{Code: "IP_IN_USE_BY_ANOTHER_RESOURCE", Status: 400, Message: "IP '10.64.1.0/24' is already being used by another resource."}, cloud.ErrRangeConflict},
		{"unknown code", gcetest.OpError{Code: "SOMETHING_NEW", Status: 400, Message: "Something unforeseen."}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newServer(t, gcetest.Options{OpDelay: 10 * time.Millisecond, Faults: gcetest.Faults{OpError: tc.op}})
			s.AddInstance(zone, "vm")
			c := newCloud(t, s, nil)
			err := c.AddAlias(ctx, ref("vm"), cloud.AliasRange{CIDR: netip.MustParsePrefix("10.64.1.0/24"), RangeName: "pods"})
			switch {
			case err == nil:
				t.Fatal("a failed operation was reported as success")
			case tc.want != nil && !errors.Is(err, tc.want):
				t.Errorf("got %v, want %v", err, tc.want)
			case tc.want == nil && (refusedForGood(err) || errors.Is(err, cloud.ErrRangeConflict) || cloud.Code(err) != "error"):
				t.Errorf("got %v (code %s), want it unclassified", err, cloud.Code(err))
			}
			if n := s.Count("instances.updateNetworkInterface"); n != 1 {
				t.Errorf("%d writes, want 1", n)
			}
			if got := serverPrefixes(s, "vm"); got != "" {
				t.Errorf("a failed operation left %q", got)
			}
		})
	}
}
