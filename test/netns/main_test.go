// Package netns tests the node agent and CNI plugin for real: each node is a
// network namespace on an emulated VPC link with its own aliasip-agent
// process, pods are network namespaces attached through libcni the way a
// container runtime does it, against a real kube-apiserver. Root only.
package netns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/aliasip/aliasip/test/framework"
)

var (
	cp         *framework.ControlPlane
	agentBin   string
	pluginBin  string
	setupErr   error
	skipReason string
)

func TestMain(m *testing.M) {
	if skipReason = framework.RequireRoot(); skipReason != "" {
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "aliasip-netns-")
	if err != nil {
		panic(err)
	}
	agentBin, setupErr = framework.BuildBinary(dir, "aliasip-agent", "./node-agent/cmd/aliasip-agent")
	if setupErr == nil {
		pluginBin, setupErr = framework.BuildBinary(dir, "aliasip-cni", "./node-agent/cmd/aliasip-cni")
	}
	if setupErr == nil {
		if _, err := os.Stat(filepath.Join(framework.CacheDir(), "cni", "portmap")); err != nil {
			setupErr = fmt.Errorf("portmap: %w", framework.ErrNotInstalled)
		}
	}
	if setupErr == nil {
		cp, setupErr = framework.StartControlPlane(context.Background(), filepath.Join(dir, "cp"))
	}
	code := m.Run()
	if cp != nil {
		cp.Stop()
	}
	if code == 0 {
		os.RemoveAll(dir)
	}
	os.Exit(code)
}

// env is one test's cluster: the API, the fabric, and its nodes.
type env struct {
	t      *testing.T
	ctx    context.Context
	client kubernetes.Interface
	fabric *framework.Fabric
	nodes  []*framework.Node
	dirs   []string // node directories, removed by the cleanup
}

var nodeSeq atomic.Int32

func newEnv(t *testing.T) *env {
	t.Helper()
	switch {
	case skipReason != "":
		t.Skipf("skipping: %s", skipReason)
	case errors.Is(setupErr, framework.ErrNotInstalled):
		t.Skipf("skipping: %v", setupErr)
	case setupErr != nil:
		t.Fatalf("setup: %v", setupErr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	f, err := framework.NewFabric()
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, ctx: ctx, client: cp.Client(0), fabric: f}
	t.Cleanup(func() {
		for _, n := range e.nodes {
			if t.Failed() && n.Agent != nil {
				b, _ := os.ReadFile(n.Agent.Log)
				lines := strings.Split(string(b), "\n")
				if len(lines) > 30 {
					lines = lines[len(lines)-30:]
				}
				t.Logf("agent %s log tail:\n%s", n.Name, strings.Join(lines, "\n"))
				if c, err := os.ReadFile(n.CNILog); err == nil {
					t.Logf("cni log of %s:\n%s", n.Name, c)
				}
			}
			n.Close()
			e.client.CoreV1().Nodes().Delete(context.Background(), n.Name, metav1.DeleteOptions{})
		}
		e.client.CoreV1().Pods("default").DeleteCollection(context.Background(), metav1.DeleteOptions{GracePeriodSeconds: new(int64)}, metav1.ListOptions{})
		f.Close()
		for _, d := range e.dirs {
			if err := framework.Eventually(context.Background(), time.Second, func() (bool, error) {
				err := os.RemoveAll(d)
				return err == nil, err
			}); err != nil {
				t.Logf("removing %s: %v", d, err)
			}
		}
	})
	return e
}

// nodeDir is a directory for one node's agent state, sockets and logs. It
// is removed after the env's cleanup has stopped every process; a file an
// exiting process writes late (seen once in CI as "directory not empty"
// from t.TempDir's cleanup) is retried rather than failing the test.
func (e *env) nodeDir(name string) string {
	e.t.Helper()
	dir, err := os.MkdirTemp("", "aliasip-netns-"+name+"-")
	if err != nil {
		e.t.Fatal(err)
	}
	e.dirs = append(e.dirs, dir)
	return dir
}

// node creates a node with podCIDR, registers it and starts its agent;
// extra flags go to the agent. It waits until the conflist is written.
func (e *env) node(podCIDR string, extra ...string) *framework.Node {
	e.t.Helper()
	n := e.bareNode()
	if err := n.RegisterNode(e.ctx, e.client, podCIDR); err != nil {
		e.t.Fatal(err)
	}
	e.startAgent(n, extra...)
	return n
}

// bareNode creates a node on the fabric, not yet registered and with no
// agent, closed and its Node deleted by the env's cleanup.
func (e *env) bareNode() *framework.Node {
	e.t.Helper()
	name := fmt.Sprintf("nn-%d", nodeSeq.Add(1))
	n, err := e.fabric.AddNode(name, e.nodeDir(name))
	if err != nil {
		e.t.Fatal(err)
	}
	e.nodes = append(e.nodes, n)
	return n
}

func (e *env) startAgent(n *framework.Node, extra ...string) {
	e.t.Helper()
	args := n.AgentArgs(cp.Kubeconfig, pluginBin, append([]string{"--ip-cooldown", "2s", "--resync-period", "2s", "--v", "2"}, extra...)...)
	p, err := framework.StartProcess(filepath.Join(n.Dir, "agent.log"), nil, agentBin, args...)
	if err != nil {
		e.t.Fatal(err)
	}
	n.Agent = p
	if err := framework.Eventually(e.ctx, 30*time.Second, func() (bool, error) {
		if p.Exited() {
			return false, framework.Stop(fmt.Errorf("agent exited: %v", p.Wait()))
		}
		_, err := os.Stat(filepath.Join(n.ConfDir, "10-aliasip.conflist"))
		if err != nil {
			return false, nil
		}
		resp, err := http.Get("http://" + n.Metrics + "/readyz")
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		return resp.StatusCode == 200, nil
	}); err != nil {
		e.t.Fatalf("agent of %s never became ready: %v", n.Name, err)
	}
}

// pod creates the Pod object and the sandbox, and runs ADD.
func (e *env) pod(n *framework.Node, name string) *framework.Pod {
	e.t.Helper()
	p := e.newPod(n, name)
	if err := n.Add(e.ctx, p); err != nil {
		e.t.Fatalf("ADD %s: %v", name, err)
	}
	return p
}

func (e *env) newPod(n *framework.Node, name string) *framework.Pod {
	e.t.Helper()
	uid, err := framework.CreatePodObjectUID(e.ctx, e.client, "default", name, n.Name)
	if err != nil {
		e.t.Fatal(err)
	}
	p, err := framework.NewPod("default", name)
	if err != nil {
		e.t.Fatal(err)
	}
	p.UID = uid
	e.t.Cleanup(p.Close)
	return p
}

// cniCode returns the CNI error code of err (0 if it is not a CNI error).
func cniCode(err error) uint {
	var te *types.Error
	if errors.As(err, &te) {
		return te.Code
	}
	return 0
}

// waitNodeEvent waits for a Warning event with reason on the node.
func (e *env) waitNodeEvent(n *framework.Node, reason string) {
	e.t.Helper()
	if err := framework.Eventually(e.ctx, 15*time.Second, func() (bool, error) {
		return framework.HasEvent(e.ctx, e.client, n.Name, "Warning", reason)
	}); err != nil {
		e.t.Errorf("no Warning %s event on node %s: %v", reason, n.Name, err)
	}
}

// serveTCP accepts connections on ln until the test ends, each handled by
// handle in a goroutine of its own and closed after it.
func serveTCP(t *testing.T, ln net.Listener, handle func(net.Conn)) {
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
}
