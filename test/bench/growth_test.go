package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/aliasip/aliasip/cloud/gce/gcetest"
	"github.com/aliasip/aliasip/controller/apis/aliasip/v1alpha1"
	"github.com/aliasip/aliasip/controller/generated/clientset/versioned"
	"github.com/aliasip/aliasip/test/framework"
)

// growthWaves are the pods per node, wave after wave: up and down between
// 5 and 100, as a churning node pool does.
var growthWaves = []int{5, 40, 100, 20, 70, 5, 100, 10}

// The growable range's settings, and what follows from them.
const (
	growthMask      = 28
	growthMaxBlocks = 8
	growthLowWater  = 4
	// growthBlock is a block's addresses, all reserved to the node; an
	// extra block serves all of them (node-agent/ipam size: pods' gateway
	// is link-local), the podCIDR all but the network, gateway and
	// broadcast addresses (ipam usable: size − 3).
	growthBlock      = 1 << (32 - growthMask)
	growthPodCIDRCap = growthBlock - 3
	// fixedBlock is the fixed node's /24: GKE's block for maxPods 110.
	fixedBlock = 256
	// growthGoal is the utilisation goal; growthTopUpGoal its
	// top-up latency goal (p99 of the ADDs that waited for a block).
	growthGoal      = 0.75
	growthTopUpGoal = 2 * time.Second
)

// The GCE test server's names (as test/integration's), and the growable
// range's secondary range on its subnetwork.
const (
	growthProject   = "test-project"
	growthRegion    = "us-central1"
	growthZone      = "us-central1-a"
	growthPodsRange = "pods"
	growthGrowRange = "pods-grow"
	growthCluster   = "10.120.0.0/16"
	growthGrowCIDR  = "10.121.0.0/20"
)

// growthCloud is the cloud one run of the benchmark uses.
type growthCloud struct {
	name    string        // as printed
	gce     bool          // the GCE test server through the real compute client; else the fake cloud
	latency time.Duration // the fake cloud's per-call latency, or the GCE test server's operation time
}

// growthOracleBlocks is the fewest blocks an oracle would hold for used
// pods with the range's settings: the node must keep lowWater addresses
// free (controller/growth.go grants while free < lowWater) out of the
// podCIDR's growthPodCIDRCap and each extra block's growthBlock
// (node-agent/ipam Usage), and holds at most maxBlocksPerNode blocks.
func growthOracleBlocks(used int) int {
	k := 1
	for k < growthMaxBlocks && growthPodCIDRCap+(k-1)*growthBlock-used < growthLowWater {
		k++
	}
	return k
}

// growthOracleReserved is the addresses the oracle reserves for used pods.
func growthOracleReserved(used int) int { return growthOracleBlocks(used) * growthBlock }

// utilStats is a node's utilisation over the run's samples: the mean of
// the per-sample ratios (in use ÷ reserved), address-time (Σ in use ÷
// Σ reserved: each reserved address weighted by the time it was held),
// and the lowest ratio while the node had at least 20 pods.
type utilStats struct{ mean, addrTime, min float64 }

// growthResult is one run's figures, for the summary.
type growthResult struct {
	cloud                     string
	grow, fixed, limit        utilStats
	settledGrow, settledLimit float64 // means over the waves
	// stuck and idle: shares of the growable node's reserved
	// address-time wasted by the protocol (growthWaste).
	stuck, idle float64
	waited      int
	waitP99     time.Duration // a histogram bucket's bound; < 0: beyond the last (8 s)
	addP99      [2]time.Duration
	failures    [2]int
}

// goals returns the goals as met or not, in the order printed.
func (r growthResult) goals() []bool {
	return []bool{r.grow.addrTime >= growthGoal, r.waitP99 >= 0 && r.waitP99 <= growthTopUpGoal, r.failures[0] == 0}
}

// passMiss prints a goal's result.
func passMiss(ok bool) string {
	if ok {
		return "pass"
	}
	return "miss"
}

