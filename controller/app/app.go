package app

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"

	"github.com/aliasip/aliasip/controller"
	"github.com/aliasip/aliasip/controller/generated/clientset/versioned"
	"github.com/aliasip/aliasip/internal/sockrpc"
)

// Run runs the controller until ctx is done or leadership is lost. It
// parses the options (Options.Config) and runs on what that returns.
func Run(ctx context.Context, o *Options) error {
	c, err := o.Config()
	if err != nil {
		return err
	}
	// The start-up line logs the flags as given; these two depend on --cloud.
	klog.FromContext(ctx).Info("Defaults for --cloud",
		"releaseCooldown", c.Controller.ReleaseCooldown, "cloudQPS", c.Cloud.cloudQPS(c.Controller))
	cfg, err := restConfig(c.Kubeconfig)
	if err != nil {
		return err
	}
	nodeCfg := rest.CopyConfig(cfg)
	nodeCfg.QPS, nodeCfg.Burst = c.KubeAPIQPS, c.KubeAPIBurst
	nodeCfg.UserAgent = "aliasip-controller"
	// Without Accept-Encoding: gzip the API server sends the Node list
	// pages (8 MB each at 500 realistic Nodes) as they are: it compresses
	// any response over 128 kB for a client that accepts gzip
	// (k8s.io/apiserver pkg/endpoints/handlers/responsewriters/writers.go,
	// defaultGzipThresholdBytes),
	// which costs it, and the controller's decompression, CPU that a fast
	// network does not need: kubernetes/kubernetes#112296, whose outcome
	// includes DisableCompression for clients and kubectl's
	// --disable-compression (#112580: "can help improve list call
	// latencies significantly when client-server network bandwidth is
	// ample (>30MB/s) or if the server is CPU-constrained"). Measured at
	// 15,000 Nodes: the controller spent a tenth of its restart CPU in
	// gunzip (test/bench/restart_test.go). The setting is the whole
	// client's: Node and PodRange reads, writes and watches too.
	nodeCfg.DisableCompression = !c.KubeAPIGzip
	client, err := kubernetes.NewForConfig(nodeCfg)
	if err != nil {
		return err
	}
	// Events and the leader lease go through their own client, so neither
	// eats the Node write budget.
	evCfg := rest.CopyConfig(cfg)
	evCfg.QPS, evCfg.Burst = c.EventsQPS, int(c.EventsQPS*2)+1
	evCfg.UserAgent = "aliasip-controller/events"
	evClient, err := kubernetes.NewForConfig(evCfg)
	if err != nil {
		return err
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics := controller.NewMetrics(reg)

	cl, err := newCloud(ctx, c.Cloud, metrics)
	if err != nil {
		return err
	}

	broadcaster := record.NewBroadcaster(record.WithContext(ctx))
	broadcaster.StartStructuredLogging(4)
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: evClient.CoreV1().Events("")})
	defer broadcaster.Shutdown()
	recorder := broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "aliasip-controller"})

	// Paged, trimmed lists: see controller.NodeInformer.
	nodeInformer := controller.NewNodeInformer(client, c.ResyncPeriod)
	ctrlCfg := c.Controller
	ctrlCfg.Cooling = &controller.ConfigMapCooling{Client: evClient, Namespace: c.CoolingConfigMap.Namespace, Name: c.CoolingConfigMap.Name}
	ctrl := controller.New(ctrlCfg, client, nodeInformer, cl, recorder, metrics)
	// PodRanges: their status and finalizer writes share the Node client's
	// budget (a few a second at most: status follows the counts once a
	// second); discovery tells whether the CRD is installed.
	rangeClient, err := versioned.NewForConfig(nodeCfg)
	if err != nil {
		return err
	}
	ctrl.UsePodRanges(rangeClient, client.Discovery(), c.ResyncPeriod)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Informers start before the election: a standby has warm caches.
	informerDone := make(chan struct{})
	go func() { nodeInformer.Informer().RunWithContext(ctx); close(informerDone) }()
	defer func() { cancel(); <-informerDone }() // stop the informer, then wait for it

	var electionCheck *leaderelection.HealthzAdaptor
	if c.LeaderElection != nil {
		electionCheck = leaderelection.NewLeaderHealthzAdaptor(20 * time.Second)
	}
	if err := serve(ctx, c, reg, ctrl, nodeInformer.Informer().HasSynced, electionCheck); err != nil {
		return err
	}
	if c.AdminSocket != "" {
		srv, err := serveAdmin(ctx, c.AdminSocket, ctrl.AdminHandler())
		if err != nil {
			return err
		}
		defer srv.Close()
	}

	if c.LeaderElection == nil {
		metrics.Leader.Set(1)
		return ctrl.Run(ctx)
	}
	return runElected(ctx, *c.LeaderElection, evClient.CoordinationV1(), electionCheck,
		c.Controller.SyncTimeout, metrics, ctrl.Run)
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

// serve starts /metrics and /healthz, /readyz. /readyz is OK once the node
// cache is synced (a standby is ready to take over); its body says whether
// this process leads and has rebuilt its state.
func serve(ctx context.Context, c Config, reg *prometheus.Registry, ctrl *controller.Controller,
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
	if c.MetricsAddr == c.HealthAddr && c.MetricsAddr != "" {
		mm.Handle("/healthz", hm)
		mm.Handle("/readyz", hm)
		return listen(c.MetricsAddr, mm)
	}
	if err := listen(c.MetricsAddr, mm); err != nil {
		return err
	}
	return listen(c.HealthAddr, hm)
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
