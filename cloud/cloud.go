// Package cloud defines the small view of a cloud provider that aliasip's
// controller programs against: read the alias IP ranges on a VM's network
// interface, add one, remove one, read the interface's IPv6 range, list
// instances, and look up the pod range.
//
// Two implementations exist: package fake (in memory, for tests, kind and
// local clusters) and package cloud/gce (Google Compute Engine).
package cloud

import (
	"context"
	"errors"
	"net/netip"
)

// Sentinel errors. Implementations wrap them so callers can act with errors.Is.
var (
	// ErrInstanceNotFound: the instance named by a node does not exist.
	ErrInstanceNotFound = errors.New("instance not found")
	// ErrRangeConflict: the range is really taken: another resource holds
	// it. The block must not be handed out; another may be tried.
	ErrRangeConflict = errors.New("alias range conflict")
	// ErrInvalid: the cloud refused the change as invalid for this instance
	// (for example its NIC is on a subnetwork without the pod range). Nothing
	// was applied; retrying with another block will not help.
	ErrInvalid = errors.New("alias change refused as invalid")
	// ErrQuotaExceeded: a resource quota (not a rate limit) refused the
	// change. Not transient: someone must raise the quota.
	ErrQuotaExceeded = errors.New("cloud resource quota exceeded")
	// ErrTooManyAliases: the NIC already carries the maximum number of ranges.
	ErrTooManyAliases = errors.New("too many alias ranges on interface")
	// ErrStaleFingerprint: the interface changed since it was read (HTTP 412).
	ErrStaleFingerprint = errors.New("stale interface fingerprint")
	// ErrRateLimited: the cloud refused the call for its request rate quota
	// (403 rateLimitExceeded, 429); it refills with the next window.
	ErrRateLimited = errors.New("cloud rate limit exceeded")
	// ErrUnavailable: a transient server-side failure (5xx).
	ErrUnavailable = errors.New("cloud unavailable")
	// ErrNoSecondaryRange: the subnetwork has no secondary range of that name.
	ErrNoSecondaryRange = errors.New("no such secondary range")
	// ErrPartialList: ListInstances could not read every zone. The
	// instances it returns alongside are those it could read; the others
	// are unknown (not alias-free). The error names the zones.
	ErrPartialList = errors.New("instance list incomplete")
)

// MaxAliasRangesPerNIC is GCE's limit of alias IP ranges on one interface:
// "Maximum number of alias IP ranges per network interface: 150", a
// system limit, as long as the VPC network's quota "IP aliases per VPC
// network" (ALIASES_PER_NETWORK_GLOBAL, counting ranges whatever their
// size) is not exceeded (VPC "Quotas and limits",
// https://cloud.google.com/vpc/docs/quota, limits per network interface).
const MaxAliasRangesPerNIC = 150

// InstanceRef names one VM. Project and Zone may be empty for clouds
// (like the fake) that have a flat namespace.
type InstanceRef struct {
	Project string
	Zone    string
	Name    string
}

// String returns "project/zone/name", or just the name when project and
// zone are empty; it is a stable map key.
func (r InstanceRef) String() string {
	if r.Project == "" && r.Zone == "" {
		return r.Name
	}
	return r.Project + "/" + r.Zone + "/" + r.Name
}

// AliasRange is one alias IP range on a NIC. RangeName is the subnetwork
// secondary range it comes from ("" for the primary range).
type AliasRange struct {
	CIDR      netip.Prefix
	RangeName string
}

// Instance is one VM: the alias ranges and the IPv6 range of its primary NIC.
type Instance struct {
	Ref     InstanceRef
	Aliases []AliasRange
	// IPv6 is what IPv6Range reports for the instance: its primary NIC's
	// internal IPv6 range, or the zero Prefix when it has none.
	IPv6 netip.Prefix
}

// Interface is what the controller needs of a cloud. All methods are safe for
// concurrent use. Add and Remove return once the change is applied (any
// cloud operation has finished) and are idempotent.
type Interface interface {
	// PodRange returns the range pod blocks are carved from, and its name.
	PodRange(ctx context.Context) (netip.Prefix, string, error)
	// InstanceFor resolves a node (its spec.providerID and name) to an instance.
	InstanceFor(ctx context.Context, providerID, nodeName string) (InstanceRef, error)
	// Aliases returns the alias ranges on the instance's primary NIC.
	Aliases(ctx context.Context, inst InstanceRef) ([]AliasRange, error)
	// AddAlias adds a.CIDR, taken from the secondary range a.RangeName, to
	// the NIC, keeping the others (of any range). An empty RangeName is
	// refused with an error wrapping ErrInvalid. If, while it retries, the
	// NIC gains another range of the same secondary range that the caller
	// did not see, it adds nothing and returns an error wrapping
	// ErrStaleFingerprint: the caller decides again.
	AddAlias(ctx context.Context, inst InstanceRef, a AliasRange) error
	// RemoveAlias removes cidr from the NIC, keeping the others. Removing a
	// range that is not there, or from a vanished instance, succeeds.
	RemoveAlias(ctx context.Context, inst InstanceRef, cidr netip.Prefix) error
	// IPv6Range returns the internal IPv6 range of the instance's primary
	// NIC, masked: on GCE the /96 a dual-stack NIC is given from its
	// subnetwork's /64. A NIC without one (IPv4-only, or dual-stack but
	// not assigned an address yet) gives the zero Prefix and a nil error;
	// a missing instance an error wrapping ErrInstanceNotFound. Like
	// Aliases it may be served from what the cloud last read of the NIC:
	// a range that arrives or goes later is seen after ListInstances.
	IPv6Range(ctx context.Context, inst InstanceRef) (netip.Prefix, error)
	// ListInstances returns every instance the cloud knows in our scope.
	// When some zones could not be read it returns the instances of the
	// others together with an error wrapping ErrPartialList; callers must
	// treat the missing zones' instances as unknown, never as alias-free.
	ListInstances(ctx context.Context) ([]Instance, error)
}

// Code classifies an error from an Interface call for metrics labels:
// "ok", "not_found", "conflict", "invalid", "quota_exceeded", "too_many",
// "stale", "rate_limited", "unavailable", "no_secondary_range", "partial", "canceled"
// or "error".
func Code(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, ErrInstanceNotFound):
		return "not_found"
	case errors.Is(err, ErrRangeConflict):
		return "conflict"
	case errors.Is(err, ErrInvalid):
		return "invalid"
	case errors.Is(err, ErrQuotaExceeded):
		return "quota_exceeded"
	case errors.Is(err, ErrTooManyAliases):
		return "too_many"
	case errors.Is(err, ErrStaleFingerprint):
		return "stale"
	case errors.Is(err, ErrRateLimited):
		return "rate_limited"
	case errors.Is(err, ErrUnavailable):
		return "unavailable"
	case errors.Is(err, ErrNoSecondaryRange):
		return "no_secondary_range"
	case errors.Is(err, ErrPartialList):
		return "partial"
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return "canceled"
	default:
		return "error"
	}
}
