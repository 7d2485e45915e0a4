// Package gce implements cloud.Interface on Google Compute Engine with the
// google.golang.org/api/compute/v1 client: alias IP ranges on a VM's nic0,
// carved from a named secondary range of the nodes' subnetwork.
//
// # Calls per node
//
// NICs are read from instances.aggregatedList pages (500 instances a call)
// into a cache; a node's NIC is read with instances.get only when the cache
// has not seen it, and a burst of such misses is served by one list. A
// change sends instances.updateNetworkInterface with the NIC's fingerprint,
// the FULL desired alias list (ranges we do not own, such as ones from
// other secondary ranges, are kept) and a requestId, so a retried call is
// not applied twice; the operation is then awaited together with the other
// pending operations of its zone: one zoneOperations.list, filtered by
// name, answers for all that are due, polls back off as operations age,
// and a refused list falls back to zoneOperations.get at once (ops.go). A
// successful operation proves the new state, so nothing is read back: one
// node costs one write plus its share of lists and polls. A list that
// could not reach every zone is reported as partial (cloud.ErrPartialList).
// nic0's internal IPv6 range (IPv6Range, ipv6.go) is read from the same
// cached NIC, at no extra call.
//
// # Errors by reason
//
// Errors are classified by their reason or operation error code, not their
// HTTP status alone: a stale fingerprint (412, CONDITION_NOT_MET) re-reads;
// RESOURCE_NOT_READY and 5xx retry with jittered backoff; rateLimitExceeded
// pauses every call of its quota group (all reads, or writes) until the
// next per-minute quota window; an overlap (IP_IN_USE_BY_ANOTHER_RESOURCE,
// or GCE's "already being used by another resource" under any code) is
// cloud.ErrRangeConflict; QUOTA_EXCEEDED is cloud.ErrQuotaExceeded; a "not
// found" from a write counts as a vanished instance only once
// instances.get confirms it; a refusal with an evidenced reason (invalid,
// invalidParameter, badRequest) is cloud.ErrInvalid; any other refusal is
// left unclassified (the caller treats it as transient). Every HTTP call goes through a client-side QPS/burst
// budget and is reported to an observer by method and status code.
package gce

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"golang.org/x/oauth2/google"
	"golang.org/x/time/rate"
	compute "google.golang.org/api/compute/v1"
	"google.golang.org/api/googleapi"
	"google.golang.org/api/option"

	"github.com/aliasip/aliasip/cloud"
	"github.com/aliasip/aliasip/internal/sleep"
)

// Observer is told about every HTTP call: its API method (for example
// "instances.updateNetworkInterface"), status code (0 for a transport
// error) and latency.
type Observer func(method string, code int, d time.Duration)

// Config configures a Cloud. Empty location fields can be filled from the
// metadata server with FillFromMetadata.
type Config struct {
	Project        string
	Region         string
	Zone           string
	Subnetwork     string
	SecondaryRange string
	// PodRange, when valid, is used instead of reading the secondary range.
	PodRange netip.Prefix
	// Endpoint is the Compute API base URL (option.WithEndpoint), e.g.
	// http://127.0.0.1:8080/compute/v1/; no credentials are used then.
	// Empty: the real API with Application Default Credentials.
	Endpoint string
	// QPS and Burst are the client-side budget for HTTP calls.
	QPS   float64
	Burst int
	// Observe, if set, is called for every HTTP call.
	Observe Observer
	// MaxAttempts bounds the attempts of one call on retriable errors.
	MaxAttempts int
	// BaseBackoff is the first retry delay (doubled each time, with jitter).
	BaseBackoff time.Duration
	// RateLimitWindow is the quota window GCE refills rate quotas in (one
	// minute, on the wall clock): after a 403 rateLimitExceeded every call
	// waits for the next window.
	RateLimitWindow time.Duration
	// PollInterval is how long after it starts an operation is first
	// polled (default 500ms); the interval then doubles as it ages, up to
	// MaxPollInterval (default 8s).
	PollInterval    time.Duration
	MaxPollInterval time.Duration
	// MissWindow is how long NIC cache misses are gathered before they are
	// served by one instances list, or by one instances.get each when that
	// is cheaper (default 100ms).
	MissWindow time.Duration
	// Logf, if set, receives the few log lines the client writes.
	Logf func(format string, args ...any)
}

