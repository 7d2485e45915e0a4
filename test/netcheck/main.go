// Command netcheck is the test workload of the real-node suite (test/kubelet)
// and of the chart's `helm test` hook, shipped as the aliasip-netcheck image.
//
//	netcheck serve [--addr :8080]      HTTP server answering with its pod IP and node
//	netcheck get URL...                GET every URL; exit 1 if any fails
//	netcheck hostname                  print the pod's hostname
//	netcheck hold URL                  GET URL over one kept-alive connection until stdin closes
//	netcheck lookup [--server H:P] [--show-resolv-conf] NAME...
//	                                   resolve every name (Go resolver, the pod's resolv.conf); exit 1 if any fails
//	netcheck udp [--count N] HOST:PORT TOKEN
//	                                   send TOKEN N times, 100 ms apart; exit 0 (delivery is unknowable)
//	netcheck outside [--http :80] [--udp :9]
//	                                   the outside host of hack/cluster.sh: GET / answers with the
//	                                   peer it saw; UDP datagrams' sources are kept by payload
//	                                   token, read with GET /seen?token=T
//	netcheck verify-install ...        the chart's helm test: agents ready, own IP in own node's podCIDR
//
// The pod IP and node name come from the downward API (POD_IP from
// status.podIP, NODE_NAME from spec.nodeName).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/aliasip/aliasip/internal/sleep"
)

// Answer is what the server returns on GET /.
type Answer struct {
	PodIP    string `json:"podIP"`
	Node     string `json:"node"`
	Hostname string `json:"hostname"`
	Peer     string `json:"peer"` // the client address as the server saw it
}

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "netcheck:", err)
		os.Exit(1)
	}
}

func run(args []string, out io.Writer) error {
	if len(args) == 0 {
		args = []string{"serve"}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	switch args[0] {
	case "serve":
		fs := flag.NewFlagSet("serve", flag.ContinueOnError)
		addr := fs.String("addr", ":8080", "listen address")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		return serve(ctx, *addr)
	case "get":
		fs := flag.NewFlagSet("get", flag.ContinueOnError)
		timeout := fs.Duration("timeout", 3*time.Second, "timeout of one GET")
		retries := fs.Int("retries", 2, "retries of a failed GET, one second apart")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		if fs.NArg() == 0 {
			return errors.New("get: no URL given")
		}
		return get(ctx, out, fs.Args(), *timeout, *retries)
	case "lookup":
		fs := flag.NewFlagSet("lookup", flag.ContinueOnError)
		timeout := fs.Duration("timeout", 5*time.Second, "timeout of one lookup")
		retries := fs.Int("retries", 2, "retries of a failed lookup, one second apart")
		server := fs.String("server", "", "ask this DNS server (HOST:PORT) instead of resolv.conf's nameservers")
		showConf := fs.Bool("show-resolv-conf", false, "print /etc/resolv.conf first")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		if fs.NArg() == 0 {
			return errors.New("lookup: no name given")
		}
		return lookup(ctx, out, fs.Args(), *server, *showConf, *timeout, *retries)
	case "udp":
		fs := flag.NewFlagSet("udp", flag.ContinueOnError)
		count := fs.Int("count", 10, "datagrams to send")
		interval := fs.Duration("interval", 100*time.Millisecond, "time between datagrams")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		if fs.NArg() != 2 || *count < 1 {
			return errors.New("udp: want [--count N] HOST:PORT TOKEN")
		}
		return sendUDP(ctx, out, fs.Arg(0), fs.Arg(1), *count, *interval)
	case "outside":
		fs := flag.NewFlagSet("outside", flag.ContinueOnError)
		httpAddr := fs.String("http", ":80", "HTTP listen address")
		udpAddr := fs.String("udp", ":9", "UDP listen address (9: the discard port)")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		return outside(ctx, *httpAddr, *udpAddr)
	case "hold":
		fs := flag.NewFlagSet("hold", flag.ContinueOnError)
		interval := fs.Duration("interval", 200*time.Millisecond, "time between requests")
		timeout := fs.Duration("timeout", 2*time.Second, "timeout of one request")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		if fs.NArg() != 1 {
			return errors.New("hold: want [--interval D] URL (stops when stdin closes)")
		}
		return hold(ctx, out, fs.Arg(0), *interval, *timeout)
	case "hostname":
		// What a pod sees as its hostname: a hostNetwork pod shares its
		// node's UTS namespace.
		h, err := os.Hostname()
		if err != nil {
			return err
		}
		fmt.Fprintln(out, h)
		return nil
	case "verify-install":
		fs := flag.NewFlagSet("verify-install", flag.ContinueOnError)
		ns := fs.String("namespace", "kube-system", "namespace of the agent DaemonSet")
		ds := fs.String("daemonset", "aliasip-agent", "name of the agent DaemonSet")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		return verifyInstall(ctx, out, *ns, *ds)
	default:
		return fmt.Errorf("unknown mode %q (want serve, get, hold, lookup, udp, outside, hostname or verify-install)", args[0])
	}
}

func podIP() string {
	if ip := os.Getenv("POD_IP"); ip != "" {
		return ip
	}
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && !n.IP.IsLoopback() {
			return n.IP.String()
		}
	}
	return ""
}

