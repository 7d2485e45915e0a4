// Package gcetest is a GCE REST server for tests: it behaves like Compute
// Engine for what aliasip uses, so the real google.golang.org/api/compute/v1
// client (and the metadata client) can be driven over HTTP.
//
// Served: instances get/list/aggregatedList, instances.updateNetworkInterface
// (400 without a fingerprint, 412 on a stale one, PATCH semantics, ranges
// checked against the NIC's subnetwork, overlaps with other instances
// reported inside the operation, the 150-range limit, requestId
// idempotence), zone operations get/wait/list (wait may return before the
// operation is done, even at once; list takes the `name eq RE2` filter),
// subnetworks get, and the metadata server with its Metadata-Flavor check.
// Faults can be injected: a 5xx rate, forced 412s, per-minute quota windows
// answered with 403 rateLimitExceeded, and operations that fail with
// GCE's error codes.
//
// Each rule cites its public source next to the code that encodes it.
package gcetest

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	compute "google.golang.org/api/compute/v1"
)

// MaxAliasRanges is GCE's per-NIC limit.
const MaxAliasRanges = 150

// maxURI is the longest request URI served.
const maxURI = 8192

// Faults are injected failures. Rates are fractions in [0,1].
type Faults struct {
	// Rate5xx: fraction of compute calls answered 503.
	Rate5xx float64
	// Force412: fraction of updateNetworkInterface calls answered 412.
	Force412 float64
	// RateLimit: compute calls accepted per RateWindow (0: unlimited);
	// beyond it calls are answered 403 rateLimitExceeded until the next
	// window. GCE "enforces rate quotas at a per-minute (60 seconds)
	// interval"; a project that reaches its quota at 10:00:15 gets it back
	// "at the start of the next synchronized interval, such as 10:01:00"
	// (https://cloud.google.com/compute/api-quota, "Rate quotas").
	RateLimit float64
	// RateWindow is the quota window (default one minute), aligned to the
	// wall clock like GCE's.
	RateWindow time.Duration
	// WaitAtOnce: zoneOperations.wait returns the operation at once, done
	// or not. GCE documents that wait "might return after zero seconds"
	// (https://cloud.google.com/compute/docs/reference/rest/v1/zoneOperations/wait).
	WaitAtOnce bool
	// RefuseOperationList: zoneOperations.list answers 400, as a server
	// that did not take our filter would.
	RefuseOperationList bool
	// ForbidOperationReads: zoneOperations get, wait and list answer 403
	// forbidden (an identity without compute.zoneOperations.* permissions).
	ForbidOperationReads bool
	// ForbidSubnetworkReads: subnetworks.get answers 403 forbidden (an
	// identity without compute.subnetworks.get on the host project).
	ForbidSubnetworkReads bool
	// FailOps: fraction of operations that end DONE with INTERNAL_ERROR, unapplied.
	FailOps float64
	// OpNotReady, OpStaleFingerprint, OpQuotaExceeded: fractions of
	// operations that end DONE, unapplied, with RESOURCE_NOT_READY (400),
	// CONDITION_NOT_MET (412) or QUOTA_EXCEEDED (403).
	OpNotReady, OpStaleFingerprint, OpQuotaExceeded float64
	// OpSubnetworkNotFound: every operation ends DONE, unapplied, with
	// RESOURCE_NOT_FOUND (404) naming the instance's subnetwork, in GCE's
	// words for a missing subnetwork: "The resource
	// 'projects/P/regions/R/subnetworks/S' was not found"
	// (kelseyhightower/kubernetes-the-hard-way#653). The instance exists.
	OpSubnetworkNotFound bool
	// OpError, when its Code is set, ends every operation DONE, unapplied,
	// with that error: for codes no public evidence describes.
	OpError OpError
	// FilteredListCost: resources a filtered list may examine per
	// FilterCostWindow (0: unlimited). A filtered zoneOperations.list
	// examines every operation of its zone. Beyond it filtered lists are
	// answered 403 rateLimitExceeded naming the quota, while other reads
	// go on: the "Filtered list cost overhead" quota is charged "in
	// addition to" the reads quota
	// (https://cloud.google.com/compute/api-quota, metric
	// compute.googleapis.com/filtered_list_cost_overhead). The wording of
	// the refusal is this server's (metric and limit named as in GCE's
	// other quota refusals); GCE's own was not found.
	FilteredListCost int
	// FilterCostWindow is that quota's window (default RateWindow).
	FilterCostWindow time.Duration
	// RefuseWrites, when its Code is set, answers every
	// updateNetworkInterface with that error: for refusals no public
	// evidence describes.
	RefuseWrites Refusal
}

// Refusal is an API error answer: HTTP status, reason and message.
type Refusal struct {
	Code    int
	Reason  string
	Message string
}

