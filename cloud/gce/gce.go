// Package gce implements cloud.Interface on Google Compute Engine with the
// google.golang.org/api/compute/v1 client: alias IP ranges on a VM's nic0,
// carved from a named secondary range of the nodes' subnetwork.
//
// Every change reads the NIC, sends instances.updateNetworkInterface with
// the current fingerprint and the FULL desired alias list (ranges we do not
// own, such as ones from other secondary ranges, are kept) and a requestId,
// so a retried call is not applied twice; then it waits for the zone
// operation to be DONE and reads the NIC back. A stale fingerprint (412)
// re-reads and retries; quota errors (403 rateLimitExceeded, 429) and 5xx
// back off with jitter. Every HTTP call goes through a client-side QPS/burst
// budget and is reported to an observer by method and status code.
package gce

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
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
}

// Cloud is cloud.Interface on GCE. It is safe for concurrent use.
type Cloud struct {
	cfg    Config
	svc    *compute.Service
	subnet SubnetRef

	mu       sync.Mutex
	podRange netip.Prefix
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
	svc, err := newService(ctx, cfg)
	if err != nil {
		return nil, err
	}
	c := &Cloud{cfg: cfg, svc: svc, podRange: cfg.PodRange}
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

func newService(ctx context.Context, cfg Config) (*compute.Service, error) {
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
	}
	opts = append(opts, option.WithHTTPClient(&http.Client{Transport: tr, Timeout: 5 * time.Minute}))
	svc, err := compute.NewService(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("gce: compute client: %w", err)
	}
	return svc, nil
}

// budgetTransport waits for the QPS budget before each request and reports it.
type budgetTransport struct {
	base    http.RoundTripper
	limiter *rate.Limiter
	observe Observer
}

