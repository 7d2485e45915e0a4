// The IPv6 range of a VM's nic0, as the compute v1 API reports it.

package gce

import (
	"context"
	"net/netip"

	compute "google.golang.org/api/compute/v1"

	"github.com/aliasip/aliasip/cloud"
)

// IPv6Range implements cloud.Interface: nic0's internal IPv6 range, from
// the NIC cache when it has the instance (as Aliases), so a NIC that gains
// or loses its range is seen after the next ListInstances or read of it.
func (c *Cloud) IPv6Range(ctx context.Context, inst cloud.InstanceRef) (netip.Prefix, error) {
	st, _, err := c.nic(ctx, inst, false)
	if err != nil {
		return netip.Prefix{}, err
	}
	return st.ipv6, nil
}

// defaultIPv6PrefixLen is the size of the range GCE gives a dual-stack VM
// NIC: "The IPv6 subnet size is /64 (e.g., fd20:a:b:c::/64). Each
// IPv6-enabled VM will be assigned a /96 address range from the subnet"
// (Google Cloud blog, "Planning an IPv6 network on Google Cloud", 2023,
// https://cloud.google.com/blog/products/networking/how-to-create-a-ipv6-network-in-google-cloud/).
// It is used only when a NIC names an address without its length.
const defaultIPv6PrefixLen = 96

// nicIPv6 is the NIC's internal IPv6 range, masked, or the zero Prefix.
//
// The fields, from google.golang.org/api/compute/v1 NetworkInterface
// (https://cloud.google.com/compute/docs/reference/rest/v1/instances):
//   - ipv6Address: "An IPv6 internal network address for this network
//     interface ... If not specified, Google Cloud will automatically
//     assign an internal IPv6 address from the instance's subnetwork."
//   - internalIpv6PrefixLength: "The prefix length of the primary internal
//     IPv6 range." They travel together: gcloud, building a
//     NetworkInterface (its Backup and DR restore ComputeUtil), refuses
//     an internal-ipv6-address without internal-ipv6-prefix-length
//     ("Prefix length of the provided IPv6 address is expected but not
//     found").
//   - stackType: IPV4_ONLY ("will only be assigned IPv4 addresses", the
//     default), IPV4_IPV6 ("can have both IPv4 and IPv6 addresses") or
//     IPV6_ONLY. It says what the NIC may have, not that it has it: a
//     dual-stack NIC without ipv6Address (not assigned yet) has none.
//   - ipv6AccessType: INTERNAL or EXTERNAL, "always inherited from its
//     subnetwork. Valid only if stackType is IPV4_IPV6." An EXTERNAL NIC's
//     range is in ipv6AccessConfigs[].externalIpv6 (with
//     externalIpv6PrefixLength), not in ipv6Address.
//
// Only the internal range is read. kubernetes/cloud-provider-gcp reads
// the same field but falls back to the external address when
// ipv6AccessType is EXTERNAL (providers/gce/gce_instances.go
// getIPV6AddressFromInterface), and it takes the node's pod range as the
// first /112 of the address, ignoring the length (GetIPV6Address: "The
// podCIDR range is the first /112 subrange from the /96 assigned to the
// node"); its nodeipam cloud allocator (pkg/controller/nodeipam/ipam/
// cloud_cidr_allocator.go) writes it after the IPv4 alias for the
// IPv4_IPv6 stack. Here the whole NIC range is reported with the length
// GCE gives; carving the /112 is the caller's.
func nicIPv6(nic *compute.NetworkInterface) netip.Prefix {
	if nic.Ipv6Address == "" {
		return netip.Prefix{}
	}
	addr, err := netip.ParseAddr(nic.Ipv6Address)
	if err != nil || !addr.Is6() || addr.Is4In6() {
		return netip.Prefix{}
	}
	bits := int(nic.InternalIpv6PrefixLength)
	if bits <= 0 || bits > 128 {
		bits = defaultIPv6PrefixLen
	}
	p, err := addr.WithZone("").Prefix(bits)
	if err != nil {
		return netip.Prefix{}
	}
	return p
}
