package agent

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"cloud.google.com/go/compute/metadata"
)

// GCEAliasCheck reports whether podCIDR is among the alias ranges of this
// VM's nic0 as the metadata server lists them. The metadata server is found
// the standard way (GCE_METADATA_HOST overrides it).
//
// instance/network-interfaces/0/ip-aliases/ is a directory of index keys
// ("0\n1\n"), each range at ip-aliases/N: kubernetes
// cluster/gce/windows/k8s-node-setup.psm1 reads ip-aliases/0, and
// GoogleCloudPlatform guest-test-infra's network tests read
// "network-interfaces/0/ip-aliases/0". The listing is not the ranges.
func GCEAliasCheck(ctx context.Context, podCIDR netip.Prefix) (bool, error) {
	md := metadata.NewClient(&http.Client{Timeout: 5 * time.Second})
	const dir = "instance/network-interfaces/0/ip-aliases/"
	keys, err := md.GetWithContext(ctx, dir)
	if err != nil {
		return false, err
	}
	for _, key := range strings.Fields(keys) {
		key = strings.TrimSuffix(key, "/")
		val, err := md.GetWithContext(ctx, dir+key)
		if err != nil {
			return false, fmt.Errorf("alias range %s of nic0: %w", key, err)
		}
		p, err := netip.ParsePrefix(strings.TrimSpace(val))
		if err == nil && p.Masked() == podCIDR.Masked() {
			return true, nil
		}
	}
	return false, nil
}