func (t *budgetTransport) RoundTrip(req *http.Request) (*http.Response, error) {
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
		t.observe(MethodName(req.Method, req.URL.Path), code, time.Since(start))
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

// PodRange implements cloud.Interface: the subnetwork's named secondary range.
func (c *Cloud) PodRange(ctx context.Context) (netip.Prefix, string, error) {
	c.mu.Lock()
	pr := c.podRange
	c.mu.Unlock()
	if pr.IsValid() {
		return pr, c.cfg.SecondaryRange, nil
	}
	var sub *compute.Subnetwork
	err := c.retry(ctx, "subnetworks.get", func() (err error) {
		sub, err = c.svc.Subnetworks.Get(c.subnet.Project, c.subnet.Region, c.subnet.Name).Context(ctx).Do()
		return err
	})
	if err != nil {
		return netip.Prefix{}, "", fmt.Errorf("read subnetwork %s: %w", c.subnet.Path(), err)
	}
	var names []string
	for _, r := range sub.SecondaryIpRanges {
		names = append(names, r.RangeName)
		if r.RangeName == c.cfg.SecondaryRange {
			p, err := netip.ParsePrefix(r.IpCidrRange)
			if err != nil {
				return netip.Prefix{}, "", fmt.Errorf("subnetwork %s: secondary range %s: %w", c.cfg.Subnetwork, r.RangeName, err)
			}
			c.mu.Lock()
			c.podRange = p.Masked()
			c.mu.Unlock()
			return p.Masked(), r.RangeName, nil
		}
	}
	return netip.Prefix{}, "", fmt.Errorf("subnetwork %s has no secondary range %q (it has %v)", c.cfg.Subnetwork, c.cfg.SecondaryRange, names)
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
	return cloud.ParseProviderID(providerID)
}

func (c *Cloud) project(inst cloud.InstanceRef) string {
	if inst.Project != "" {
		return inst.Project
	}
	return c.cfg.Project
}

func (c *Cloud) getNIC(ctx context.Context, inst cloud.InstanceRef) (*compute.NetworkInterface, error) {
	var in *compute.Instance
	err := c.retry(ctx, "instances.get", func() (err error) {
		in, err = c.svc.Instances.Get(c.project(inst), inst.Zone, inst.Name).Context(ctx).Do()
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("get instance %s: %w", inst, err)
	}
	if len(in.NetworkInterfaces) == 0 {
		return nil, fmt.Errorf("instance %s has no network interface", inst)
	}
	return in.NetworkInterfaces[0], nil
}

// Aliases implements cloud.Interface.
func (c *Cloud) Aliases(ctx context.Context, inst cloud.InstanceRef) ([]cloud.AliasRange, error) {
	nic, err := c.getNIC(ctx, inst)
	if err != nil {
		return nil, err
	}
	return toAliases(nic.AliasIpRanges), nil
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

// AddAlias implements cloud.Interface.
func (c *Cloud) AddAlias(ctx context.Context, inst cloud.InstanceRef, cidr netip.Prefix) error {
	return c.modify(ctx, inst, func(list []*compute.AliasIpRange) ([]*compute.AliasIpRange, bool) {
		for _, a := range toAliases(list) {
			if a.CIDR == cidr {
				return nil, false
			}
		}
		return append(slices.Clone(list), &compute.AliasIpRange{IpCidrRange: cidr.String(), SubnetworkRangeName: c.cfg.SecondaryRange}), true
	})
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

// modify reads the NIC, applies change to its full alias list, writes it with
// the fingerprint and a requestId, waits for the operation and reads back
// (the next loop turn), until change reports nothing left to do.
func (c *Cloud) modify(ctx context.Context, inst cloud.InstanceRef, change func([]*compute.AliasIpRange) ([]*compute.AliasIpRange, bool)) error {
	var lastErr error
	for attempt := 0; attempt < c.cfg.MaxAttempts+2; attempt++ {
		nic, err := c.getNIC(ctx, inst)
		if err != nil {
			return err
		}
		next, changed := change(nic.AliasIpRanges)
		if !changed {
			return nil // done, or the read-back shows the write applied
		}
		body := &compute.NetworkInterface{
			AliasIpRanges: next,
			Fingerprint:   nic.Fingerprint,
			// An empty list must be sent, not omitted, to remove the last range.
			ForceSendFields: []string{"AliasIpRanges"},
		}
		requestID := uuid.NewString() // the same for every retry of this write
		var op *compute.Operation
		err = c.retry(ctx, "instances.updateNetworkInterface", func() (err error) {
			op, err = c.svc.Instances.UpdateNetworkInterface(c.project(inst), inst.Zone, inst.Name, nic.Name, body).
				RequestId(requestID).Context(ctx).Do()
			return err
		})
		if errors.Is(err, cloud.ErrStaleFingerprint) {
			lastErr = err
			continue // someone else changed the NIC: re-read
		}
		if err != nil {
			return fmt.Errorf("update aliases of %s: %w", inst, err)
		}
		if err := c.wait(ctx, inst, op); err != nil {
			if errors.Is(err, cloud.ErrUnavailable) {
				lastErr = err
				if err := sleep(ctx, c.backoff(attempt)); err != nil {
					return err
				}
				continue // the operation failed: re-read and try again
			}
			return fmt.Errorf("update aliases of %s: %w", inst, err)
		}
	}
	return fmt.Errorf("update aliases of %s: gave up after %d attempts: %w", inst, c.cfg.MaxAttempts+2, lastErr)
}

// wait polls the zone operation until DONE; operations.wait may return
// before that, so it loops. An operation error is returned.
func (c *Cloud) wait(ctx context.Context, inst cloud.InstanceRef, op *compute.Operation) error {
	name := op.Name
	for op.Status != "DONE" {
		err := c.retry(ctx, "zoneOperations.wait", func() error {
			got, err := c.svc.ZoneOperations.Wait(c.project(inst), inst.Zone, name).Context(ctx).Do()
			if err == nil {
				op = got
			}
			return err
		})
		if err != nil {
			return fmt.Errorf("wait for operation %s: %w", name, err)
		}
	}
	if op.Error != nil && len(op.Error.Errors) > 0 {
		e := op.Error.Errors[0]
		sentinel := cloud.ErrUnavailable
		switch {
		case op.HttpErrorStatusCode == 400 || op.HttpErrorStatusCode == 409:
			sentinel = cloud.ErrRangeConflict
		case op.HttpErrorStatusCode == 404:
			sentinel = cloud.ErrInstanceNotFound
		}
		return fmt.Errorf("operation %s failed: %s: %s: %w", op.Name, e.Code, e.Message, sentinel)
	}
	return nil
}

// ListInstances implements cloud.Interface: every instance in the project
// whose nic0 is on our subnetwork.
func (c *Cloud) ListInstances(ctx context.Context) ([]cloud.Instance, error) {
	var out []cloud.Instance
	// The whole path, host project included: in a Shared VPC two projects
	// may have subnetworks of the same name in one region.
	suffix := "/" + c.subnet.Path()
	pageToken := ""
	for {
		var page *compute.InstanceAggregatedList
		err := c.retry(ctx, "instances.aggregatedList", func() (err error) {
			call := c.svc.Instances.AggregatedList(c.cfg.Project).Context(ctx).MaxResults(500)
			if pageToken != "" {
				call = call.PageToken(pageToken)
			}
			page, err = call.Do()
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("list instances: %w", err)
		}
		for _, scoped := range page.Items {
			for _, in := range scoped.Instances {
				if len(in.NetworkInterfaces) == 0 || !strings.HasSuffix(in.NetworkInterfaces[0].Subnetwork, suffix) {
					continue
				}
				out = append(out, cloud.Instance{
					Ref:     cloud.InstanceRef{Project: c.cfg.Project, Zone: lastSegment(in.Zone), Name: in.Name},
					Aliases: toAliases(in.NetworkInterfaces[0].AliasIpRanges),
				})
			}
		}
		if page.NextPageToken == "" {
			return out, nil
		}
		pageToken = page.NextPageToken
	}
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
		if serr := sleep(ctx, c.backoff(attempt)); serr != nil {
			return err
		}
	}
	return err
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

// classify wraps a compute error with the cloud sentinel callers act on.
func classify(method string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	var gerr *googleapi.Error
	if !errors.As(err, &gerr) {
		var nerr net.Error
		if errors.As(err, &nerr) || strings.Contains(err.Error(), "connection") || strings.Contains(err.Error(), "EOF") {
			return fmt.Errorf("%s: %w: %w", method, cloud.ErrUnavailable, err)
		}
		return fmt.Errorf("%s: %w", method, err)
	}
	reason := ""
	if len(gerr.Errors) > 0 {
		reason = gerr.Errors[0].Reason
	}
	var sentinel error
	switch {
	case gerr.Code == 404:
		sentinel = cloud.ErrInstanceNotFound
	case gerr.Code == 412:
		sentinel = cloud.ErrStaleFingerprint
	case gerr.Code == 429, gerr.Code == 403 && (reason == "rateLimitExceeded" || reason == "userRateLimitExceeded" || reason == "quotaExceeded"):
		sentinel = cloud.ErrRateLimited
	case gerr.Code >= 500:
		sentinel = cloud.ErrUnavailable
	case gerr.Code == 400 && reason == "resourceNotReady":
		// Another operation is running on the instance: wait and retry.
		sentinel = cloud.ErrUnavailable
	case gerr.Code == 400 && strings.Contains(gerr.Message, "exceeded the limit"):
		sentinel = cloud.ErrTooManyAliases
	case gerr.Code == 400 || gerr.Code == 409:
		sentinel = cloud.ErrRangeConflict
	}
	if sentinel == nil {
		return fmt.Errorf("%s: %w", method, err)
	}
	return fmt.Errorf("%s: %w: %w", method, sentinel, err)
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

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
