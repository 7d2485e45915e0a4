// The client-side pacing of API calls: the QPS budget and the quota gate
// every HTTP call passes, and the retry loop that closes the gate on a
// rate-limit refusal and backs off on other retriable errors.

package gce

import (
	"context"
	"errors"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/aliasip/aliasip/cloud"
	"github.com/aliasip/aliasip/internal/sleep"
)

// budgetTransport waits for the quota gate and the QPS budget before each
// request and reports it.
type budgetTransport struct {
	base    http.RoundTripper
	limiter *rate.Limiter
	observe Observer
	gate    *gate
}

func (t *budgetTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	method := MethodName(req.Method, req.URL.Path)
	if err := t.gate.wait(req.Context(), quotaGroup(method)); err != nil {
		return nil, err
	}
	if err := t.limiter.Wait(req.Context()); err != nil {
		return nil, err
	}
	start := time.Now()
	resp, err := t.base.RoundTrip(req)
	if t.observe != nil {
		code := 0
		if resp != nil {
			code = resp.StatusCode
		}
		t.observe(method, code, time.Since(start))
	}
	return resp, err
}

// MethodName names the Compute API method of a request path.
func MethodName(httpMethod, path string) string {
	i := strings.Index(path, "/projects/")
	if i < 0 {
		return "unknown"
	}
	p := strings.Split(strings.Trim(path[i+len("/projects/"):], "/"), "/")[1:]
	switch {
	case len(p) == 2 && p[0] == "aggregated" && p[1] == "instances":
		return "instances.aggregatedList"
	case len(p) == 3 && p[0] == "zones" && p[2] == "instances":
		return "instances.list"
	case len(p) == 4 && p[0] == "zones" && p[2] == "instances":
		return "instances.get"
	case len(p) == 5 && p[2] == "instances":
		return "instances." + p[4]
	case len(p) == 3 && p[0] == "zones" && p[2] == "operations":
		return "zoneOperations.list"
	case len(p) == 4 && p[2] == "operations":
		return "zoneOperations.get"
	case len(p) == 5 && p[2] == "operations":
		return "zoneOperations." + p[4]
	case len(p) == 4 && p[2] == "subnetworks":
		return "subnetworks.get"
	}
	_ = httpMethod
	return "unknown"
}

// retry runs fn, classifying its error; retriable errors (quota, 5xx,
// resource busy, transport) are retried with jittered exponential backoff.
func (c *Cloud) retry(ctx context.Context, method string, fn func() error) error {
	var err error
	for attempt := 0; attempt < c.cfg.MaxAttempts; attempt++ {
		err = classify(method, fn())
		if err == nil || !retriable(err) || ctx.Err() != nil {
			return err
		}
		if errors.Is(err, cloud.ErrRateLimited) {
			// The quota refills "at the start of the next synchronized
			// interval, such as 10:01:00"; calls before then fail too
			// (https://cloud.google.com/compute/api-quota). Every call of
			// its quota group waits at the gate until then.
			if until, moved := c.gate.closeUntilNextWindow(quotaGroup(method), c.cfg.RateLimitWindow); moved {
				c.logf("gce: %s: rate quota exhausted; all calls wait until %s", method, until.Format(time.TimeOnly))
			}
			continue // the transport waits at the gate
		}
		if serr := sleep.For(ctx, c.backoff(attempt)); serr != nil {
			return err
		}
	}
	return err
}

// gate holds the calls of one quota group until its rate quota window
// refills ("you must wait for that rate quota to refill before making more
// requests in that group", https://cloud.google.com/compute/api-quota).
type gate struct {
	mu    sync.Mutex
	until map[string]time.Time
}

// Quota groups the client gates apart.
const (
	// groupReads: every read, whatever its kind. GCE's current "simplified
	// API quotas" count get and list methods together: "Reads per minute
	// (GlobalReadsPerMinutePerProject): Global quota for get and list
	// methods", metric compute.googleapis.com/global_reads, and the same
	// single reads quota per region for regional and zonal methods
	// (https://cloud.google.com/compute/api-quota, "Simplified API quotas";
	// https://cloud.google.com/compute/docs/api-rate-limits). Operation
	// reads (zoneOperations get, list, wait) are get and list methods of
	// the zone's operations. A 403 rateLimitExceeded on any of them means
	// the others are refused too until the next window, so they all wait.
	// All our reads are in one region (the nodes' subnetwork is regional),
	// so one gate is that region's reads quota.
	groupReads = "reads"
	// groupWrites: mutations ("Writes per minute
	// (GlobalWritesPerMinutePerProject)", counted apart from reads on the
	// same page).
	groupWrites = "writes"
	// groupFilteredList: the filtered-list cost, "Filtered list cost
	// overhead (ListRequestsFilterCostOverheadPerMinutePerProject): quota
	// for *.list and *.aggregatedList methods with filters", charged "in
	// addition to" the reads quota (same page). Only our filtered
	// zoneOperations.list calls use it; when it is spent they stop, while
	// plain reads (zoneOperations.get) go on.
	groupFilteredList = "filtered-list"
)

// quotaGroup names the rate quota group of an API method (see groupReads).
func quotaGroup(method string) string {
	switch method {
	case "instances.get", "subnetworks.get", "instances.list", "instances.aggregatedList",
		"zoneOperations.list", "zoneOperations.get", "zoneOperations.wait":
		return groupReads
	default:
		return groupWrites
	}
}

// closeUntilNextWindow closes the group's gate until the next window
// boundary on the wall clock, plus a little jitter so many clients do not
// start at once.
func (g *gate) closeUntilNextWindow(group string, window time.Duration) (until time.Time, moved bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.until == nil {
		g.until = map[string]time.Time{}
	}
	now := time.Now()
	if now.Before(g.until[group]) {
		return g.until[group], false // already closed for this window
	}
	g.until[group] = now.Truncate(window).Add(window).Add(rand.N(window/20 + 1))
	return g.until[group], true
}

// closed reports whether the group's gate is closed now.
func (g *gate) closed(group string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return time.Now().Before(g.until[group])
}

func (g *gate) wait(ctx context.Context, group string) error {
	g.mu.Lock()
	until := g.until[group]
	g.mu.Unlock()
	if d := time.Until(until); d > 0 {
		return sleep.For(ctx, d)
	}
	return nil
}

func (c *Cloud) backoff(attempt int) time.Duration {
	d := c.cfg.BaseBackoff << min(attempt, 6)
	d = min(d, 10*time.Second)
	// Full jitter: spread retries of many workers apart.
	return d/2 + rand.N(d/2+1)
}

func retriable(err error) bool {
	return errors.Is(err, cloud.ErrRateLimited) || errors.Is(err, cloud.ErrUnavailable)
}
