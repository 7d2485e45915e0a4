package gce

import (
	"context"
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
	waiters map[string][]chan *compute.Operation
	running bool
}

func (c *Cloud) pollerFor(project, zone string) *poller {
	c.mu.Lock()
	defer c.mu.Unlock()
	key := project + "/" + zone
	p, ok := c.pollers[key]
	if !ok {
		p = &poller{c: c, project: project, zone: zone, waiters: map[string][]chan *compute.Operation{}}
		c.pollers[key] = p
	}
	return p
}

// wait returns the operation once it is DONE.
func (p *poller) wait(ctx context.Context, name string) (*compute.Operation, error) {
	ch := make(chan *compute.Operation, 1)
	p.mu.Lock()
	p.waiters[name] = append(p.waiters[name], ch)
	if !p.running {
		p.running = true
		go p.run()
	}
	p.mu.Unlock()
	select {
	case op := <-ch:
		return op, nil
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
			done, err := p.poll(batch)
			if err != nil {
				p.c.logf("gce: polling %d operations in %s: %v", len(batch), p.zone, err)
				continue
			}
			p.mu.Lock()
			for _, op := range done {
				for _, ch := range p.waiters[op.Name] {
					ch <- op
				}
				delete(p.waiters, op.Name)
			}
			p.mu.Unlock()
		}
	}
}

// poll lists the named operations and returns those that are DONE.
func (p *poller) poll(names []string) ([]*compute.Operation, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	quoted := make([]string, len(names))
	for i, n := range names {
		quoted[i] = regexp.QuoteMeta(n)
	}
	filter := fmt.Sprintf(`name eq "(%s)"`, strings.Join(quoted, "|"))
	var done []*compute.Operation
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
			return done, err
		}
		for _, op := range page.Items {
			if op.Status == "DONE" {
				done = append(done, op)
			}
		}
		if page.NextPageToken == "" {
			return done, nil
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
	return fmt.Errorf("operation %s failed: %s: %s: %w", op.Name, e.Code, e.Message, sentinel)
}