// Cloud is cloud.Interface on GCE. It is safe for concurrent use.
type Cloud struct {
	cfg    Config
	svc    *compute.Service
	subnet SubnetRef
	gate   *gate
	nics   *nicCache

	mu       sync.Mutex
	podRange netip.Prefix
	pollers  map[string]*poller
}

var _ cloud.Interface = (*Cloud)(nil)

// New builds the compute client. Project, Region, Zone (for nodes without a
// providerID), Subnetwork and SecondaryRange must be set (see
// FillFromMetadata).
func New(ctx context.Context, cfg Config) (*Cloud, error) {
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = 8
	}
	if cfg.BaseBackoff <= 0 {
		cfg.BaseBackoff = 200 * time.Millisecond
	}
	if cfg.QPS <= 0 {
		cfg.QPS = 20
	}
	if cfg.RateLimitWindow <= 0 {
		cfg.RateLimitWindow = time.Minute
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = 500 * time.Millisecond
	}
	if cfg.MaxPollInterval <= 0 {
		cfg.MaxPollInterval = 16 * cfg.PollInterval
	}
	if cfg.MissWindow <= 0 {
		cfg.MissWindow = 100 * time.Millisecond
	}
	g := &gate{}
	svc, err := newService(ctx, cfg, g)
	if err != nil {
		return nil, err
	}
	c := &Cloud{cfg: cfg, svc: svc, gate: g, podRange: cfg.PodRange, pollers: map[string]*poller{}}
	c.nics = newNICCache(c)
	for name, v := range map[string]string{"project": cfg.Project, "region": cfg.Region, "subnetwork": cfg.Subnetwork, "secondary range": cfg.SecondaryRange} {
		if v == "" {
			return nil, fmt.Errorf("gce: %s not set and not found in the metadata", name)
		}
	}
	if c.subnet, err = ParseSubnetwork(cfg.Subnetwork, cfg.Project, cfg.Region); err != nil {
		return nil, fmt.Errorf("gce: %w", err)
	}
	return c, nil
}

func newService(ctx context.Context, cfg Config, g *gate) (*compute.Service, error) {
	var base http.RoundTripper
	opts := []option.ClientOption{}
	if cfg.Endpoint != "" {
		base = http.DefaultTransport
		opts = append(opts, option.WithEndpoint(cfg.Endpoint))
	} else {
		hc, err := google.DefaultClient(ctx, compute.ComputeScope)
		if err != nil {
			return nil, fmt.Errorf("gce: application default credentials: %w", err)
		}
		base = hc.Transport
	}
	limit := rate.Limit(cfg.QPS)
	if cfg.QPS <= 0 {
		limit = rate.Inf
	}
	tr := &budgetTransport{
		base:    base,
		limiter: rate.NewLimiter(limit, max(cfg.Burst, 1)),
		observe: cfg.Observe,
		gate:    g,
	}
	opts = append(opts, option.WithHTTPClient(&http.Client{Transport: tr, Timeout: 5 * time.Minute}))
	svc, err := compute.NewService(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("gce: compute client: %w", err)
	}
	return svc, nil
}

// PodRange implements cloud.Interface: the subnetwork's named secondary range.
func (c *Cloud) PodRange(ctx context.Context) (netip.Prefix, string, error) {
	c.mu.Lock()
	pr := c.podRange
	c.mu.Unlock()
	if pr.IsValid() {
		return pr, c.cfg.SecondaryRange, nil
	}
	p, err := c.SecondaryRange(ctx, c.cfg.SecondaryRange)
	if err != nil {
		return netip.Prefix{}, "", err
	}
	c.mu.Lock()
	c.podRange = p
	c.mu.Unlock()
	return p, c.cfg.SecondaryRange, nil
}

