// Package fake is an in-memory cloud with GCE's alias IP semantics, used by
// unit tests, benchmarks, kind and local clusters.
//
// Like GCE, an instance's alias list is replaced as a whole under a
// fingerprint (a stale fingerprint is rejected), ranges from the pod range
// must lie inside it and may not overlap a range on any instance, and a NIC
// holds at most cloud.MaxAliasRangesPerNIC ranges. AddAlias keeps the
// contract of cloud.Interface as cloud/gce does; both are checked by the
// same table, package cloud/cloudtest. Operation latency, an error rate
// and a rate limit can be injected.
//
// With Options.IPv6Range set, every instance the fake creates is
// dual-stack, as a VM on a GCE dual-stack subnetwork is: its NIC gets the
// next /96 of the range (IPv6Range reports it). SetIPv6 and AssignIPv6
// change it later, as for a node whose IPv6 arrives after it joined.
//
// With Options.StatePath set, the state lives in a JSON file guarded by an
// advisory lock, so several processes (a restarted controller, two
// controllers in leader election, a test checking the result) share one cloud.
package fake

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/time/rate"

	"github.com/aliasip/aliasip/cloud"
	"github.com/aliasip/aliasip/internal/sleep"
)

// Options configures a fake Cloud.
type Options struct {
	// PodRange is the secondary range pod blocks come from.
	PodRange netip.Prefix
	// RangeName is the name of that secondary range (default "pods").
	RangeName string
	// Latency is how long each write operation takes to complete.
	Latency time.Duration
	// ErrorRate is the fraction (0..1) of calls failing with ErrUnavailable.
	ErrorRate float64
	// RateLimit, when positive, is the calls per second the cloud accepts
	// (burst RateBurst); calls beyond it fail with ErrRateLimited.
	RateLimit float64
	RateBurst int
	// AutoRegister creates an instance for a node with an empty providerID,
	// or one whose scheme is in ProviderSchemes, the way every node of a
	// kind or local cluster is "a VM".
	AutoRegister bool
	// ProviderSchemes are the providerID schemes the fake cloud owns,
	// compared without regard to case (controller default: fake, kind).
	// kind gives every node spec.providerID kind://docker/<cluster>/<node>:
	// its kubeadm config template (kubernetes-sigs/kind,
	// pkg/cluster/internal/kubeadm/config.go) sets the kubelet's
	// provider-id: "kind://{{.NodeProvider}}/{{.ClusterName}}/{{.NodeName}}",
	// NodeProvider being the provider's String(), "docker" for
	// pkg/cluster/internal/providers/docker/provider.go (filled in by
	// pkg/cluster/internal/create/actions/config/config.go).
	ProviderSchemes []string
	// StatePath, when set, persists the state in that file (shared between
	// processes). Otherwise the state is in memory only.
	StatePath string
	// IPv6Range, when valid, is the subnetwork's internal IPv6 range: each
	// instance the fake creates gets the next /96 of it, in creation
	// order, and keeps it (the counter and every instance's range are in
	// the state file, so they are stable across processes). It must be an
	// IPv6 prefix of /96 or shorter. Take a ULA /64 (RFC 4193), shaped like
	// GCE's: a subnet is a /64 and each VM gets a /96 of it, and GCE's ULA
	// ranges come from fd20::/20 (Google Cloud blog, "Planning an IPv6
	// network on Google Cloud", 2023; compute/v1 Network.enableUlaInternalIpv6:
	// "assign a /48 from google defined ULA prefix fd20::/20"), for example
	// fd20:0:0:1::/64, which leaves room for 2^32 instances. Slots are not
	// reused; once the range is used up, new instances are IPv4-only.
	// Instances created before the range was set stay IPv4-only until
	// AssignIPv6 or SetIPv6. Zero: every instance is IPv4-only.
	IPv6Range netip.Prefix
	// MaxAliases overrides cloud.MaxAliasRangesPerNIC (0: the default).
	MaxAliases int
	// Seed, when not zero, makes ErrorRate's failures a deterministic
	// sequence.
	Seed uint64
	// BeforeUpdate, if set, is called with every UpdateInterface request
	// before it is handled (as gcetest.Options.BeforeUpdate is): a test
	// changes the NIC there, between a writer's read and its write.
	BeforeUpdate func(name string, aliases []cloud.AliasRange)
}

