package bench

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/aliasip/aliasip/test/framework"
)

// controllerBench is the set-up of a controller benchmark: a directory,
// aliasip-controller built into it, and a control plane (stopped when the
// benchmark ends).
func controllerBench(b *testing.B) (dir, ctrlBin string, cp *framework.ControlPlane) {
	b.Helper()
	dir = b.TempDir()
	ctrlBin, err := framework.BuildBinary(dir, "aliasip-controller", "./controller/cmd/aliasip-controller")
	if err != nil {
		b.Fatal(err)
	}
	return dir, ctrlBin, startControlPlane(b, dir)
}

// nodeBench is the set-up of a node benchmark: a directory, aliasip-agent
// and aliasip-cni built into it, a control plane and a fabric (both
// stopped when the benchmark ends).
func nodeBench(b *testing.B) (dir, agentBin, pluginBin string, cp *framework.ControlPlane, fabric *framework.Fabric) {
	b.Helper()
	dir = b.TempDir()
	agentBin, pluginBin = nodeBinaries(b, dir)
	cp = startControlPlane(b, dir)
	fabric, err := framework.NewFabric()
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(fabric.Close)
	return dir, agentBin, pluginBin, cp, fabric
}

// nodeBinaries returns aliasip-agent and aliasip-cni, from `make build` or
// built into dir.
func nodeBinaries(b *testing.B, dir string) (agent, plugin string) {
	b.Helper()
	agent, err := framework.BuildBinary(dir, "aliasip-agent", "./node-agent/cmd/aliasip-agent")
	if err != nil {
		b.Fatal(err)
	}
	plugin, err = framework.BuildBinary(dir, "aliasip-cni", "./node-agent/cmd/aliasip-cni")
	if err != nil {
		b.Fatal(err)
	}
	return agent, plugin
}

// startControlPlane starts etcd and kube-apiserver under dir, stopped when
// the benchmark ends, or skips the benchmark when hack/deps.sh has not
// installed them.
func startControlPlane(b *testing.B, dir string) *framework.ControlPlane {
	b.Helper()
	cp, err := framework.StartControlPlane(context.Background(), filepath.Join(dir, "cp"))
	if errors.Is(err, framework.ErrNotInstalled) {
		b.Skipf("skipping: %v", err)
	}
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(cp.Stop)
	return cp
}

func TestMain(m *testing.M) {
	os.Exit(m.Run())
}