// SecondaryRange returns the CIDR of the nodes' subnetwork's secondary
// range name, read from the subnetwork each time (a PodRange naming it is
// resolved rarely). An unknown name wraps cloud.ErrNoSecondaryRange.
func (c *Cloud) SecondaryRange(ctx context.Context, name string) (netip.Prefix, error) {
	var sub *compute.Subnetwork
	err := c.retry(ctx, "subnetworks.get", func() (err error) {
		sub, err = c.svc.Subnetworks.Get(c.subnet.Project, c.subnet.Region, c.subnet.Name).Context(ctx).Do()
		return err
	})
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("read subnetwork %s: %w", c.subnet.Path(), err)
	}
	var names []string
	for _, r := range sub.SecondaryIpRanges {
		names = append(names, r.RangeName)
		if r.RangeName == name {
			p, err := netip.ParsePrefix(r.IpCidrRange)
			if err != nil {
				return netip.Prefix{}, fmt.Errorf("subnetwork %s: secondary range %s: %w", c.cfg.Subnetwork, r.RangeName, err)
			}
			return p.Masked(), nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("subnetwork %s has no secondary range %q (it has %v): %w", c.cfg.Subnetwork, name, names, cloud.ErrNoSecondaryRange)
}

// InstanceFor implements cloud.Interface: the providerID
// gce://PROJECT/ZONE/INSTANCE, or the node name in the configured project
// and zone when the providerID is empty.
func (c *Cloud) InstanceFor(ctx context.Context, providerID, nodeName string) (cloud.InstanceRef, error) {
	if providerID == "" {
		if c.cfg.Zone == "" {
			return cloud.InstanceRef{}, fmt.Errorf("node %s has no providerID and no default zone is set", nodeName)
		}
		return cloud.InstanceRef{Project: c.cfg.Project, Zone: c.cfg.Zone, Name: nodeName}, nil
	}
	return ParseProviderID(providerID)
}

func (c *Cloud) project(inst cloud.InstanceRef) string {
	if inst.Project != "" {
		return inst.Project
	}
	return c.cfg.Project
}

// getNIC reads the instance's nic0 with instances.get and caches it.
func (c *Cloud) getNIC(ctx context.Context, inst cloud.InstanceRef) (*nicState, error) {
	seq := c.nics.begin()
	var in *compute.Instance
	err := c.retry(ctx, "instances.get", func() (err error) {
		in, err = c.svc.Instances.Get(c.project(inst), inst.Zone, inst.Name).Context(ctx).Do()
		return err
	})
	if errors.Is(err, cloud.ErrInstanceNotFound) {
		c.nics.forget(inst, seq)
	}
	if err != nil {
		return nil, fmt.Errorf("get instance %s: %w", inst, err)
	}
	if len(in.NetworkInterfaces) == 0 {
		return nil, fmt.Errorf("instance %s has no network interface", inst)
	}
	return c.nics.store(inst, in.NetworkInterfaces[0], seq), nil
}

// nic returns the instance's nic0 from the cache, or reads it; fresh
// reports whether it was read by this call. needFingerprint reads it when
// the cached state has none (it is unknown after our own write).
func (c *Cloud) nic(ctx context.Context, inst cloud.InstanceRef, needFingerprint bool) (st *nicState, fresh bool, err error) {
	if st, ok := c.nics.get(inst); ok && (st.fingerprint != "" || !needFingerprint) {
		return st, false, nil
	}
	if !needFingerprint {
		// Misses of many nodes at once are served by one list.
		if err := c.nics.awaitMiss(ctx); err != nil {
			return nil, false, err
		}
		if st, ok := c.nics.get(inst); ok {
			return st, false, nil
		}
	}
	st, err = c.getNIC(ctx, inst)
	return st, true, err
}

// Aliases implements cloud.Interface, from the NIC cache when it has the
// instance. The cache is refreshed by ListInstances and by our own writes.
func (c *Cloud) Aliases(ctx context.Context, inst cloud.InstanceRef) ([]cloud.AliasRange, error) {
	st, _, err := c.nic(ctx, inst, false)
	if err != nil {
		return nil, err
	}
	return toAliases(st.aliases), nil
}

func toAliases(in []*compute.AliasIpRange) []cloud.AliasRange {
	out := make([]cloud.AliasRange, 0, len(in))
	for _, a := range in {
		p, err := netip.ParsePrefix(a.IpCidrRange)
		if err != nil {
			// GCE also reports single addresses without a length.
			addr, aerr := netip.ParseAddr(a.IpCidrRange)
			if aerr != nil {
				continue
			}
			p = netip.PrefixFrom(addr, addr.BitLen())
		}
		out = append(out, cloud.AliasRange{CIDR: p.Masked(), RangeName: a.SubnetworkRangeName})
	}
	return out
}

// AddAlias implements cloud.Interface: a.CIDR from the subnetwork's
// secondary range a.RangeName (the pod range's or a PodRange's).
//
// The caller chose a.CIDR from the NIC it saw. If a re-read (after a stale
// fingerprint or an operation of unknown outcome) shows a range of the
// same secondary range that was not there before — another process's
// operation finished meanwhile — nothing is added: the error wraps
// cloud.ErrStaleFingerprint so the caller decides again on the NIC as it is.
func (c *Cloud) AddAlias(ctx context.Context, inst cloud.InstanceRef, a cloud.AliasRange) error {
	if a.RangeName == "" {
		return fmt.Errorf("add %v to %s: no secondary range named: %w", a.CIDR, inst, cloud.ErrInvalid)
	}
	return c.addAlias(ctx, inst, a.CIDR, a.RangeName)
}

func (c *Cloud) addAlias(ctx context.Context, inst cloud.InstanceRef, cidr netip.Prefix, rangeName string) error {
	var before map[netip.Prefix]bool
	var appeared netip.Prefix
	err := c.modify(ctx, inst, func(list []*compute.AliasIpRange) ([]*compute.AliasIpRange, bool) {
		ours := map[netip.Prefix]bool{}
		for _, a := range toAliases(list) {
			if a.CIDR == cidr {
				return nil, false
			}
			if a.RangeName == rangeName {
				ours[a.CIDR] = true
			}
		}
		if before == nil {
			before = ours
		} else {
			for p := range ours {
				if !before[p] {
					appeared = p
					return nil, false
				}
			}
		}
		return append(slices.Clone(list), &compute.AliasIpRange{IpCidrRange: cidr.String(), SubnetworkRangeName: rangeName}), true
	})
	if err == nil && appeared.IsValid() {
		return fmt.Errorf("add %v to %s: the NIC gained %v of range %s meanwhile; not adding a second: %w",
			cidr, inst, appeared, rangeName, cloud.ErrStaleFingerprint)
	}
	return err
}

// RemoveAlias implements cloud.Interface. A vanished instance has nothing
// to remove.
func (c *Cloud) RemoveAlias(ctx context.Context, inst cloud.InstanceRef, cidr netip.Prefix) error {
	err := c.modify(ctx, inst, func(list []*compute.AliasIpRange) ([]*compute.AliasIpRange, bool) {
		out := make([]*compute.AliasIpRange, 0, len(list))
		for _, a := range list {
			if p, err := netip.ParsePrefix(a.IpCidrRange); err == nil && p.Masked() == cidr {
				continue
			}
			out = append(out, a)
		}
		return out, len(out) != len(list)
	})
	if errors.Is(err, cloud.ErrInstanceNotFound) {
		return nil
	}
	return err
}

// modify applies change to the NIC's full alias list and writes it with the
// fingerprint and a requestId, then waits for the operation. The state
// comes from the cache when it knows the fingerprint. A stale fingerprint
// re-reads the NIC and applies change again; a failed operation is
// classified by its error code (opError).
func (c *Cloud) modify(ctx context.Context, inst cloud.InstanceRef, change func([]*compute.AliasIpRange) ([]*compute.AliasIpRange, bool)) error {
	var lastErr error
	// uncertain: an earlier attempt may have been applied (its operation's
	// outcome is unknown). A refusal after that must not let the caller
	// think nothing happened.
	uncertain := false
	attempts := c.cfg.MaxAttempts + 2
	for attempt := 0; attempt < attempts; attempt++ {
		st, fresh, err := c.nic(ctx, inst, true)
		if err != nil {
			return err
		}
		next, changed := change(st.aliases)
		if !changed && !fresh {
			// Nothing to do according to the cache: confirm with a read
			// before reporting success for a change never made.
			if st, err = c.getNIC(ctx, inst); err != nil {
				return err
			}
			next, changed = change(st.aliases)
		}
		if !changed {
			return nil // done, or a read shows the write applied
		}
		body := &compute.NetworkInterface{
			AliasIpRanges: next,
			Fingerprint:   st.fingerprint,
			// An empty list must be sent, not omitted, to remove the last
			// range: the call "follows PATCH semantics"
			// (InstancesService.UpdateNetworkInterface), so an omitted
			// field is left as it is.
			ForceSendFields: []string{"AliasIpRanges"},
		}
		requestID := uuid.NewString() // the same for every retry of this write
		seq := c.nics.begin()
		var op *compute.Operation
		err = c.retry(ctx, "instances.updateNetworkInterface", func() (err error) {
			op, err = c.svc.Instances.UpdateNetworkInterface(c.project(inst), inst.Zone, inst.Name, st.name, body).
				RequestId(requestID).Context(ctx).Do()
			return err
		})
		if err == nil {
			err = c.wait(ctx, inst, op)
			var failed *opFailure
			if err != nil && !errors.As(err, &failed) {
				uncertain = true // the operation may still apply
			}
		}
		if errors.Is(err, errMaybeGone) {
			err = c.confirmGone(ctx, inst, err)
		}
		if uncertain && (errors.Is(err, cloud.ErrInvalid) || errors.Is(err, cloud.ErrQuotaExceeded) || errors.Is(err, cloud.ErrTooManyAliases)) {
			c.nics.forget(inst, seq)
			return fmt.Errorf("update aliases of %s: refused after an attempt whose outcome is unknown: %w: %w", inst, cloud.ErrUnavailable, err)
		}
		switch {
		case err == nil:
			// A DONE operation without error proves the NIC now holds next;
			// its new fingerprint is unknown until the next read.
			c.nics.applied(inst, st, next, seq)
			return nil
		case errors.Is(err, cloud.ErrStaleFingerprint):
			lastErr = err
			c.nics.forget(inst, seq)
			continue // someone else changed the NIC: re-read
		case errors.Is(err, cloud.ErrUnavailable):
			// The operation failed or could not start (the instance was
			// busy): the NIC may have changed; re-read after a pause.
			lastErr = err
			c.nics.forget(inst, seq)
			if err := sleep.For(ctx, c.backoff(attempt)); err != nil {
				return err
			}
			continue
		default:
			c.nics.forget(inst, seq)
			return fmt.Errorf("update aliases of %s: %w", inst, err)
		}
	}
	return fmt.Errorf("update aliases of %s: gave up after %d attempts: %w", inst, attempts, lastErr)
}

// confirmGone settles a "not found" from an alias write: the instance is
// gone only if instances.get says so. Otherwise the missing thing is
// something else the write names (its subnetwork, its secondary range),
// nothing was applied, and the NIC keeps what it had: for RemoveAlias
// that is a failure, never a removal that succeeded.
func (c *Cloud) confirmGone(ctx context.Context, inst cloud.InstanceRef, err error) error {
	_, gerr := c.getNIC(ctx, inst)
	switch {
	case errors.Is(gerr, cloud.ErrInstanceNotFound):
		return gerr
	case gerr != nil:
		return fmt.Errorf("%s; confirming the instance: %w", err.Error(), gerr)
	default:
		return fmt.Errorf("%s, yet instance %s exists: %w", err.Error(), inst, cloud.ErrInvalid)
	}
}

// opTimeout bounds the wait for one operation.
const opTimeout = 5 * time.Minute

// wait returns once the operation is DONE, with its error classified.
func (c *Cloud) wait(ctx context.Context, inst cloud.InstanceRef, op *compute.Operation) error {
	if op.Status != "DONE" {
		wctx, cancel := context.WithTimeout(ctx, opTimeout)
		defer cancel()
		done, err := c.pollerFor(c.project(inst), inst.Zone).wait(wctx, op.Name)
		if err != nil {
			return fmt.Errorf("wait for operation %s: %w", op.Name, err)
		}
		op = done
	}
	return opError(op)
}

// ListInstances implements cloud.Interface: every instance in the project
// whose nic0 is on our subnetwork. It refreshes the NIC cache. When the
// answer leaves zones out (unreachables), it returns the instances of the
// zones it could read and an error wrapping cloud.ErrPartialList that
// names the others.
func (c *Cloud) ListInstances(ctx context.Context) ([]cloud.Instance, error) {
	states, unreachable, err := c.list(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]cloud.Instance, 0, len(states))
	for ref, st := range states {
		out = append(out, cloud.Instance{Ref: ref, Aliases: toAliases(st.aliases), IPv6: st.ipv6})
	}
	slices.SortFunc(out, func(a, b cloud.Instance) int { return strings.Compare(a.Ref.String(), b.Ref.String()) })
	if len(unreachable) > 0 {
		return out, fmt.Errorf("list instances: zones %s could not be read: %w", strings.Join(unreachable, ", "), cloud.ErrPartialList)
	}
	return out, nil
}