// Fault is a failure injected into one Interface method (see Inject).
type Fault struct {
	// Err is returned instead of making the call (nil: the call is made
	// after Delay).
	Err error
	// Delay is waited first, or until the call's context ends (then the
	// context's error is returned).
	Delay time.Duration
	// Panic panics in the call, as a bug on that path would.
	Panic bool
	// Instance limits the fault to calls on that instance ("": all).
	Instance string
	// Times is how many calls it applies to; 0: every call until ClearFaults.
	Times int
}

// Call is one Interface call as the fake saw it (see Log).
type Call struct {
	Method   string
	Instance string
	CIDR     netip.Prefix
	Err      error
}

// Cloud is the fake. It is safe for concurrent use.
type Cloud struct {
	opts    Options
	limiter *rate.Limiter

	mu     sync.Mutex
	state  state
	calls  map[string]int
	faults map[string][]*Fault
	log    []Call
	rnd    *rand.Rand
}

var _ cloud.Interface = (*Cloud)(nil)

type state struct {
	Instances map[string]*instance `json:"instances"`
	// NextIPv6 is the index of the next /96 of Options.IPv6Range.
	NextIPv6 uint64 `json:"nextIPv6,omitempty"`
}

type instance struct {
	Fingerprint uint64             `json:"fingerprint"`
	Aliases     []cloud.AliasRange `json:"aliases"`
	// IPv6 is the NIC's IPv6 range; the zero Prefix (stored as "") when
	// it has none.
	IPv6 netip.Prefix `json:"ipv6"`
}

// IPv6PrefixLen is the length of each instance's IPv6 range, GCE's: "Each
// IPv6-enabled VM will be assigned a /96 address range from the subnet"
// (Google Cloud blog, "Planning an IPv6 network on Google Cloud", 2023,
// https://cloud.google.com/blog/products/networking/how-to-create-a-ipv6-network-in-google-cloud/).
const IPv6PrefixLen = 96

