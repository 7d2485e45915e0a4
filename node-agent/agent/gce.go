package agent

import (
	"context"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"cloud.google.com/go/compute/metadata"
)

// GCEAliasCheck reports whether podCIDR is among the alias ranges of this
// VM's nic0, as the metadata server lists them
// (instance/network-interfaces/0/ip-aliases/). The metadata server is found
// the standard way (GCE_METADATA_HOST overrides it).
func GCEAliasCheck(ctx context.Context, podCIDR netip.Prefix) (bool, error) {
	md := metadata.NewClient(&http.Client{Timeout: 5 * time.Second})
	list, err := md.GetWithContext(ctx, "instance/network-interfaces/0/ip-aliases/")
	if err != nil {
		return false, err
	}
	for _, line := range strings.Fields(list) {
		p, err := netip.ParsePrefix(strings.TrimSpace(line))
		if err == nil && p.Masked() == podCIDR.Masked() {
			return true, nil
		}
	}
	return false, nil
}
