package kubelet

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/aliasip/aliasip/test/framework"
)

var conformanceResult = regexp.MustCompile(`(?m)^conformance: ([0-9]+) passed, ([0-9]+) failed$`)

// TestConformance runs Kubernetes' own [sig-network] [Conformance] tests
// (e2e.test v1.36.3 and its images, built here) against this cluster with
// the chart installed, through hack/conformance.sh as make conformance
// does. Every selected test must pass. It runs first (files run in name
// order), on the cluster as make cluster leaves it.
func TestConformance(t *testing.T) { runConformance(t, "conformance") }

// TestConformanceDualStack runs the [sig-network] [Feature:IPv6DualStack]
// tests the same way: the cluster is dual-stack (hack/cluster.sh), so the
// opt-in feature's own tests apply.
func TestConformanceDualStack(t *testing.T) { runConformance(t, "dualstack") }

// runConformance runs hack/conformance.sh MODE and wants every selected
// test to pass.
func runConformance(t *testing.T, mode string) {
	e, _ := setup(t, 40*time.Minute)
	root := framework.RepoRoot()
	out := filepath.Join(os.TempDir(), "aliasip-conformance")
	cmd := exec.Command(filepath.Join(root, "hack", "conformance.sh"), mode)
	cmd.Env = append(os.Environ(), "ALIASIP_CLUSTER_DIR="+e.Dir, "ALIASIP_CONFORMANCE_DIR="+out)
	b, err := cmd.CombinedOutput()
	t.Logf("%s", strings.TrimSpace(string(b)))
	m := conformanceResult.FindStringSubmatch(string(b))
	if err != nil || m == nil || m[1] == "0" || m[2] != "0" {
		t.Fatalf("hack/conformance.sh %s: %v (report and log in %s)", mode, err, filepath.Join(out, mode))
	}
}
