package app

import (
	"context"
	"fmt"
	"time"

	"k8s.io/klog/v2"

	"github.com/aliasip/aliasip/cloud"
	"github.com/aliasip/aliasip/cloud/gce"
	"github.com/aliasip/aliasip/controller"
	"github.com/aliasip/aliasip/fake"
)

// newCloud builds the cloud Options.Config chose, its budget already
// placed there (see CloudConfig). GCE reports each HTTP call to m and
// fills what is not given from the metadata server.
func newCloud(ctx context.Context, c CloudConfig, m *controller.Metrics) (cloud.Interface, error) {
	switch {
	case c.Fake != nil:
		return fake.New(*c.Fake)
	case c.GCE != nil:
		cfg := *c.GCE
		cfg.Observe = m.ObserveCloudRequest
		logger := klog.FromContext(ctx)
		cfg.Logf = func(format string, args ...any) { logger.Info(fmt.Sprintf(format, args...)) }
		if cfg.Project == "" || cfg.Zone == "" || cfg.Subnetwork == "" || cfg.SecondaryRange == "" {
			mctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			err := gce.FillFromMetadata(mctx, &cfg)
			cancel()
			if err != nil {
				return nil, fmt.Errorf("GCE settings from the metadata server (or give --gce-project, --gce-zone, --gce-subnetwork, --gce-secondary-range): %w", err)
			}
		}
		logger.Info("GCE cloud", "project", cfg.Project, "region", cfg.Region, "zone", cfg.Zone,
			"subnetwork", cfg.Subnetwork, "secondaryRange", cfg.SecondaryRange, "endpoint", cfg.Endpoint)
		return gce.New(ctx, cfg)
	default:
		return nil, fmt.Errorf("no cloud configured")
	}
}
