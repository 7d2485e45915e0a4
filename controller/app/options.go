// Package app is aliasip-controller's application layer, shaped like the
// node agent's: flags into Options (NewOptions, AddFlags), Options checked
// (Validate, which changes nothing), Options parsed once into the typed
// Config (Config), and Run wiring the clients, the cloud, leader election,
// metrics and health endpoints around the controller from that Config. The
// command's main only parses and calls it.
package app

import (
	"fmt"
	"math"
	"net"
	"net/netip"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/apimachinery/pkg/types"

	"github.com/aliasip/aliasip/cloud/gce"
	"github.com/aliasip/aliasip/controller"
	"github.com/aliasip/aliasip/controller/allocator"
	"github.com/aliasip/aliasip/fake"
	"github.com/aliasip/aliasip/internal/blocksize"
)

// Options are aliasip-controller's flags.
type Options struct {
	// fs is the flag set AddFlags registered on, to tell defaults from
	// values the user gave (see cloudDefaults).
	fs               *pflag.FlagSet
	Kubeconfig       string
	Cloud            string
	ClusterCIDR      string
	NodeCIDRMaskSize int
	DualStack        bool
	Workers          int
	CloudQPS         float64
	CloudBurst       int
	KubeAPIQPS       float32
	KubeAPIBurst     int
	KubeAPIGzip      bool
	EventsQPS        float32
	ReleaseCooldown  time.Duration
	LeakGracePeriod  time.Duration
	GCInterval       time.Duration
	ResyncPeriod     time.Duration

	LeaderElect bool
	// PodName starts the leader Lease's identity (kubectl aliasip finds the
	// leading pod by it); its default is read from the environment by
	// NewOptions, before the flags are parsed.
	PodName              string
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
	FakeIPv6Range string
	FakeAutoReg   bool
	FakeSchemes   []string
}