// OpError is an operation error: its code, HTTP status and message.
type OpError struct {
	Code    string
	Status  int
	Message string
}

// Options configures a Server.
type Options struct {
	Project string
	Region  string
	// SubnetProject is the project that owns the subnetwork: a Shared VPC
	// host project (default: Project). Instances' NICs name it in their
	// subnetwork URL, and only it answers subnetworks.get.
	SubnetProject string
	// Subnetwork and its ranges.
	Subnetwork      string
	PrimaryRange    netip.Prefix
	SecondaryRanges map[string]netip.Prefix
	// OpDelay is how long an operation stays RUNNING before it is DONE.
	OpDelay time.Duration
	// WaitMax is the longest operations.wait blocks before returning the
	// operation, done or not (GCE: about 2 minutes).
	WaitMax time.Duration
	Faults  Faults
	// Metadata describes the VM the metadata server speaks for.
	Metadata Metadata
	// BeforeUpdate, if set, is called with every updateNetworkInterface
	// request once parsed, before it is handled: a test pauses a caller
	// there to inject an interleaving.
	BeforeUpdate func(zone, name string, nic *compute.NetworkInterface)
}

// Metadata is what the metadata server returns.
type Metadata struct {
	Project           string
	NumericProject    string
	Zone              string
	InstanceName      string
	InstanceAttrs     map[string]string
	ProjectAttrs      map[string]string
	NetworkInterfaces []MetadataNIC
}

// MetadataNIC is one network interface in the metadata.
type MetadataNIC struct {
	IP      string
	Network string
}

// Server is the fake GCE. It is safe for concurrent use.
type Server struct {
	*httptest.Server
	opts Options

	mu        sync.Mutex
	instances map[string]*instance // zone/name
	ops       map[string]*operation
	requests  map[string]string // requestId -> operation name
	nextOp    int
	counts    map[string]int
	faults    Faults
	window    time.Time      // start of the current quota window
	inWindow  map[string]int // calls counted in it, by quota group
	costStart time.Time      // start of the current filtered-list cost window
	cost      int            // resources examined in it
	maxURL    int            // longest request URI received
	// unreachable zones: aggregatedList leaves them out
	unreachable map[string]bool
}

type instance struct {
	zone, name  string
	subnetwork  string // "" is Options.Subnetwork
	id          uint64
	fingerprint uint64
	aliases     []*compute.AliasIpRange
	pending     []*compute.AliasIpRange // set while an update operation runs
	busy        bool
}

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

// NewServer starts a server.
func NewServer(opts Options) *Server {
	if opts.Project == "" {
		opts.Project = "test-project"
	}
	if opts.SubnetProject == "" {
		opts.SubnetProject = opts.Project
	}
	if opts.Region == "" {
		opts.Region = "us-central1"
	}
	if opts.Subnetwork == "" {
		opts.Subnetwork = "nodes"
	}
	if !opts.PrimaryRange.IsValid() {
		opts.PrimaryRange = netip.MustParsePrefix("10.128.0.0/20")
	}
	if opts.WaitMax <= 0 {
		opts.WaitMax = 2 * time.Second
	}
	s := &Server{
		opts:      opts,
		instances: map[string]*instance{},
		ops:       map[string]*operation{},
		requests:  map[string]string{},
		counts:    map[string]int{},
	}
	s.SetFaults(opts.Faults)
	mux := http.NewServeMux()
	mux.HandleFunc("/compute/v1/", s.compute)
	mux.HandleFunc("/computeMetadata/v1/", s.metadata)
	s.Server = httptest.NewServer(mux)
	return s
}

// Endpoint is the compute base URL for option.WithEndpoint.
func (s *Server) Endpoint() string { return s.URL + "/compute/v1/" }

// MetadataHost is the value for GCE_METADATA_HOST.
func (s *Server) MetadataHost() string { return strings.TrimPrefix(s.URL, "http://") }

// SetFaults replaces the injected faults.
func (s *Server) SetFaults(f Faults) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if f.RateWindow <= 0 {
		f.RateWindow = time.Minute
	}
	if f.FilterCostWindow <= 0 {
		f.FilterCostWindow = f.RateWindow
	}
	s.faults = f
	s.window, s.inWindow = time.Time{}, map[string]int{}
	s.costStart, s.cost = time.Time{}, 0
}

// quotaGroup is the rate quota a method counts against. GCE's current
// "simplified API quotas" count reads (get and list methods, operation
// reads among them) in one quota and writes in another: "Reads per minute
// ... Global quota for get and list methods", "Writes per minute"
// (https://cloud.google.com/compute/api-quota,
// https://cloud.google.com/compute/docs/api-rate-limits).
func quotaGroup(method string) string {
	switch method {
	case "instances.updateNetworkInterface":
		return "writes"
	default:
		return "reads"
	}
}

