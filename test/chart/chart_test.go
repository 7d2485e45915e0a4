// Package chart tests charts/aliasip with a real helm: lint, render, refuse
// bad values, install into a real kube-apiserver (every object accepted by
// the API's validation), and check that the rendered command lines are
// flags the binaries accept.
package chart

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/aliasip/aliasip/test/framework"
)

func helm(t *testing.T) string {
	t.Helper()
	h, err := framework.Binary("helm")
	if errors.Is(err, framework.ErrNotInstalled) {
		t.Skipf("skipping: %v", err)
	}
	return h
}

func chartDir() string { return filepath.Join(framework.RepoRoot(), "charts", "aliasip") }

func run(t *testing.T, bin string, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command(bin, args...).CombinedOutput()
	return string(out), err
}

func TestLintAndRender(t *testing.T) {
	h := helm(t)
	for _, values := range [][]string{
		{"--set", "cloud=gce"},
		{"--set", "cloud=gce,gce.project=p,gce.zone=us-central1-a,gce.subnetwork=nodes,gce.secondaryRange=pods"},
		{"--set", "cloud=fake,clusterCIDR=10.244.0.0/16"},
	} {
		if out, err := run(t, h, append([]string{"lint", "--strict", chartDir()}, values...)...); err != nil {
			t.Errorf("helm lint %v: %v\n%s", values, err, out)
		}
		out, err := run(t, h, append([]string{"template", "aliasip", chartDir(), "-n", "kube-system"}, values...)...)
		if err != nil {
			t.Fatalf("helm template %v: %v\n%s", values, err, out)
		}
		for _, want := range []string{"kind: Deployment", "kind: DaemonSet", "/aliasip-controller", "/aliasip-agent", "hostNetwork: true"} {
			if !strings.Contains(out, want) {
				t.Errorf("rendered chart %v lacks %q", values, want)
			}
		}
	}
	for _, bad := range []struct {
		set, msg string
	}{
		{"cloud=fake", "clusterCIDR is required"},
		{"cloud=aws", "cloud must be gce or fake"},
	} {
		out, err := run(t, h, "template", "aliasip", chartDir(), "--set", bad.set)
		if err == nil || !strings.Contains(out, bad.msg) {
			t.Errorf("--set %s: %v, output %q; want a failure saying %q", bad.set, err, out, bad.msg)
		}
	}
}

// The chart installs cleanly into a real API server, and the command lines
// it renders are accepted by the binaries' flag validation.
func TestInstallAndFlags(t *testing.T) {
	h := helm(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir := t.TempDir()
	cp, err := framework.StartControlPlane(ctx, filepath.Join(dir, "cp"))
	if errors.Is(err, framework.ErrNotInstalled) {
		t.Skipf("skipping: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer cp.Stop()
	ctrl, err := framework.BuildBinary(dir, "aliasip-controller", "./controller/cmd/aliasip-controller")
	if err != nil {
		t.Fatal(err)
	}
	agent, err := framework.BuildBinary(dir, "aliasip-agent", "./node-agent/cmd/aliasip-agent")
	if err != nil {
		t.Fatal(err)
	}
	out, err := run(t, h, "install", "aliasip", chartDir(), "--kubeconfig", cp.Kubeconfig, "-n", "kube-system",
		"--set", "cloud=fake,clusterCIDR=10.244.0.0/16", "--wait=false")
	if err != nil {
		t.Fatalf("helm install: %v\n%s", err, out)
	}
	client := cp.Client(0)
	dep, err := client.AppsV1().Deployments("kube-system").Get(ctx, "aliasip-controller", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("controller Deployment: %v", err)
	}
	ds, err := client.AppsV1().DaemonSets("kube-system").Get(ctx, "aliasip-agent", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("agent DaemonSet: %v", err)
	}
	for _, name := range []string{"aliasip-controller", "aliasip-agent"} {
		if _, err := client.RbacV1().ClusterRoles().Get(ctx, name, metav1.GetOptions{}); err != nil {
			t.Errorf("ClusterRole %s: %v", name, err)
		}
	}

	// The rendered flags pass each binary's validation: a bad flag exits 2
	// at once; a good command line starts and keeps running.
	for _, c := range []struct {
		bin  string
		args []string
	}{
		{ctrl, append(dep.Spec.Template.Spec.Containers[0].Args, "--kubeconfig", cp.Kubeconfig, "--metrics-addr", "127.0.0.1:0", "--health-addr", "127.0.0.1:0")},
		{agent, append(ds.Spec.Template.Spec.Containers[0].Args, "--kubeconfig", cp.Kubeconfig, "--node-name", "no-such-node",
			"--metrics-addr", "127.0.0.1:0", "--state-dir", filepath.Join(dir, "state"), "--socket", filepath.Join(dir, "s.sock"),
			"--cni-conf-dir", filepath.Join(dir, "conf"), "--cni-bin-dir", filepath.Join(dir, "bin"))},
	} {
		p, err := framework.StartProcess(filepath.Join(dir, filepath.Base(c.bin)+".log"), nil, c.bin, c.args...)
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Second)
		if p.Exited() {
			b, _ := os.ReadFile(p.Log)
			t.Errorf("%s with the chart's flags exited: %v\n%s", filepath.Base(c.bin), p.Wait(), b)
		}
		p.Stop()
	}

	if out, err := run(t, h, "uninstall", "aliasip", "--kubeconfig", cp.Kubeconfig, "-n", "kube-system"); err != nil {
		t.Fatalf("helm uninstall: %v\n%s", err, out)
	}
	if _, err := client.AppsV1().DaemonSets("kube-system").Get(ctx, "aliasip-agent", metav1.GetOptions{}); err == nil {
		t.Error("DaemonSet left after uninstall")
	}
}
