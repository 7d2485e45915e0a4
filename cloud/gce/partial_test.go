package gce_test

import (
	"errors"
	"strings"
	"testing"

	compute "google.golang.org/api/compute/v1"

	"github.com/aliasip/aliasip/cloud"
	"github.com/aliasip/aliasip/cloud/gce/gcetest"
)

// An aggregatedList answer that could not reach a zone: the instances of
// the other zones come back with an error wrapping cloud.ErrPartialList
// that names the zone; the cached NICs of that zone's instances are kept,
// not dropped as if the instances were gone.
func TestListInstancesPartial(t *testing.T) {
	const zoneB = "us-central1-b"
	s := newServer(t, gcetest.Options{})
	s.AddInstance(zone, "vm-a", &compute.AliasIpRange{IpCidrRange: "10.64.1.0/24", SubnetworkRangeName: "pods"})
	s.AddInstance(zoneB, "vm-b", &compute.AliasIpRange{IpCidrRange: "10.64.2.0/24", SubnetworkRangeName: "pods"})
	c := newCloud(t, s, nil)
	if insts, err := c.ListInstances(ctx); err != nil || len(insts) != 2 {
		t.Fatalf("full list: %d instances, %v", len(insts), err)
	}
	s.SetUnreachable(zoneB)
	insts, err := c.ListInstances(ctx)
	if !errors.Is(err, cloud.ErrPartialList) || !strings.Contains(err.Error(), zoneB) {
		t.Fatalf("list with %s unreachable: %v, want an error wrapping ErrPartialList naming the zone", zoneB, err)
	}
	if cloud.Code(err) != "partial" {
		t.Errorf("Code(%v) = %q, want partial", err, cloud.Code(err))
	}
	if len(insts) != 1 || insts[0].Ref.Name != "vm-a" || prefixes(insts[0].Aliases) != "pods:10.64.1.0/24" {
		t.Fatalf("partial list returned %+v, want vm-a with its alias", insts)
	}
	gets := s.Count("instances.get")
	vmB := cloud.InstanceRef{Project: "test-project", Zone: zoneB, Name: "vm-b"}
	if got, err := c.Aliases(ctx, vmB); err != nil || prefixes(got) != "pods:10.64.2.0/24" {
		t.Errorf("vm-b after a list that could not reach its zone: %v %v", got, err)
	}
	if s.Count("instances.get") != gets {
		t.Error("vm-b's cached NIC was dropped by the partial list")
	}
	s.SetUnreachable()
	if insts, err := c.ListInstances(ctx); err != nil || len(insts) != 2 {
		t.Fatalf("list after the zone is back: %d instances, %v", len(insts), err)
	}
}