// allow counts a call against its group's quota window; s.mu is held.
func (s *Server) allow(method string) bool {
	if s.faults.RateLimit <= 0 {
		return true
	}
	w := time.Now().Truncate(s.faults.RateWindow)
	if !w.Equal(s.window) {
		s.window, s.inWindow = w, map[string]int{}
	}
	g := quotaGroup(method)
	s.inWindow[g]++
	return float64(s.inWindow[g]) <= s.faults.RateLimit
}

// allowFilterCost charges a filtered list that examines n resources;
// s.mu is held.
func (s *Server) allowFilterCost(n int) bool {
	if s.faults.FilteredListCost <= 0 {
		return true
	}
	w := time.Now().Truncate(s.faults.FilterCostWindow)
	if !w.Equal(s.costStart) {
		s.costStart, s.cost = w, 0
	}
	if s.cost >= s.faults.FilteredListCost {
		return false
	}
	s.cost += n
	return true
}

// SetUnreachable makes instances.aggregatedList unable to reach zones:
// their instances are left out and the zones are named in the answer's
// "unreachables" ("[Output Only] Unreachable resources.", and a scope
// warning UNREACHABLE, "A given scope cannot be reached.":
// InstanceAggregatedList in google.golang.org/api/compute/v1
// compute-api.json and
// https://cloud.google.com/compute/docs/reference/rest/v1/instances/aggregatedList).
// The method's description recommends returnPartialSuccess=true "to
// prevent failure": without it, a call that cannot reach a zone fails
// (here with 503). No zones: every zone is reachable again.
func (s *Server) SetUnreachable(zones ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.unreachable = map[string]bool{}
	for _, z := range zones {
		s.unreachable[z] = true
	}
}

// MaxURLLength returns the length of the longest request URI (path and
// query) received.
func (s *Server) MaxURLLength() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.maxURL
}

// AddInstance creates an instance in zone with NIC nic0 on the subnetwork.
func (s *Server) AddInstance(zone, name string, aliases ...*compute.AliasIpRange) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.instances[zone+"/"+name] = &instance{zone: zone, name: name, id: uint64(len(s.instances) + 1000), fingerprint: 1, aliases: aliases}
}

// AddInstanceOn creates an instance whose nic0 is on another subnetwork of
// the region, one without our secondary ranges: every alias write naming
// them is refused with 400.
func (s *Server) AddInstanceOn(zone, name, subnetwork string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.instances[zone+"/"+name] = &instance{zone: zone, name: name, subnetwork: subnetwork, id: uint64(len(s.instances) + 1000), fingerprint: 1}
}

// ApplyAliases sets an instance's alias ranges as an operation another
// client started would when it completes: applied at once, with a new
// fingerprint, whatever our caches think.
func (s *Server) ApplyAliases(zone, name string, aliases ...*compute.AliasIpRange) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if in, ok := s.instances[zone+"/"+name]; ok {
		in.aliases = aliases
		in.fingerprint++
	}
}

// DeleteInstance removes an instance.
func (s *Server) DeleteInstance(zone, name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.instances, zone+"/"+name)
}

// Aliases returns the applied alias ranges of every instance, keyed by name.
func (s *Server) Aliases() map[string][]*compute.AliasIpRange {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string][]*compute.AliasIpRange{}
	for _, in := range s.instances {
		for _, a := range in.aliases {
			c := *a
			out[in.name] = append(out[in.name], &c)
		}
	}
	return out
}

// Count returns how many calls of a method ("instances.updateNetworkInterface",
// "instances.get", …) were received, including failed ones.
func (s *Server) Count(method string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.counts[method]
}

// Counts returns all call counts.
func (s *Server) Counts() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]int{}
	for k, v := range s.counts {
		out[k] = v
	}
	return out
}

