package app

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"

	"github.com/aliasip/aliasip/cloud"
	"github.com/aliasip/aliasip/cloud/gce"
	"github.com/aliasip/aliasip/controller"
	"github.com/aliasip/aliasip/controller/generated/clientset/versioned"
	"github.com/aliasip/aliasip/fake"
	"github.com/aliasip/aliasip/internal/sockrpc"
)

// ErrLostLease is returned by Run when the leader lease was lost; the
// process must exit so it never allocates beside a new leader.
var ErrLostLease = errors.New("lost the leader lease")

// Run runs the controller until ctx is done or leadership is lost.
func Run(ctx context.Context, o *Options) error {
	logger := klog.FromContext(ctx)
	cfg, err := restConfig(o.Kubeconfig)
	if err != nil {
		return err
	}
	nodeCfg := rest.CopyConfig(cfg)
	nodeCfg.QPS, nodeCfg.Burst = o.KubeAPIQPS, o.KubeAPIBurst
	nodeCfg.UserAgent = "aliasip-controller"
	client, err := kubernetes.NewForConfig(nodeCfg)
	if err != nil {
		return err
	}
	// Events and the leader lease go through their own client, so neither
	// eats the Node write budget.
	evCfg := rest.CopyConfig(cfg)
	evCfg.QPS, evCfg.Burst = o.EventsQPS, int(o.EventsQPS*2)+1
	evCfg.UserAgent = "aliasip-controller/events"
	evClient, err := kubernetes.NewForConfig(evCfg)
	if err != nil {
		return err
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics := controller.NewMetrics(reg)

	cl, selfBudgeted, err := newCloud(ctx, o, metrics)
	if err != nil {
		return err
	}

	broadcaster := record.NewBroadcaster(record.WithContext(ctx))
	broadcaster.StartStructuredLogging(4)
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: evClient.CoreV1().Events("")})
	defer broadcaster.Shutdown()
	recorder := broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "aliasip-controller"})

	// Paged, trimmed lists: see controller.NodeInformer.
	nodeInformer := controller.NewNodeInformer(client, o.ResyncPeriod)
	ctrl := controller.New(controller.Config{
		MaskSize:        o.NodeCIDRMaskSize,
		Workers:         o.Workers,
		ReleaseCooldown: o.ReleaseCooldown,
		LeakGracePeriod: o.LeakGracePeriod,
		GCInterval:      o.GCInterval,
		CloudQPS:        o.CloudQPS,
		CloudBurst:      o.CloudBurst,
		CloudBudgeted:   selfBudgeted,
		SyncTimeout:     o.SyncTimeout,
		Cooling:         &controller.ConfigMapCooling{Client: evClient, Namespace: o.LeaderElectNamespace, Name: o.LeaderElectName + "-cooling"},
	}, client, nodeInformer, cl, recorder, metrics)
	// PodRanges: their status and finalizer writes share the Node client's
	// budget (a few a second at most: status follows the counts once a
	// second); discovery tells whether the CRD is installed.
	rangeClient, err := versioned.NewForConfig(nodeCfg)
	if err != nil {
		return err
	}
	ctrl.UsePodRanges(rangeClient, client.Discovery(), o.ResyncPeriod)

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	// Informers start before the election: a standby has warm caches.
	informerDone := make(chan struct{})
	go func() { nodeInformer.Informer().RunWithContext(ctx); close(informerDone) }()
	defer func() { cancel(nil); <-informerDone }() // stop the informer, then wait for it

	var electionCheck *leaderelection.HealthzAdaptor
	if o.LeaderElect {
		electionCheck = leaderelection.NewLeaderHealthzAdaptor(20 * time.Second)
	}
	if err := serve(ctx, o, reg, ctrl, nodeInformer.Informer().HasSynced, electionCheck); err != nil {
		return err
	}
	if o.AdminSocket != "" {
		srv, err := serveAdmin(ctx, o.AdminSocket, ctrl.AdminHandler())
		if err != nil {
			return err
		}
		defer srv.Close()
	}

	if !o.LeaderElect {
		metrics.Leader.Set(1)
		return ctrl.Run(ctx)
	}
	// The identity starts with the pod's name when the chart passes it
	// (POD_NAME, downward API): kubectl aliasip finds the leader's pod by
	// it. The hostname is the node's when the pod uses the host network.
	host := os.Getenv("POD_NAME")
	if host == "" {
		var err error
		if host, err = os.Hostname(); err != nil {
			host = "unknown-host" // the UUID below keeps the identity unique
		}
	}
	id := host + "_" + uuid.NewString()
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: o.LeaderElectNamespace, Name: o.LeaderElectName},
		Client:     evClient.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: id},
	}
	var runErr error
	done := make(chan struct{})
	var started atomic.Bool
	// The elector runs on a context of its own: on shutdown the lease is
	// released (ReleaseOnCancel) only once the controller has stopped and
	// its syncs in flight have finished, so a new leader never rebuilds
	// while our cloud operations still run.
	leCtx, leCancel := context.WithCancel(context.WithoutCancel(ctx))
	defer leCancel()
	go func() {
		<-ctx.Done()
		if started.Load() {
			select {
			case <-done:
			case <-time.After(o.SyncTimeout + 5*time.Second):
				logger.Info("Syncs still running after the sync timeout; releasing the lease anyway")
			}
		}
		leCancel()
	}()
	le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock:            lock,
		LeaseDuration:   o.LeaseDuration,
		RenewDeadline:   o.RenewDeadline,
		RetryPeriod:     o.RetryPeriod,
		ReleaseOnCancel: true,
		Name:            o.LeaderElectName,
		WatchDog:        electionCheck,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(leaderCtx context.Context) {
				started.Store(true)
				defer close(done)
				logger.Info("Became leader", "identity", id)
				metrics.Leader.Set(1)
				// Stop on shutdown (ctx) or on a lost lease (leaderCtx).
				runCtx, stop := context.WithCancel(leaderCtx)
				defer stop()
				defer context.AfterFunc(ctx, stop)()
				runErr = ctrl.Run(runCtx)
			},
			OnStoppedLeading: func() {
				metrics.Leader.Set(0)
				if ctx.Err() == nil {
					cancel(ErrLostLease)
				}
			},
			OnNewLeader: func(identity string) {
				if identity != id {
					logger.Info("Following leader", "leader", identity)
				}
			},
		},
	})
	if err != nil {
		return fmt.Errorf("leader election: %w", err)
	}
	le.Run(leCtx)
	if cause := context.Cause(ctx); errors.Is(cause, ErrLostLease) {
		return ErrLostLease
	}
	select {
	case <-done:
	default:
	}
	return runErr
}