// New returns a fake cloud.
func New(opts Options) (*Cloud, error) {
	if !opts.PodRange.IsValid() {
		return nil, errors.New("fake cloud: pod range is required")
	}
	opts.PodRange = opts.PodRange.Masked()
	if opts.RangeName == "" {
		opts.RangeName = "pods"
	}
	if opts.MaxAliases <= 0 {
		opts.MaxAliases = cloud.MaxAliasRangesPerNIC
	}
	if opts.IPv6Range.IsValid() {
		if !opts.IPv6Range.Addr().Is6() || opts.IPv6Range.Addr().Is4In6() || opts.IPv6Range.Bits() > IPv6PrefixLen {
			return nil, fmt.Errorf("fake cloud: IPv6 range %v: want an IPv6 prefix of /%d or shorter", opts.IPv6Range, IPv6PrefixLen)
		}
		opts.IPv6Range = opts.IPv6Range.Masked()
	}
	if opts.ErrorRate < 0 || opts.ErrorRate > 1 {
		return nil, fmt.Errorf("fake cloud: error rate %v outside [0,1]", opts.ErrorRate)
	}
	c := &Cloud{opts: opts, state: state{Instances: map[string]*instance{}}, calls: map[string]int{}, faults: map[string][]*Fault{}}
	if opts.Seed != 0 {
		c.rnd = rand.New(rand.NewPCG(opts.Seed, opts.Seed))
	}
	if opts.RateLimit > 0 {
		burst := max(opts.RateBurst, 1)
		c.limiter = rate.NewLimiter(rate.Limit(opts.RateLimit), burst)
	}
	if opts.StatePath != "" {
		if err := os.MkdirAll(filepath.Dir(opts.StatePath), 0o755); err != nil {
			return nil, fmt.Errorf("fake cloud state dir: %w", err)
		}
		if err := c.withState(func() (bool, error) { return false, nil }); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// RegisterInstance creates an instance with no aliases, if it does not exist.
func (c *Cloud) RegisterInstance(name string) error {
	return c.withState(func() (bool, error) {
		if _, ok := c.state.Instances[name]; ok {
			return false, nil
		}
		c.state.Instances[name] = c.newInstance()
		return true, nil
	})
}

// newInstance is a new instance with no aliases and, when the fake has an
// IPv6 range, the next /96 of it; the state's lock is held.
func (c *Cloud) newInstance() *instance {
	return &instance{Fingerprint: 1, IPv6: c.nextIPv6()}
}

// nextIPv6 takes the next /96 of Options.IPv6Range, or returns the zero
// Prefix when there is no range or it is used up; the state's lock is held.
func (c *Cloud) nextIPv6() netip.Prefix {
	if !c.opts.IPv6Range.IsValid() {
		return netip.Prefix{}
	}
	p, err := cloud.Subprefix(c.opts.IPv6Range, IPv6PrefixLen, c.state.NextIPv6)
	if err != nil {
		return netip.Prefix{}
	}
	c.state.NextIPv6++
	return p
}

// SetIPv6 sets an instance's IPv6 range as another client's change of
// the NIC's stack type does when it completes: at once, with a new
// fingerprint, unvalidated (gcetest.Server.SetIPv6 does the same on the
// GCE test server). The zero Prefix makes the NIC IPv4-only.
func (c *Cloud) SetIPv6(name string, p netip.Prefix) error {
	return c.withState(func() (bool, error) {
		in, ok := c.state.Instances[name]
		if !ok {
			return false, fmt.Errorf("instance %q: %w", name, cloud.ErrInstanceNotFound)
		}
		in.IPv6 = p
		in.Fingerprint++
		return true, nil
	})
}

// AssignIPv6 gives an instance the next /96 of Options.IPv6Range, as
// SetIPv6 would, and returns it: a node whose IPv6 arrives after it
// joined. It fails when the fake has no IPv6 range or it is used up.
func (c *Cloud) AssignIPv6(name string) (netip.Prefix, error) {
	var p netip.Prefix
	err := c.withState(func() (bool, error) {
		in, ok := c.state.Instances[name]
		if !ok {
			return false, fmt.Errorf("instance %q: %w", name, cloud.ErrInstanceNotFound)
		}
		if p = c.nextIPv6(); !p.IsValid() {
			return false, fmt.Errorf("instance %q: no IPv6 range to assign from (IPv6 range %v)", name, c.opts.IPv6Range)
		}
		in.IPv6 = p
		in.Fingerprint++
		return true, nil
	})
	return p, err
}

// ApplyAliases sets an instance's alias ranges as another client's update
// does when it completes: at once, with a new fingerprint, unvalidated
// (gcetest.Server.ApplyAliases does the same on the GCE test server).
func (c *Cloud) ApplyAliases(name string, aliases ...cloud.AliasRange) error {
	return c.withState(func() (bool, error) {
		in, ok := c.state.Instances[name]
		if !ok {
			return false, fmt.Errorf("instance %q: %w", name, cloud.ErrInstanceNotFound)
		}
		in.Aliases = slices.Clone(aliases)
		in.Fingerprint++
		return true, nil
	})
}

// DeleteInstance removes an instance and its aliases.
func (c *Cloud) DeleteInstance(name string) error {
	return c.withState(func() (bool, error) {
		_, ok := c.state.Instances[name]
		delete(c.state.Instances, name)
		return ok, nil
	})
}

// Calls returns how many calls of each method the fake served (including
// failed ones), for tests.
func (c *Cloud) Calls() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]int, len(c.calls))
	for k, v := range c.calls {
		out[k] = v
	}
	return out
}