// list reads every instance on our subnetwork, page by page, and replaces
// the cache with them (entries written since the list began are kept, and
// so are those of zones the answer could not reach). unreachable names the
// zones (or other scopes) the answer left out, sorted.
//
// instances.aggregatedList reports scopes it could not read in
// "unreachables" ("[Output Only] Unreachable resources.",
// InstanceAggregatedList, https://cloud.google.com/compute/docs/reference/rest/v1/instances/aggregatedList
// and google.golang.org/api/compute/v1 compute-api.json), or as a scope
// whose warning code is UNREACHABLE ("A given scope cannot be reached.",
// same schema). The method's description: "To prevent failure, Google
// recommends that you set the `returnPartialSuccess` parameter to `true`"
// (same sources), so the call asks for a partial answer rather than a
// failed call. The client library of this revision has no setter for the
// parameter, so it is sent as a plain query parameter.
func (c *Cloud) list(ctx context.Context) (map[cloud.InstanceRef]*nicState, []string, error) {
	seq := c.nics.begin()
	out := map[cloud.InstanceRef]*nicState{}
	unreachable := map[string]bool{}
	// The whole path, host project included: in a Shared VPC two projects
	// may have subnetworks of the same name in one region.
	suffix := "/" + c.subnet.Path()
	pageToken := ""
	pages := 0
	for {
		var page *compute.InstanceAggregatedList
		err := c.retry(ctx, "instances.aggregatedList", func() (err error) {
			call := c.svc.Instances.AggregatedList(c.cfg.Project).Context(ctx).MaxResults(500)
			if pageToken != "" {
				call = call.PageToken(pageToken)
			}
			page, err = call.Do(googleapi.QueryParameter("returnPartialSuccess", "true"))
			return err
		})
		if err != nil {
			return nil, nil, fmt.Errorf("list instances: %w", err)
		}
		pages++
		for _, u := range page.Unreachables {
			unreachable[scopeName(u)] = true
		}
		for key, scoped := range page.Items {
			if scoped.Warning != nil && scoped.Warning.Code == "UNREACHABLE" {
				unreachable[scopeName(key)] = true
			}
			for _, in := range scoped.Instances {
				if len(in.NetworkInterfaces) == 0 || !strings.HasSuffix(in.NetworkInterfaces[0].Subnetwork, suffix) {
					continue
				}
				ref := cloud.InstanceRef{Project: c.cfg.Project, Zone: lastSegment(in.Zone), Name: in.Name}
				out[ref] = newNICState(in.NetworkInterfaces[0])
			}
		}
		if page.NextPageToken == "" {
			break
		}
		pageToken = page.NextPageToken
	}
	c.nics.replace(out, seq, pages, func(ref cloud.InstanceRef, st *nicState) bool {
		// An instance of a zone the answer could not reach is unknown,
		// not gone: its cached NIC stays.
		return ref.Project == c.cfg.Project && !unreachable[ref.Zone] &&
			(st.subnetwork == "" || strings.HasSuffix(st.subnetwork, suffix))
	})
	names := slices.Sorted(maps.Keys(unreachable))
	return out, names, nil
}

