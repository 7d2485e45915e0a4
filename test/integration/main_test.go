// Package integration runs aliasip-controller, the real binary, against a
// real kube-apiserver and etcd, with the fake cloud shared through its state
// file so the tests (and restarted or competing controllers) see one cloud.
package integration

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"

	"github.com/aliasip/aliasip/fake"
	"github.com/aliasip/aliasip/test/framework"
)

var (
	cp            *framework.ControlPlane
	controllerBin string
	setupErr      error
)

// leaseSafe matches what a Lease name may not contain (subtest names have
// "/" and "_").
var leaseSafe = regexp.MustCompile(`[^a-z0-9.-]`)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "aliasip-integration-")
	if err != nil {
		panic(err)
	}
	controllerBin, setupErr = framework.BuildBinary(dir, "aliasip-controller", "./controller/cmd/aliasip-controller")
	if setupErr == nil {
		cp, setupErr = framework.StartControlPlane(context.Background(), filepath.Join(dir, "cp"))
	}
	if setupErr == nil {
		// The chart's CRDs, as helm installs them.
		setupErr = framework.InstallCRDs(context.Background(), cp.Config, framework.CRDDir())
	}
	code := m.Run()
	if cp != nil {
		cp.Stop()
	}
	if code == 0 {
		os.RemoveAll(dir)
	} else {
		fmt.Fprintf(os.Stderr, "integration: logs kept in %s\n", dir)
	}
	os.Exit(code)
}

// env is one test's view: the API client, the fake cloud's state file and
// its cluster range.
type env struct {
	t       *testing.T
	ctx     context.Context
	client  kubernetes.Interface
	dir     string
	state   string
	cluster netip.Prefix
	cloud   *fake.Cloud           // the fake cloud's state file (fake envs)
	reader  framework.AliasLister // what snapshots read the cloud through
	args    []string              // the cloud flags for the controller
	environ []string              // extra environment for the controller
}

func newEnv(t *testing.T, cluster string) *env {
	t.Helper()
	if errors.Is(setupErr, framework.ErrNotInstalled) {
		t.Skipf("skipping: %v", setupErr)
	}
	if setupErr != nil {
		t.Fatalf("setup: %v", setupErr)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	e := &env{t: t, ctx: ctx, client: cp.Client(0), dir: t.TempDir(), cluster: netip.MustParsePrefix(cluster)}
	e.state = filepath.Join(e.dir, "cloud.json")
	var err error
	e.cloud, err = fake.New(fake.Options{PodRange: e.cluster, StatePath: e.state})
	if err != nil {
		t.Fatal(err)
	}
	e.reader = e.cloud
	e.args = []string{"--cloud", "fake", "--cluster-cidr", e.cluster.String(), "--fake-state-file", e.state}
	if err := framework.DeleteAllNodes(ctx, e.client); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := framework.DeleteAllNodes(context.Background(), e.client); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return e
}

// ctrlProc is one running aliasip-controller process.
type ctrlProc struct {
	*framework.Process
	addr string
}

// startController starts the binary with the env's cloud and short timings;
// extra flags override the defaults.
func (e *env) startController(name string, extra ...string) *ctrlProc {
	e.t.Helper()
	addr := fmt.Sprintf("127.0.0.1:%d", framework.FreePort())
	args := []string{
		"--kubeconfig", cp.Kubeconfig,
		"--metrics-addr", addr, "--health-addr", addr,
		"--leader-elect-name", "aliasip-" + leaseSafe.ReplaceAllString(strings.ToLower(e.t.Name()), "-"),
		"--leader-elect-lease-duration", "4s",
		"--leader-elect-renew-deadline", "3s",
		"--leader-elect-retry-period", "500ms",
		"--gc-interval", "1s",
		"--v", "2",
	}
	args = append(append(args, e.args...), extra...)
	return e.startControllerEnv(name, e.environ, args)
}

// startControllerEnv starts the binary with exactly args and extra environment.
func (e *env) startControllerEnv(name string, environ []string, args []string) *ctrlProc {
	e.t.Helper()
	addr := ""
	for i, a := range args {
		if a == "--metrics-addr" {
			addr = args[i+1]
		}
	}
	p, err := framework.StartProcess(filepath.Join(e.dir, name+".log"), environ, controllerBin, args...)
	if err != nil {
		e.t.Fatal(err)
	}
	c := &ctrlProc{Process: p, addr: addr}
	e.t.Cleanup(func() {
		p.Stop()
		if e.t.Failed() {
			b, _ := os.ReadFile(p.Log)
			lines := strings.Split(string(b), "\n")
			if len(lines) > 40 {
				lines = lines[len(lines)-40:]
			}
			e.t.Logf("last lines of %s:\n%s", name, strings.Join(lines, "\n"))
		}
	})
	return c
}

// metric scrapes one metric from the controller.
func (c *ctrlProc) metric(name, labels string) (float64, bool) {
	resp, err := http.Get("http://" + c.addr + "/metrics")
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return framework.ScrapeMetric(string(b), name, labels)
}

// get returns the status code of a GET on the controller's health address.
func (c *ctrlProc) get(path string) int {
	resp, err := http.Get("http://" + c.addr + path)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

func (e *env) snapshot() *framework.Snapshot {
	e.t.Helper()
	s, err := framework.TakeSnapshot(e.ctx, e.client, e.reader)
	if err != nil {
		e.t.Fatal(err)
	}
	return s
}

// waitConverged waits until every node has its podCIDR and matching alias.
func (e *env) waitConverged(timeout time.Duration) *framework.Snapshot {
	e.t.Helper()
	var s *framework.Snapshot
	err := framework.Eventually(e.ctx, timeout, func() (bool, error) {
		var err error
		s, err = framework.TakeSnapshot(e.ctx, e.client, e.reader)
		return err == nil && s.Converged(), err
	})
	if err != nil {
		e.t.Fatalf("not converged: %v; pending: %v", err, s.Pending())
	}
	return s
}

func (e *env) waitEvent(node, eventType, reason string, timeout time.Duration) {
	e.t.Helper()
	err := framework.Eventually(e.ctx, timeout, func() (bool, error) {
		return framework.HasEvent(e.ctx, e.client, node, eventType, reason)
	})
	if err != nil {
		evs, _ := framework.Events(e.ctx, e.client, node)
		var got []string
		for _, ev := range evs {
			got = append(got, ev.Type+"/"+ev.Reason+": "+ev.Message)
		}
		e.t.Fatalf("no %s %s event on node %s: %v; events: %v", eventType, reason, node, err, got)
	}
}

// waitSingleLeader waits until exactly one of a and b leads, and returns
// (leader, standby).
func (e *env) waitSingleLeader(a, b *ctrlProc) (*ctrlProc, *ctrlProc) {
	e.t.Helper()
	var leader, standby *ctrlProc
	if err := framework.Eventually(e.ctx, 30*time.Second, func() (bool, error) {
		la, _ := a.metric("aliasip_leader", "")
		lb, _ := b.metric("aliasip_leader", "")
		switch {
		case la == 1 && lb == 0:
			leader, standby = a, b
		case lb == 1 && la == 0:
			leader, standby = b, a
		default:
			return false, nil
		}
		return true, nil
	}); err != nil {
		e.t.Fatalf("no single leader: %v", err)
	}
	return leader, standby
}
