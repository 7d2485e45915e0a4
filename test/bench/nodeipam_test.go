// Package bench holds aliasip's end-to-end benchmarks. They print figures
// and ratios measured side by side in one run; `make bench` runs them.
package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
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
	seconds     float64
	nodeWrites  float64 // writes to Node objects
	eventWrites float64 // Event creates/patches
}

// BenchmarkNodeAllocation: 1,000 Nodes created at once against a real
// kube-apiserver; seconds until all have a podCIDR (and, for aliasip, the
// alias on the fake cloud at 0 ms), for aliasip and for kube-controller-
// manager's own node IPAM range allocator, both at the same client QPS.
func BenchmarkNodeAllocation(b *testing.B) {
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
	for i, c := range contenders {
		if err := framework.DeleteAllNodes(ctx, client); err != nil {
			b.Fatal(err)
		}
		p, err := framework.StartProcess(filepath.Join(dir, fmt.Sprintf("contender-%d.log", i)), nil, c.bin, c.args...)
		if err != nil {
			b.Fatal(err)
		}
		if err := framework.Eventually(ctx, time.Minute, c.ready); err != nil {
			p.Stop()
			b.Fatalf("%s not ready: %v", c.name, err)
		}
		if err := framework.DeleteAllNodes(ctx, client); err != nil { // the probe
			b.Fatal(err)
		}
		before, err := writeCounts(cp)
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		if err := framework.CreateNodes(ctx, client, framework.NodeNames("bench", benchNodes), nil); err != nil {
			b.Fatal(err)
		}
		err = framework.Eventually(ctx, 5*time.Minute, func() (bool, error) {
			l, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{ResourceVersion: "0"})
			if err != nil {
				return false, err
			}
			for _, n := range l.Items {
				if n.Spec.PodCIDR == "" {
					return false, nil
				}
			}
			return len(l.Items) == benchNodes, nil
		})
		elapsed := time.Since(start)
		if err != nil {
			p.Stop()
			b.Fatalf("%s: nodes did not all get a podCIDR: %v", c.name, err)
		}
		// Let trailing event writes land before counting: the end of the
		// window counted, part of the method (nothing tells when a
		// contender has no more writes to make).
		time.Sleep(3 * time.Second)
		after, err := writeCounts(cp)
		p.Stop()
		if err != nil {
			b.Fatal(err)
		}
		results = append(results, result{
			name:        c.name,
			seconds:     elapsed.Seconds(),
			nodeWrites:  (after.nodes - before.nodes) / benchNodes,
			eventWrites: (after.events - before.events) / benchNodes,
		})
	}

	kcm, ali := results[0], results[1]
	fmt.Printf("\n1,000 Nodes created at once, real kube-apiserver, client QPS %s/burst %s for both\n\n", apiQPS, apiBurst)
	fmt.Println("| allocator | seconds to all podCIDRs | nodes/s | Node writes/node | Event writes/node |")
	fmt.Println("| --- | ---: | ---: | ---: | ---: |")
	for _, r := range results {
		fmt.Printf("| %s | %.2f | %.0f | %.2f | %.2f |\n", r.name, r.seconds, benchNodes/r.seconds, r.nodeWrites, r.eventWrites)
	}
	fmt.Printf("\naliasip / kube-controller-manager time ratio: %.2f (below 1 means aliasip is faster)\n\n", ali.seconds/kcm.seconds)
	b.ReportMetric(ali.seconds, "aliasip-s")
	b.ReportMetric(kcm.seconds, "kcm-s")
	b.ReportMetric(ali.seconds/kcm.seconds, "time-ratio")
	b.ReportMetric(ali.nodeWrites, "aliasip-node-writes/node")
	b.ReportMetric(kcm.nodeWrites, "kcm-node-writes/node")
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