// apiError writes a GCE-style error body.
func apiError(w http.ResponseWriter, code int, reason, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(map[string]any{"error": map[string]any{
		"code": code, "message": msg,
		"errors": []map[string]string{{"domain": "global", "reason": reason, "message": msg}},
	}})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

// compute routes /compute/v1/projects/{project}/...
func (s *Server) compute(w http.ResponseWriter, r *http.Request) {
	parts := strings.Split(strings.Trim(strings.TrimPrefix(r.URL.Path, "/compute/v1/"), "/"), "/")
	if len(parts) < 3 || parts[0] != "projects" {
		apiError(w, 404, "notFound", "unknown path "+r.URL.Path)
		return
	}
	method := routeName(r.Method, parts[2:])
	s.mu.Lock()
	s.maxURL = max(s.maxURL, len(r.URL.RequestURI()))
	s.mu.Unlock()
	// Google's front ends cut GET URLs off at 8192 characters ("HTTP GET
	// requests URLs are limited to 8192 symbols",
	// googleapis/google-api-nodejs-client#972).
	if len(r.URL.RequestURI()) > maxURI {
		apiError(w, http.StatusRequestURITooLong, "uriTooLong", "The requested URL is too long.")
		return
	}
	// Instances live in Project; the subnetwork in SubnetProject.
	if want := map[bool]string{true: s.opts.SubnetProject, false: s.opts.Project}[method == "subnetworks.get"]; parts[1] != want {
		apiError(w, 404, "notFound", fmt.Sprintf("The resource 'projects/%s/%s' was not found", parts[1], strings.Join(parts[2:], "/")))
		return
	}
	s.mu.Lock()
	s.counts[method]++
	f := s.faults
	allowed := s.allow(method)
	s.mu.Unlock()
	if !allowed {
		// https://cloud.google.com/compute/api-quota: "you receive a 403
		// error with the reason rateLimitExceeded".
		metric := map[string]string{"reads": "Read requests", "writes": "Queries"}[quotaGroup(method)]
		apiError(w, 403, "rateLimitExceeded", fmt.Sprintf("Quota exceeded for quota metric '%s' and limit '%s per minute' of service 'compute.googleapis.com' for consumer 'project_number:1' (injected).", metric, metric))
		return
	}
	if f.Rate5xx > 0 && rand.Float64() < f.Rate5xx {
		apiError(w, 503, "backendError", "The service is currently unavailable (injected).")
		return
	}
	p := parts[2:]
	switch {
	case strings.HasPrefix(method, "zoneOperations.") && f.ForbidOperationReads:
		apiError(w, 403, "forbidden", "Required 'compute.zoneOperations.get' permission (injected).")
	case method == "subnetworks.get" && f.ForbidSubnetworkReads:
		apiError(w, 403, "forbidden", "Required 'compute.subnetworks.get' permission (injected).")
	case method == "instances.aggregatedList":
		s.aggregatedList(w, r)
	case method == "instances.list":
		s.list(w, p[1])
	case method == "instances.get":
		s.getInstance(w, p[1], p[3])
	case method == "instances.updateNetworkInterface":
		if f.Force412 > 0 && rand.Float64() < f.Force412 {
			apiError(w, 412, "conditionNotMet", "Supplied fingerprint does not match current metadata fingerprint (injected).")
			return
		}
		if f.RefuseWrites.Code != 0 {
			apiError(w, f.RefuseWrites.Code, f.RefuseWrites.Reason, f.RefuseWrites.Message)
			return
		}
		s.updateNIC(w, r, p[1], p[3], f)
	case method == "zoneOperations.get":
		s.getOp(w, r, p[3], false)
	case method == "zoneOperations.wait":
		s.getOp(w, r, p[3], !f.WaitAtOnce)
	case method == "zoneOperations.list" && f.RefuseOperationList:
		apiError(w, 400, "invalid", "Invalid list filter expression (injected).")
	case method == "zoneOperations.list":
		s.listOps(w, r, p[1])
	case method == "subnetworks.get":
		s.getSubnet(w, p[1], p[3])
	default:
		apiError(w, 404, "notFound", "unknown method "+r.Method+" "+r.URL.Path)
	}
}

func routeName(method string, p []string) string {
	switch {
	case len(p) == 2 && p[0] == "aggregated" && p[1] == "instances" && method == "GET":
		return "instances.aggregatedList"
	case len(p) == 3 && p[0] == "zones" && p[2] == "instances" && method == "GET":
		return "instances.list"
	case len(p) == 4 && p[0] == "zones" && p[2] == "instances" && method == "GET":
		return "instances.get"
	case len(p) == 5 && p[0] == "zones" && p[2] == "instances" && p[4] == "updateNetworkInterface" && method == "PATCH":
		return "instances.updateNetworkInterface"
	case len(p) == 4 && p[0] == "zones" && p[2] == "operations" && method == "GET":
		return "zoneOperations.get"
	case len(p) == 3 && p[0] == "zones" && p[2] == "operations" && method == "GET":
		return "zoneOperations.list"
	case len(p) == 5 && p[0] == "zones" && p[2] == "operations" && p[4] == "wait" && method == "POST":
		return "zoneOperations.wait"
	case len(p) == 4 && p[0] == "regions" && p[2] == "subnetworks" && method == "GET":
		return "subnetworks.get"
	}
	return "unknown"
}

func (s *Server) subnetURL() string { return s.subnetURLOf("") }

func (s *Server) subnetURLOf(name string) string {
	if name == "" {
		name = s.opts.Subnetwork
	}
	return fmt.Sprintf("https://www.googleapis.com/compute/v1/projects/%s/regions/%s/subnetworks/%s", s.opts.SubnetProject, s.opts.Region, name)
}

func (s *Server) render(in *instance) *compute.Instance {
	aliases := make([]*compute.AliasIpRange, 0, len(in.aliases))
	for _, a := range in.aliases {
		c := *a
		aliases = append(aliases, &c)
	}
	return &compute.Instance{
		Kind:     "compute#instance",
		Id:       in.id,
		Name:     in.name,
		Zone:     fmt.Sprintf("https://www.googleapis.com/compute/v1/projects/%s/zones/%s", s.opts.Project, in.zone),
		Status:   "RUNNING",
		SelfLink: fmt.Sprintf("https://www.googleapis.com/compute/v1/projects/%s/zones/%s/instances/%s", s.opts.Project, in.zone, in.name),
		NetworkInterfaces: []*compute.NetworkInterface{{
			Name:          "nic0",
			Network:       fmt.Sprintf("https://www.googleapis.com/compute/v1/projects/%s/global/networks/default", s.opts.Project),
			Subnetwork:    s.subnetURLOf(in.subnetwork),
			AliasIpRanges: aliases,
			Fingerprint:   fingerprint(in.fingerprint),
		}},
	}
}

func fingerprint(n uint64) string {
	return base64.StdEncoding.EncodeToString([]byte(strconv.FormatUint(n*2654435761, 16)))
}

func (s *Server) getInstance(w http.ResponseWriter, zone, name string) {
	s.mu.Lock()
	in, ok := s.instances[zone+"/"+name]
	var out *compute.Instance
	if ok {
		out = s.render(in)
	}
	s.mu.Unlock()
	if !ok {
		apiError(w, 404, "notFound", fmt.Sprintf("The resource 'projects/%s/zones/%s/instances/%s' was not found", s.opts.Project, zone, name))
		return
	}
	writeJSON(w, out)
}

func (s *Server) list(w http.ResponseWriter, zone string) {
	s.mu.Lock()
	var items []*compute.Instance
	for _, in := range s.sorted() {
		if in.zone == zone {
			items = append(items, s.render(in))
		}
	}
	s.mu.Unlock()
	writeJSON(w, &compute.InstanceList{Kind: "compute#instanceList", Items: items})
}

// aggregatedList pages through all instances, maxResults per page: "The
// maximum number of results per page ... Acceptable values are 0 to 500,
// inclusive. (Default: 500)" (compute/v1 InstancesAggregatedListCall.MaxResults).
func (s *Server) aggregatedList(w http.ResponseWriter, r *http.Request) {
	pageSize := 500
	if v, err := strconv.Atoi(r.URL.Query().Get("maxResults")); err == nil && v > 0 && v < pageSize {
		pageSize = v
	}
	start, _ := strconv.Atoi(r.URL.Query().Get("pageToken"))
	partial := r.URL.Query().Get("returnPartialSuccess") == "true"
	s.mu.Lock()
	if len(s.unreachable) > 0 && !partial {
		s.mu.Unlock()
		apiError(w, 503, "backendError", "The service is currently unavailable: some zones could not be reached.")
		return
	}
	var all []*instance
	for _, in := range s.sorted() {
		if !s.unreachable[in.zone] {
			all = append(all, in)
		}
	}
	out := &compute.InstanceAggregatedList{Kind: "compute#instanceAggregatedList", Items: map[string]compute.InstancesScopedList{}}
	end := min(start+pageSize, len(all))
	for _, in := range all[min(start, len(all)):end] {
		key := "zones/" + in.zone
		l := out.Items[key]
		l.Instances = append(l.Instances, s.render(in))
		out.Items[key] = l
	}
	for z := range s.unreachable {
		out.Unreachables = append(out.Unreachables, "zones/"+z)
		out.Items["zones/"+z] = compute.InstancesScopedList{Warning: &compute.InstancesScopedListWarning{
			Code: "UNREACHABLE", Message: fmt.Sprintf("Scope 'zones/%s' is unreachable.", z)}}
	}
	sort.Strings(out.Unreachables)
	s.mu.Unlock()
	if end < len(all) {
		out.NextPageToken = strconv.Itoa(end)
	}
	writeJSON(w, out)
}

func (s *Server) sorted() []*instance {
	out := make([]*instance, 0, len(s.instances))
	for _, in := range s.instances {
		out = append(out, in)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].zone+"/"+out[i].name < out[j].zone+"/"+out[j].name })
	return out
}

