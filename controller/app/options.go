// Package app wires aliasip-controller together: flags, clients, the cloud,
// leader election, metrics and health endpoints.
package app

import (
	"fmt"
	"math"
	"net"
	"net/netip"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/aliasip/aliasip/controller/allocator"
	"github.com/aliasip/aliasip/internal/blocksize"
)

// Options are aliasip-controller's flags.
type Options struct {
	// fs is the flag set AddFlags registered on, to tell defaults from
	// values the user gave.
	fs               *pflag.FlagSet
	Kubeconfig       string
	Cloud            string
	ClusterCIDR      string
	NodeCIDRMaskSize int
	Workers          int
	CloudQPS         float64
	CloudBurst       int
	KubeAPIQPS       float32
	KubeAPIBurst     int
	EventsQPS        float32
	ReleaseCooldown  time.Duration
	LeakGracePeriod  time.Duration
	GCInterval       time.Duration
	ResyncPeriod     time.Duration

	LeaderElect          bool
	LeaderElectNamespace string
	LeaderElectName      string
	LeaseDuration        time.Duration
	RenewDeadline        time.Duration
	RetryPeriod          time.Duration

	MetricsAddr string
	HealthAddr  string
	// AdminSocket is the unix socket kubectl aliasip reaches through
	// kubectl exec (aliasip-controller admin); empty: off.
	AdminSocket string

	GCEProject        string
	GCERegion         string
	GCEZone           string
	GCESubnetwork     string
	GCESecondaryRange string
	GCEEndpoint       string
	GCEQuotaWindow    time.Duration
	SyncTimeout       time.Duration
	GCEPollInterval   time.Duration

	FakeLatency   time.Duration
	FakeErrorRate float64
	FakeRateLimit float64
	FakeStateFile string
	FakeAutoReg   bool
	FakeSchemes   []string
}

// NewOptions returns the defaults.
func NewOptions() *Options {
	return &Options{
		Cloud:                "gce",
		NodeCIDRMaskSize:     24,
		Workers:              10,
		CloudQPS:             20,
		CloudBurst:           40,
		GCEQuotaWindow:       time.Minute,
		SyncTimeout:          3 * time.Minute,
		GCEPollInterval:      500 * time.Millisecond,
		KubeAPIQPS:           50,
		KubeAPIBurst:         100,
		EventsQPS:            20,
		ReleaseCooldown:      30 * time.Second,
		LeakGracePeriod:      5 * time.Minute,
		GCInterval:           time.Minute,
		ResyncPeriod:         5 * time.Minute,
		LeaderElect:          true,
		LeaderElectNamespace: "kube-system",
		LeaderElectName:      "aliasip-controller",
		LeaseDuration:        15 * time.Second,
		RenewDeadline:        10 * time.Second,
		RetryPeriod:          2 * time.Second,
		MetricsAddr:          ":9980",
		HealthAddr:           ":9981",
		FakeAutoReg:          true,
		// kind://docker/CLUSTER/NODE is what kind gives every node.
		FakeSchemes: []string{"fake", "kind"},
	}
}