// scopeName is the zone (or region) an unreachable scope names: the last
// segment of "zones/us-central1-b" or of its full URL.
func scopeName(s string) string {
	return lastSegment(strings.TrimSuffix(s, "/"))
}

func (c *Cloud) logf(format string, args ...any) {
	if c.cfg.Logf != nil {
		c.cfg.Logf(format, args...)
	}
}

// SubnetRef names a subnetwork. In a Shared VPC the nodes' subnetwork is
// in the host project, not the project of the instances: an instance's NIC
// names it as https://www.googleapis.com/compute/v1/projects/HOST/regions/
// REGION/subnetworks/NAME, and subnetworks.get must ask HOST
// (https://cloud.google.com/vpc/docs/provisioning-shared-vpc, "Create an
// instance ... --subnet projects/HOST_PROJECT_ID/regions/REGION/subnetworks/SUBNET").
type SubnetRef struct{ Project, Region, Name string }

// Path is projects/P/regions/R/subnetworks/N.
func (r SubnetRef) Path() string {
	return fmt.Sprintf("projects/%s/regions/%s/subnetworks/%s", r.Project, r.Region, r.Name)
}

// ParseSubnetwork reads a subnetwork given as a name (in project and
// region), as projects/P/regions/R/subnetworks/N, or as the full URL an
// instance's NIC carries.
func ParseSubnetwork(s, project, region string) (SubnetRef, error) {
	if !strings.Contains(s, "/") {
		if s == "" {
			return SubnetRef{}, fmt.Errorf("empty subnetwork")
		}
		return SubnetRef{Project: project, Region: region, Name: s}, nil
	}
	i := strings.Index(s, "projects/")
	if i < 0 {
		return SubnetRef{}, fmt.Errorf("subnetwork %q: want NAME or projects/P/regions/R/subnetworks/NAME", s)
	}
	p := strings.Split(strings.TrimSuffix(s[i:], "/"), "/")
	if len(p) != 6 || p[2] != "regions" || p[4] != "subnetworks" || p[1] == "" || p[3] == "" || p[5] == "" {
		return SubnetRef{}, fmt.Errorf("subnetwork %q: want NAME or projects/P/regions/R/subnetworks/NAME", s)
	}
	return SubnetRef{Project: p[1], Region: p[3], Name: p[5]}, nil
}

func lastSegment(url string) string {
	return url[strings.LastIndex(url, "/")+1:]
}
