// Package bench holds aliasip's end-to-end benchmarks. They print figures
// and ratios measured side by side in one run; `make bench` runs them.
package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"crypto/tls"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/aliasip/aliasip/test/framework"
)

const (
	benchNodes  = 1000
	clusterCIDR = "10.0.0.0/8"
	apiQPS      = "50"
	apiBurst    = "100"
)

// result is one contender's row.
type result struct {
	name        string
	nodes       int
	seconds     float64
	nodeWrites  float64 // writes to Node objects
	eventWrites float64 // Event creates/patches
	cpu         float64 // the contender's CPU seconds over the burst
}

// BenchmarkNodeAllocation: 1,000 Nodes created at once against a real
// kube-apiserver; seconds until all have a podCIDR (and, for aliasip, the
// alias on the fake cloud at 0 ms), for aliasip and for kube-controller-
// manager's own node IPAM range allocator, both at the same client QPS.
//
// ALIASIP_BENCH_BURST_NODES, a comma-separated list of sizes (default
// "1000"), adds bursts: `make bench-scale` runs 1,000 and 5,000, a
// cluster autoscaler's scale-up (issue 25), each size against both
// allocators in one run. Each contender's CPU seconds over the burst come
// from /proc, per 1,000 Nodes.
func BenchmarkNodeAllocation(b *testing.B) {
	sizes := []int{benchNodes}
	if v := os.Getenv("ALIASIP_BENCH_BURST_NODES"); v != "" {
		sizes = nil
		for _, f := range strings.Split(v, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 1 || n > 65536 {
				b.Fatalf("ALIASIP_BENCH_BURST_NODES=%q: want sizes from 1 to 65536, comma-separated", v)
			}
			sizes = append(sizes, n)
		}
	}
	kcmBin, err := framework.Binary("kube-controller-manager")
	if errors.Is(err, framework.ErrNotInstalled) {
		b.Skipf("skipping: %v", err)
	}
	dir, ctrlBin, cp := controllerBench(b)
	ctx := context.Background()

	client := cp.Client(0)
	const probeNode = "bench-probe"
	metricsAddr := fmt.Sprintf("127.0.0.1:%d", framework.FreePort())
	contenders := []struct {
		name  string
		bin   string
		args  []string
		ready func() (bool, error)
	}{
		{
			name: "kube-controller-manager nodeipam",
			bin:  kcmBin,
			args: []string{
				"--kubeconfig", cp.Kubeconfig,
				"--controllers", "nodeipam",
				"--allocate-node-cidrs", "--cluster-cidr", clusterCIDR, "--node-cidr-mask-size", "24",
				"--kube-api-qps", apiQPS, "--kube-api-burst", apiBurst,
				"--leader-elect=false", "--use-service-account-credentials=false",
				"--bind-address", "127.0.0.1", "--secure-port", fmt.Sprint(framework.FreePort()),
			},
			// It has no readiness signal for one controller: a probe
			// Node given a podCIDR shows its allocator at work.
			ready: func() (bool, error) {
				n, err := client.CoreV1().Nodes().Get(ctx, probeNode, metav1.GetOptions{})
				if apierrors.IsNotFound(err) {
					_, err = client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: probeNode}}, metav1.CreateOptions{})
					return false, err
				}
				if err != nil {
					return false, err
				}
				return n.Spec.PodCIDR != "", fmt.Errorf("probe node %s has no podCIDR yet", probeNode)
			},
		},
		{
			name: "aliasip-controller, fake cloud 0 ms",
			bin:  ctrlBin,
			args: []string{
				"--kubeconfig", cp.Kubeconfig,
				"--cloud", "fake", "--cluster-cidr", clusterCIDR, "--node-cidr-mask-size", "24",
				"--kube-api-qps", apiQPS, "--kube-api-burst", apiBurst,
				// Default cloud flags: the fake cloud has no budget.
				"--leader-elect=false", "--metrics-addr", metricsAddr, "--health-addr", metricsAddr,
			},
			ready: func() (bool, error) {
				resp, err := http.Get("http://" + metricsAddr + "/readyz")
				if err != nil {
					return false, err
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				return strings.Contains(string(body), "rebuilt"), fmt.Errorf("/readyz: %s", body)
			},
		},
	}

	var results []result
	for _, size := range sizes {
		for i, c := range contenders {
			r, err := allocationBurst(ctx, cp, dir, fmt.Sprintf("contender-%d-%d.log", i, size), c.bin, c.args, c.ready, size)
			if err != nil {
				b.Fatalf("%s, %d nodes: %v", c.name, size, err)
			}
			r.name = c.name
			results = append(results, r)
		}
	}

	fmt.Printf("\nNodes created at once, real kube-apiserver, client QPS %s/burst %s for both\n\n", apiQPS, apiBurst)
	fmt.Println("| nodes | allocator | seconds to all podCIDRs | nodes/s | Node writes/node | Event writes/node | CPU s | CPU s per 1,000 nodes |")
	fmt.Println("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
	for _, r := range results {
		fmt.Printf("| %d | %s | %.2f | %.0f | %.2f | %.2f | %.2f | %.3f |\n", r.nodes, r.name, r.seconds, float64(r.nodes)/r.seconds,
			r.nodeWrites, r.eventWrites, r.cpu, r.cpu/float64(r.nodes)*1000)
	}
	fmt.Println()
	qps, _ := strconv.ParseFloat(apiQPS, 64)
	burst, _ := strconv.ParseFloat(apiBurst, 64)
	for i := 0; i+1 < len(results); i += 2 {
		kcm, ali := results[i], results[i+1]
		fmt.Printf("%d nodes: aliasip / kube-controller-manager time ratio %.2f (below 1 means aliasip is faster; goal ≤ 1.0); the client budget's floor, one Node write per node at %s/s after a burst of %s: %.2f s\n",
			kcm.nodes, ali.seconds/kcm.seconds, apiQPS, apiBurst, max(0, float64(kcm.nodes)-burst)/qps)
		sfx := ""
		if kcm.nodes != benchNodes {
			sfx = fmt.Sprintf("-%d", kcm.nodes)
		}
		b.ReportMetric(ali.seconds, "aliasip-s"+sfx)
		b.ReportMetric(kcm.seconds, "kcm-s"+sfx)
		b.ReportMetric(ali.seconds/kcm.seconds, "time-ratio"+sfx)
		b.ReportMetric(ali.nodeWrites, "aliasip-node-writes/node"+sfx)
		b.ReportMetric(kcm.nodeWrites, "kcm-node-writes/node"+sfx)
	}
	fmt.Println()
}

