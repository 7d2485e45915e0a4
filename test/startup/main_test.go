// Package startup measures pod start-up latency on real nodes (issue 25,
// part 2), the figure users feel: the Kubernetes SIG-scalability SLO for
// stateless pods, "99th percentile per cluster-day <= 5s" from the pod's
// creation to all its containers reported running, excluding image pulls
// and init containers
// (https://github.com/kubernetes/community/blob/master/sig-scalability/slos/pod_startup_latency.md).
//
// It runs on make cluster (hack/cluster.sh: one network and mount namespace
// per node with its own containerd and kubelet, the chart installed) and
// measures as ClusterLoader2's PodStartupLatency measurement does
// (kubernetes/perf-tests clusterloader2/pkg/measurement/common/slos/
// pod_startup_latency.go): an informer on the pods, and for each pod the
// receive time of the first watch event that shows it (create), the first
// with spec.nodeName set (scheduled) and the first with phase Running
// (running; here also with status.podIP set), p50/p90/p99 over the pods.
// The pods are pause containers with imagePullPolicy Never, as CL2's
// density test uses pause (clusterloader2/testing/density/deployment.yaml),
// from the image make images writes and make cluster imports into every
// node's containerd: nothing is pulled.
//
// aliasip and Debian's bridge + host-local are measured on the same nodes
// in the same run, swapping the CNI config the nodes' containerd reads
// (see conflist.go).
//
// The test runs only under ALIASIP_BENCH_STARTUP=1 (make bench-startup):
// it takes minutes and brings make cluster up and down, so go test ./...
// skips it. Root only.
package startup

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aliasip/aliasip/test/framework"
)

// envRun turns the benchmark on (make bench-startup sets it).
const envRun = "ALIASIP_BENCH_STARTUP"

var (
	skipReason string
	clusterDir string
)

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	if os.Getenv(envRun) != "1" {
		skipReason = "pod start-up benchmark: runs only under " + envRun + "=1 (make bench-startup; it brings make cluster up and down and takes minutes)"
		return m.Run()
	}
	if r := framework.RequireRoot(); r != "" {
		skipReason = r
		return m.Run()
	}
	root := framework.RepoRoot()
	clusterDir = os.Getenv("ALIASIP_CLUSTER_DIR")
	if clusterDir == "" {
		clusterDir = "/var/lib/aliasip-cluster"
	}
	st, err := cluster(root, "status")
	if err != nil {
		fmt.Fprintln(os.Stderr, "startup:", err)
		return 1
	}
	if strings.TrimSpace(st) == "up" {
		// Someone's make cluster: measure on it and leave it up.
		fmt.Printf("startup: using the cluster already up in %s (left up)\n", clusterDir)
		return m.Run()
	}
	// Only pool-a: three nodes of the default range, the fewest daemons
	// for this 2-core machine (pool-b's and pool-g's nodes would idle
	// beside the measured ones).
	start := time.Now()
	if out, err := cluster(root, "up", "NODES=3", "POOL_B_NODES=0", "POOL_G_NODES=0"); err != nil {
		fmt.Fprintf(os.Stderr, "startup: hack/cluster.sh up: %v\n%s\n", err, out)
		cluster(root, "down")
		return 1
	}
	fmt.Printf("startup: make cluster (3 nodes, pool-a only) up in %v\n", time.Since(start).Round(time.Second))
	defer func() {
		if out, err := cluster(root, "down"); err != nil {
			fmt.Fprintf(os.Stderr, "startup: hack/cluster.sh down: %v\n%s\n", err, out)
		}
	}()
	return m.Run()
}

// cluster runs hack/cluster.sh VERB with extra environment; up's log goes
// to a file, as its output is long.
func cluster(root, verb string, envs ...string) (string, error) {
	cmd := exec.Command(filepath.Join(root, "hack", "cluster.sh"), verb)
	cmd.Env = append(append(os.Environ(), "ALIASIP_CLUSTER_DIR="+clusterDir), envs...)
	if verb != "up" {
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	logPath := filepath.Join(os.TempDir(), "aliasip-startup-cluster-up.log")
	f, err := os.Create(logPath)
	if err != nil {
		return "", err
	}
	defer f.Close()
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Run(); err != nil {
		b, _ := os.ReadFile(logPath)
		return string(b), err
	}
	return "", nil
}
