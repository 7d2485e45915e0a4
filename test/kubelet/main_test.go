// Package kubelet tests aliasip the way users deploy it: a cluster of real
// nodes (hack/cluster.sh: one network namespace and one mount namespace per
// node, each with its own containerd, kubelet and kube-proxy), the images
// built by hack/images and imported into every node's containerd, and
// charts/aliasip installed with helm exactly as the README's kind section
// says. The kubelet runs the chart's pods and the container runtime calls
// aliasip-cni for every pod.
//
// The cluster has three node pools (hack/cluster.sh): pool-a (node-1 to
// node-3) gets blocks from the chart's clusterCIDR, pool-b (node-4) from
// the PodRange pool-b, pool-g (node-5) from the growable PodRange pool-g.
//
// The suite brings the cluster up once (make cluster) and down at the end
// (make cluster-down). Root only. ALIASIP_KUBELET_REUSE=1 runs the tests on
// a cluster that is already up and leaves it up.
package kubelet

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	aliasipclient "github.com/aliasip/aliasip/controller/generated/clientset/versioned"
	"github.com/aliasip/aliasip/test/framework"
)

var (
	skipReason string
	env        *clusterEnv
)

// clusterEnv is the running cluster the tests share.
type clusterEnv struct {
	Dir        string // hack/cluster.sh's state directory
	Kubeconfig string
	Client     kubernetes.Interface
	Ranges     aliasipclient.Interface
	Nodes      []string // every node, pool-a's first
	PoolB      []string // the nodes of pool-b (hack/cluster.sh POOL_B_NODES)
	PoolG      []string // the nodes of pool-g (hack/cluster.sh POOL_G_NODES)
}

// The second node pool as hack/cluster.sh makes it.
const (
	poolLabel    = "cloud.google.com/gke-nodepool"
	poolBRange   = "pool-b"
	poolBCIDR    = "10.64.0.0/16"
	poolBMask    = 26 // maxPodsPerNode 32: the smallest block with twice as many addresses
	poolBMaxPods = 32
	defaultCIDR  = "10.244.0.0/16" // the chart's clusterCIDR, the range "default"
	defaultMask  = 24              // the controller's --node-cidr-mask-size default
	nodesPoolA   = 3
	nodesPoolB   = 1
)

// The growable node pool as hack/cluster.sh makes it (pool_g_*).
const (
	poolGRange       = "pool-g"
	poolGCIDR        = "10.80.0.0/16"
	poolGMask        = 28
	poolGMaxBlocks   = 8
	poolGReturnAfter = 15 * time.Second
	nodesPoolG       = 1
)

// inPoolG reports whether node is one of pool-g's.
func (e *clusterEnv) inPoolG(node string) bool { return slices.Contains(e.PoolG, node) }

// inPoolB reports whether node is one of pool-b's.
func (e *clusterEnv) inPoolB(node string) bool {
	for _, n := range e.PoolB {
		if n == node {
			return true
		}
	}
	return false
}

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if r := framework.RequireRoot(); r != "" {
		skipReason = r
		return m.Run()
	}
	root := framework.RepoRoot()
	dir := os.Getenv("ALIASIP_CLUSTER_DIR")
	if dir == "" {
		dir = "/var/lib/aliasip-cluster"
	}
	reuse := os.Getenv("ALIASIP_KUBELET_REUSE") == "1"
	nodes := nodesPoolA + nodesPoolB + nodesPoolG
	e := &clusterEnv{Dir: dir, Kubeconfig: filepath.Join(dir, "kubeconfig")}
	for i := 1; i <= nodes; i++ {
		name := fmt.Sprintf("node-%d", i)
		e.Nodes = append(e.Nodes, name)
		switch {
		case i > nodesPoolA+nodesPoolB:
			e.PoolG = append(e.PoolG, name)
		case i > nodesPoolA:
			e.PoolB = append(e.PoolB, name)
		}
	}
	if !reuse {
		// A cluster that is running belongs to someone: leave it. A stale
		// one (an earlier boot's, or a killed run's) is torn down by
		// hack/cluster.sh up.
		st, err := clusterStatus(root, dir)
		if err != nil {
			fmt.Fprintln(os.Stderr, "kubelet suite:", err)
			return 1
		}
		if st == "up" {
			fmt.Fprintf(os.Stderr, "kubelet suite: a cluster is already up in %s (make cluster): run make cluster-down, or set ALIASIP_KUBELET_REUSE=1\n", dir)
			return 1
		}
		if err := buildImages(root); err != nil {
			fmt.Fprintln(os.Stderr, "kubelet suite:", err)
			return 1
		}
		start := time.Now()
		kc, err := clusterUp(root, dir, nodesPoolA, nodesPoolB, nodesPoolG)
		if err != nil {
			fmt.Fprintln(os.Stderr, "kubelet suite:", err)
			clusterDown(root, dir)
			return 1
		}
		fmt.Printf("kubelet suite: cluster of %d nodes (%d in pool-b, %d in pool-g) up in %v (%s)\n", nodes, nodesPoolB, nodesPoolG, time.Since(start).Round(time.Second), kc)
		defer clusterDown(root, dir)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", e.Kubeconfig)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kubelet suite:", err)
		return 1
	}
	cfg.QPS, cfg.Burst = 50, 100
	e.Client = kubernetes.NewForConfigOrDie(cfg)
	e.Ranges = aliasipclient.NewForConfigOrDie(cfg)
	env = e
	return m.Run()
}

