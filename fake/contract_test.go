package fake_test

import (
	"net/netip"
	"testing"

	"github.com/aliasip/aliasip/cloud"
	"github.com/aliasip/aliasip/cloud/cloudtest"
	"github.com/aliasip/aliasip/fake"
)

// TestContract runs the cloud.Interface contract against the fake.
func TestContract(t *testing.T) {
	cloudtest.Run(t, func(t *testing.T) (cloud.Interface, cloudtest.Harness) {
		h := &harness{}
		c, err := fake.New(fake.Options{
			PodRange:     cloudtest.PodRange.CIDR,
			RangeName:    cloudtest.PodRange.RangeName,
			IPv6Range:    cloudtest.IPv6Range,
			BeforeUpdate: func(string, []cloud.AliasRange) { h.hook.Fire() },
		})
		if err != nil {
			t.Fatal(err)
		}
		h.c = c
		return c, h
	})
}

// harness is cloudtest.Harness on the fake: its instances are named, in
// a flat namespace.
type harness struct {
	c    *fake.Cloud
	hook cloudtest.Hook
}

// AddInstance makes an IPv4-only instance: the fake, having an IPv6
// range, gives every instance it creates a /96, so it is taken away.
func (h *harness) AddInstance(t *testing.T, name string) cloud.InstanceRef {
	if err := h.c.RegisterInstance(name); err != nil {
		t.Fatal(err)
	}
	if err := h.c.SetIPv6(name, netip.Prefix{}); err != nil {
		t.Fatal(err)
	}
	return cloud.InstanceRef{Name: name}
}

func (h *harness) AddDualStackInstance(t *testing.T, name string) cloud.InstanceRef {
	if err := h.c.RegisterInstance(name); err != nil {
		t.Fatal(err)
	}
	return cloud.InstanceRef{Name: name}
}

func (h *harness) SetIPv6(t *testing.T, inst cloud.InstanceRef, p netip.Prefix) {
	if err := h.c.SetIPv6(inst.Name, p); err != nil {
		t.Fatal(err)
	}
}

func (h *harness) DeleteInstance(t *testing.T, inst cloud.InstanceRef) {
	if err := h.c.DeleteInstance(inst.Name); err != nil {
		t.Fatal(err)
	}
}

func (h *harness) Apply(t *testing.T, inst cloud.InstanceRef, aliases ...cloud.AliasRange) {
	if err := h.c.ApplyAliases(inst.Name, aliases...); err != nil {
		t.Error(err) // may run inside the cloud's update hook
	}
}

func (h *harness) BeforeWrite(fn func()) { h.hook.Set(fn) }
