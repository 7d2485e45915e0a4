// Zone operations: their state, completion, and the get, wait and
// filtered list routes.

package gcetest

import (
	"fmt"
	"net/http"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	compute "google.golang.org/api/compute/v1"
)

type operation struct {
	op     *compute.Operation
	doneAt time.Time
	apply  func() // runs when the operation completes
	// fail is the error the operation ends with ("" for success): an
	// operation error code and its HTTP status.
	fail     string
	failCode int
	failMsg  string
	done     chan struct{}
}

// finish completes an operation; s.mu is held.
func (s *Server) finish(o *operation) {
	if o.op.Status == "DONE" {
		return
	}
	o.apply()
	o.op.Status = "DONE"
	o.op.Progress = 100
	if o.fail != "" {
		o.op.HttpErrorStatusCode = int64(o.failCode)
		o.op.Error = &compute.OperationError{Errors: []*compute.OperationErrorErrors{{Code: o.fail, Message: o.failMsg}}}
	}
	close(o.done)
}

// listOps answers zoneOperations.list. The only filter understood is the
// regular-expression form the API documents for list filters: "use the eq
// (equal) or ne (not equal) operator against a single un-parenthesized
// expression with or without quotes ... The literal value is interpreted as
// a regular expression using Google RE2 library syntax. The literal value
// must match the entire field." (google.golang.org/api/compute/v1,
// ZoneOperationsListCall.Filter). Anything else is refused, so a client
// cannot rely on a filter this server would only pretend to apply.
func (s *Server) listOps(w http.ResponseWriter, r *http.Request, zone string) {
	q := r.URL.Query()
	var match func(string) bool
	if f := strings.TrimSpace(q.Get("filter")); f != "" {
		m := opFilter.FindStringSubmatch(f)
		if m == nil {
			apiError(w, 400, "invalid", fmt.Sprintf("Invalid list filter expression '%s' (this test server takes only name eq|ne REGEX).", f))
			return
		}
		lit := m[2]
		if len(lit) >= 2 && (lit[0] == '"' || lit[0] == '\'') && lit[len(lit)-1] == lit[0] {
			lit = lit[1 : len(lit)-1]
		}
		re, err := regexp.Compile("^(?:" + lit + ")$")
		if err != nil {
			apiError(w, 400, "invalid", fmt.Sprintf("Invalid regular expression in filter '%s': %v", f, err))
			return
		}
		match = func(name string) bool { return re.MatchString(name) == (m[1] == "eq") }
	}
	maxResults := 500
	if v, err := strconv.Atoi(q.Get("maxResults")); err == nil && v > 0 && v < maxResults {
		maxResults = v
	}
	start, _ := strconv.Atoi(q.Get("pageToken"))
	s.mu.Lock()
	if match != nil {
		examined := 0
		for _, o := range s.ops {
			if strings.HasSuffix(o.op.Zone, "/zones/"+zone) {
				examined++
			}
		}
		if !s.allowFilterCost(examined) {
			s.mu.Unlock()
			apiError(w, 403, "rateLimitExceeded", "Quota exceeded for quota metric 'compute.googleapis.com/filtered_list_cost_overhead' and limit 'ListRequestsFilterCostOverheadPerMinutePerProject' of service 'compute.googleapis.com' for consumer 'project_number:1' (injected).")
			return
		}
	}
	var names []string
	for name, o := range s.ops {
		if strings.HasSuffix(o.op.Zone, "/zones/"+zone) && (match == nil || match(name)) {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	out := &compute.OperationList{Kind: "compute#operationList"}
	end := min(start+maxResults, len(names))
	for _, name := range names[min(start, len(names)):end] {
		c := *s.ops[name].op
		out.Items = append(out.Items, &c)
	}
	s.mu.Unlock()
	if end < len(names) {
		out.NextPageToken = strconv.Itoa(end)
	}
	writeJSON(w, out)
}

var opFilter = regexp.MustCompile(`^name\s+(eq|ne)\s+(.+)$`)

func (s *Server) getOp(w http.ResponseWriter, r *http.Request, name string, wait bool) {
	s.mu.Lock()
	o, ok := s.ops[name]
	s.mu.Unlock()
	if !ok {
		apiError(w, 404, "notFound", "operation "+name+" not found")
		return
	}
	if wait {
		t := time.NewTimer(s.opts.WaitMax)
		select {
		case <-o.done:
		case <-t.C: // returns early, still RUNNING
		case <-r.Context().Done():
		}
		t.Stop()
	}
	s.mu.Lock()
	out := *o.op
	s.mu.Unlock()
	writeJSON(w, &out)
}