func serve(ctx context.Context, addr string) error {
	host, _ := os.Hostname()
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(Answer{PodIP: podIP(), Node: os.Getenv("NODE_NAME"), Hostname: host, Peer: r.RemoteAddr})
	})
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	fmt.Printf("netcheck: serving on %s as %s on %s\n", addr, podIP(), os.Getenv("NODE_NAME"))
	if err := srv.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func get(ctx context.Context, out io.Writer, urls []string, timeout time.Duration, retries int) error {
	// A new connection per GET: each one is a fresh test of the path (and
	// of a Service's load balancing), not a reused keep-alive.
	hc := &http.Client{Timeout: timeout, Transport: &http.Transport{DisableKeepAlives: true}}
	return checkEach(ctx, out, urls, retries, "URLs failed", func(u string) (string, error) {
		a, err := getOne(ctx, hc, u)
		return fmt.Sprintf("%s on %s (seen from %s)", a.PodIP, a.Node, a.Peer), err
	})
}

// checkEach runs check on every item, each tried up to 1+retries times a
// second apart, and prints "OK ITEM -> WHAT" (what check returned) or
// "FAIL ITEM: ERR" for each. It fails if any item failed ("N of M
// failed: ITEMS"), or at once if ctx ends while it waits to try again.
func checkEach(ctx context.Context, out io.Writer, items []string, retries int, failed string, check func(string) (string, error)) error {
	var bad []string
	for _, it := range items {
		var what string
		var err error
		for try := 0; try <= retries; try++ {
			if try > 0 {
				if serr := sleep.For(ctx, time.Second); serr != nil {
					return serr
				}
			}
			if what, err = check(it); err == nil {
				break
			}
		}
		if err != nil {
			fmt.Fprintf(out, "FAIL %s: %v\n", it, err)
			bad = append(bad, it)
			continue
		}
		fmt.Fprintf(out, "OK %s -> %s\n", it, what)
	}
	if len(bad) > 0 {
		return fmt.Errorf("%d of %d %s: %s", len(bad), len(items), failed, strings.Join(bad, " "))
	}
	return nil
}

func getOne(ctx context.Context, hc *http.Client, u string) (Answer, error) {
	var a Answer
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return a, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return a, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return a, fmt.Errorf("status %s", resp.Status)
	}
	return a, json.NewDecoder(resp.Body).Decode(&a)
}

// verifyInstall is the chart's helm test: every agent of the DaemonSet is
// ready, and this pod's address (from aliasip) is inside its node's podCIDR.
func verifyInstall(ctx context.Context, out io.Writer, namespace, daemonset string) error {
	cfg, err := rest.InClusterConfig()
	if err != nil {
		return fmt.Errorf("in-cluster config: %w", err)
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	var lastErr error
	for {
		if lastErr = checkInstall(ctx, client, out, namespace, daemonset); lastErr == nil {
			return nil
		}
		fmt.Fprintln(out, "not yet:", lastErr)
		select {
		case <-ctx.Done():
			return lastErr
		case <-time.After(2 * time.Second):
		}
	}
}

func checkInstall(ctx context.Context, client kubernetes.Interface, out io.Writer, namespace, daemonset string) error {
	ds, err := client.AppsV1().DaemonSets(namespace).Get(ctx, daemonset, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("daemonset %s/%s: %w", namespace, daemonset, err)
	}
	st := ds.Status
	if st.DesiredNumberScheduled == 0 || st.NumberReady != st.DesiredNumberScheduled || st.UpdatedNumberScheduled != st.DesiredNumberScheduled {
		return fmt.Errorf("daemonset %s: %d of %d agents ready, %d updated", daemonset, st.NumberReady, st.DesiredNumberScheduled, st.UpdatedNumberScheduled)
	}
	nodeName := os.Getenv("NODE_NAME")
	node, err := client.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("node %q: %w", nodeName, err)
	}
	ip, err := netip.ParseAddr(podIP())
	if err != nil {
		return fmt.Errorf("pod IP %q: %w", podIP(), err)
	}
	for _, c := range node.Spec.PodCIDRs {
		if p, err := netip.ParsePrefix(c); err == nil && p.Contains(ip) {
			fmt.Fprintf(out, "ok: %d agents ready; pod IP %s is in node %s's podCIDR %s\n", st.NumberReady, ip, nodeName, p)
			return nil
		}
	}
	return fmt.Errorf("pod IP %s is not in node %s's podCIDRs %v", ip, nodeName, node.Spec.PodCIDRs)
}