func (s *Server) updateNIC(w http.ResponseWriter, r *http.Request, zone, name string, f Faults) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		apiError(w, 400, "parseError", "Invalid JSON payload: "+err.Error())
		return
	}
	var nic compute.NetworkInterface
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &nic); err != nil {
		apiError(w, 400, "parseError", "Invalid JSON payload: "+err.Error())
		return
	}
	_ = json.Unmarshal(body, &fields)
	if s.opts.BeforeUpdate != nil {
		s.opts.BeforeUpdate(zone, name, &nic)
	}
	if got := r.URL.Query().Get("networkInterface"); got != "nic0" {
		apiError(w, 400, "invalid", fmt.Sprintf("Invalid value for field 'networkInterface': %q", got))
		return
	}
	reqID := r.URL.Query().Get("requestId")
	s.mu.Lock()
	defer s.mu.Unlock()
	if reqID != "" {
		if opName, ok := s.requests[reqID]; ok {
			// A retried request: the same operation, not applied twice.
			writeJSON(w, s.ops[opName].op)
			return
		}
	}
	in, ok := s.instances[zone+"/"+name]
	if !ok {
		apiError(w, 404, "notFound", fmt.Sprintf("The resource 'projects/%s/zones/%s/instances/%s' was not found", s.opts.Project, zone, name))
		return
	}
	// NetworkInterface.fingerprint: "An up-to-date fingerprint must be
	// provided in order to update the NetworkInterface. The request will
	// fail with error 400 Bad Request if the fingerprint is not provided, or
	// 412 Precondition Failed if the fingerprint is out of date."
	// (google.golang.org/api/compute/v1, compute-gen.go, NetworkInterface).
	if nic.Fingerprint == "" {
		apiError(w, 400, "required", "Required field 'fingerprint' not specified")
		return
	}
	if nic.Fingerprint != fingerprint(in.fingerprint) {
		apiError(w, 412, "conditionNotMet", "Supplied fingerprint does not match current metadata fingerprint.")
		return
	}
	// Another operation on the instance: 400 resourceNotReady, "The
	// resource '...' is not ready" (seen from GCE in opstrace/opstrace#976).
	if in.busy {
		apiError(w, 400, "resourceNotReady", fmt.Sprintf("The resource 'projects/%s/zones/%s/instances/%s' is not ready", s.opts.Project, zone, name))
		return
	}
	// updateNetworkInterface "follows PATCH semantics"
	// (google.golang.org/api/compute/v1, InstancesService.UpdateNetworkInterface):
	// a body without aliasIpRanges leaves them as they are; an empty list
	// (sent with ForceSendFields) removes them all.
	desired := in.aliases
	if _, set := fields["aliasIpRanges"]; set {
		if msg := s.validate(in, nic.AliasIpRanges); msg != "" {
			apiError(w, 400, "invalid", msg)
			return
		}
		desired = make([]*compute.AliasIpRange, 0, len(nic.AliasIpRanges))
		for _, a := range nic.AliasIpRanges {
			c := *a
			p, _ := netip.ParsePrefix(a.IpCidrRange)
			c.IpCidrRange = p.Masked().String()
			desired = append(desired, &c)
		}
	}
	// The fingerprint is consumed at once: a concurrent update with the same
	// fingerprint gets 412, as on GCE.
	in.fingerprint++
	in.busy = true
	in.pending = desired
	s.nextOp++
	// GCE's operation names look like
	// "operation-1678698586130-5f6c478e948f3-93704f76-5de7a834"
	// (F5Networks/f5-google-gdm-templates#78): milliseconds, then hex.
	// Their length matters: a list filter names them.
	opName := fmt.Sprintf("operation-%d-%013x-%08x-%08x", time.Now().UnixMilli(), time.Now().UnixNano()&0xfffffffffffff, s.nextOp, rand.Uint32())
	o := &operation{
		op: &compute.Operation{
			Kind: "compute#operation", Name: opName, Status: "RUNNING", OperationType: "updateNetworkInterface",
			Zone:       fmt.Sprintf("https://www.googleapis.com/compute/v1/projects/%s/zones/%s", s.opts.Project, zone),
			TargetLink: fmt.Sprintf("https://www.googleapis.com/compute/v1/projects/%s/zones/%s/instances/%s", s.opts.Project, zone, name),
			SelfLink:   fmt.Sprintf("https://www.googleapis.com/compute/v1/projects/%s/zones/%s/operations/%s", s.opts.Project, zone, opName),
		},
		doneAt: time.Now().Add(s.opts.OpDelay),
		done:   make(chan struct{}),
	}
	switch {
	case f.FailOps > 0 && rand.Float64() < f.FailOps:
		o.fail, o.failCode, o.failMsg = "INTERNAL_ERROR", 500, "Internal error while updating the network interface (injected)."
	case f.OpNotReady > 0 && rand.Float64() < f.OpNotReady:
		o.fail, o.failCode, o.failMsg = "RESOURCE_NOT_READY", 400, fmt.Sprintf("The resource 'projects/%s/zones/%s/instances/%s' is not ready (injected).", s.opts.Project, zone, name)
	case f.OpStaleFingerprint > 0 && rand.Float64() < f.OpStaleFingerprint:
		o.fail, o.failCode, o.failMsg = "CONDITION_NOT_MET", 412, "Supplied fingerprint does not match current metadata fingerprint (injected)."
	case f.OpQuotaExceeded > 0 && rand.Float64() < f.OpQuotaExceeded:
		o.fail, o.failCode, o.failMsg = "QUOTA_EXCEEDED", 403, fmt.Sprintf("Quota 'ALIAS_IP_RANGES' exceeded. Limit: 0.0 in region %s (injected).", s.opts.Region)
	case f.OpSubnetworkNotFound:
		sub := in.subnetwork
		if sub == "" {
			sub = s.opts.Subnetwork
		}
		o.fail, o.failCode, o.failMsg = "RESOURCE_NOT_FOUND", 404, fmt.Sprintf("The resource 'projects/%s/regions/%s/subnetworks/%s' was not found", s.opts.SubnetProject, s.opts.Region, sub)
	case f.OpError.Code != "":
		o.fail, o.failCode, o.failMsg = f.OpError.Code, f.OpError.Status, f.OpError.Message
	}
	o.apply = func() {
		// The NIC changes when the operation completes, and so does its
		// fingerprint: a writer that read during the operation gets 412.
		in.fingerprint++
		in.pending, in.busy = nil, false
		if o.fail != "" {
			return
		}
		// An overlap with another instance's range is found when the
		// operation runs and reported inside it, not by the PATCH call:
		// "Code: IP_IN_USE_BY_ANOTHER_RESOURCE, Message: IP '10.128.3.140/31'
		// is already being used by another resource."
		// (GoogleCloudPlatform/compute-image-tools#659; the same code in an
		// operation error in F5Networks/f5-google-gdm-templates#78).
		if ip := s.inUse(in, desired); ip != "" {
			o.fail, o.failCode, o.failMsg = "IP_IN_USE_BY_ANOTHER_RESOURCE", 400, fmt.Sprintf("IP '%s' is already being used by another resource.", ip)
			return
		}
		in.aliases = desired
	}
	s.ops[opName] = o
	if reqID != "" {
		s.requests[reqID] = opName
	}
	if s.opts.OpDelay <= 0 {
		s.finish(o)
	} else {
		time.AfterFunc(s.opts.OpDelay, func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			s.finish(o)
		})
	}
	out := *o.op
	writeJSON(w, &out)
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

