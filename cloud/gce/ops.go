package gce

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	compute "google.golang.org/api/compute/v1"

	"github.com/aliasip/aliasip/cloud"
)

// maxFilterBytes bounds the URL-encoded filter of one zoneOperations.list,
// so no request URL passes 4096 bytes. GET URLs to Google APIs are cut off
// at 8192 characters ("HTTP GET requests URLs are limited to 8192
// symbols", googleapis/google-api-nodejs-client#972); a GCE operation name
// is about 55 characters ("operation-1678698586130-5f6c478e948f3-93704f76-5de7a834",
// F5Networks/f5-google-gdm-templates#78), so 100 names made a filter of
// about 6 KB. Half the limit leaves room for the path and other parameters.
const maxFilterBytes = 3072

// poller waits for the operations of one zone in bulk. One
// zoneOperations.list call, filtered to the names of the operations that
// are due, answers for all of them, instead of one zoneOperations.wait
// per operation. zoneOperations.wait is no better than a poll anyway: it
// "is called on a best-effort basis ... might return after zero seconds"
// (https://cloud.google.com/compute/docs/reference/rest/v1/zoneOperations/wait).
// The filter uses the documented regular-expression form, `name eq RE2`,
// whose literal "must match the entire field"
// (google.golang.org/api/compute/v1, ZoneOperationsListCall.Filter).
//
// Polls cost quota: each counts against the reads quota, and a filtered
// list also against the filtered-list cost quota (groupFilteredList). So
// an operation is polled PollInterval after it starts, then at intervals
// that double up to MaxPollInterval as it ages; operations due at about
// the same time share one call (names per call bounded by maxFilterBytes).
// When lists are refused, due operations are read one by one with
// zoneOperations.get at once, not after the quota window.
type poller struct {
	c             *Cloud
	project, zone string

	mu      sync.Mutex
	ops     map[string]*pendingOp
	running bool
	wake    chan struct{} // an operation was added
}

// pendingOp is one operation someone waits for.
type pendingOp struct {
	waiters  []chan opResult
	interval time.Duration // until the next poll after this one
	next     time.Time     // when it is due
	missing  int           // polls it was absent from
	fails    int           // reads of it that failed in a row
}

type opResult struct {
	op  *compute.Operation
	err error
}

// missingPolls is how many polls may not mention an operation before it is
// read on its own with zoneOperations.get.
const missingPolls = 3

// maxReadFailures is how many failed reads of one operation in a row end
// its wait.
const maxReadFailures = 3

func (c *Cloud) pollerFor(project, zone string) *poller {
	c.mu.Lock()
	defer c.mu.Unlock()
	key := project + "/" + zone
	p, ok := c.pollers[key]
	if !ok {
		p = &poller{c: c, project: project, zone: zone, ops: map[string]*pendingOp{}, wake: make(chan struct{}, 1)}
		c.pollers[key] = p
	}
	return p
}

// wait returns the operation once it is DONE.
func (p *poller) wait(ctx context.Context, name string) (*compute.Operation, error) {
	ch := make(chan opResult, 1)
	p.mu.Lock()
	o, ok := p.ops[name]
	if !ok {
		first := p.c.cfg.PollInterval
		o = &pendingOp{interval: first, next: time.Now().Add(first)}
		p.ops[name] = o
	}
	o.waiters = append(o.waiters, ch)
	if !p.running {
		p.running = true
		go p.run()
	}
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
	select {
	case r := <-ch:
		return r.op, r.err
	case <-ctx.Done():
		p.mu.Lock()
		if o, ok := p.ops[name]; ok {
			for i, w := range o.waiters {
				if w == ch {
					o.waiters = append(o.waiters[:i], o.waiters[i+1:]...)
					break
				}
			}
			if len(o.waiters) == 0 {
				delete(p.ops, name)
			}
		}
		p.mu.Unlock()
		return nil, ctx.Err()
	}
}

// run polls while anyone waits. Its calls are not tied to one waiter's
// context; each has its own deadline.
func (p *poller) run() {
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		p.mu.Lock()
		if len(p.ops) == 0 {
			p.running = false
			p.mu.Unlock()
			return
		}
		now := time.Now()
		earliest := now.Add(time.Hour)
		for _, o := range p.ops {
			if o.next.Before(earliest) {
				earliest = o.next
			}
		}
		p.mu.Unlock()
		if d := earliest.Sub(now); d > 0 {
			timer.Reset(d)
			select {
			case <-timer.C:
			case <-p.wake:
				if !timer.Stop() {
					<-timer.C
				}
				continue // a new operation may be due sooner
			}
		}
		p.tick()
	}
}