// AddFlags registers the flags on fs.
func (o *Options) AddFlags(fs *pflag.FlagSet) {
	o.fs = fs
	fs.StringVar(&o.Kubeconfig, "kubeconfig", o.Kubeconfig, "Path to a kubeconfig; empty means in-cluster configuration.")
	fs.StringVar(&o.Cloud, "cloud", o.Cloud, "Cloud provider: gce or fake.")
	fs.StringVar(&o.ClusterCIDR, "cluster-cidr", o.ClusterCIDR, "Pod range (required with --cloud=fake).")
	fs.IntVar(&o.NodeCIDRMaskSize, "node-cidr-mask-size", o.NodeCIDRMaskSize, "Mask size of each node's block.")
	fs.IntVar(&o.Workers, "workers", o.Workers, "Nodes synced concurrently.")
	fs.Float64Var(&o.CloudQPS, "cloud-qps", o.CloudQPS, "Client-side budget of cloud calls per second (default 20 with --cloud=gce; unlimited with --cloud=fake unless set).")
	fs.IntVar(&o.CloudBurst, "cloud-burst", o.CloudBurst, "Burst of the cloud call budget.")
	fs.Float32Var(&o.KubeAPIQPS, "kube-api-qps", o.KubeAPIQPS, "QPS of the Kubernetes client that reads and writes Nodes.")
	fs.IntVar(&o.KubeAPIBurst, "kube-api-burst", o.KubeAPIBurst, "Burst of that client.")
	fs.Float32Var(&o.EventsQPS, "events-qps", o.EventsQPS, "QPS of the separate client that writes Events, the leader Lease and the cooling ConfigMap (never the Node write budget).")
	fs.DurationVar(&o.ReleaseCooldown, "release-cooldown", o.ReleaseCooldown, "How long a deleted node's block waits before reuse (default 30s; 60s with --cloud=gce).")
	fs.DurationVar(&o.LeakGracePeriod, "leak-grace-period", o.LeakGracePeriod, "How long an alias may sit on an instance with no Node before it is removed.")
	fs.DurationVar(&o.GCInterval, "gc-interval", o.GCInterval, "How often leaked aliases are looked for.")
	fs.DurationVar(&o.ResyncPeriod, "resync-period", o.ResyncPeriod, "Informer resync period (every node is re-checked this often).")
	fs.BoolVar(&o.LeaderElect, "leader-elect", o.LeaderElect, "Run only while holding the leader Lease.")
	fs.StringVar(&o.LeaderElectNamespace, "leader-elect-namespace", o.LeaderElectNamespace, "Namespace of the leader Lease and of the ConfigMap that keeps blocks cooling down across restarts.")
	fs.StringVar(&o.LeaderElectName, "leader-elect-name", o.LeaderElectName, "Name of the leader Lease.")
	fs.DurationVar(&o.LeaseDuration, "leader-elect-lease-duration", o.LeaseDuration, "Leader lease duration.")
	fs.DurationVar(&o.RenewDeadline, "leader-elect-renew-deadline", o.RenewDeadline, "Leader renew deadline.")
	fs.DurationVar(&o.RetryPeriod, "leader-elect-retry-period", o.RetryPeriod, "Leader election retry period.")
	fs.StringVar(&o.AdminSocket, "admin-socket", o.AdminSocket, "Unix socket (mode 0600) for kubectl aliasip check/release, reached by kubectl exec running \"aliasip-controller admin\" in this pod (empty: off).")
	fs.StringVar(&o.MetricsAddr, "metrics-addr", o.MetricsAddr, "Address of the Prometheus /metrics endpoint (empty: off).")
	fs.StringVar(&o.HealthAddr, "health-addr", o.HealthAddr, "Address of /healthz and /readyz (empty: off).")
	fs.StringVar(&o.GCEProject, "gce-project", o.GCEProject, "GCE project (default: from the metadata server).")
	fs.StringVar(&o.GCERegion, "gce-region", o.GCERegion, "GCE region of the subnetwork (default: from the zone).")
	fs.StringVar(&o.GCEZone, "gce-zone", o.GCEZone, "GCE zone of nodes without a providerID (default: from the metadata server).")
	fs.StringVar(&o.GCESubnetwork, "gce-subnetwork", o.GCESubnetwork, "Subnetwork of the nodes (default: the aliasip-subnetwork metadata attribute, else this VM's nic0).")
	fs.StringVar(&o.GCESecondaryRange, "gce-secondary-range", o.GCESecondaryRange, "Secondary range of the subnetwork pods come from (default: the aliasip-secondary-range attribute, else the only one).")
	fs.StringVar(&o.GCEEndpoint, "gce-endpoint", o.GCEEndpoint, "Compute API base URL, e.g. http://127.0.0.1:8080/compute/v1/; no credentials are used then (default: the real API with Application Default Credentials).")
	fs.DurationVar(&o.SyncTimeout, "sync-timeout", o.SyncTimeout, "Longest one node's sync may take, cloud operations included; on shutdown the syncs in flight finish (within it) before the leader lease is released.")
	fs.DurationVar(&o.GCEQuotaWindow, "gce-quota-window", o.GCEQuotaWindow, "Window GCE refills its API rate quotas in: after a 403 rateLimitExceeded every call waits for the next window boundary (GCE: one minute).")
	fs.DurationVar(&o.GCEPollInterval, "gce-poll-interval", o.GCEPollInterval, "First poll of a pending zone operation; an operation's polls then back off, doubling up to 16 times this. Operations due together share one filtered zoneOperations.list per zone (in batches that keep the URL short).")
	fs.DurationVar(&o.FakeLatency, "fake-latency", o.FakeLatency, "Fake cloud: latency of each alias write operation.")
	fs.Float64Var(&o.FakeErrorRate, "fake-error-rate", o.FakeErrorRate, "Fake cloud: fraction of calls failing with 503.")
	fs.Float64Var(&o.FakeRateLimit, "fake-rate-limit", o.FakeRateLimit, "Fake cloud: calls per second accepted (0: unlimited).")
	fs.StringVar(&o.FakeStateFile, "fake-state-file", o.FakeStateFile, "Fake cloud: persist state in this file, shared between processes (empty: in memory).")
	fs.BoolVar(&o.FakeAutoReg, "fake-auto-register", o.FakeAutoReg, "Fake cloud: every node without a providerID, or with one of --fake-provider-schemes, is an instance.")
	fs.StringSliceVar(&o.FakeSchemes, "fake-provider-schemes", o.FakeSchemes, "Fake cloud: comma-separated providerID schemes it owns; a node with one (kind://docker/CLUSTER/NODE) is the instance named after the last \"/\". Nodes with other schemes (gce://, aws://) get InstanceNotFound.")
}

