package kubelet

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aliasip/aliasip/internal/kubectlplugin"
	"github.com/aliasip/aliasip/node-agent/api"
	"github.com/aliasip/aliasip/test/framework"
)

// kubectlPlugin runs "kubectl aliasip ARGS": kubectl finds kubectl-aliasip
// on PATH and runs it with the arguments after the plugin's name
// (https://kubernetes.io/docs/tasks/extend-kubectl/kubectl-plugins/); the
// kubeconfig comes from KUBECONFIG, which the plugin loads the way kubectl
// does (client-go clientcmd loading rules).
func kubectlPlugin(t *testing.T, ctx context.Context, e *clusterEnv, pluginDir string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.CommandContext(ctx, e.tool("kubectl"), append([]string{"aliasip"}, args...)...)
	cmd.Env = append(os.Environ(), "PATH="+pluginDir+":"+os.Getenv("PATH"), "KUBECONFIG="+e.Kubeconfig)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		return string(out), ee.ExitCode()
	case err != nil:
		t.Fatalf("kubectl aliasip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), 0
}

// TestKubectlAliasip: the plugin as users run it, through kubectl, against
// the chart on real kubelets: it reads the leading controller and every
// agent through pods/exec into their containers. status lists both
// ranges and every node; check is clean; an address held for a pod that
// does not exist is found (exit 1), released by release --from-report
// through the agent's pod, and check is clean again.
func TestKubectlAliasip(t *testing.T) {
	e, ctx := setup(t, 6*time.Minute)
	plugin, err := framework.BuildBinary(t.TempDir(), "kubectl-aliasip", "./internal/kubectlplugin/cmd/kubectl-aliasip")
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Dir(plugin)

	out, code := kubectlPlugin(t, ctx, e, dir, "status")
	if code != 0 {
		t.Fatalf("kubectl aliasip status: exit %d\n%s", code, out)
	}
	t.Logf("kubectl aliasip status:\n%s", out)
	for _, want := range append([]string{"default (flags)", poolBRange, poolBCIDR}, e.Nodes...) {
		if !strings.Contains(out, want) {
			t.Errorf("status does not show %q:\n%s", want, out)
		}
	}

	report := filepath.Join(t.TempDir(), "report.json")
	// Pods of the earlier tests may still be going away: wait for a
	// clean check rather than race them.
	var last string
	if err := framework.Eventually(ctx, 2*time.Minute, func() (bool, error) {
		out, code := kubectlPlugin(t, ctx, e, dir, "check")
		last = out
		return code == kubectlplugin.ExitClean, nil
	}); err != nil {
		t.Fatalf("check never clean:\n%s", last)
	}

	// An address held for a pod that never existed, as when a pod is
	// deleted while the runtime never calls DEL: made on the node's
	// agent socket (the node's /run/aliasip is a bind mount of this
	// directory, see hack/cluster.sh node_mounts).
	node := e.Nodes[0]
	sock := filepath.Join(e.Dir, "nodes", node, "fs", "run", "aliasip", "agent.sock")
	agent := api.NewClient(sock, 10*time.Second)
	ghost, err := agent.Allocate(ctx, api.AllocateRequest{Attachment: api.Attachment{ContainerID: "kubectl-aliasip-leak", IfName: "eth0"},
		Namespace: testNS, Pod: "ghost", PodUID: "00000000-0000-4000-8000-00000000dead", HostVeth: "alinoveth0000"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		agent.Release(context.Background(), api.Attachment{ContainerID: "kubectl-aliasip-leak", IfName: "eth0"})
	})

	out, code = kubectlPlugin(t, ctx, e, dir, "check", "--min-age", "0s", "--report", report)
	if code != kubectlplugin.ExitFindings || !strings.Contains(out, "allocation-leak") || !strings.Contains(out, ghost.IP+" is held for pod "+testNS+"/ghost") {
		t.Fatalf("check: exit %d, want %d with the ghost's address %s:\n%s", code, kubectlplugin.ExitFindings, ghost.IP, out)
	}
	t.Logf("kubectl aliasip check with a leak:\n%s", out)
	var r kubectlplugin.Report
	b, err := os.ReadFile(report)
	if err == nil {
		err = json.Unmarshal(b, &r)
	}
	if err != nil {
		t.Fatal(err)
	}
	// Only what the test made: the real pods' addresses are not leaks.
	if len(r.Findings) != 1 || r.Findings[0].Node != node || r.Findings[0].IP != ghost.IP {
		t.Fatalf("report findings %+v, want only the ghost's address on %s", r.Findings, node)
	}

	out, code = kubectlPlugin(t, ctx, e, dir, "release", "--from-report", report, "--min-age", "0s")
	if code != 0 || !strings.Contains(out, "released  ") {
		t.Fatalf("release: exit %d\n%s", code, out)
	}
	t.Logf("kubectl aliasip release --from-report:\n%s", out)
	if got, err := agent.Get(ctx, api.Attachment{ContainerID: "kubectl-aliasip-leak", IfName: "eth0"}); err != nil || got.Found {
		t.Fatalf("the ghost's address is still allocated (%v): %+v", err, got)
	}
	out, code = kubectlPlugin(t, ctx, e, dir, "check")
	if code != kubectlplugin.ExitClean {
		t.Fatalf("check after release: exit %d\n%s", code, out)
	}
}