func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig == "" {
		cfg, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("no --kubeconfig and not in a cluster: %w", err)
		}
		return cfg, nil
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
	}
	return cfg, nil
}

// newCloud builds the cloud. It reports whether the cloud applies the
// --cloud-qps budget and request metrics itself (GCE does, per HTTP call).
func newCloud(ctx context.Context, o *Options, m *controller.Metrics) (cloud.Interface, bool, error) {
	switch o.Cloud {
	case "fake":
		c, err := fake.New(fake.Options{
			PodRange:        netip.MustParsePrefix(o.ClusterCIDR),
			Latency:         o.FakeLatency,
			ErrorRate:       o.FakeErrorRate,
			RateLimit:       o.FakeRateLimit,
			RateBurst:       int(o.FakeRateLimit) + 1,
			AutoRegister:    o.FakeAutoReg,
			ProviderSchemes: o.FakeSchemes,
			StatePath:       o.FakeStateFile,
		})
		return c, false, err
	case "gce":
		cfg := gce.Config{
			Project:         o.GCEProject,
			Region:          o.GCERegion,
			Zone:            o.GCEZone,
			Subnetwork:      o.GCESubnetwork,
			SecondaryRange:  o.GCESecondaryRange,
			Endpoint:        o.GCEEndpoint,
			QPS:             o.CloudQPS,
			Burst:           o.CloudBurst,
			Observe:         m.ObserveCloudRequest,
			RateLimitWindow: o.GCEQuotaWindow,
			PollInterval:    o.GCEPollInterval,
		}
		logger := klog.FromContext(ctx)
		cfg.Logf = func(format string, args ...any) { logger.Info(fmt.Sprintf(format, args...)) }
		if o.ClusterCIDR != "" {
			cfg.PodRange = netip.MustParsePrefix(o.ClusterCIDR)
		}
		if cfg.Project == "" || cfg.Zone == "" || cfg.Subnetwork == "" || cfg.SecondaryRange == "" {
			mctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			err := gce.FillFromMetadata(mctx, &cfg)
			cancel()
			if err != nil {
				return nil, false, fmt.Errorf("GCE settings from the metadata server (or give --gce-project, --gce-zone, --gce-subnetwork, --gce-secondary-range): %w", err)
			}
		}
		klog.FromContext(ctx).Info("GCE cloud", "project", cfg.Project, "region", cfg.Region, "zone", cfg.Zone,
			"subnetwork", cfg.Subnetwork, "secondaryRange", cfg.SecondaryRange, "endpoint", cfg.Endpoint)
		c, err := gce.New(ctx, cfg)
		return c, true, err
	default:
		return nil, false, fmt.Errorf("cloud %q not supported", o.Cloud)
	}
}

// serve starts /metrics and /healthz, /readyz. /readyz is OK once the node
// cache is synced (a standby is ready to take over); its body says whether
// this process leads and has rebuilt its state.
func serve(ctx context.Context, o *Options, reg *prometheus.Registry, ctrl *controller.Controller,
	synced cache.InformerSynced, election *leaderelection.HealthzAdaptor) error {
	listen := func(addr string, h http.Handler) error {
		if addr == "" {
			return nil
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("listen %s: %w", addr, err)
		}
		srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
		go srv.Serve(ln)
		go func() { <-ctx.Done(); srv.Close() }()
		return nil
	}
	mm := http.NewServeMux()
	mm.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	hm := http.NewServeMux()
	hm.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		if election != nil {
			if err := election.Check(r); err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
		}
		fmt.Fprintln(w, "ok")
	})
	hm.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if !synced() {
			http.Error(w, "node cache not synced", http.StatusServiceUnavailable)
			return
		}
		if ctrl.Ready() {
			fmt.Fprintln(w, "ok: leading, allocation state rebuilt")
		} else {
			fmt.Fprintln(w, "ok: standby")
		}
	})
	if o.MetricsAddr == o.HealthAddr && o.MetricsAddr != "" {
		mm.Handle("/healthz", hm)
		mm.Handle("/readyz", hm)
		return listen(o.MetricsAddr, mm)
	}
	if err := listen(o.MetricsAddr, mm); err != nil {
		return err
	}
	return listen(o.HealthAddr, hm)
}

// serveAdmin serves the administrative socket, readable and writable by
// this process's user only.
func serveAdmin(ctx context.Context, path string, h sockrpc.Handler) (*sockrpc.Server, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	os.Remove(path) // a previous process's socket
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	// A listing of a large cloud may take a while; the client's own
	// timeout bounds it.
	srv := &sockrpc.Server{Handler: h, ReadTimeout: 10 * time.Second, WriteTimeout: 5 * time.Minute}
	srv.OnPanic = func(err error) { klog.FromContext(ctx).Error(err, "Admin call panicked") }
	go srv.Serve(ctx, ln)
	return srv, nil
}