// uriScheme is RFC 3986's scheme syntax.
var uriScheme = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9+.-]*$`)

// Validate checks the options; the error is one line for the user.
func (o *Options) Validate() error {
	switch o.Cloud {
	case "fake":
		if o.ClusterCIDR == "" {
			return fmt.Errorf("--cluster-cidr is required with --cloud=fake")
		}
	case "gce":
		if o.GCEEndpoint != "" {
			u, err := url.Parse(o.GCEEndpoint)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				return fmt.Errorf("--gce-endpoint=%q: want an http(s) URL such as http://127.0.0.1:8080/compute/v1/", o.GCEEndpoint)
			}
		}
	default:
		return fmt.Errorf("--cloud=%q: want gce or fake", o.Cloud)
	}
	// Moving an alias range from one VM to another can take up to a minute
	// (https://cloud.google.com/vpc/docs/alias-ip): on GCE a freed block
	// waits at least that long before it is handed to another node, unless
	// the user chose otherwise.
	if o.Cloud == "gce" && (o.fs == nil || !o.fs.Changed("release-cooldown")) && o.ReleaseCooldown < time.Minute {
		o.ReleaseCooldown = time.Minute
	}
	// A budget for an in-memory fake only slows allocation down: unlimited
	// unless asked for (to emulate a cloud's quota).
	if o.Cloud == "fake" && (o.fs == nil || !o.fs.Changed("cloud-qps")) {
		o.CloudQPS = math.Inf(1)
	}
	for _, sc := range o.FakeSchemes {
		if !uriScheme.MatchString(sc) {
			return fmt.Errorf("--fake-provider-schemes=%s: %q is not a URI scheme (want a comma-separated list such as fake,kind)", strings.Join(o.FakeSchemes, ","), sc)
		}
	}
	if o.ClusterCIDR != "" {
		p, err := netip.ParsePrefix(o.ClusterCIDR)
		if err != nil {
			return fmt.Errorf("--cluster-cidr=%q: %v", o.ClusterCIDR, err)
		}
		if p.Masked() != p {
			return fmt.Errorf("--cluster-cidr=%q has host bits set (did you mean %v?)", o.ClusterCIDR, p.Masked())
		}
		// Alias IP ranges are IPv4 ranges of a subnetwork's primary or
		// secondary IPv4 ranges (https://cloud.google.com/vpc/docs/alias-ip);
		// IPv6 on GCE is a /96 per NIC, not alias ranges.
		if o.Cloud == "gce" && p.Addr().Is6() {
			return fmt.Errorf("--cluster-cidr=%s: IPv6 pod ranges are not supported with --cloud=gce (GCE alias IP ranges are IPv4)", p)
		}
		if _, err := allocator.New(p, o.NodeCIDRMaskSize); err != nil {
			return fmt.Errorf("--node-cidr-mask-size=%d with --cluster-cidr=%s: %v", o.NodeCIDRMaskSize, p, err)
		}
		if err := blocksize.CheckMask(o.NodeCIDRMaskSize, p.Addr().BitLen()); err != nil {
			return fmt.Errorf("--node-cidr-mask-size=%d: %v", o.NodeCIDRMaskSize, err)
		}
	} else if o.NodeCIDRMaskSize < 1 || o.NodeCIDRMaskSize > 128 {
		return fmt.Errorf("--node-cidr-mask-size=%d: out of range", o.NodeCIDRMaskSize)
	} else if err := blocksize.CheckMask(o.NodeCIDRMaskSize, 32); o.Cloud == "gce" && err != nil {
		// GCE's secondary ranges are IPv4.
		return fmt.Errorf("--node-cidr-mask-size=%d: %v", o.NodeCIDRMaskSize, err)
	}
	switch {
	case o.Workers < 1:
		return fmt.Errorf("--workers=%d: must be at least 1", o.Workers)
	case o.CloudQPS <= 0 || o.CloudBurst < 1:
		return fmt.Errorf("--cloud-qps=%v --cloud-burst=%d: both must be positive", o.CloudQPS, o.CloudBurst)
	case o.KubeAPIQPS <= 0 || o.KubeAPIBurst < 1 || o.EventsQPS <= 0:
		return fmt.Errorf("--kube-api-qps, --kube-api-burst and --events-qps must be positive")
	case o.ReleaseCooldown < 0 || o.LeakGracePeriod < 0:
		return fmt.Errorf("--release-cooldown and --leak-grace-period must not be negative")
	case o.SyncTimeout <= 0:
		return fmt.Errorf("--sync-timeout=%v: must be positive", o.SyncTimeout)
	case o.GCEQuotaWindow <= 0 || o.GCEPollInterval <= 0:
		return fmt.Errorf("--gce-quota-window=%v --gce-poll-interval=%v: both must be positive", o.GCEQuotaWindow, o.GCEPollInterval)
	case o.GCInterval <= 0 || o.ResyncPeriod < 0:
		return fmt.Errorf("--gc-interval must be positive and --resync-period not negative")
	case o.LeaderElect && !(o.LeaseDuration > o.RenewDeadline && o.RenewDeadline > o.RetryPeriod && o.RetryPeriod > 0):
		return fmt.Errorf("leader election needs lease-duration > renew-deadline > retry-period > 0")
	case o.FakeErrorRate < 0 || o.FakeErrorRate > 1:
		return fmt.Errorf("--fake-error-rate=%v: must be within [0,1]", o.FakeErrorRate)
	case o.FakeLatency < 0 || o.FakeRateLimit < 0:
		return fmt.Errorf("--fake-latency and --fake-rate-limit must not be negative")
	}
	for name, addr := range map[string]string{"--metrics-addr": o.MetricsAddr, "--health-addr": o.HealthAddr} {
		if addr == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return fmt.Errorf("%s=%q: %v", name, addr, err)
		}
	}
	return nil
}