// NewOptions returns the defaults: here, in the flags' defaults, and (for
// the two that depend on --cloud) in cloudDefaults. The one read of the
// environment is here too: the pod name, $POD_NAME (the chart passes it
// through the downward API), else the hostname.
func NewOptions() *Options {
	return &Options{
		PodName:              podNameFromEnv(),
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

// podNameFromEnv is the default of --pod-name: $POD_NAME, else the
// hostname (the node's when the pod uses the host network).
func podNameFromEnv() string {
	if n := os.Getenv("POD_NAME"); n != "" {
		return n
	}
	if h, err := os.Hostname(); err == nil && h != "" {
		return h
	}
	return "unknown-host" // the Lease identity's UUID keeps it unique
}

// cloudDefaults returns the two defaults that depend on --cloud, for the
// flags the user did not give: the release cooldown and the cloud budget's
// QPS. It changes nothing.
func (o *Options) cloudDefaults() (releaseCooldown time.Duration, cloudQPS float64) {
	releaseCooldown, cloudQPS = o.ReleaseCooldown, o.CloudQPS
	// Moving an alias range from one VM to another can take up to a minute
	// (https://cloud.google.com/vpc/docs/alias-ip): on GCE a freed block
	// waits at least that long before it is handed to another node, unless
	// the user chose otherwise.
	if o.Cloud == "gce" && !o.changed("release-cooldown") && releaseCooldown < time.Minute {
		releaseCooldown = time.Minute
	}
	// A budget for an in-memory fake only slows allocation down: unlimited
	// unless asked for (to emulate a cloud's quota).
	if o.Cloud == "fake" && !o.changed("cloud-qps") {
		cloudQPS = math.Inf(1)
	}
	return releaseCooldown, cloudQPS
}

// changed reports whether the user gave the flag.
func (o *Options) changed(flag string) bool {
	return o.fs != nil && o.fs.Changed(flag)
}

// AddFlags registers the flags on fs.
func (o *Options) AddFlags(fs *pflag.FlagSet) {
	o.fs = fs
	fs.StringVar(&o.Kubeconfig, "kubeconfig", o.Kubeconfig, "Path to a kubeconfig; empty means in-cluster configuration.")
	fs.StringVar(&o.Cloud, "cloud", o.Cloud, "Cloud provider: gce or fake.")
	fs.StringVar(&o.ClusterCIDR, "cluster-cidr", o.ClusterCIDR, "Pod range (required with --cloud=fake).")
	fs.IntVar(&o.NodeCIDRMaskSize, "node-cidr-mask-size", o.NodeCIDRMaskSize, "Mask size of each node's block.")
	fs.BoolVar(&o.DualStack, "dual-stack", o.DualStack, "Dual-stack: each node's podCIDRs are its IPv4 block and the first /112 of its NIC's IPv6 range (GCE: the NIC's /96; fake: --fake-ipv6-range), written together; a node whose NIC has no IPv6 range yet waits.")
	fs.IntVar(&o.Workers, "workers", o.Workers, "Nodes synced concurrently.")
	fs.Float64Var(&o.CloudQPS, "cloud-qps", o.CloudQPS, "Client-side budget of cloud calls per second (default 20 with --cloud=gce; unlimited with --cloud=fake unless set).")
	fs.IntVar(&o.CloudBurst, "cloud-burst", o.CloudBurst, "Burst of the cloud call budget.")
	fs.Float32Var(&o.KubeAPIQPS, "kube-api-qps", o.KubeAPIQPS, "QPS of the Kubernetes client that reads and writes Nodes.")
	fs.IntVar(&o.KubeAPIBurst, "kube-api-burst", o.KubeAPIBurst, "Burst of that client.")
	fs.BoolVar(&o.KubeAPIGzip, "kube-api-gzip", o.KubeAPIGzip, "Let the API server gzip the large responses (above all the Node list pages) of the client that reads and writes Nodes and PodRanges. Off by default: where bandwidth to the API server is ample, gzip costs the API server and the controller more CPU than it saves (kubernetes/kubernetes#112296, #112580); turn it on where bandwidth is scarce.")
	fs.Float32Var(&o.EventsQPS, "events-qps", o.EventsQPS, "QPS of the separate client that writes Events, the leader Lease and the cooling ConfigMap (never the Node write budget).")
	fs.DurationVar(&o.ReleaseCooldown, "release-cooldown", o.ReleaseCooldown, "How long a deleted node's block waits before reuse (default 30s; 60s with --cloud=gce).")
	fs.DurationVar(&o.LeakGracePeriod, "leak-grace-period", o.LeakGracePeriod, "How long an alias may sit on an instance with no Node before it is removed.")
	fs.DurationVar(&o.GCInterval, "gc-interval", o.GCInterval, "How often leaked aliases are looked for.")
	fs.DurationVar(&o.ResyncPeriod, "resync-period", o.ResyncPeriod, "Informer resync period (every node is re-checked this often).")
	fs.BoolVar(&o.LeaderElect, "leader-elect", o.LeaderElect, "Run only while holding the leader Lease.")
	fs.StringVar(&o.PodName, "pod-name", o.PodName, "This pod's name: the leader Lease's identity starts with it, so kubectl aliasip finds the leading pod (default: $POD_NAME as the process starts, else the hostname).")
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
	fs.StringVar(&o.FakeIPv6Range, "fake-ipv6-range", o.FakeIPv6Range, "Fake cloud: the subnetwork's internal IPv6 range (a ULA /64 such as fd20:0:0:1::/64); each instance gets the next /96 of it, as a GCE dual-stack subnet gives each NIC. Empty: instances are IPv4-only.")
	fs.BoolVar(&o.FakeAutoReg, "fake-auto-register", o.FakeAutoReg, "Fake cloud: every node without a providerID, or with one of --fake-provider-schemes, is an instance.")
	fs.StringSliceVar(&o.FakeSchemes, "fake-provider-schemes", o.FakeSchemes, "Fake cloud: comma-separated providerID schemes it owns; a node with one (kind://docker/CLUSTER/NODE) is the instance named after the last \"/\". Nodes with other schemes (gce://, aws://) get InstanceNotFound.")
}

// Config is what Run runs on: the options parsed into typed values, with
// the defaults that depend on --cloud applied. Options.Config builds it.
type Config struct {
	// Controller configures the controller. Run adds its Cooling store
	// (CoolingConfigMap, written through the events client). The cloud
	// budget is in it only when the controller applies it (see Cloud).
	Controller controller.Config
	// Cloud is the cloud Run builds, --cluster-cidr in it as its PodRange
	// (invalid when not given: GCE's secondary range is the default range
	// then).
	Cloud CloudConfig

	// Kubeconfig is the kubeconfig's path (empty: in-cluster).
	Kubeconfig string
	// KubeAPIQPS and KubeAPIBurst budget the client of Node (and PodRange)
	// reads and writes; EventsQPS the separate client of Events, the leader
	// Lease and the cooling ConfigMap.
	KubeAPIQPS   float32
	KubeAPIBurst int
	EventsQPS    float32
	// KubeAPIGzip lets the API server compress the Node client's large
	// responses (off: the client does not ask for gzip).
	KubeAPIGzip bool
	// ResyncPeriod is the informers' resync period.
	ResyncPeriod time.Duration

	// LeaderElection is nil with --leader-elect=false.
	LeaderElection *LeaderElection
	// CoolingConfigMap keeps the blocks cooling down across restarts.
	CoolingConfigMap types.NamespacedName

	MetricsAddr string // empty: off
	HealthAddr  string // empty: off
	AdminSocket string // empty: off
}

// CloudConfig is the cloud to build: exactly one of GCE and Fake is set.
//
// The cloud budget (--cloud-qps, --cloud-burst) is applied in one place,
// chosen here: GCE applies it itself, per HTTP call (an operation's polls
// included), and observes each request; the fake gets it from the
// controller, per call (controller.Config's CloudQPS and CloudBurst, with
// CloudBudgeted false).
type CloudConfig struct {
	// GCE is the GCE client's configuration; Run sets Observe and Logf,
	// and fills what is empty from the metadata server.
	GCE *gce.Config
	// Fake is the fake cloud's.
	Fake *fake.Options
}

// cloudQPS is the cloud budget's QPS, wherever it is applied.
func (c CloudConfig) cloudQPS(ctrl controller.Config) float64 {
	if c.GCE != nil {
		return c.GCE.QPS
	}
	return ctrl.CloudQPS
}

// LeaderElection configures the leader Lease.
type LeaderElection struct {
	// Lease is the Lease's namespace and name.
	Lease types.NamespacedName
	// PodName starts this process's identity (a UUID ends it).
	PodName                                   string
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
}

// uriScheme is RFC 3986's scheme syntax.
var uriScheme = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9+.-]*$`)

// Validate checks the options; the error is one line for the user. It
// changes nothing: it is Config without the result.
func (o *Options) Validate() error {
	_, err := o.Config()
	return err
}

// Config checks the options and parses them, once, into the Config Run
// runs on; the error is one line for the user. It changes nothing.
func (o *Options) Config() (Config, error) {
	switch o.Cloud {
	case "fake":
		if o.ClusterCIDR == "" {
			return Config{}, fmt.Errorf("--cluster-cidr is required with --cloud=fake")
		}
	case "gce":
		if o.GCEEndpoint != "" {
			u, err := url.Parse(o.GCEEndpoint)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				return Config{}, fmt.Errorf("--gce-endpoint=%q: want an http(s) URL such as http://127.0.0.1:8080/compute/v1/", o.GCEEndpoint)
			}
		}
	default:
		return Config{}, fmt.Errorf("--cloud=%q: want gce or fake", o.Cloud)
	}
	releaseCooldown, cloudQPS := o.cloudDefaults()
	for _, sc := range o.FakeSchemes {
		if !uriScheme.MatchString(sc) {
			return Config{}, fmt.Errorf("--fake-provider-schemes=%s: %q is not a URI scheme (want a comma-separated list such as fake,kind)", strings.Join(o.FakeSchemes, ","), sc)
		}
	}
	var podRange netip.Prefix
	if o.ClusterCIDR != "" {
		p, err := netip.ParsePrefix(o.ClusterCIDR)
		if err != nil {
			return Config{}, fmt.Errorf("--cluster-cidr=%q: %v", o.ClusterCIDR, err)
		}
		if p.Masked() != p {
			return Config{}, fmt.Errorf("--cluster-cidr=%q has host bits set (did you mean %v?)", o.ClusterCIDR, p.Masked())
		}
		// Alias IP ranges are IPv4 ranges of a subnetwork's primary or
		// secondary IPv4 ranges (https://cloud.google.com/vpc/docs/alias-ip);
		// IPv6 on GCE is a /96 per NIC, not alias ranges.
		if o.Cloud == "gce" && p.Addr().Is6() {
			return Config{}, fmt.Errorf("--cluster-cidr=%s: IPv6 pod ranges are not supported with --cloud=gce (GCE alias IP ranges are IPv4)", p)
		}
		if _, err := allocator.New(p, o.NodeCIDRMaskSize); err != nil {
			return Config{}, fmt.Errorf("--node-cidr-mask-size=%d with --cluster-cidr=%s: %v", o.NodeCIDRMaskSize, p, err)
		}
		if err := blocksize.CheckMask(o.NodeCIDRMaskSize, p.Addr().BitLen()); err != nil {
			return Config{}, fmt.Errorf("--node-cidr-mask-size=%d: %v", o.NodeCIDRMaskSize, err)
		}
		podRange = p
	} else if o.NodeCIDRMaskSize < 1 || o.NodeCIDRMaskSize > 128 {
		return Config{}, fmt.Errorf("--node-cidr-mask-size=%d: out of range", o.NodeCIDRMaskSize)
	} else if err := blocksize.CheckMask(o.NodeCIDRMaskSize, 32); o.Cloud == "gce" && err != nil {
		// GCE's secondary ranges are IPv4.
		return Config{}, fmt.Errorf("--node-cidr-mask-size=%d: %v", o.NodeCIDRMaskSize, err)
	}
	switch {
	case o.DualStack && podRange.IsValid() && podRange.Addr().Is6():
		return Config{}, fmt.Errorf("--dual-stack with --cluster-cidr=%v: the pod range is the IPv4 side (the IPv6 side comes from each NIC's IPv6 range)", podRange)
	case o.DualStack && o.Cloud == "fake" && o.FakeIPv6Range == "":
		return Config{}, fmt.Errorf("--dual-stack with --cloud=fake needs --fake-ipv6-range (the subnetwork's IPv6 range the instances' /96s come from)")
	case o.Workers < 1:
		return Config{}, fmt.Errorf("--workers=%d: must be at least 1", o.Workers)
	case cloudQPS <= 0 || o.CloudBurst < 1:
		return Config{}, fmt.Errorf("--cloud-qps=%v --cloud-burst=%d: both must be positive", cloudQPS, o.CloudBurst)
	case o.KubeAPIQPS <= 0 || o.KubeAPIBurst < 1 || o.EventsQPS <= 0:
		return Config{}, fmt.Errorf("--kube-api-qps, --kube-api-burst and --events-qps must be positive")
	case releaseCooldown < 0 || o.LeakGracePeriod < 0:
		return Config{}, fmt.Errorf("--release-cooldown and --leak-grace-period must not be negative")
	case o.SyncTimeout <= 0:
		return Config{}, fmt.Errorf("--sync-timeout=%v: must be positive", o.SyncTimeout)
	case o.GCEQuotaWindow <= 0 || o.GCEPollInterval <= 0:
		return Config{}, fmt.Errorf("--gce-quota-window=%v --gce-poll-interval=%v: both must be positive", o.GCEQuotaWindow, o.GCEPollInterval)
	case o.GCInterval <= 0 || o.ResyncPeriod < 0:
		return Config{}, fmt.Errorf("--gc-interval must be positive and --resync-period not negative")
	case o.LeaderElect && !(o.LeaseDuration > o.RenewDeadline && o.RenewDeadline > o.RetryPeriod && o.RetryPeriod > 0):
		return Config{}, fmt.Errorf("leader election needs lease-duration > renew-deadline > retry-period > 0")
	case o.LeaderElect && o.PodName == "":
		return Config{}, fmt.Errorf("--pod-name is empty: leader election needs it (default: $POD_NAME, else the hostname)")
	case o.FakeErrorRate < 0 || o.FakeErrorRate > 1:
		return Config{}, fmt.Errorf("--fake-error-rate=%v: must be within [0,1]", o.FakeErrorRate)
	case o.FakeLatency < 0 || o.FakeRateLimit < 0:
		return Config{}, fmt.Errorf("--fake-latency and --fake-rate-limit must not be negative")
	}
	for name, addr := range map[string]string{"--metrics-addr": o.MetricsAddr, "--health-addr": o.HealthAddr} {
		if addr == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return Config{}, fmt.Errorf("%s=%q: %v", name, addr, err)
		}
	}

	var fakeIPv6 netip.Prefix
	if o.FakeIPv6Range != "" {
		p, err := netip.ParsePrefix(o.FakeIPv6Range)
		if err != nil || !p.Addr().Is6() || p.Masked() != p || p.Bits() > 96 {
			return Config{}, fmt.Errorf("--fake-ipv6-range=%q: want an IPv6 network of /96 or larger, e.g. fd20:0:0:1::/64", o.FakeIPv6Range)
		}
		fakeIPv6 = p
	}
	c := Config{
		Controller: controller.Config{
			DualStack:       o.DualStack,
			MaskSize:        o.NodeCIDRMaskSize,
			Workers:         o.Workers,
			ReleaseCooldown: releaseCooldown,
			LeakGracePeriod: o.LeakGracePeriod,
			GCInterval:      o.GCInterval,
			SyncTimeout:     o.SyncTimeout,
		},
		Kubeconfig:       o.Kubeconfig,
		KubeAPIQPS:       o.KubeAPIQPS,
		KubeAPIBurst:     o.KubeAPIBurst,
		KubeAPIGzip:      o.KubeAPIGzip,
		EventsQPS:        o.EventsQPS,
		ResyncPeriod:     o.ResyncPeriod,
		CoolingConfigMap: types.NamespacedName{Namespace: o.LeaderElectNamespace, Name: o.LeaderElectName + "-cooling"},
		MetricsAddr:      o.MetricsAddr,
		HealthAddr:       o.HealthAddr,
		AdminSocket:      o.AdminSocket,
	}
	// The cloud, and the one place its budget is applied (see CloudConfig).
	switch o.Cloud {
	case "gce":
		c.Cloud.GCE = &gce.Config{
			Project:         o.GCEProject,
			Region:          o.GCERegion,
			Zone:            o.GCEZone,
			Subnetwork:      o.GCESubnetwork,
			SecondaryRange:  o.GCESecondaryRange,
			PodRange:        podRange,
			Endpoint:        o.GCEEndpoint,
			QPS:             cloudQPS,
			Burst:           o.CloudBurst,
			RateLimitWindow: o.GCEQuotaWindow,
			PollInterval:    o.GCEPollInterval,
		}
		c.Controller.CloudBudgeted = true
	case "fake":
		c.Cloud.Fake = &fake.Options{
			PodRange:        podRange,
			Latency:         o.FakeLatency,
			ErrorRate:       o.FakeErrorRate,
			RateLimit:       o.FakeRateLimit,
			RateBurst:       int(o.FakeRateLimit) + 1,
			AutoRegister:    o.FakeAutoReg,
			ProviderSchemes: slices.Clone(o.FakeSchemes),
			StatePath:       o.FakeStateFile,
			IPv6Range:       fakeIPv6,
		}
		c.Controller.CloudQPS, c.Controller.CloudBurst = cloudQPS, o.CloudBurst
	}
	if o.LeaderElect {
		c.LeaderElection = &LeaderElection{
			Lease:         types.NamespacedName{Namespace: o.LeaderElectNamespace, Name: o.LeaderElectName},
			PodName:       o.PodName,
			LeaseDuration: o.LeaseDuration,
			RenewDeadline: o.RenewDeadline,
			RetryPeriod:   o.RetryPeriod,
		}
	}
	return c, nil
}
