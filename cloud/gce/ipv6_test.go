package gce

import (
	"net/netip"
	"testing"

	compute "google.golang.org/api/compute/v1"
)

// TestNICIPv6 reads nic0's IPv6 range from the compute v1 fields as GCE
// fills them (see nicIPv6), including answers it should not give.
func TestNICIPv6(t *testing.T) {
	for _, tc := range []struct {
		name string
		nic  compute.NetworkInterface
		want string // "" for none
	}{
		{"IPv4-only", compute.NetworkInterface{StackType: "IPV4_ONLY", NetworkIP: "10.128.0.2"}, ""},
		{"no stack type", compute.NetworkInterface{NetworkIP: "10.128.0.2"}, ""},
		{"dual-stack, not assigned yet", compute.NetworkInterface{StackType: "IPV4_IPV6", Ipv6AccessType: "INTERNAL"}, ""},
		{"dual-stack", compute.NetworkInterface{StackType: "IPV4_IPV6", Ipv6AccessType: "INTERNAL",
			Ipv6Address: "fd20:1:2:3:0:5::", InternalIpv6PrefixLength: 96}, "fd20:1:2:3:0:5::/96"},
		{"address inside the range is masked", compute.NetworkInterface{StackType: "IPV4_IPV6",
			Ipv6Address: "fd20:1:2:3:0:5:0:1", InternalIpv6PrefixLength: 96}, "fd20:1:2:3:0:5::/96"},
		{"no length: GCE's /96", compute.NetworkInterface{StackType: "IPV4_IPV6", Ipv6Address: "fd20:1:2:3:0:5::"}, "fd20:1:2:3:0:5::/96"},
		{"IPv6-only", compute.NetworkInterface{StackType: "IPV6_ONLY",
			Ipv6Address: "fd20:1:2:3:0:6::", InternalIpv6PrefixLength: 96}, "fd20:1:2:3:0:6::/96"},
		{"external only: not read", compute.NetworkInterface{StackType: "IPV4_IPV6", Ipv6AccessType: "EXTERNAL",
			Ipv6AccessConfigs: []*compute.AccessConfig{{Type: "DIRECT_IPV6", ExternalIpv6: "2600:1900:4000:1::", ExternalIpv6PrefixLength: 96}}}, ""},
		{"not an address", compute.NetworkInterface{StackType: "IPV4_IPV6", Ipv6Address: "fd20::/96", InternalIpv6PrefixLength: 96}, ""},
		{"an IPv4 address", compute.NetworkInterface{StackType: "IPV4_IPV6", Ipv6Address: "10.0.0.1", InternalIpv6PrefixLength: 96}, ""},
		{"IPv4-mapped", compute.NetworkInterface{StackType: "IPV4_IPV6", Ipv6Address: "::ffff:10.0.0.1", InternalIpv6PrefixLength: 96}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := nicIPv6(&tc.nic)
			want := netip.Prefix{}
			if tc.want != "" {
				want = netip.MustParsePrefix(tc.want)
			}
			if got != want {
				t.Errorf("nicIPv6 = %v, want %v", got, want)
			}
		})
	}
}