// validate checks a desired alias list against the NIC's own subnetwork;
// s.mu is held. Overlaps with other instances are checked when the
// operation runs (inUse).
func (s *Server) validate(in *instance, aliases []*compute.AliasIpRange) string {
	if len(aliases) > MaxAliasRanges {
		return fmt.Sprintf("Invalid value for field 'resource.aliasIpRanges': exceeded the limit of %d alias IP ranges per network interface", MaxAliasRanges)
	}
	subnet := s.opts.Subnetwork
	secondary := s.opts.SecondaryRanges
	primary := s.opts.PrimaryRange
	if in.subnetwork != "" && in.subnetwork != s.opts.Subnetwork {
		subnet, secondary, primary = in.subnetwork, nil, netip.MustParsePrefix("10.200.0.0/24")
	}
	var mine []netip.Prefix
	for i, a := range aliases {
		p, err := netip.ParsePrefix(a.IpCidrRange)
		if err != nil {
			return fmt.Sprintf("Invalid value for field 'resource.aliasIpRanges[%d].ipCidrRange': '%s'", i, a.IpCidrRange)
		}
		p = p.Masked()
		parent := primary
		if a.SubnetworkRangeName != "" {
			r, ok := secondary[a.SubnetworkRangeName]
			if !ok {
				return fmt.Sprintf("Invalid value for field 'resource.aliasIpRanges[%d].subnetworkRangeName': '%s'. Secondary range does not exist in subnetwork '%s'.", i, a.SubnetworkRangeName, subnet)
			}
			parent = r
		}
		if p.Bits() < parent.Bits() || !parent.Contains(p.Addr()) {
			return fmt.Sprintf("Invalid IP CIDR range %s: not within range %s of subnetwork %s", p, parent, subnet)
		}
		for _, q := range mine {
			if q.Overlaps(p) {
				return fmt.Sprintf("Alias IP ranges %s and %s overlap", q, p)
			}
		}
		mine = append(mine, p)
	}
	return ""
}