// due returns the operations to poll now: those due, and those due within
// half their interval, so operations started at about the same time share
// calls. It schedules their next poll (the interval doubles, up to
// MaxPollInterval).
func (p *poller) due() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	var names []string
	for n, o := range p.ops {
		if !o.next.After(now.Add(o.interval / 2)) {
			names = append(names, n)
			o.interval = min(2*o.interval, max(p.c.cfg.MaxPollInterval, p.c.cfg.PollInterval))
			o.next = now.Add(o.interval)
		}
	}
	sort.Strings(names) // operation names start with their creation time
	return names
}

// tick polls the operations that are due.
func (p *poller) tick() {
	names := p.due()
	for _, batch := range filterBatches(names) {
		if p.c.gate.closed(groupFilteredList) {
			// Filtered lists are out of quota until the next window:
			// read the due operations one by one meanwhile.
			p.readEach(batch)
			continue
		}
		done, seen, err := p.poll(batch)
		if err != nil {
			p.c.logf("gce: polling %d operations in %s: %v; reading them one by one", len(batch), p.zone, err)
			p.readEach(batch)
			continue
		}
		var absent []string
		p.mu.Lock()
		for _, op := range done {
			p.deliver(op.Name, opResult{op: op})
		}
		for _, n := range batch {
			o, waiting := p.ops[n]
			switch {
			case !waiting:
			case seen[n]:
				o.missing = 0
			default:
				if o.missing++; o.missing >= missingPolls {
					absent = append(absent, n)
				}
			}
		}
		p.mu.Unlock()
		// An operation the list keeps leaving out is read on its own,
		// so no waiter can hang on it.
		p.readEach(absent)
	}
}

// filterBatches splits names into groups whose list filter stays within
// maxFilterBytes once URL-encoded.
func filterBatches(names []string) [][]string {
	var out [][]string
	var cur []string
	size := len(url.QueryEscape(`name eq "()"`))
	for _, n := range names {
		add := len(url.QueryEscape(regexp.QuoteMeta(n) + "|"))
		if len(cur) > 0 && size+add > maxFilterBytes {
			out = append(out, cur)
			cur, size = nil, len(url.QueryEscape(`name eq "()"`))
		}
		cur = append(cur, n)
		size += add
	}
	if len(cur) > 0 {
		out = append(out, cur)
	}
	return out
}

// deliver hands a result to an operation's waiters; p.mu is held.
func (p *poller) deliver(name string, r opResult) {
	if o, ok := p.ops[name]; ok {
		for _, ch := range o.waiters {
			ch <- r
		}
	}
	delete(p.ops, name)
}

// readEach reads operations one by one with zoneOperations.get: the
// fallback when a list fails or leaves an operation out.
func (p *poller) readEach(names []string) {
	for _, n := range names {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		var op *compute.Operation
		err := p.c.retry(ctx, "zoneOperations.get", func() (err error) {
			op, err = p.c.svc.ZoneOperations.Get(p.project, p.zone, n).Context(ctx).Do()
			return err
		})
		cancel()
		p.mu.Lock()
		o, waiting := p.ops[n]
		switch {
		case !waiting:
		case err == nil && op.Status == "DONE":
			p.deliver(n, opResult{op: op})
		case err == nil:
			o.missing, o.fails = 0, 0 // still running: keep polling
		case errors.Is(err, cloud.ErrInstanceNotFound):
			// The operation is gone: whether it applied is unknown, so the
			// caller re-reads the NIC.
			p.deliver(n, opResult{err: fmt.Errorf("operation %s vanished: %w", n, cloud.ErrUnavailable)})
		default:
			p.c.logf("gce: reading operation %s: %v", n, err)
			if o.fails++; o.fails >= maxReadFailures {
				// Its outcome cannot be learned: the caller re-reads the
				// NIC rather than wait forever.
				p.deliver(n, opResult{err: fmt.Errorf("operation %s cannot be read: %w: %w", n, cloud.ErrUnavailable, err)})
			}
		}
		p.mu.Unlock()
	}
}

// poll lists the named operations and returns those that are DONE and
// the names the list mentioned. It makes one attempt per page: on any
// error the caller reads the operations one by one at once. A refusal for
// the filtered-list cost quota closes that quota's gate until the next
// window; one for the reads quota closes the reads gate (retry's rule).
func (p *poller) poll(names []string) ([]*compute.Operation, map[string]bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	quoted := make([]string, len(names))
	for i, n := range names {
		quoted[i] = regexp.QuoteMeta(n)
	}
	filter := fmt.Sprintf(`name eq "(%s)"`, strings.Join(quoted, "|"))
	var done []*compute.Operation
	seen := map[string]bool{}
	pageToken := ""
	for {
		call := p.c.svc.ZoneOperations.List(p.project, p.zone).Filter(filter).MaxResults(500).Context(ctx)
		if pageToken != "" {
			call = call.PageToken(pageToken)
		}
		page, err := call.Do()
		if err = classify("zoneOperations.list", err); err != nil {
			if errors.Is(err, cloud.ErrRateLimited) {
				group := groupReads
				if filterCostRefusal(err) {
					group = groupFilteredList
				}
				if until, moved := p.c.gate.closeUntilNextWindow(group, p.c.cfg.RateLimitWindow); moved {
					p.c.logf("gce: zoneOperations.list: %s quota exhausted until %s", group, until.Format(time.TimeOnly))
				}
			}
			return nil, nil, err
		}
		for _, op := range page.Items {
			seen[op.Name] = true
			if op.Status == "DONE" {
				done = append(done, op)
			}
		}
		if page.NextPageToken == "" {
			return done, seen, nil
		}
		pageToken = page.NextPageToken
	}
}

