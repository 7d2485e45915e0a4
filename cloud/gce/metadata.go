package gce

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"

	"cloud.google.com/go/compute/metadata"
)

// Instance attributes (or project attributes) that name the subnetwork and
// the secondary range when the flags do not.
const (
	AttrSubnetwork     = "aliasip-subnetwork"
	AttrSecondaryRange = "aliasip-secondary-range"
)

// FillFromMetadata fills cfg's empty Project, Zone, Region, Subnetwork and
// SecondaryRange from the metadata server, found the standard way (the
// GCE_METADATA_HOST variable points it elsewhere). The subnetwork comes
// from the aliasip-subnetwork attribute or else this VM's nic0; the range
// from the aliasip-secondary-range attribute or else the subnetwork's only
// secondary range.
func FillFromMetadata(ctx context.Context, cfg *Config) error {
	md := metadata.NewClient(&http.Client{Timeout: 5 * time.Second})
	var err error
	if cfg.Project == "" {
		if cfg.Project, err = md.ProjectIDWithContext(ctx); err != nil {
			return fmt.Errorf("project from metadata: %w", err)
		}
	}
	if cfg.Zone == "" {
		if cfg.Zone, err = md.ZoneWithContext(ctx); err != nil {
			return fmt.Errorf("zone from metadata: %w", err)
		}
	}
	if cfg.Region == "" {
		i := strings.LastIndex(cfg.Zone, "-")
		if i <= 0 {
			return fmt.Errorf("cannot derive a region from zone %q", cfg.Zone)
		}
		cfg.Region = cfg.Zone[:i]
	}
	attr := func(name string) string {
		if v, err := md.InstanceAttributeValueWithContext(ctx, name); err == nil && v != "" {
			return strings.TrimSpace(v)
		}
		if v, err := md.ProjectAttributeValueWithContext(ctx, name); err == nil && v != "" {
			return strings.TrimSpace(v)
		}
		return ""
	}
	if cfg.Subnetwork == "" {
		cfg.Subnetwork = attr(AttrSubnetwork)
	}
	if cfg.SecondaryRange == "" {
		cfg.SecondaryRange = attr(AttrSecondaryRange)
	}
	if cfg.Subnetwork != "" && cfg.SecondaryRange != "" {
		return nil
	}
	// Ask the Compute API about this VM's own NIC and its subnetwork.
	name, err := md.InstanceNameWithContext(ctx)
	if err != nil {
		return fmt.Errorf("instance name from metadata: %w", err)
	}
	svc, err := newService(ctx, *cfg, &gate{})
	if err != nil {
		return err
	}
	if cfg.Subnetwork == "" {
		in, err := svc.Instances.Get(cfg.Project, cfg.Zone, name).Context(ctx).Do()
		if err != nil {
			return fmt.Errorf("read this VM %s to find its subnetwork: %w", name, err)
		}
		if len(in.NetworkInterfaces) == 0 || in.NetworkInterfaces[0].Subnetwork == "" {
			return fmt.Errorf("this VM %s has no subnetwork on nic0", name)
		}
		// The full URL: in a Shared VPC it names the host project.
		cfg.Subnetwork = in.NetworkInterfaces[0].Subnetwork
	}
	if cfg.SecondaryRange == "" {
		ref, err := ParseSubnetwork(cfg.Subnetwork, cfg.Project, cfg.Region)
		if err != nil {
			return err
		}
		sub, err := svc.Subnetworks.Get(ref.Project, ref.Region, ref.Name).Context(ctx).Do()
		if err != nil {
			return fmt.Errorf("read subnetwork %s: %w", cfg.Subnetwork, err)
		}
		var names []string
		for _, r := range sub.SecondaryIpRanges {
			names = append(names, r.RangeName)
		}
		if len(names) != 1 {
			return fmt.Errorf("subnetwork %s has secondary ranges %v: name one with --gce-secondary-range or the %s attribute", cfg.Subnetwork, names, AttrSecondaryRange)
		}
		cfg.SecondaryRange = names[0]
	}
	return nil
}
