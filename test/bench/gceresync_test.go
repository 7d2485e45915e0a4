package bench

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"google.golang.org/api/compute/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/aliasip/aliasip/cloud/gce/gcetest"
	aliasipv1 "github.com/aliasip/aliasip/controller/apis/aliasip/v1alpha1"
	"github.com/aliasip/aliasip/controller/app"
	"github.com/aliasip/aliasip/test/framework"
)

const (
	// resyncNodes is the cluster size of the steady-state figure: the
	// issue asks for calls per resync per 1,000 nodes.
	resyncNodes = 1000
	// resyncPeriod and resyncGCInterval shorten the two periodic passes
	// of the measurement, each in a controller run of its own.
	resyncPeriod     = 20 * time.Second
	resyncGCInterval = 10 * time.Second
	// resyncPasses is how many passes of each are counted.
	resyncPasses = 3
)

// BenchmarkGCEResync: the steady state on GCE. 1,000 Nodes that are settled
// (each has its podCIDR, its instance on the GCE test server carries that
// block as an alias, and its range label is set) against aliasip-controller
// on --cloud=gce over HTTP through the real compute client; the calls the
// server receives are counted by method over whole periodic passes, each
// pass told by the controller's own counters (syncs, leak-collector lists),
// not by sleeping:
//
//   - the resync: every Node re-synced (--resync-period, shortened to 20 s,
//     with the leak collector held off at --gc-interval=1h);
//   - the leak collector: one instance list (--gc-interval, shortened to
//     10 s, with no resync).
//
// Then the figure at default flags: calls per resync period (5 min) per
// 1,000 nodes, which holds one resync and five leak-collector passes (every
// minute).
func BenchmarkGCEResync(b *testing.B) {
	dir, ctrlBin, cp := controllerBench(b)
	ctx := context.Background()
	client := cp.Client(0)

	s := gcetest.NewServer(gcetest.Options{
		Project:    burstProject,
		Region:     burstRegion,
		Subnetwork: "nodes",
		SecondaryRanges: map[string]netip.Prefix{
			burstPodsRange: netip.MustParsePrefix(burstPodCIDR),
			"services":     netip.MustParsePrefix("172.20.0.0/20"),
		},
		OpDelay: 200 * time.Millisecond,
		Faults:  gcetest.Faults{WaitAtOnce: true},
	})
	defer s.Close()
	names := framework.NodeNames("steady", resyncNodes)
	cidrs := map[string]string{}
	for i, n := range names {
		// The i-th /24 of the pods range (10.0.0.0/12 holds 4,096).
		cidrs[n] = fmt.Sprintf("10.%d.%d.0/24", i>>8, i&0xff)
		s.AddInstance(burstZone, n, &compute.AliasIpRange{IpCidrRange: cidrs[n], SubnetworkRangeName: burstPodsRange})
	}
	if err := framework.CreateNodes(ctx, client, names, func(n *corev1.Node) {
		n.Spec.ProviderID = fmt.Sprintf("gce://%s/%s/%s", burstProject, burstZone, n.Name)
		n.Spec.PodCIDR, n.Spec.PodCIDRs = cidrs[n.Name], []string{cidrs[n.Name]}
		n.Labels = map[string]string{aliasipv1.NodeLabel: aliasipv1.DefaultRangeName}
	}); err != nil {
		b.Fatal(err)
	}

	type window struct {
		calls    map[string]int
		passes   int
		seconds  float64
		syncs    float64
		writes   float64 // the controller's Node writes in the window
		lists    float64 // the controller's instance lists in the window
		received int     // all calls in the window
	}
	listPasses := func(m string) float64 {
		// Every code: a pass that failed is a pass too.
		var sum float64
		for _, line := range strings.Split(m, "\n") {
			if strings.HasPrefix(line, "aliasip_cloud_calls_total{") && strings.Contains(line, `method="ListInstances"`) {
				var v float64
				f := strings.Fields(line)
				fmt.Sscan(f[len(f)-1], &v)
				sum += v
			}
		}
		return sum
	}
	// measure runs the controller with extra flags, waits until it has
	// rebuilt and synced every Node once, then counts the server's calls
	// over resyncPasses passes of the counter pass (read from /metrics)
	// that one pass raises by perPass.
	measure := func(name string, flags []string, pass func(metrics string) float64, perPass float64) window {
		addr := fmt.Sprintf("127.0.0.1:%d", framework.FreePort())
		args := append([]string{
			"--kubeconfig", cp.Kubeconfig,
			"--cloud", "gce", "--gce-endpoint", s.Endpoint(),
			"--gce-project", burstProject, "--gce-region", burstRegion, "--gce-zone", burstZone,
			"--gce-subnetwork", "nodes", "--gce-secondary-range", burstPodsRange,
			"--kube-api-qps", apiQPS, "--kube-api-burst", apiBurst,
			"--leader-elect=false", "--metrics-addr", addr, "--health-addr", addr,
		}, flags...)
		p, err := framework.StartProcess(filepath.Join(dir, "aliasip-controller-"+name+".log"), nil, ctrlBin, args...)
		if err != nil {
			b.Fatal(err)
		}
		defer p.Stop()
		hc := &http.Client{Timeout: 5 * time.Second}
		metrics := func() string {
			body, _ := httpGet(hc, "http://"+addr+"/metrics")
			return body
		}
		syncs := func(m string) float64 {
			v, _ := framework.ScrapeMetric(m, "aliasip_node_sync_duration_seconds_count", "")
			return v
		}
		// Rebuilt, and every Node synced once (the informer's adds).
		if err := framework.Eventually(ctx, 2*time.Minute, func() (bool, error) {
			if p.Exited() {
				return false, framework.Stop(fmt.Errorf("aliasip-controller exited: %v", p.Wait()))
			}
			body, ok := httpGet(hc, "http://"+addr+"/readyz")
			if !ok || !strings.Contains(body, "rebuilt") {
				return false, fmt.Errorf("/readyz: %q", body)
			}
			m := metrics()
			// The rebuild's instance list and the leak collector's first,
			// which it runs as soon as the workers start, both done.
			n, lists := syncs(m), listPasses(m)
			return n >= resyncNodes && lists >= 2, fmt.Errorf("%.0f of %d Nodes synced, %.0f instance lists", n, resyncNodes, lists)
		}); err != nil {
			b.Fatalf("%s: not settled (see %s): %v", name, p.Log, err)
		}
		// The window opens between passes (the start-up syncs done, the
		// next resync not due) and closes when resyncPasses more passes
		// have completed.
		m := metrics()
		c0, t0 := s.Counts(), time.Now()
		base, s0, l0 := pass(m), syncs(m), listPasses(m)
		w0, _ := framework.ScrapeMetric(m, "aliasip_node_writes_total", "")
		target := base + perPass*resyncPasses
		if err := framework.Poll(ctx, 20*time.Millisecond, 5*time.Minute, func() (bool, error) {
			v := pass(metrics())
			return v >= target, fmt.Errorf("%.0f of %.0f", v, target)
		}); err != nil {
			b.Fatalf("%s: passes did not complete (see %s): %v", name, p.Log, err)
		}
		m = metrics()
		c1 := s.Counts()
		w1, _ := framework.ScrapeMetric(m, "aliasip_node_writes_total", "")
		out := window{calls: map[string]int{}, passes: resyncPasses, seconds: time.Since(t0).Seconds(), syncs: syncs(m) - s0, writes: w1 - w0,
			lists: listPasses(m) - l0}
		for k, v := range c1 {
			if d := v - c0[k]; d > 0 {
				out.calls[k] = d
				out.received += d
			}
		}
		return out
	}

	syncCount := func(m string) float64 {
		v, _ := framework.ScrapeMetric(m, "aliasip_node_sync_duration_seconds_count", "")
		return v
	}
	resync := measure("resync", []string{"--resync-period", resyncPeriod.String(), "--gc-interval", "1h"}, syncCount, resyncNodes)
	gc := measure("gc", []string{"--resync-period", "0", "--gc-interval", resyncGCInterval.String()}, listPasses, 1)

	def := app.NewOptions()
	gcPerResync := def.ResyncPeriod.Seconds() / def.GCInterval.Seconds()
	per1k := float64(resyncNodes) / 1000
	methods := map[string]bool{}
	for k := range resync.calls {
		methods[k] = true
	}
	for k := range gc.calls {
		methods[k] = true
	}
	var ms []string
	for k := range methods {
		ms = append(ms, k)
	}
	sort.Strings(ms)

	fmt.Printf("\n%d settled Nodes (podCIDR, alias on the instance, range label), GCE test server over HTTP through compute/v1;\n", resyncNodes)
	fmt.Printf("resync measured at --resync-period=%v (leak collector held off): %d passes in %.1f s: %.0f syncs, %.0f instance lists, %.0f Node writes, %d calls;\n",
		resyncPeriod, resync.passes, resync.seconds, resync.syncs, resync.lists, resync.writes, resync.received)
	fmt.Printf("leak collector measured at --gc-interval=%v (no resync): %d passes in %.1f s: %.0f syncs, %.0f instance lists, %.0f Node writes, %d calls\n\n",
		resyncGCInterval, gc.passes, gc.seconds, gc.syncs, gc.lists, gc.writes, gc.received)
	fmt.Printf("| method | per resync pass per 1,000 nodes | per leak-collector pass per 1,000 nodes | per %v resync period per 1,000 nodes at default flags (1 resync + %.0f leak passes) |\n",
		def.ResyncPeriod, gcPerResync)
	fmt.Println("| --- | ---: | ---: | ---: |")
	var tr, tg float64
	for _, k := range ms {
		r := float64(resync.calls[k]) / float64(resync.passes) / per1k
		g := float64(gc.calls[k]) / float64(gc.passes) / per1k
		tr, tg = tr+r, tg+g
		fmt.Printf("| %s | %.2f | %.2f | %.2f |\n", k, r, g, r+gcPerResync*g)
	}
	total := tr + gcPerResync*tg
	fmt.Printf("| **all** | **%.2f** | **%.2f** | **%.2f** |\n\n", tr, tg, total)
	fmt.Printf("at the default cloud budget (%.0f calls/s) that is %.4f of the budget over the period\n\n",
		def.CloudQPS, total*per1k/(def.CloudQPS*def.ResyncPeriod.Seconds()))
	b.ReportMetric(tr, "calls/resync-pass/1k-nodes")
	b.ReportMetric(tg, "calls/gc-pass/1k-nodes")
	b.ReportMetric(total, "calls/resync-period/1k-nodes")
}
