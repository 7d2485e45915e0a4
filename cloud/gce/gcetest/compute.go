// The Compute API routes: the request router, instances get, list,
// aggregatedList and updateNetworkInterface (with the alias rules it
// enforces), and subnetworks.get.

package gcetest

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"time"

	compute "google.golang.org/api/compute/v1"
)

// maxURI is the longest request URI served.
const maxURI = 8192

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
	nic := &compute.NetworkInterface{
		Name:          "nic0",
		Network:       fmt.Sprintf("https://www.googleapis.com/compute/v1/projects/%s/global/networks/default", s.opts.Project),
		Subnetwork:    s.subnetURLOf(in.subnetwork),
		AliasIpRanges: aliases,
		Fingerprint:   fingerprint(in.fingerprint),
		// stackType: "If not specified, IPV4_ONLY is used." (compute/v1
		// NetworkInterface.stackType: the instances resource,
		// https://cloud.google.com/compute/docs/reference/rest/v1/instances,
		// and the client libraries' copy of the enum,
		// https://cloud.google.com/dotnet/docs/reference/Google.Cloud.Compute.V1/latest/Google.Cloud.Compute.V1.NetworkInterface.Types.StackType:
		// IPV4_IPV6 "can have both IPv4 and IPv6 addresses").
		StackType: "IPV4_ONLY",
	}
	if in.ipv6.IsValid() {
		// ipv6Address: "An IPv6 internal network address for this network
		// interface"; internalIpv6PrefixLength: "The prefix length of the
		// primary internal IPv6 range"; ipv6AccessType: "always inherited
		// from its subnetwork. Valid only if stackType is IPV4_IPV6."
		// (compute/v1 NetworkInterface,
		// https://cloud.google.com/compute/docs/reference/rest/v1/instances;
		// the same text in the discovery-generated clients, e.g.
		// https://pub.dev/documentation/googleapis/latest/compute_v1/NetworkInterface/internalIpv6PrefixLength.html).
		// The address given is the range's
		// first. UNVERIFIED: no public instance answer showing where in its
		// /96 GCE puts ipv6Address was found; readers mask it, as
		// kubernetes/cloud-provider-gcp's GetIPV6Address does ("the first
		// /112 subrange from the /96 assigned to the node") and
		// cloud/gce's nicIPv6 does, so any address of the range reads the
		// same.
		nic.StackType = "IPV4_IPV6"
		nic.Ipv6AccessType = "INTERNAL"
		nic.Ipv6Address = in.ipv6.Addr().String()
		nic.InternalIpv6PrefixLength = int64(in.ipv6.Bits())
	}
	return &compute.Instance{
		Kind:              "compute#instance",
		Id:                in.id,
		Name:              in.name,
		Zone:              fmt.Sprintf("https://www.googleapis.com/compute/v1/projects/%s/zones/%s", s.opts.Project, in.zone),
		Status:            "RUNNING",
		SelfLink:          fmt.Sprintf("https://www.googleapis.com/compute/v1/projects/%s/zones/%s/instances/%s", s.opts.Project, in.zone, in.name),
		NetworkInterfaces: []*compute.NetworkInterface{nic},
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
	accepted := false
	if s.opts.Accepted != nil {
		// Deferred first, so it runs after the unlock below.
		defer func() {
			if accepted {
				s.opts.Accepted(zone, name)
			}
		}()
	}
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
	accepted = true
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

func (s *Server) getSubnet(w http.ResponseWriter, region, name string) {
	if region != s.opts.Region || name != s.opts.Subnetwork {
		apiError(w, 404, "notFound", fmt.Sprintf("The resource 'projects/%s/regions/%s/subnetworks/%s' was not found", s.opts.SubnetProject, region, name))
		return
	}
	sub := &compute.Subnetwork{
		Kind: "compute#subnetwork", Name: name, IpCidrRange: s.opts.PrimaryRange.String(),
		Region: fmt.Sprintf("https://www.googleapis.com/compute/v1/projects/%s/regions/%s", s.opts.SubnetProject, region), SelfLink: s.subnetURL(),
	}
	if s.opts.IPv6Range.IsValid() {
		sub.StackType, sub.Ipv6AccessType, sub.InternalIpv6Prefix = "IPV4_IPV6", "INTERNAL", s.opts.IPv6Range.String()
	} else {
		sub.StackType = "IPV4_ONLY"
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