// buildImages runs `make images`' command: hack/images builds the static
// binaries and writes the image tarballs into bin/images, CoreDNS's from
// the binary hack/deps.sh built into the cache, and the e2e images.
func buildImages(root string) error {
	version, err := chartAppVersion(root)
	if err != nil {
		return err
	}
	cmd := exec.Command("go", "run", ".", "--repo", root, "--out-dir", filepath.Join(root, "bin", "images"), "--tag", version,
		"--coredns", filepath.Join(framework.CacheDir(), "bin", "coredns"),
		// The e2e suite's images (agnhost, busybox, ...) for TestConformance.
		"--e2e-bin-dir", filepath.Join(framework.CacheDir(), "bin"))
	cmd.Dir = filepath.Join(root, "hack", "images")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("building images: %v\n%s", err, out)
	}
	return nil
}

func chartAppVersion(root string) (string, error) {
	f, err := os.Open(filepath.Join(root, "charts", "aliasip", "Chart.yaml"))
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "appVersion:"); ok {
			return strings.Trim(strings.TrimSpace(v), `"`), nil
		}
	}
	return "", fmt.Errorf("no appVersion in Chart.yaml")
}

// clusterUp runs `make cluster`'s script and returns the KUBECONFIG= path
// from its last line.
func clusterUp(root, dir string, poolA, poolB, poolG int) (string, error) {
	logPath := filepath.Join(os.TempDir(), "aliasip-cluster-up.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return "", err
	}
	defer logf.Close()
	var out strings.Builder
	cmd := exec.Command(filepath.Join(root, "hack", "cluster.sh"), "up")
	cmd.Env = append(os.Environ(), fmt.Sprintf("NODES=%d", poolA), fmt.Sprintf("POOL_B_NODES=%d", poolB), fmt.Sprintf("POOL_G_NODES=%d", poolG), "ALIASIP_CLUSTER_DIR="+dir)
	cmd.Stdout, cmd.Stderr = &out, logf
	if err := cmd.Run(); err != nil {
		b, _ := os.ReadFile(logPath)
		return "", fmt.Errorf("hack/cluster.sh up: %v\n%s", err, b)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	last := lines[len(lines)-1]
	kc, ok := strings.CutPrefix(last, "KUBECONFIG=")
	if !ok || kc != filepath.Join(dir, "kubeconfig") {
		return "", fmt.Errorf("hack/cluster.sh up: last line %q, want KUBECONFIG=%s/kubeconfig", last, dir)
	}
	return kc, nil
}

// clusterStatus is hack/cluster.sh status: down, up or stale.
func clusterStatus(root, dir string) (string, error) {
	cmd := exec.Command(filepath.Join(root, "hack", "cluster.sh"), "status")
	cmd.Env = append(os.Environ(), "ALIASIP_CLUSTER_DIR="+dir)
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("hack/cluster.sh status: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

func clusterDown(root, dir string) {
	cmd := exec.Command(filepath.Join(root, "hack", "cluster.sh"), "down")
	cmd.Env = append(os.Environ(), "ALIASIP_CLUSTER_DIR="+dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "kubelet suite: hack/cluster.sh down: %v\n%s", err, out)
	}
}

// setup skips without root and returns the shared cluster and a context.
func setup(t *testing.T, timeout time.Duration) (*clusterEnv, context.Context) {
	t.Helper()
	if skipReason != "" {
		t.Skipf("skipping: %s", skipReason)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	return env, ctx
}