// filterCostRefusal reports whether a 403 rateLimitExceeded names the
// filtered-list cost quota rather than the reads quota. GCE's quota
// refusals name their metric and limit: "Quota exceeded for quota metric
// 'OperationReadGroup' and limit 'Operation read requests per minute' of
// service 'compute.googleapis.com' for consumer 'project_number:...'"
// (hashicorp/terraform-provider-google, error_retry_predicates_test.go).
// This quota's metric is compute.googleapis.com/filtered_list_cost_overhead,
// limit ListRequestsFilterCostOverheadPerMinutePerProject
// (https://cloud.google.com/compute/api-quota). UNVERIFIED: no refusal of
// it was found in public, so how the message spells it is not known; any
// of three spellings counts. A refusal it misses is taken for the reads
// quota: every read waits for the next window, the old behaviour.
func filterCostRefusal(err error) bool {
	m := strings.ToLower(err.Error())
	return strings.Contains(m, "filtered_list_cost_overhead") || strings.Contains(m, "filtercostoverhead") ||
		strings.Contains(m, "filtered list cost")
}

// opError classifies a DONE operation's error by its code, not its HTTP
// status; nil when it succeeded.
func opError(op *compute.Operation) error {
	if op.Error == nil || len(op.Error.Errors) == 0 {
		return nil
	}
	e := op.Error.Errors[0]
	var sentinel error
	switch {
	case e.Code == "IP_IN_USE_BY_ANOTHER_RESOURCE" || inUseMessage(e.Message):
		// The range is held by another resource: "Code:
		// IP_IN_USE_BY_ANOTHER_RESOURCE, Message: IP '10.128.3.140/31' is
		// already being used by another resource."
		// (GoogleCloudPlatform/compute-image-tools#659). That code is the
		// only one public reports show for an alias range in use (also
		// F5Networks/f5-google-gdm-templates#78); the message is matched
		// too, so the same overlap under another code is still a conflict.
		sentinel = cloud.ErrRangeConflict
	case e.Code == "RESOURCE_NOT_READY" || e.Code == "RESOURCE_OPERATION_RATE_EXCEEDED":
		// Another operation holds the instance: try again later.
		sentinel = cloud.ErrUnavailable
	case e.Code == "CONDITION_NOT_MET":
		// The fingerprint went stale while the operation ran (412).
		sentinel = cloud.ErrStaleFingerprint
	case e.Code == "QUOTA_EXCEEDED":
		sentinel = cloud.ErrQuotaExceeded
	case e.Code == "RESOURCE_NOT_FOUND" || op.HttpErrorStatusCode == 404:
		// Something the write names was not found: maybe the instance, but
		// not necessarily. GCE answers a call on an instance with "The
		// resource 'projects/P/regions/R/subnetworks/S' was not found" when
		// the subnetwork it names is missing
		// (kelseyhightower/kubernetes-the-hard-way#653, instances.create),
		// and an alias write names a subnetwork and its secondary range.
		// errMaybeGone makes modify confirm with instances.get before
		// anyone reads it as a vanished instance.
		sentinel = errMaybeGone
	default:
		switch s := op.HttpErrorStatusCode; {
		case s == 412:
			sentinel = cloud.ErrStaleFingerprint
		case s == 429:
			sentinel = cloud.ErrRateLimited
		case s >= 500 || s == 0:
			sentinel = cloud.ErrUnavailable
		default:
			// A code no public evidence explains: unclassified. The
			// operation applied nothing, but what it means is unknown (it
			// could be an overlap reported another way), so the caller
			// keeps its reservation and retries rather than handing the
			// block to another node at once.
		}
	}
	return &opFailure{msg: fmt.Sprintf("operation %s failed: %s: %s", op.Name, e.Code, e.Message), sentinel: sentinel}
}

// errMaybeGone: an operation reported something not found. Only modify
// sees it: it asks instances.get whether the instance is gone.
var errMaybeGone = errors.New("not found (instance unconfirmed)")

// opFailure is an operation that ended DONE with an error: GCE applied
// nothing of it. sentinel is nil when the error code is not recognised.
type opFailure struct {
	msg      string
	sentinel error
}

func (e *opFailure) Error() string {
	if e.sentinel == nil {
		return e.msg
	}
	return e.msg + ": " + e.sentinel.Error()
}
func (e *opFailure) Unwrap() error { return e.sentinel }
