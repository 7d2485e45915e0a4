// Package gcetest is a GCE REST server for tests: it behaves like Compute
// Engine for what aliasip uses, so the real google.golang.org/api/compute/v1
// client (and the metadata client) can be driven over HTTP.
//
// Served: instances get/list/aggregatedList (nic0 IPv4-only or dual-stack,
// with its IPv6 range), instances.updateNetworkInterface
// (400 without a fingerprint, 412 on a stale one, PATCH semantics, ranges
// checked against the NIC's subnetwork, overlaps with other instances
// reported inside the operation, the 150-range limit, requestId
// idempotence), zone operations get/wait/list (wait may return before the
// operation is done, even at once; list takes the `name eq RE2` filter),
// subnetworks get (with the subnetwork's IPv6 range), and the metadata
// server with its Metadata-Flavor check.
// Faults can be injected: a 5xx rate, forced 412s, per-minute quota windows
// answered with 403 rateLimitExceeded, and operations that fail with
// GCE's error codes.
//
// Each rule cites its public source next to the code that encodes it.
package gcetest

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"time"

	compute "google.golang.org/api/compute/v1"

	"github.com/aliasip/aliasip/cloud"
)

// MaxAliasRanges is GCE's per-NIC limit (cloud.MaxAliasRangesPerNIC:
// https://cloud.google.com/vpc/docs/quota, "Maximum number of alias IP
// ranges per network interface").
const MaxAliasRanges = 150

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
	// clock (Options.Now) like GCE's.
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
	// IPv6Range, when valid, makes the subnetwork dual-stack with this
	// internal IPv6 range (a /64 on GCE, see AddInstanceDualStack):
	// subnetworks.get reports it as internalIpv6Prefix ("The internal
	// IPv6 address range that is owned by this subnetwork.") with
	// stackType IPV4_IPV6 and ipv6AccessType INTERNAL ("VMs on this
	// subnet will be assigned IPv6 addresses that are only accessible over
	// the VPC network."), google.golang.org/api/compute/v1 Subnetwork.
	// ipv6CidrRange is not served: "[Output Only] This field is for
	// internal use." (same schema).
	IPv6Range netip.Prefix
	// OpDelay is how long an operation stays RUNNING before it is DONE.
	OpDelay time.Duration
	// WaitMax is the longest operations.wait blocks before returning the
	// operation, done or not (GCE: about 2 minutes).
	WaitMax time.Duration
	Faults  Faults
	// Metadata describes the VM the metadata server speaks for.
	Metadata Metadata
	// Now is the clock of the quota windows (default time.Now): a test
	// steps from one window to the next without waiting for the wall clock.
	Now func() time.Time
	// BeforeUpdate, if set, is called with every updateNetworkInterface
	// request once parsed, before it is handled: a test pauses a caller
	// there to inject an interleaving.
	BeforeUpdate func(zone, name string, nic *compute.NetworkInterface)
	// Accepted, if set, is called once an updateNetworkInterface request
	// is accepted and its operation runs, before the caller has the
	// answer: a test acts "once the write is in" there, on a fact rather
	// than after a while. The server's lock is not held.
	Accepted func(zone, name string)
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
	nextIPv6    uint64 // index of the next /96 of IPv6Range to give out
}

type instance struct {
	zone, name  string
	subnetwork  string // "" is Options.Subnetwork
	id          uint64
	fingerprint uint64
	aliases     []*compute.AliasIpRange
	pending     []*compute.AliasIpRange // set while an update operation runs
	busy        bool
	ipv6        netip.Prefix // nic0's internal IPv6 range; zero: IPV4_ONLY
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
	opts.IPv6Range = opts.IPv6Range.Masked()
	if opts.WaitMax <= 0 {
		opts.WaitMax = 2 * time.Second
	}
	if opts.Now == nil {
		opts.Now = time.Now
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
	w := s.opts.Now().Truncate(s.faults.RateWindow)
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
	w := s.opts.Now().Truncate(s.faults.FilterCostWindow)
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

// IPv6PrefixLen is the length of the IPv6 range GCE gives a dual-stack VM
// NIC: "The IPv6 subnet size is /64 (e.g., fd20:a:b:c::/64). Each
// IPv6-enabled VM will be assigned a /96 address range from the subnet"
// (Google Cloud blog, "Planning an IPv6 network on Google Cloud", 2023,
// https://cloud.google.com/blog/products/networking/how-to-create-a-ipv6-network-in-google-cloud/).
const IPv6PrefixLen = 96

// AddInstanceDualStack creates an instance like AddInstance whose nic0 is
// dual-stack (stackType IPV4_IPV6) and has the next /96 of
// Options.IPv6Range, which it returns. It panics when the server has no
// IPv6 range or the range is used up.
func (s *Server) AddInstanceDualStack(zone, name string) netip.Prefix {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.nextIPv6Locked()
	s.instances[zone+"/"+name] = &instance{zone: zone, name: name, id: uint64(len(s.instances) + 1000), fingerprint: 1, ipv6: p}
	return p
}

// NextIPv6 returns the next /96 of Options.IPv6Range, given to no
// instance yet, for SetIPv6. It panics as AddInstanceDualStack does.
func (s *Server) NextIPv6() netip.Prefix {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.nextIPv6Locked()
}

func (s *Server) nextIPv6Locked() netip.Prefix {
	if !s.opts.IPv6Range.IsValid() {
		panic("gcetest: a dual-stack instance needs Options.IPv6Range")
	}
	p, err := cloud.Subprefix(s.opts.IPv6Range, IPv6PrefixLen, s.nextIPv6)
	if err != nil {
		panic("gcetest: " + err.Error())
	}
	s.nextIPv6++
	return p
}

// SetIPv6 sets nic0's internal IPv6 range as another client's
// updateNetworkInterface changing its stackType does when it completes
// (stackType "can be both set at instance creation and update network
// interface operations", compute/v1 NetworkInterface.stackType): p makes
// the NIC IPV4_IPV6 with that range; the zero Prefix makes it IPV4_ONLY
// without one. The fingerprint changes, as with ApplyAliases. A node
// whose IPv6 arrives after it joined is an instance added IPv4-only that
// is given its range later.
func (s *Server) SetIPv6(zone, name string, p netip.Prefix) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if in, ok := s.instances[zone+"/"+name]; ok {
		in.ipv6 = p
		in.fingerprint++
	}
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