// allocationBurst runs one contender (bin args), waits until ready says it
// allocates, creates size Nodes at once and times them to their podCIDRs.
func allocationBurst(ctx context.Context, cp *framework.ControlPlane, dir, logName, bin string, args []string,
	ready func() (bool, error), size int) (result, error) {
	client := cp.Client(0)
	if err := framework.DeleteAllNodes(ctx, client); err != nil {
		return result{}, err
	}
	p, err := framework.StartProcess(filepath.Join(dir, logName), nil, bin, args...)
	if err != nil {
		return result{}, err
	}
	defer p.Stop()
	if err := framework.Eventually(ctx, time.Minute, ready); err != nil {
		return result{}, fmt.Errorf("not ready (see %s): %w", p.Log, err)
	}
	if err := framework.DeleteAllNodes(ctx, client); err != nil { // the probe
		return result{}, err
	}
	before, err := writeCounts(cp)
	if err != nil {
		return result{}, err
	}
	cpuBefore, _ := procCPU(p.Cmd.Process.Pid)
	start := time.Now()
	if err := framework.CreateNodes(ctx, client, framework.NodeNames("bench", size), nil); err != nil {
		return result{}, err
	}
	pending := size
	err = framework.Eventually(ctx, 10*time.Minute, func() (bool, error) {
		l, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{ResourceVersion: "0"})
		if err != nil {
			return false, err
		}
		pending = size - len(l.Items)
		for _, n := range l.Items {
			if n.Spec.PodCIDR == "" {
				pending++
			}
		}
		return pending == 0, fmt.Errorf("%d of %d nodes without a podCIDR", pending, size)
	})
	elapsed := time.Since(start)
	if err != nil {
		return result{}, fmt.Errorf("nodes did not all get a podCIDR (see %s): %w", p.Log, err)
	}
	cpuAfter, _ := procCPU(p.Cmd.Process.Pid)
	// Let trailing event writes land before counting: the end of the
	// window counted, part of the method (nothing tells when a
	// contender has no more writes to make).
	time.Sleep(3 * time.Second)
	after, err := writeCounts(cp)
	if err != nil {
		return result{}, err
	}
	return result{
		nodes:       size,
		seconds:     elapsed.Seconds(),
		nodeWrites:  (after.nodes - before.nodes) / float64(size),
		eventWrites: (after.events - before.events) / float64(size),
		cpu:         (cpuAfter - cpuBefore).Seconds(),
	}, nil
}

type counts struct{ nodes, events float64 }

// writeCounts sums the API server's apiserver_request_total for writes to
// Nodes (PATCH, PUT, APPLY; the benchmark's own creates are POSTs) and to
// Events (any write).
func writeCounts(cp *framework.ControlPlane) (counts, error) {
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	req, _ := http.NewRequest("GET", cp.URL+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+cp.Token)
	resp, err := hc.Do(req)
	if err != nil {
		return counts{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return counts{}, err
	}
	var c counts
	for _, line := range strings.Split(string(body), "\n") {
		if !strings.HasPrefix(line, "apiserver_request_total{") {
			continue
		}
		var v float64
		f := strings.Fields(line)
		fmt.Sscan(f[len(f)-1], &v)
		verb := label(line, "verb")
		switch label(line, "resource") {
		case "nodes":
			if verb == "PATCH" || verb == "PUT" || verb == "APPLY" {
				c.nodes += v
			}
		case "events":
			if verb == "POST" || verb == "PATCH" || verb == "PUT" {
				c.events += v
			}
		}
	}
	return c, nil
}

func label(line, name string) string {
	i := strings.Index(line, name+`="`)
	if i < 0 {
		return ""
	}
	rest := line[i+len(name)+2:]
	return rest[:strings.IndexByte(rest, '"')]
}
