package gce

import (
	"fmt"
	"strings"

	"github.com/aliasip/aliasip/cloud"
)

// ParseProviderID parses a GCE node's spec.providerID,
// "gce://PROJECT/ZONE/INSTANCE", into the instance it names.
func ParseProviderID(providerID string) (cloud.InstanceRef, error) {
	rest, ok := strings.CutPrefix(providerID, "gce://")
	if !ok {
		return cloud.InstanceRef{}, fmt.Errorf("providerID %q: want gce://PROJECT/ZONE/INSTANCE", providerID)
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 3 || parts[0] == "" || parts[1] == "" || parts[2] == "" {
		return cloud.InstanceRef{}, fmt.Errorf("providerID %q: want gce://PROJECT/ZONE/INSTANCE", providerID)
	}
	return cloud.InstanceRef{Project: parts[0], Zone: parts[1], Name: parts[2]}, nil
}
