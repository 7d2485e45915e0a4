package gce

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"time"

	compute "google.golang.org/api/compute/v1"

	"github.com/aliasip/aliasip/cloud"
)

// opsPerPoll bounds the operation names in one list filter (the regular
// expression travels in the URL).
const opsPerPoll = 100

// poller waits for the operations of one zone in bulk: every PollInterval
// one zoneOperations.list call, filtered to the pending operations' names,
// answers for all of them, instead of one zoneOperations.wait per
// operation. zoneOperations.wait is no better than a poll anyway: it "is
// called on a best-effort basis ... might return after zero seconds"
// (https://cloud.google.com/compute/docs/reference/rest/v1/zoneOperations/wait).
// The filter uses the documented regular-expression form, `name eq RE2`,
// whose literal "must match the entire field"
// (google.golang.org/api/compute/v1, ZoneOperationsListCall.Filter).
type poller struct {
	c             *Cloud
	project, zone string

	mu      sync.Mutex
	waiters map[string][]chan opResult
	missing map[string]int // polls a pending operation was absent from
	fails   map[string]int // reads of an operation that failed in a row
	running bool
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
		p = &poller{c: c, project: project, zone: zone, waiters: map[string][]chan opResult{}, missing: map[string]int{}, fails: map[string]int{}}
		c.pollers[key] = p
	}
	return p
}

// wait returns the operation once it is DONE.
func (p *poller) wait(ctx context.Context, name string) (*compute.Operation, error) {
	ch := make(chan opResult, 1)
	p.mu.Lock()
	p.waiters[name] = append(p.waiters[name], ch)
	if !p.running {
		p.running = true
		go p.run()
	}
	p.mu.Unlock()
	select {
	case r := <-ch:
		return r.op, r.err
	case <-ctx.Done():
		p.mu.Lock()
		list := p.waiters[name]
		for i, w := range list {
			if w == ch {
				list = append(list[:i], list[i+1:]...)
				break
			}
		}
		if len(list) == 0 {
			delete(p.waiters, name)
			delete(p.missing, name)
		} else {
			p.waiters[name] = list
		}
		p.mu.Unlock()
		return nil, ctx.Err()
	}
}

// run polls while anyone waits. Its calls are not tied to one waiter's
// context; each has its own deadline.
func (p *poller) run() {
	interval := p.c.cfg.PollInterval
	for {
		time.Sleep(interval)
		p.mu.Lock()
		if len(p.waiters) == 0 {
			p.running = false
			p.mu.Unlock()
			return
		}
		names := make([]string, 0, len(p.waiters))
		for n := range p.waiters {
			names = append(names, n)
		}
		p.mu.Unlock()
		for len(names) > 0 {
			batch := names[:min(opsPerPoll, len(names))]
			names = names[len(batch):]
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
				if seen[n] {
					delete(p.missing, n)
				} else if _, waiting := p.waiters[n]; waiting {
					if p.missing[n]++; p.missing[n] >= missingPolls {
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
}

// deliver hands a result to an operation's waiters; p.mu is held.
func (p *poller) deliver(name string, r opResult) {
	for _, ch := range p.waiters[name] {
		ch <- r
	}
	delete(p.waiters, name)
	delete(p.missing, name)
	delete(p.fails, name)
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
		switch {
		case err == nil && op.Status == "DONE":
			p.deliver(n, opResult{op: op})
		case err == nil:
			delete(p.missing, n) // still running: keep polling
			delete(p.fails, n)
		case errors.Is(err, cloud.ErrInstanceNotFound):
			// The operation is gone: whether it applied is unknown, so the
			// caller re-reads the NIC.
			p.deliver(n, opResult{err: fmt.Errorf("operation %s vanished: %w", n, cloud.ErrUnavailable)})
		default:
			p.c.logf("gce: reading operation %s: %v", n, err)
			if _, waiting := p.waiters[n]; waiting {
				if p.fails[n]++; p.fails[n] >= maxReadFailures {
					// Its outcome cannot be learned: the caller re-reads the
					// NIC rather than wait forever.
					p.deliver(n, opResult{err: fmt.Errorf("operation %s cannot be read: %w: %w", n, cloud.ErrUnavailable, err)})
				}
			}
		}
		p.mu.Unlock()
	}
}

// poll lists the named operations and returns those that are DONE and
// the names the list mentioned.
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
		var page *compute.OperationList
		err := p.c.retry(ctx, "zoneOperations.list", func() (err error) {
			call := p.c.svc.ZoneOperations.List(p.project, p.zone).Filter(filter).MaxResults(500).Context(ctx)
			if pageToken != "" {
				call = call.PageToken(pageToken)
			}
			page, err = call.Do()
			return err
		})
		if err != nil {
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

// opError classifies a DONE operation's error by its code, not its HTTP
// status; nil when it succeeded.
func opError(op *compute.Operation) error {
	if op.Error == nil || len(op.Error.Errors) == 0 {
		return nil
	}
	e := op.Error.Errors[0]
	var sentinel error
	switch e.Code {
	case "IP_IN_USE_BY_ANOTHER_RESOURCE":
		// The range is held by another resource: "IP '10.128.3.140/31' is
		// already being used by another resource."
		// (GoogleCloudPlatform/compute-image-tools#659).
		sentinel = cloud.ErrRangeConflict
	case "RESOURCE_NOT_READY", "RESOURCE_OPERATION_RATE_EXCEEDED":
		// Another operation holds the instance: try again later.
		sentinel = cloud.ErrUnavailable
	case "CONDITION_NOT_MET":
		// The fingerprint went stale while the operation ran (412).
		sentinel = cloud.ErrStaleFingerprint
	case "QUOTA_EXCEEDED":
		sentinel = cloud.ErrQuotaExceeded
	case "RESOURCE_NOT_FOUND":
		sentinel = cloud.ErrInstanceNotFound
	default:
		switch s := op.HttpErrorStatusCode; {
		case s == 404:
			sentinel = cloud.ErrInstanceNotFound
		case s == 412:
			sentinel = cloud.ErrStaleFingerprint
		case s == 429:
			sentinel = cloud.ErrRateLimited
		case s >= 500 || s == 0:
			sentinel = cloud.ErrUnavailable
		default:
			// Any other refusal is about this request on this instance.
			sentinel = cloud.ErrInvalid
		}
	}
	return &opFailure{msg: fmt.Sprintf("operation %s failed: %s: %s", op.Name, e.Code, e.Message), sentinel: sentinel}
}

// opFailure is an operation that ended DONE with an error: GCE applied
// nothing of it.
type opFailure struct {
	msg      string
	sentinel error
}

func (e *opFailure) Error() string { return e.msg + ": " + e.sentinel.Error() }
func (e *opFailure) Unwrap() error { return e.sentinel }