// inUse returns a range of aliases that another instance holds; s.mu is held.
func (s *Server) inUse(in *instance, aliases []*compute.AliasIpRange) string {
	for _, other := range s.instances {
		if other == in {
			continue
		}
		for _, list := range [][]*compute.AliasIpRange{other.aliases, other.pending} {
			for _, a := range list {
				q, _ := netip.ParsePrefix(a.IpCidrRange)
				for _, b := range aliases {
					p, _ := netip.ParsePrefix(b.IpCidrRange)
					if q.Overlaps(p) {
						return p.String()
					}
				}
			}
		}
	}
	return ""
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

func (s *Server) getSubnet(w http.ResponseWriter, region, name string) {
	if region != s.opts.Region || name != s.opts.Subnetwork {
		apiError(w, 404, "notFound", fmt.Sprintf("The resource 'projects/%s/regions/%s/subnetworks/%s' was not found", s.opts.SubnetProject, region, name))
		return
	}
	sub := &compute.Subnetwork{
		Kind: "compute#subnetwork", Name: name, IpCidrRange: s.opts.PrimaryRange.String(),
		Region: fmt.Sprintf("https://www.googleapis.com/compute/v1/projects/%s/regions/%s", s.opts.SubnetProject, region), SelfLink: s.subnetURL(),
	}
	names := make([]string, 0, len(s.opts.SecondaryRanges))
	for n := range s.opts.SecondaryRanges {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		sub.SecondaryIpRanges = append(sub.SecondaryIpRanges, &compute.SubnetworkSecondaryRange{RangeName: n, IpCidrRange: s.opts.SecondaryRanges[n].String()})
	}
	writeJSON(w, sub)
}

// metadata serves /computeMetadata/v1/..., refusing requests without the
// Metadata-Flavor: Google header as the real server does.
func (s *Server) metadata(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Metadata-Flavor") != "Google" {
		http.Error(w, "Missing Metadata-Flavor:Google header.", http.StatusForbidden)
		return
	}
	s.mu.Lock()
	s.counts["metadata"]++
	s.mu.Unlock()
	w.Header().Set("Metadata-Flavor", "Google")
	md := s.opts.Metadata
	path := strings.TrimPrefix(r.URL.Path, "/computeMetadata/v1/")
	var val string
	ok := true
	switch {
	case path == "project/project-id":
		val = md.Project
	case path == "project/numeric-project-id":
		val = md.NumericProject
	case path == "instance/zone":
		val = fmt.Sprintf("projects/%s/zones/%s", md.NumericProject, md.Zone)
	case path == "instance/name":
		val = md.InstanceName
	case path == "instance/hostname":
		val = md.InstanceName + ".c." + md.Project + ".internal"
	case strings.HasPrefix(path, "instance/attributes/"):
		val, ok = md.InstanceAttrs[strings.TrimPrefix(path, "instance/attributes/")]
	case strings.HasPrefix(path, "project/attributes/"):
		val, ok = md.ProjectAttrs[strings.TrimPrefix(path, "project/attributes/")]
	case strings.HasPrefix(path, "instance/network-interfaces/"):
		rest := strings.Split(strings.TrimPrefix(path, "instance/network-interfaces/"), "/")
		i, err := strconv.Atoi(rest[0])
		if err != nil || len(rest) < 2 {
			ok = false
			break
		}
		sub := strings.Join(rest[1:], "/")
		if i == 0 && strings.HasPrefix(sub, "ip-aliases/") {
			// nic0's alias ranges come from the instance itself.
			val, ok = s.metadataAliases(md.InstanceName, strings.TrimPrefix(sub, "ip-aliases/"), r.URL.Query())
			break
		}
		if i >= len(md.NetworkInterfaces) {
			ok = false
			break
		}
		switch sub {
		case "ip":
			val = md.NetworkInterfaces[i].IP
		case "network":
			val = md.NetworkInterfaces[i].Network
		default:
			ok = false
		}
	default:
		ok = false
	}
	if !ok || val == "" && !strings.HasSuffix(path, "ip-aliases/") {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "application/text")
	fmt.Fprint(w, val)
}

