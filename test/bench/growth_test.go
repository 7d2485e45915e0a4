package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/aliasip/aliasip/controller/apis/aliasip/v1alpha1"
	"github.com/aliasip/aliasip/controller/generated/clientset/versioned"
	"github.com/aliasip/aliasip/test/framework"
)

// growthWaves are the pods per node, wave after wave: up and down between
// 5 and 100, as a churning node pool does.
var growthWaves = []int{5, 40, 100, 20, 70, 5, 100, 10}

// BenchmarkGrowth: address utilisation (addresses in use ÷ addresses
// reserved to nodes) of a node in a growable PodRange (/28 blocks) against
// a node with a fixed /24 (GKE's default for maxPods 110), the same pod
// churn on both, in one run, on the controller and real agents in network
// namespaces with pods through libcni; also the top-up latency (how long
// ADDs that found no address waited for a block) and ADD failures. Run
// with the fake cloud's 20 ms calls and with 200 ms calls (a stand-in for
// GCE's operation time; the GCE test server is not wired into this
// cluster).
func BenchmarkGrowth(b *testing.B) {
	for _, latency := range []string{"20ms", "200ms"} {
		b.Run("cloud-latency-"+latency, func(b *testing.B) { benchGrowth(b, latency) })
	}
}

func benchGrowth(b *testing.B, latency string) {
	if reason := framework.RequireRoot(); reason != "" {
		b.Skipf("skipping: %s", reason)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	dir := b.TempDir()
	lc, err := framework.StartLocalCluster(ctx, dir, framework.LocalClusterOptions{ClusterCIDR: "10.120.0.0/16",
		ControllerArgs: []string{"--fake-latency", latency}})
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
	mask := int32(28)
	const lowWater = 4
	if _, err := api.PodRanges().Create(ctx, &v1alpha1.PodRange{ObjectMeta: metav1.ObjectMeta{Name: "grow"},
		Spec: v1alpha1.PodRangeSpec{CIDR: "10.121.0.0/20", MaskSize: &mask,
			NodeSelector: metav1.LabelSelector{MatchLabels: map[string]string{"pool": "grow"}},
			Growth:       &v1alpha1.GrowthSpec{MaxBlocksPerNode: 8, LowWater: lowWater, ReturnAfterSeconds: 2}}}, metav1.CreateOptions{}); err != nil {
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
	// reserved returns the addresses a node holds: its podCIDR and, in the
	// growable range, its extra blocks.
	reserved := func(n *framework.Node) int {
		p := lc.PodCIDR(ctx, n)
		total := 0
		if pfx, err := parsePrefix(p); err == nil {
			total = 1 << (32 - pfx)
		}
		if nb, err := api.NodeBlocks().Get(ctx, n.Name, metav1.GetOptions{}); err == nil {
			total += len(nb.Status.Blocks) * 16
		}
		return total
	}
	// Sampled every 250 ms through the run: in use ÷ reserved, per node.
	type sample struct{ used, reserved [2]int }
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
			for i, sd := range sides {
				s.reserved[i] = reserved(sd.node)
			}
			mu.Lock()
			samples = append(samples, s)
			mu.Unlock()
		}
	})
	start := time.Now()
	var settled []string
	var settledUtil []float64
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
		// it holds no more blocks than its pods and the low-water mark
		// need, or 30 s.
		need := 1
		if extra := len(sides[0].pods) + lowWater - 13; extra > 0 {
			need += (extra + 15) / 16
		}
		settleStart := time.Now()
		_ = framework.Eventually(ctx, 30*time.Second, func() (bool, error) {
			nb, err := api.NodeBlocks().Get(ctx, grow.Name, metav1.GetOptions{})
			return err == nil && 1+len(nb.Status.Blocks) <= need, nil
		})
		settled = append(settled, fmt.Sprintf("%d pods: %d/%d = %.0f %% (settled in %v) vs %d/256 = %.0f %%", target,
			len(sides[0].pods), reserved(grow), 100*float64(len(sides[0].pods))/float64(reserved(grow)), time.Since(settleStart).Round(100*time.Millisecond),
			len(sides[1].pods), 100*float64(len(sides[1].pods))/256))
		settledUtil = append(settledUtil, float64(len(sides[0].pods))/float64(reserved(grow)))
	}
	elapsed := time.Since(start)
	close(stop)
	sampler.Wait()

	// Utilisation over time: the mean of the samples, and its minimum
	// while the node had at least 20 pods.
	util := func(i int) (mean, min float64) {
		min = 1
		n := 0
		for _, s := range samples {
			if s.reserved[i] == 0 {
				continue
			}
			u := float64(s.used[i]) / float64(s.reserved[i])
			mean += u
			n++
			if s.used[i] >= 20 && u < min {
				min = u
			}
		}
		if n > 0 {
			mean /= float64(n)
		}
		return mean, min
	}
	gm, gmin := util(0)
	fm, fmin := util(1)
	waitCount, waitP99, waitMax := growthWaits(grow.Metrics)
	fmt.Printf("\nGrowable /28 blocks vs a fixed /24 (maxPods 110), same churn %v, cloud calls %s, %v, %d samples\n\n", growthWaves, latency, elapsed.Round(time.Second), len(samples))
	fmt.Println("| node | mean utilisation | min utilisation (≥ 20 pods) | ADD p50 | ADD p99 | ADD failures |")
	fmt.Println("| --- | --- | --- | --- | --- | --- |")
	for i, name := range []string{"growable /28 (aliasip growth)", "fixed /24"} {
		mean, mn := gm, gmin
		if i == 1 {
			mean, mn = fm, fmin
		}
		fmt.Printf("| %s | %.1f %% | %.1f %% | %v | %v | %d |\n", name, 100*mean, 100*mn,
			quantile(sides[i].adds, 50), quantile(sides[i].adds, 99), sides[i].failures)
	}
	mean := 0.0
	for _, u := range settledUtil {
		mean += u / float64(len(settledUtil))
	}
	fmt.Printf("\nutilisation ratio growable/fixed: %.2f× over time; settled after each wave (growable vs fixed), mean %.1f %% (goal: growable ≥ 75 %%):\n", gm/fm, 100*mean)
	for _, l := range settled {
		fmt.Println("  " + l)
	}
	fmt.Printf("top-up: %d ADDs waited for a block; wait p99 ≤ %v (histogram bucket), max ≤ %v (goal p99 ≤ 2 s)\n", waitCount, waitP99, waitMax)
	fmt.Printf("ADD p99 growable/fixed: %.2f×\n\n", float64(quantile(sides[0].adds, 99))/float64(quantile(sides[1].adds, 99)))
	b.ReportMetric(100*gm, "growable-util-pct")
	b.ReportMetric(100*fm, "fixed-util-pct")
	b.ReportMetric(float64(sides[0].failures+sides[1].failures), "add-failures")
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
// holding the largest.
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
	return count, p99, max
}