// Inject queues a fault for method ("AddAlias", "RemoveAlias", "Aliases",
// "IPv6Range" or "ListInstances"); a method's faults apply in the order injected.
func (c *Cloud) Inject(method string, f Fault) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.faults[method] = append(c.faults[method], &f)
}

// ClearFaults removes every injected fault.
func (c *Cloud) ClearFaults() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.faults = map[string][]*Fault{}
}

// Log returns the Interface calls made so far, in order.
func (c *Cloud) Log() []Call {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.log)
}

// fault applies the first injected fault of method that matches inst.
func (c *Cloud) fault(ctx context.Context, method, inst string) error {
	c.mu.Lock()
	var f *Fault
	list := c.faults[method]
	for i, cand := range list {
		if cand.Instance != "" && cand.Instance != inst {
			continue
		}
		f = cand
		if cand.Times > 0 {
			if cand.Times--; cand.Times == 0 {
				c.faults[method] = append(list[:i:i], list[i+1:]...)
			}
		}
		break
	}
	c.mu.Unlock()
	if f == nil {
		return nil
	}
	if f.Delay > 0 {
		t := time.NewTimer(f.Delay)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	if f.Panic {
		panic(fmt.Sprintf("fake cloud: injected panic in %s on %s", method, inst))
	}
	if f.Err != nil {
		return fmt.Errorf("%s %s: injected: %w", method, inst, f.Err)
	}
	return nil
}

func (c *Cloud) record(method, inst string, cidr netip.Prefix, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.log = append(c.log, Call{Method: method, Instance: inst, CIDR: cidr, Err: err})
}

// PodRange implements cloud.Interface.
func (c *Cloud) PodRange(ctx context.Context) (netip.Prefix, string, error) {
	return c.opts.PodRange, c.opts.RangeName, nil
}

// InstanceFor implements cloud.Interface. The instance is named by the part
// after the last "/" of the providerID (kind://docker/C/NAME,
// gce://P/Z/NAME), or by the node name when the providerID is empty. With
// AutoRegister, an unknown instance is created for a node whose providerID
// is empty or has one of ProviderSchemes; any other providerID must name an
// instance that exists (RegisterInstance), else the error wraps
// cloud.ErrInstanceNotFound and names the schemes the fake cloud owns.
func (c *Cloud) InstanceFor(ctx context.Context, providerID, nodeName string) (cloud.InstanceRef, error) {
	name := nodeName
	scheme, owned := "", true
	if providerID != "" {
		i := strings.LastIndex(providerID, "/")
		name = providerID[i+1:]
		if name == "" {
			return cloud.InstanceRef{}, fmt.Errorf("providerID %q names no instance", providerID)
		}
		scheme, _, _ = strings.Cut(providerID, "://")
		if scheme == providerID {
			scheme = "" // no "://": not a URI, so no scheme we own
		}
		owned = c.ownsScheme(scheme)
	}
	ref := cloud.InstanceRef{Name: name}
	err := c.withState(func() (bool, error) {
		if _, ok := c.state.Instances[name]; ok {
			return false, nil
		}
		switch {
		case owned && c.opts.AutoRegister:
			c.state.Instances[name] = c.newInstance()
			return true, nil
		case owned:
			return false, fmt.Errorf("instance %q: %w (auto-registration is off)", name, cloud.ErrInstanceNotFound)
		default:
			return false, fmt.Errorf("instance %q: %w: the fake cloud registers nodes whose providerID is empty or has a scheme in --fake-provider-schemes=%s, and providerID %q has %s",
				name, cloud.ErrInstanceNotFound, strings.Join(c.opts.ProviderSchemes, ","), providerID, describeScheme(scheme))
		}
	})
	return ref, err
}

// ownsScheme reports whether scheme is one of ProviderSchemes (URI schemes
// are case-insensitive, RFC 3986 section 3.1).
func (c *Cloud) ownsScheme(scheme string) bool {
	if scheme == "" {
		return false
	}
	return slices.ContainsFunc(c.opts.ProviderSchemes, func(s string) bool { return strings.EqualFold(s, scheme) })
}

func describeScheme(scheme string) string {
	if scheme == "" {
		return "no scheme"
	}
	return fmt.Sprintf("scheme %q", scheme)
}

// Aliases implements cloud.Interface.
func (c *Cloud) Aliases(ctx context.Context, inst cloud.InstanceRef) ([]cloud.AliasRange, error) {
	if err := c.fault(ctx, "Aliases", inst.Name); err != nil {
		return nil, err
	}
	aliases, _, err := c.GetInterface(ctx, inst.Name)
	return aliases, err
}

// IPv6Range implements cloud.Interface: the range the instance's NIC was
// given (Options.IPv6Range, SetIPv6, AssignIPv6), or the zero Prefix.
func (c *Cloud) IPv6Range(ctx context.Context, inst cloud.InstanceRef) (netip.Prefix, error) {
	if err := c.fault(ctx, "IPv6Range", inst.Name); err != nil {
		return netip.Prefix{}, err
	}
	if err := c.admit(ctx, "get"); err != nil {
		return netip.Prefix{}, err
	}
	var p netip.Prefix
	err := c.withState(func() (bool, error) {
		in, ok := c.state.Instances[inst.Name]
		if !ok {
			return false, fmt.Errorf("instance %q: %w", inst.Name, cloud.ErrInstanceNotFound)
		}
		p = in.IPv6
		return false, nil
	})
	return p, err
}

// GetInterface returns the NIC's alias ranges and its fingerprint.
func (c *Cloud) GetInterface(ctx context.Context, name string) ([]cloud.AliasRange, uint64, error) {
	if err := c.admit(ctx, "get"); err != nil {
		return nil, 0, err
	}
	var out []cloud.AliasRange
	var fp uint64
	err := c.withState(func() (bool, error) {
		in, ok := c.state.Instances[name]
		if !ok {
			return false, fmt.Errorf("instance %q: %w", name, cloud.ErrInstanceNotFound)
		}
		out, fp = slices.Clone(in.Aliases), in.Fingerprint
		return false, nil
	})
	return out, fp, err
}

// UpdateInterface replaces the NIC's alias list as a whole, GCE-style: the
// fingerprint must be the current one, and the new list is validated.
func (c *Cloud) UpdateInterface(ctx context.Context, name string, fingerprint uint64, aliases []cloud.AliasRange) error {
	if c.opts.BeforeUpdate != nil {
		c.opts.BeforeUpdate(name, slices.Clone(aliases))
	}
	if err := c.admit(ctx, "update"); err != nil {
		return err
	}
	// The operation takes its time before it is applied, like a zone operation.
	if err := sleep.For(ctx, c.opts.Latency); err != nil {
		return err
	}
	return c.withState(func() (bool, error) {
		in, ok := c.state.Instances[name]
		if !ok {
			return false, fmt.Errorf("instance %q: %w", name, cloud.ErrInstanceNotFound)
		}
		if in.Fingerprint != fingerprint {
			return false, fmt.Errorf("instance %q: %w", name, cloud.ErrStaleFingerprint)
		}
		if err := c.validate(name, aliases); err != nil {
			return false, err
		}
		in.Aliases = slices.Clone(aliases)
		in.Fingerprint++
		return true, nil
	})
}

func (c *Cloud) validate(name string, aliases []cloud.AliasRange) error {
	if len(aliases) > c.opts.MaxAliases {
		return fmt.Errorf("instance %q: %d ranges, limit %d: %w", name, len(aliases), c.opts.MaxAliases, cloud.ErrTooManyAliases)
	}
	for i, a := range aliases {
		if !a.CIDR.IsValid() || a.CIDR != a.CIDR.Masked() {
			return fmt.Errorf("instance %q: invalid range %v: %w", name, a.CIDR, cloud.ErrInvalid)
		}
		if a.RangeName == c.opts.RangeName {
			if !contains(c.opts.PodRange, a.CIDR) {
				return fmt.Errorf("instance %q: %v outside secondary range %s %v: %w", name, a.CIDR, c.opts.RangeName, c.opts.PodRange, cloud.ErrInvalid)
			}
		} else if a.CIDR.Overlaps(c.opts.PodRange) {
			return fmt.Errorf("instance %q: %v overlaps secondary range %s but names %q: %w", name, a.CIDR, c.opts.RangeName, a.RangeName, cloud.ErrInvalid)
		}
		for _, b := range aliases[:i] {
			if a.CIDR.Overlaps(b.CIDR) {
				return fmt.Errorf("instance %q: %v overlaps %v: %w", name, a.CIDR, b.CIDR, cloud.ErrInvalid)
			}
		}
		for other, in := range c.state.Instances {
			if other == name {
				continue
			}
			for _, b := range in.Aliases {
				if a.CIDR.Overlaps(b.CIDR) {
					return fmt.Errorf("instance %q: %v overlaps %v on instance %q: %w", name, a.CIDR, b.CIDR, other, cloud.ErrRangeConflict)
				}
			}
		}
	}
	return nil
}

// AddAlias implements cloud.Interface: read, append, write with the
// fingerprint; a stale fingerprint re-reads and retries. The fake's
// subnetwork has every secondary range it is asked for besides the pod
// range (a PodRange's cidr declares one), so only the rules of validate
// apply: a range named after the pod range lies inside it, any other
// misses it, and none overlaps a range on any instance.
func (c *Cloud) AddAlias(ctx context.Context, inst cloud.InstanceRef, a cloud.AliasRange) (err error) {
	defer func() { c.record("AddAlias", inst.Name, a.CIDR, err) }()
	if err := c.fault(ctx, "AddAlias", inst.Name); err != nil {
		return err
	}
	if a.RangeName == "" {
		return fmt.Errorf("instance %q: %v names no secondary range: %w", inst.Name, a.CIDR, cloud.ErrInvalid)
	}
	return c.add(ctx, inst.Name, a)
}

// add appends a to the NIC's list. As cloud/gce's AddAlias does, it adds
// nothing when a re-read (after a stale fingerprint) shows a range of a's
// secondary range that its first read did not: the caller chose a.CIDR
// from the NIC it saw, so it gets cloud.ErrStaleFingerprint and decides
// again (the contract written on cloud.Interface.AddAlias).
func (c *Cloud) add(ctx context.Context, name string, a cloud.AliasRange) error {
	var before map[netip.Prefix]bool
	var appeared netip.Prefix
	err := c.modify(ctx, name, func(list []cloud.AliasRange) ([]cloud.AliasRange, bool) {
		same := map[netip.Prefix]bool{}
		for _, b := range list {
			if b.CIDR == a.CIDR {
				return nil, false
			}
			if b.RangeName == a.RangeName {
				same[b.CIDR] = true
			}
		}
		if before == nil {
			before = same
		} else {
			for p := range same {
				if !before[p] {
					appeared = p
					return nil, false
				}
			}
		}
		return append(list, a), true
	})
	if err == nil && appeared.IsValid() {
		return fmt.Errorf("instance %q: add %v: the NIC gained %v of range %s meanwhile; not adding a second: %w",
			name, a.CIDR, appeared, a.RangeName, cloud.ErrStaleFingerprint)
	}
	return err
}

// RemoveAlias implements cloud.Interface.
func (c *Cloud) RemoveAlias(ctx context.Context, inst cloud.InstanceRef, cidr netip.Prefix) (err error) {
	defer func() { c.record("RemoveAlias", inst.Name, cidr, err) }()
	if err := c.fault(ctx, "RemoveAlias", inst.Name); err != nil {
		return err
	}
	err = c.modify(ctx, inst.Name, func(list []cloud.AliasRange) ([]cloud.AliasRange, bool) {
		out := slices.DeleteFunc(slices.Clone(list), func(a cloud.AliasRange) bool { return a.CIDR == cidr })
		return out, len(out) != len(list)
	})
	if errors.Is(err, cloud.ErrInstanceNotFound) {
		return nil
	}
	return err
}

func (c *Cloud) modify(ctx context.Context, name string, change func([]cloud.AliasRange) ([]cloud.AliasRange, bool)) error {
	for attempt := 0; ; attempt++ {
		list, fp, err := c.GetInterface(ctx, name)
		if err != nil {
			return err
		}
		next, changed := change(list)
		if !changed {
			return nil
		}
		err = c.UpdateInterface(ctx, name, fp, next)
		if errors.Is(err, cloud.ErrStaleFingerprint) && attempt < 10 {
			continue
		}
		return err
	}
}

// ListInstances implements cloud.Interface. Instances are sorted by name.
func (c *Cloud) ListInstances(ctx context.Context) ([]cloud.Instance, error) {
	if err := c.fault(ctx, "ListInstances", ""); err != nil {
		return nil, err
	}
	if err := c.admit(ctx, "list"); err != nil {
		return nil, err
	}
	var out []cloud.Instance
	err := c.withState(func() (bool, error) {
		for name, in := range c.state.Instances {
			out = append(out, cloud.Instance{Ref: cloud.InstanceRef{Name: name}, Aliases: slices.Clone(in.Aliases), IPv6: in.IPv6})
		}
		return false, nil
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Ref.Name < out[j].Ref.Name })
	return out, err
}

// admit counts the call and applies the injected rate limit and error rate.
func (c *Cloud) admit(ctx context.Context, method string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c.mu.Lock()
	c.calls[method]++
	c.mu.Unlock()
	if c.limiter != nil && !c.limiter.Allow() {
		return fmt.Errorf("%s: %w", method, cloud.ErrRateLimited)
	}
	if c.opts.ErrorRate > 0 && c.float64() < c.opts.ErrorRate {
		return fmt.Errorf("%s: injected failure: %w", method, cloud.ErrUnavailable)
	}
	return nil
}

func (c *Cloud) float64() float64 {
	if c.rnd == nil {
		return rand.Float64()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.rnd.Float64()
}

// withState runs fn with exclusive access to the current state; fn reports
// whether it changed the state, which is then saved.
func (c *Cloud) withState(fn func() (bool, error)) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.opts.StatePath == "" {
		_, err := fn()
		return err
	}
	lock, err := os.OpenFile(c.opts.StatePath+".lock", os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return fmt.Errorf("fake cloud lock: %w", err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("fake cloud lock: %w", err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
	if err := c.load(); err != nil {
		return err
	}
	changed, err := fn()
	if err != nil || !changed {
		return err
	}
	return c.save()
}

func (c *Cloud) load() error {
	data, err := os.ReadFile(c.opts.StatePath)
	if errors.Is(err, os.ErrNotExist) {
		c.state = state{Instances: map[string]*instance{}}
		return nil
	}
	if err != nil {
		return fmt.Errorf("fake cloud state: %w", err)
	}
	var st state
	if err := json.Unmarshal(data, &st); err != nil {
		return fmt.Errorf("fake cloud state %s: %w", c.opts.StatePath, err)
	}
	if st.Instances == nil {
		st.Instances = map[string]*instance{}
	}
	c.state = st
	return nil
}

// save writes the state atomically: a temporary file renamed over the old.
func (c *Cloud) save() error {
	data, err := json.Marshal(c.state)
	if err != nil {
		return err
	}
	tmp := c.opts.StatePath + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return fmt.Errorf("fake cloud state: %w", err)
	}
	if err := os.Rename(tmp, c.opts.StatePath); err != nil {
		return fmt.Errorf("fake cloud state: %w", err)
	}
	return nil
}

func contains(outer, inner netip.Prefix) bool {
	return outer.Bits() <= inner.Bits() && outer.Contains(inner.Addr())
}
