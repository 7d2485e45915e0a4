package gce_test

import (
	"net/netip"
	"testing"
	"time"

	compute "google.golang.org/api/compute/v1"

	"github.com/aliasip/aliasip/cloud"
	"github.com/aliasip/aliasip/cloud/cloudtest"
	"github.com/aliasip/aliasip/cloud/gce"
	"github.com/aliasip/aliasip/cloud/gce/gcetest"
)

// TestContract runs the cloud.Interface contract against cloud/gce on the
// gcetest server.
func TestContract(t *testing.T) {
	cloudtest.Run(t, func(t *testing.T) (cloud.Interface, cloudtest.Harness) {
		h := &contractHarness{}
		s := gcetest.NewServer(gcetest.Options{
			SecondaryRanges: map[string]netip.Prefix{
				cloudtest.PodRange.RangeName:   cloudtest.PodRange.CIDR,
				cloudtest.OtherRange.RangeName: cloudtest.OtherRange.CIDR,
			},
			IPv6Range:    cloudtest.IPv6Range,
			BeforeUpdate: func(string, string, *compute.NetworkInterface) { h.hook.Fire() },
		})
		t.Cleanup(s.Close)
		h.s = s
		c, err := gce.New(t.Context(), gce.Config{
			Project: "test-project", Region: "us-central1", Zone: zone,
			Subnetwork: "nodes", SecondaryRange: cloudtest.PodRange.RangeName,
			Endpoint: s.Endpoint(), QPS: 1000, Burst: 1000, BaseBackoff: 5 * time.Millisecond,
			PollInterval: 20 * time.Millisecond, MissWindow: 5 * time.Millisecond,
			Logf: t.Logf,
		})
		if err != nil {
			t.Fatal(err)
		}
		return c, h
	})
}

// contractHarness is cloudtest.Harness on the gcetest server: instances
// in one zone of the test project, on the server's subnetwork.
type contractHarness struct {
	s    *gcetest.Server
	hook cloudtest.Hook
}

func (h *contractHarness) AddInstance(t *testing.T, name string) cloud.InstanceRef {
	h.s.AddInstance(zone, name)
	return ref(name)
}

func (h *contractHarness) AddDualStackInstance(t *testing.T, name string) cloud.InstanceRef {
	h.s.AddInstanceDualStack(zone, name)
	return ref(name)
}

func (h *contractHarness) SetIPv6(t *testing.T, inst cloud.InstanceRef, p netip.Prefix) {
	h.s.SetIPv6(inst.Zone, inst.Name, p)
}

func (h *contractHarness) DeleteInstance(t *testing.T, inst cloud.InstanceRef) {
	h.s.DeleteInstance(inst.Zone, inst.Name)
}

func (h *contractHarness) Apply(t *testing.T, inst cloud.InstanceRef, aliases ...cloud.AliasRange) {
	list := make([]*compute.AliasIpRange, 0, len(aliases))
	for _, a := range aliases {
		list = append(list, &compute.AliasIpRange{IpCidrRange: a.CIDR.String(), SubnetworkRangeName: a.RangeName})
	}
	h.s.ApplyAliases(inst.Zone, inst.Name, list...)
}

func (h *contractHarness) BeforeWrite(fn func()) { h.hook.Set(fn) }