// BenchmarkGrowth: address utilisation (addresses in use ÷ addresses
// reserved to nodes) of a node in a growable PodRange (/28 blocks) against
// a node with a fixed /24 (GKE's default for maxPods 110), the same pod
// churn on both, in one run, on the controller and real agents in network
// namespaces with pods through libcni; and against the limit: an oracle
// holding, for each sample's pod count, the fewest blocks the range's
// settings allow. Also the top-up latency (how long ADDs that found no
// address waited for a block) and ADD failures. Run with the fake cloud's
// 20 ms calls, and with the controller on --cloud=gce against the GCE test
// server (cloud/gce/gcetest: 200 ms operations, polled by the real compute
// client, each extra block one more alias range of the growable range's
// secondary range on the instance's NIC).
func BenchmarkGrowth(b *testing.B) {
	var results []growthResult
	for _, c := range []growthCloud{
		{name: "fake cloud, 20 ms calls", latency: 20 * time.Millisecond},
		{name: "GCE test server, 200 ms operations", gce: true, latency: 200 * time.Millisecond},
	} {
		sub := "fake-cloud-20ms"
		if c.gce {
			sub = "gce-test-server-200ms"
		}
		b.Run(sub, func(b *testing.B) {
			// A skipped or failed run ends the goroutine before this.
			results = append(results, benchGrowth(b, c))
		})
	}
	if len(results) == 0 {
		return
	}
	fmt.Printf("\nSummary: growable /28 (maxBlocksPerNode %d, lowWater %d) vs fixed /24 vs the limit, churn %v; utilisation address-time (mean of samples)\n\n",
		growthMaxBlocks, growthLowWater, growthWaves)
	fmt.Println("| cloud | growable | limit | fixed /24 | growable ÷ fixed | growable ÷ limit | settled mean, growable (limit) | ADDs that waited | wait p99 | ADD p99 growable / fixed | ADD failures growable / fixed | reserved in blocks drained under pods / idle past returnAfter | goals: util ≥ 75 %, top-up p99 ≤ 2 s, no ADD failure |")
	fmt.Println("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
	for _, r := range results {
		g := r.goals()
		fmt.Printf("| %s | %.1f %% (%.1f %%) | %.1f %% (%.1f %%) | %.1f %% | %.2f× | %.2f (%.2f) | %.1f %% (%.1f %%) | %d | %s | %.2f× | %d / %d | %.1f %% / %.1f %% | %s, %s, %s |\n",
			r.cloud, 100*r.grow.addrTime, 100*r.grow.mean, 100*r.limit.addrTime, 100*r.limit.mean, 100*r.fixed.addrTime,
			r.grow.addrTime/r.fixed.addrTime, r.grow.addrTime/r.limit.addrTime, r.grow.mean/r.limit.mean,
			100*r.settledGrow, 100*r.settledLimit, r.waited, waitBound(r.waited, r.waitP99),
			float64(r.addP99[0])/float64(r.addP99[1]), r.failures[0], r.failures[1], 100*r.stuck, 100*r.idle, passMiss(g[0]), passMiss(g[1]), passMiss(g[2]))
	}
	fmt.Println()
}

// waitBound prints a wait histogram's bound.
func waitBound(count int, d time.Duration) string {
	switch {
	case count == 0:
		return "none waited"
	case d < 0:
		return "> 8 s"
	}
	return fmt.Sprintf("≤ %v", d)
}

func benchGrowth(b *testing.B, c growthCloud) growthResult {
	if reason := framework.RequireRoot(); reason != "" {
		b.Skipf("skipping: %s", reason)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	dir := b.TempDir()
	var trace *json.Encoder
	if os.Getenv("ALIASIP_BENCH_KEEP") != "" {
		// The logs stay: controller-N.log, nodes/NAME/agent.log, and
		// nodeblocks.jsonl, the growable node's NodeBlocks at each sample.
		d, err := os.MkdirTemp("", "aliasip-bench-growth-")
		if err != nil {
			b.Fatal(err)
		}
		dir = d
		f, err := os.Create(filepath.Join(dir, "nodeblocks.jsonl"))
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		trace = json.NewEncoder(f)
		fmt.Printf("\n%s: logs kept in %s\n", c.name, dir)
	}
	mask := int32(growthMask)
	prSpec := v1alpha1.PodRangeSpec{CIDR: growthGrowCIDR, MaskSize: &mask,
		NodeSelector: metav1.LabelSelector{MatchLabels: map[string]string{"pool": "grow"}},
		Growth:       &v1alpha1.GrowthSpec{MaxBlocksPerNode: growthMaxBlocks, LowWater: growthLowWater, ReturnAfterSeconds: 2}}
	opts := framework.LocalClusterOptions{ClusterCIDR: growthCluster}
	var gs *gcetest.Server
	if c.gce {
		// The subnetwork's secondary ranges: the default range (the
		// cluster's) and the growable range's, which the PodRange names
		// (as TestGrowthOnGCE). The instances exist before their Nodes,
		// as VMs before their kubelets register.
		gs = gcetest.NewServer(gcetest.Options{Project: growthProject, Region: growthRegion, Subnetwork: "nodes",
			SecondaryRanges: map[string]netip.Prefix{
				growthPodsRange: netip.MustParsePrefix(growthCluster),
				growthGrowRange: netip.MustParsePrefix(growthGrowCIDR),
			},
			OpDelay: c.latency})
		defer gs.Close()
		for _, n := range []string{"grow-1", "fixed-1"} {
			gs.AddInstance(growthZone, n)
		}
		// After LocalCluster's own flags: the last --cloud wins, and its
		// fake-cloud flags go unused.
		opts.ControllerArgs = []string{"--cloud", "gce", "--gce-endpoint", gs.Endpoint(),
			"--gce-project", growthProject, "--gce-region", growthRegion, "--gce-zone", growthZone,
			"--gce-subnetwork", "nodes", "--gce-secondary-range", growthPodsRange}
		opts.ProviderID = func(name string) string { return fmt.Sprintf("gce://%s/%s/%s", growthProject, growthZone, name) }
		prSpec.CIDR, prSpec.SecondaryRangeName = "", growthGrowRange
	} else {
		opts.ControllerArgs = []string{"--fake-latency", c.latency.String()}
	}
	lc, err := framework.StartLocalCluster(ctx, dir, opts)
	if errors.Is(err, framework.ErrNotInstalled) {
		b.Skipf("skipping: %v", err)
	}
	if err != nil {
		b.Fatal(err)
	}
	defer lc.Close()
	if err := framework.InstallCRDs(ctx, lc.CP.Config, framework.CRDDir()); err != nil {
		b.Fatal(err)
	}
	lc.Controller.Stop()
	if err := lc.StartController(); err != nil {
		b.Fatal(err)
	}
	api := versioned.NewForConfigOrDie(lc.CP.Config).AliasipV1alpha1()
	if _, err := api.PodRanges().Create(ctx, &v1alpha1.PodRange{ObjectMeta: metav1.ObjectMeta{Name: "grow"}, Spec: prSpec}, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	if err := framework.Eventually(ctx, time.Minute, func() (bool, error) {
		pr, err := api.PodRanges().Get(ctx, "grow", metav1.GetOptions{})
		return err == nil && pr.Status.CIDR != "", nil
	}); err != nil {
		b.Fatalf("PodRange grow never taken up: %v", err)
	}
	grow, err := lc.AddNodeLabelled(ctx, "grow-1", map[string]string{"pool": "grow"}, true)
	if err != nil {
		b.Fatal(err)
	}
	fixed, err := lc.AddNodeLabelled(ctx, "fixed-1", nil, true)
	if err != nil {
		b.Fatal(err)
	}

	type side struct {
		node     *framework.Node
		pods     []*framework.Pod
		adds     []time.Duration
		failures int
		seq      int
	}
	sides := []*side{{node: grow}, {node: fixed}}
	defer func() {
		for _, s := range sides {
			for _, p := range s.pods {
				p.Close()
			}
		}
	}()
	// holdings returns the addresses a node holds: its podCIDR and, in the
	// growable range, its extra blocks (Active or Draining); and its
	// NodeBlocks (nil: none).
	holdings := func(n *framework.Node) (total int, nb *v1alpha1.NodeBlocks) {
		p := lc.PodCIDR(ctx, n)
		if pfx, err := parsePrefix(p); err == nil {
			total = 1 << (32 - pfx)
		}
		nb, err := api.NodeBlocks().Get(ctx, n.Name, metav1.GetOptions{})
		if err != nil {
			return total, nil
		}
		if trace != nil {
			trace.Encode(map[string]any{"time": time.Now().Format("15:04:05.000"), "spec": nb.Spec, "status": nb.Status})
		}
		return total + len(nb.Status.Blocks)*growthBlock, nb
	}
	reserved := func(n *framework.Node) int {
		total, _ := holdings(n)
		return total
	}
	// Sampled every 250 ms through the run: in use and reserved, per node,
	// and the growable node's addresses wasted by the growth protocol
	// (growthWaste).
	type sample struct {
		used, reserved [2]int
		stuck, idle    int
	}
	idleSince := map[string]time.Time{} // the sampler's alone
	var mu sync.Mutex
	var samples []sample
	stop := make(chan struct{})
	var sampler sync.WaitGroup
	sampler.Go(func() {
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
			}
			var s sample
			mu.Lock()
			for i, sd := range sides {
				s.used[i] = len(sd.pods)
			}
			mu.Unlock()
			var nb *v1alpha1.NodeBlocks
			s.reserved[0], nb = holdings(sides[0].node)
			s.stuck, s.idle = growthWaste(nb, idleSince, time.Now(), 2*time.Second)
			s.reserved[1] = reserved(sides[1].node)
			mu.Lock()
			samples = append(samples, s)
			mu.Unlock()
		}
	})
	start := time.Now()
	var settled []string
	var settledUtil, settledLimit []float64
	for _, target := range growthWaves {
		var wg sync.WaitGroup
		for _, sd := range sides {
			wg.Go(func() {
				mu.Lock()
				have := len(sd.pods)
				mu.Unlock()
				work := make(chan int)
				var workers sync.WaitGroup
				for w := 0; w < 8; w++ {
					workers.Go(func() {
						for range work {
							mu.Lock()
							sd.seq++
							name := fmt.Sprintf("%s-p%d", sd.node.Name, sd.seq)
							mu.Unlock()
							t0 := time.Now()
							p, err := lc.RunPod(ctx, sd.node, name)
							d := time.Since(t0)
							mu.Lock()
							if err != nil {
								sd.failures++
								b.Logf("ADD %s: %v", name, err)
							} else {
								sd.adds = append(sd.adds, d)
								sd.pods = append(sd.pods, p)
							}
							mu.Unlock()
						}
					})
				}
				for i := have; i < target; i++ {
					work <- i
				}
				close(work)
				workers.Wait()
				// Down: the newest pods go first.
				for {
					mu.Lock()
					if len(sd.pods) <= target {
						mu.Unlock()
						break
					}
					p := sd.pods[len(sd.pods)-1]
					sd.pods = sd.pods[:len(sd.pods)-1]
					mu.Unlock()
					if err := sd.node.Del(ctx, p); err != nil {
						b.Logf("DEL %s: %v", p.Name, err)
					}
					p.Close()
				}
			})
		}
		wg.Wait()
		// Settle: the growable node gives back what it does not need
		// (returnAfter 2 s, the agent's 2 s address cooldown): wait until
		// it holds no more blocks than the oracle for its pods, or 30 s.
		used := len(sides[0].pods)
		need := growthOracleBlocks(used)
		settleStart := time.Now()
		_ = framework.Eventually(ctx, 30*time.Second, func() (bool, error) {
			nb, err := api.NodeBlocks().Get(ctx, grow.Name, metav1.GetOptions{})
			return err == nil && 1+len(nb.Status.Blocks) <= need, nil
		})
		took := time.Since(settleStart).Round(100 * time.Millisecond)
		res, limit := reserved(grow), growthOracleReserved(used)
		settled = append(settled, fmt.Sprintf("| %d | %d/%d = %.0f %% | %d/%d = %.0f %% | %.2f | %v | %d/%d = %.0f %% |", target,
			used, res, 100*float64(used)/float64(res), used, limit, 100*float64(used)/float64(limit),
			float64(limit)/float64(res), took, len(sides[1].pods), fixedBlock, 100*float64(len(sides[1].pods))/fixedBlock))
		settledUtil = append(settledUtil, float64(used)/float64(res))
		settledLimit = append(settledLimit, float64(used)/float64(limit))
	}
	elapsed := time.Since(start)
	close(stop)
	sampler.Wait()

	// Utilisation over the samples in which the node held a block. The
	// limit is the oracle's, for the growable node's pods in the same
	// samples.
	util := func(i int, reservedOf func(s sample) int) utilStats {
		st := utilStats{min: 1}
		n, used, res := 0, 0, 0
		for _, s := range samples {
			if s.reserved[i] == 0 {
				continue
			}
			r := reservedOf(s)
			u := float64(s.used[i]) / float64(r)
			st.mean += u
			n++
			used += s.used[i]
			res += r
			if s.used[i] >= 20 && u < st.min {
				st.min = u
			}
		}
		if n > 0 {
			st.mean /= float64(n)
			st.addrTime = float64(used) / float64(res)
		}
		return st
	}
	r := growthResult{cloud: c.name,
		grow:     util(0, func(s sample) int { return s.reserved[0] }),
		fixed:    util(1, func(s sample) int { return s.reserved[1] }),
		limit:    util(0, func(s sample) int { return growthOracleReserved(s.used[0]) }),
		addP99:   [2]time.Duration{quantile(sides[0].adds, 99), quantile(sides[1].adds, 99)},
		failures: [2]int{sides[0].failures, sides[1].failures},
	}
	stuck, idle, res := 0, 0, 0
	for _, s := range samples {
		stuck += s.stuck
		idle += s.idle
		res += s.reserved[0]
	}
	if res > 0 {
		r.stuck, r.idle = float64(stuck)/float64(res), float64(idle)/float64(res)
	}
	for i := range settledUtil {
		r.settledGrow += settledUtil[i] / float64(len(settledUtil))
		r.settledLimit += settledLimit[i] / float64(len(settledLimit))
	}
	var waitMax time.Duration
	r.waited, r.waitP99, waitMax = growthWaits(grow.Metrics)

	fmt.Printf("\nGrowable /28 blocks vs a fixed /24 (maxPods 110) vs the limit; %s; churn %v; %v, %d samples\n\n", c.name, growthWaves, elapsed.Round(time.Second), len(samples))
	fmt.Println("| cloud | node | mean utilisation | address-time utilisation | min utilisation (≥ 20 pods) | ADD p50 | ADD p99 | ADD failures |")
	fmt.Println("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
	for i, name := range []string{fmt.Sprintf("growable /28 (maxBlocksPerNode %d, lowWater %d)", growthMaxBlocks, growthLowWater), "fixed /24"} {
		st := r.grow
		if i == 1 {
			st = r.fixed
		}
		fmt.Printf("| %s | %s | %.1f %% | %.1f %% | %.1f %% | %v | %v | %d |\n", c.name, name, 100*st.mean, 100*st.addrTime, 100*st.min,
			quantile(sides[i].adds, 50), r.addP99[i], sides[i].failures)
	}
	fmt.Printf("| %s | limit: fewest /28s for the growable node's pods, free ≥ lowWater | %.1f %% | %.1f %% | %.1f %% | – | – | – |\n",
		c.name, 100*r.limit.mean, 100*r.limit.addrTime, 100*r.limit.min)
	fmt.Printf("\ngrowable ÷ fixed: mean %.2f×, address-time %.2f×; growable ÷ limit: mean %.2f, address-time %.2f, min %.2f\n",
		r.grow.mean/r.fixed.mean, r.grow.addrTime/r.fixed.addrTime, r.grow.mean/r.limit.mean, r.grow.addrTime/r.limit.addrTime, r.grow.min/r.limit.min)
	fmt.Printf("of the growable node's reserved address-time: %.1f %% in blocks drained under pods (Draining while its agent reports addresses held in them: they serve no new pod and are not given back until those pods go); %.1f %% in Active blocks empty and not needed (free ≥ lowWater without them) for longer than returnAfter + %v\n",
		100*r.stuck, 100*r.idle, growthIdleSlack)
	fmt.Printf("\nSettled after each wave (the growable node waits up to 30 s to hold no more blocks than the limit):\n\n")
	fmt.Println("| pods | growable | limit | limit ÷ growable reserved | settled in | fixed /24 |")
	fmt.Println("| ---: | ---: | ---: | ---: | ---: | ---: |")
	for _, l := range settled {
		fmt.Println(l)
	}
	fmt.Printf("| mean | %.1f %% | %.1f %% | | | |\n", 100*r.settledGrow, 100*r.settledLimit)
	fmt.Printf("\ntop-up: %d ADDs waited for a block; wait p99 %s, max %s (aliasip_growth_wait_seconds buckets); ADD p99 growable/fixed %.2f×\n",
		r.waited, waitBound(r.waited, r.waitP99), waitBound(r.waited, waitMax), float64(r.addP99[0])/float64(r.addP99[1]))
	if gs != nil {
		// The grants went through the compute client: the growable
		// node's NIC carries its podCIDR and its recorded blocks.
		var want, got []string
		_ = framework.Eventually(ctx, 10*time.Second, func() (bool, error) {
			want = []string{lc.PodCIDR(ctx, grow)}
			if nb, err := api.NodeBlocks().Get(ctx, grow.Name, metav1.GetOptions{}); err == nil {
				for _, bl := range nb.Status.Blocks {
					want = append(want, bl.CIDR)
				}
			}
			got = nil
			for _, a := range gs.Aliases()[grow.Name] {
				got = append(got, a.IpCidrRange)
			}
			slices.Sort(want)
			slices.Sort(got)
			return slices.Equal(got, want), nil
		})
		fmt.Printf("GCE test server: %d instances.updateNetworkInterface, %d zoneOperations calls; %s's NIC %v, recorded %v (match: %v)\n",
			gs.Count("instances.updateNetworkInterface"), gs.Count("zoneOperations.get")+gs.Count("zoneOperations.wait")+gs.Count("zoneOperations.list"),
			grow.Name, got, want, slices.Equal(got, want))
	}
	g := r.goals()
	fmt.Printf("\n| goal | figure | result |\n| --- | --- | --- |\n")
	fmt.Printf("| address utilisation ≥ 75 %% (growable, address-time; fixed /24 in the same run %.1f %%) | %.1f %% (limit %.1f %%) | %s |\n",
		100*r.fixed.addrTime, 100*r.grow.addrTime, 100*r.limit.addrTime, passMiss(g[0]))
	fmt.Printf("| top-up latency p99 ≤ 2 s (%s) | %s | %s |\n", c.name, waitBound(r.waited, r.waitP99), passMiss(g[1]))
	fmt.Printf("| no ADD failure on the growable node | %d | %s |\n\n", r.failures[0], passMiss(g[2]))
	b.ReportMetric(100*r.grow.addrTime, "growable-util-pct")
	b.ReportMetric(100*r.limit.addrTime, "limit-util-pct")
	b.ReportMetric(100*r.fixed.addrTime, "fixed-util-pct")
	b.ReportMetric(float64(r.failures[0]+r.failures[1]), "add-failures")
	return r
}

// growthIdleSlack is how long past returnAfter an empty, unneeded block
// may stay Active before growthWaste counts it: the agent's report (at
// most one a second) and the controller's sync.
const growthIdleSlack = 3 * time.Second

// growthWaste returns the addresses of a growable node's NodeBlocks that
// the growth protocol wastes, from its status (the controller's) and its
// spec (the agent's last report):
//
//   - stuck: Draining blocks the agent reports addresses held in. A block
//     is drained only once reported empty, so such a block was drained
//     under pods the agent put in it after its last report; it serves no
//     new pod and is not given back until they go;
//   - idle: Active extra blocks reported empty whose node keeps lowWater
//     free without them (the controller's drain rule) continuously for
//     longer than returnAfter + growthIdleSlack; idleSince (by block,
//     kept by the caller across calls) holds when each was first seen so.
func growthWaste(nb *v1alpha1.NodeBlocks, idleSince map[string]time.Time, now time.Time, returnAfter time.Duration) (stuck, idle int) {
	if nb == nil {
		clear(idleSince)
		return 0, 0
	}
	usage := map[string]v1alpha1.BlockUsage{}
	for _, u := range nb.Spec.Blocks {
		usage[u.CIDR] = u
	}
	// Free addresses as the controller counts them: the podCIDR and the
	// Active blocks, as reported.
	free := 0
	if len(nb.Spec.Blocks) > 0 {
		free += max(int(nb.Spec.Blocks[0].Capacity-nb.Spec.Blocks[0].Allocated), 0)
	}
	for _, bl := range nb.Status.Blocks {
		if u, ok := usage[bl.CIDR]; ok && bl.State == v1alpha1.BlockActive {
			free += max(int(u.Capacity-u.Allocated), 0)
		}
	}
	seen := map[string]bool{}
	for _, bl := range nb.Status.Blocks {
		u, reported := usage[bl.CIDR]
		switch {
		case bl.State == v1alpha1.BlockDraining && reported && u.Allocated > 0:
			stuck += growthBlock
		case bl.State == v1alpha1.BlockActive && reported && u.Allocated == 0 && free-int(u.Capacity) >= growthLowWater && nb.Spec.Waiting == 0:
			seen[bl.CIDR] = true
			first, ok := idleSince[bl.CIDR]
			if !ok {
				idleSince[bl.CIDR] = now
			} else if now.Sub(first) > returnAfter+growthIdleSlack {
				idle += growthBlock
			}
		}
	}
	maps.DeleteFunc(idleSince, func(c string, _ time.Time) bool { return !seen[c] })
	return stuck, idle
}

// parsePrefix returns a prefix's length.
func parsePrefix(p string) (int, error) {
	var a, b, c, d, bits int
	if _, err := fmt.Sscanf(p, "%d.%d.%d.%d/%d", &a, &b, &c, &d, &bits); err != nil {
		return 0, err
	}
	return bits, nil
}

// quantile returns the p-th percentile of ds.
func quantile(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[min(len(s)-1, len(s)*p/100)].Round(time.Millisecond)
}

// growthWaits reads the agent's aliasip_growth_wait_seconds histogram:
// its count, the bucket bound holding the 99th percentile, and the bound
// holding the largest (-1: beyond the last bucket).
func growthWaits(metricsAddr string) (count int, p99, max time.Duration) {
	resp, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		return 0, 0, 0
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	n, _ := framework.ScrapeMetric(string(body), "aliasip_growth_wait_seconds_count", "")
	count = int(n)
	bounds := []string{"0.05", "0.1", "0.25", "0.5", "1", "2", "4", "8"}
	for _, le := range bounds {
		v, _ := framework.ScrapeMetric(string(body), "aliasip_growth_wait_seconds_bucket", fmt.Sprintf(`le=%q`, le))
		d, _ := time.ParseDuration(le + "s")
		if p99 == 0 && count > 0 && v >= 0.99*float64(count) {
			p99 = d
		}
		if max == 0 && count > 0 && int(v) == count {
			max = d
		}
	}
	// Beyond the last bucket (8 s, the agent's own bound on a wait).
	if count > 0 && p99 == 0 {
		p99 = -1
	}
	if count > 0 && max == 0 {
		max = -1
	}
	return count, p99, max
}

// The oracle's blocks and the waste counted, without a cluster.
func TestGrowthLimitAndWaste(t *testing.T) {
	for used, want := range map[int]int{0: 1, 5: 1, 9: 1, 10: 2, 25: 2, 26: 3, 40: 3, 100: 7, 105: 7, 106: 8, 125: 8} {
		if got := growthOracleBlocks(used); got != want {
			t.Errorf("growthOracleBlocks(%d) = %d, want %d", used, got, want)
		}
	}
	const first, a, d = "10.121.0.0/28", "10.121.0.16/28", "10.121.0.32/28"
	nb := &v1alpha1.NodeBlocks{
		Spec: v1alpha1.NodeBlocksSpec{Blocks: []v1alpha1.BlockUsage{
			{CIDR: first, Capacity: 13, Allocated: 5}, {CIDR: a, Capacity: 16}, {CIDR: d, Capacity: 16, Allocated: 2}}},
		Status: v1alpha1.NodeBlocksStatus{Blocks: []v1alpha1.GrantedBlock{
			{CIDR: a, State: v1alpha1.BlockActive}, {CIDR: d, State: v1alpha1.BlockDraining}}},
	}
	idleSince := map[string]time.Time{}
	t0 := time.Unix(1000, 0)
	for _, tc := range []struct {
		at          time.Duration
		stuck, idle int
	}{{0, 16, 0}, {4 * time.Second, 16, 0}, {6 * time.Second, 16, 16}} {
		if stuck, idle := growthWaste(nb, idleSince, t0.Add(tc.at), 2*time.Second); stuck != tc.stuck || idle != tc.idle {
			t.Errorf("at +%v: stuck %d idle %d, want %d %d", tc.at, stuck, idle, tc.stuck, tc.idle)
		}
	}
	// Needed (without it 13 − 10 = 3 free < lowWater 4): not idle, and
	// forgotten.
	nb.Spec.Blocks[0].Allocated = 10
	if _, idle := growthWaste(nb, idleSince, t0.Add(10*time.Second), 2*time.Second); idle != 0 || len(idleSince) != 0 {
		t.Errorf("a needed block counted idle (%d) or remembered (%v)", idle, idleSince)
	}
}