// metadataAliases answers instance/network-interfaces/0/ip-aliases/... the
// way the real metadata server does: ip-aliases/ is a directory whose
// entries are index keys ("0\n1\n"); each range is the value at
// ip-aliases/N; ?recursive=true&alt=json gives the ranges as a JSON array.
// Evidence: kubernetes cluster/gce/windows/k8s-node-setup.psm1
// (Get_IpAliasRange reads .../ip-aliases/0), GoogleCloudPlatform
// guest-test-infra's network image tests (GetMetadata
// "network-interfaces/0/ip-aliases/0"), and the directory listing rules of
// https://cloud.google.com/compute/docs/metadata/querying-metadata
// (a listing names the entries; recursive=true&alt=json returns the
// contents).
func (s *Server) metadataAliases(name, key string, q url.Values) (string, bool) {
	s.mu.Lock()
	var ranges []string
	for _, in := range s.instances {
		if in.name == name {
			for _, a := range in.aliases {
				ranges = append(ranges, a.IpCidrRange)
			}
		}
	}
	s.mu.Unlock()
	switch {
	case key == "" && q.Get("recursive") == "true":
		b, _ := json.Marshal(append([]string{}, ranges...))
		return string(b), true
	case key == "":
		var b strings.Builder
		for i := range ranges {
			fmt.Fprintf(&b, "%d\n", i)
		}
		return b.String(), true
	default:
		i, err := strconv.Atoi(key)
		if err != nil || i < 0 || i >= len(ranges) {
			return "", false
		}
		return ranges[i], true
	}
}
