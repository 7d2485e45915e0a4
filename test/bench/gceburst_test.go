package bench

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/aliasip/aliasip/cloud/gce/gcetest"
	"github.com/aliasip/aliasip/controller/app"
	"github.com/aliasip/aliasip/test/framework"
)

const (
	burstProject   = "test-project"
	burstRegion    = "us-central1"
	burstZone      = "us-central1-a"
	burstPodsRange = "pods"
	// burstPodCIDR is the subnetwork's secondary range for pods: 4,096 /24
	// blocks, room for 1,000 nodes. The controller takes it from the
	// subnetwork (no --cluster-cidr on GCE).
	burstPodCIDR = "10.0.0.0/12"
	// burstMaxCallsPerNode is the goal: at most two compute calls per node
	// in a burst (one alias write plus a share of list and poll calls).
	burstMaxCallsPerNode = 2.0
)

// BenchmarkGCEBurst: 1,000 Nodes created at once against a real
// kube-apiserver, with aliasip-controller on --cloud=gce talking over HTTP to
// the GCE test server (cloud/gce/gcetest) in this process: operations take
// 200 ms and zoneOperations.wait returns at once, done or not (as GCE may),
// so the controller must poll. The controller runs with its default cloud
// budget (20 calls/s, burst 40) and the node benchmark's Kubernetes client
// QPS.
//
// The 1,000 instances exist before the controller starts, as VMs exist
// before their kubelets register; the clock starts once the controller has
// rebuilt its state, when the Nodes are created, and stops when every Node
// has a podCIDR and its instance holds that block as an alias on the
// server. Only the compute calls made from then on are counted.
//
// Why: at 20 calls/s the cloud budget, not the API server, sets the pace of
// a burst, so calls per node is the figure that matters. The floor is what
// the Node API budget alone allows (one Node patch per node at the client's
// QPS); seconds/floor shows how far above it the cloud keeps the burst.
func BenchmarkGCEBurst(b *testing.B) {
	dir, ctrlBin, cp := controllerBench(b)
	ctx := context.Background()
	client := cp.Client(0)
	if err := framework.DeleteAllNodes(ctx, client); err != nil {
		b.Fatal(err)
	}

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
	names := framework.NodeNames("burst", benchNodes)
	for _, n := range names {
		s.AddInstance(burstZone, n)
	}

	// Default cloud flags: no --cloud-qps or --cloud-burst.
	addr := fmt.Sprintf("127.0.0.1:%d", framework.FreePort())
	p, err := framework.StartProcess(filepath.Join(dir, "aliasip-controller.log"), nil, ctrlBin,
		"--kubeconfig", cp.Kubeconfig,
		"--cloud", "gce", "--gce-endpoint", s.Endpoint(),
		"--gce-project", burstProject, "--gce-region", burstRegion, "--gce-zone", burstZone,
		"--gce-subnetwork", "nodes", "--gce-secondary-range", burstPodsRange,
		"--kube-api-qps", apiQPS, "--kube-api-burst", apiBurst,
		"--leader-elect=false", "--metrics-addr", addr, "--health-addr", addr,
	)
	if err != nil {
		b.Fatal(err)
	}
	defer p.Stop()
	if err := framework.Eventually(ctx, time.Minute, func() (bool, error) {
		resp, err := http.Get("http://" + addr + "/readyz")
		if err != nil {
			return false, nil
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return strings.Contains(string(body), "rebuilt"), nil
	}); err != nil {
		b.Fatalf("aliasip-controller not ready (see %s): %v", p.Log, err)
	}

	before := s.Counts()
	start := time.Now()
	if err := framework.CreateNodes(ctx, client, names, func(n *corev1.Node) {
		n.Spec.ProviderID = fmt.Sprintf("gce://%s/%s/%s", burstProject, burstZone, n.Name)
	}); err != nil {
		b.Fatal(err)
	}
	var podCIDRs map[string]string
	var aliases map[string][]string // instance -> its ranges from the pods range
	converged := func() (bool, error) {
		l, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{ResourceVersion: "0"})
		if err != nil {
			return false, err
		}
		podCIDRs = map[string]string{}
		for _, n := range l.Items {
			podCIDRs[n.Name] = n.Spec.PodCIDR
		}
		aliases = map[string][]string{}
		for inst, list := range s.Aliases() {
			for _, a := range list {
				if a.SubnetworkRangeName == burstPodsRange {
					aliases[inst] = append(aliases[inst], a.IpCidrRange)
				}
			}
		}
		if len(podCIDRs) != benchNodes {
			return false, nil
		}
		for n, c := range podCIDRs {
			if c == "" || !slices.Contains(aliases[n], c) {
				return false, nil
			}
		}
		return true, nil
	}
	err = framework.Eventually(ctx, 5*time.Minute, converged)
	elapsed := time.Since(start)
	if err != nil {
		pending := 0
		for n, c := range podCIDRs {
			if c == "" || !slices.Contains(aliases[n], c) {
				pending++
			}
		}
		b.Fatalf("%d of %d nodes not converged (see %s): %v", pending, benchNodes, p.Log, err)
	}
	// Let trailing calls (operation polls answered after the last check)
	// land before counting: the end of the window counted, part of the
	// method (the controller shows no count of operations in flight).
	time.Sleep(2 * time.Second)
	after := s.Counts()

	// Invariants: no block on two instances, and every node's podCIDR is
	// the one alias from the pods range on its instance.
	owner := map[string]string{}
	for inst, list := range aliases {
		for _, c := range list {
			if o, dup := owner[c]; dup {
				b.Errorf("%s is on two instances: %s and %s", c, o, inst)
			}
			owner[c] = inst
		}
	}
	for _, n := range names {
		if got := aliases[n]; len(got) != 1 || got[0] != podCIDRs[n] {
			b.Errorf("node %s: podCIDR %q, aliases from %q on its instance %v", n, podCIDRs[n], burstPodsRange, got)
		}
	}

	var methods []string
	total := 0
	perMethod := map[string]int{}
	for m, v := range after {
		if d := v - before[m]; d > 0 {
			perMethod[m] = d
			methods = append(methods, m)
			total += d
		}
	}
	sort.Strings(methods)
	qps, _ := strconv.ParseFloat(apiQPS, 64)
	floor := benchNodes / qps
	secs := elapsed.Seconds()
	perNode := float64(total) / benchNodes

	fmt.Printf("\n1,000 Nodes created at once, real kube-apiserver, GCE test server (200 ms operations, wait returns at once),\n")
	fmt.Printf("aliasip-controller with its default cloud budget and client QPS %s/burst %s\n\n", apiQPS, apiBurst)
	fmt.Println("| nodes | seconds to all podCIDRs and aliases | Node API floor (nodes / QPS) | seconds/floor | cloud calls | calls/node |")
	fmt.Println("| ---: | ---: | ---: | ---: | ---: | ---: |")
	fmt.Printf("| %d | %.2f | %.2f | %.2f | %d | %.2f |\n\n", benchNodes, secs, floor, secs/floor, total, perNode)
	fmt.Println("| method | calls | calls/node |")
	fmt.Println("| --- | ---: | ---: |")
	for _, m := range methods {
		fmt.Printf("| %s | %d | %.2f |\n", m, perMethod[m], float64(perMethod[m])/benchNodes)
	}
	// The cloud's own floor, for comparison: the calls made, less the
	// budget's burst, at the controller's default cloud QPS.
	def := app.NewOptions()
	cloudFloor := max(0, float64(total-def.CloudBurst)) / def.CloudQPS
	fmt.Printf("\ncloud budget floor ((calls - burst %d) / %.0f calls/s): %.2f s; seconds / cloud floor: %.2f\n\n",
		def.CloudBurst, def.CloudQPS, cloudFloor, secs/cloudFloor)
	b.Logf("%d nodes in %.2fs (floor %.2fs, ratio %.2f), %d cloud calls (%.2f per node): %v",
		benchNodes, secs, floor, secs/floor, total, perNode, perMethod)

	if perNode > burstMaxCallsPerNode {
		b.Errorf("%.2f cloud calls per node, want at most %.1f: %v", perNode, burstMaxCallsPerNode, perMethod)
	}
	b.ReportMetric(secs, "s")
	b.ReportMetric(perNode, "calls/node")
	b.ReportMetric(secs/floor, "s/floor")
}
