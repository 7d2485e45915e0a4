package agent

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"k8s.io/client-go/tools/record"
)

// conflistPlugins returns the plugin types the conflist chains, in order.
func conflistPlugins(t *testing.T, confDir string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(confDir, ConfListName))
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		Plugins []struct {
			Type string `json:"type"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal(b, &list); err != nil {
		t.Fatalf("conflist: %v\n%s", err, b)
	}
	var types []string
	for _, p := range list.Plugins {
		types = append(types, p.Type)
	}
	return strings.Join(types, ",")
}

// drainEvents returns the events recorded so far.
func drainEvents(r *record.FakeRecorder) []string {
	var out []string
	for {
		select {
		case e := <-r.Events:
			out = append(out, e)
		default:
			return out
		}
	}
}

// The conflist names portmap only when --cni-bin-dir holds an executable
// portmap; a missing one is one Warning (not one per resync) and a gauge.
func TestConflistChainsOnlyPresentPlugins(t *testing.T) {
	for _, tc := range []struct {
		name         string
		chainPortmap bool
		portmap      func(path string) error // how the bin dir holds portmap; nil: not at all
		wantChain    string
		wantMissing  float64
		wantWarning  bool
	}{
		{name: "portmap missing", chainPortmap: true, wantChain: "aliasip-cni", wantMissing: 1, wantWarning: true},
		{name: "portmap present", chainPortmap: true, portmap: executable, wantChain: "aliasip-cni,portmap"},
		{name: "portmap not executable", chainPortmap: true, wantChain: "aliasip-cni", wantMissing: 1, wantWarning: true,
			portmap: func(p string) error { return os.WriteFile(p, []byte("#!/bin/sh\n"), 0o644) }},
		{name: "portmap a directory", chainPortmap: true, wantChain: "aliasip-cni", wantMissing: 1, wantWarning: true,
			portmap: func(p string) error { return os.Mkdir(p, 0o755) }},
		{name: "chaining off", chainPortmap: false, wantChain: "aliasip-cni"},
		{name: "chaining off, portmap present", chainPortmap: false, portmap: executable, wantChain: "aliasip-cni"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, rec := newConflistAgent(t, tc.chainPortmap)
			if tc.portmap != nil {
				if err := tc.portmap(filepath.Join(a.cfg.CNIBinDir, "portmap")); err != nil {
					t.Fatal(err)
				}
			}
			for range 3 { // start-up, then two resyncs
				if err := a.writeConflist(context.Background()); err != nil {
					t.Fatal(err)
				}
			}
			if got := conflistPlugins(t, a.cfg.CNIConfDir); got != tc.wantChain {
				t.Errorf("conflist chains %s, want %s", got, tc.wantChain)
			}
			if got := testutil.ToFloat64(a.metrics.ChainedPluginMissing.WithLabelValues("portmap")); got != tc.wantMissing {
				t.Errorf("aliasip_cni_chained_plugin_missing{plugin=portmap} = %v, want %v", got, tc.wantMissing)
			}
			evs := drainEvents(rec)
			switch {
			case tc.wantWarning && (len(evs) != 1 || !strings.HasPrefix(evs[0], "Warning "+EventPortmapMissing+" ")):
				t.Errorf("events %q, want one Warning %s", evs, EventPortmapMissing)
			case tc.wantWarning && !(strings.Contains(evs[0], "hostPort") && strings.Contains(evs[0], a.cfg.CNIBinDir)):
				t.Errorf("event %q does not say hostPorts break and where portmap belongs", evs[0])
			case !tc.wantWarning && len(evs) != 0:
				t.Errorf("events %q, want none", evs)
			}
		})
	}
}

// portmap installed later is chained on the next pass, removed again it is
// dropped: one Warning per time it goes missing.
func TestConflistFollowsPortmap(t *testing.T) {
	a, rec := newConflistAgent(t, true)
	portmap := filepath.Join(a.cfg.CNIBinDir, "portmap")
	for i, step := range []struct {
		do          func() error
		wantChain   string
		wantMissing float64
		wantEvents  int
	}{
		{func() error { return nil }, "aliasip-cni", 1, 1},
		{func() error { return executable(portmap) }, "aliasip-cni,portmap", 0, 0},
		{func() error { return nil }, "aliasip-cni,portmap", 0, 0},
		{func() error { return os.Remove(portmap) }, "aliasip-cni", 1, 1},
	} {
		if err := step.do(); err != nil {
			t.Fatal(err)
		}
		if err := a.writeConflist(context.Background()); err != nil {
			t.Fatal(err)
		}
		if got := conflistPlugins(t, a.cfg.CNIConfDir); got != step.wantChain {
			t.Errorf("step %d: conflist chains %s, want %s", i, got, step.wantChain)
		}
		if got := testutil.ToFloat64(a.metrics.ChainedPluginMissing.WithLabelValues("portmap")); got != step.wantMissing {
			t.Errorf("step %d: gauge %v, want %v", i, got, step.wantMissing)
		}
		if evs := drainEvents(rec); len(evs) != step.wantEvents {
			t.Errorf("step %d: events %q, want %d", i, evs, step.wantEvents)
		}
	}
	// Only the conflist is in the conf dir: no temporary files left behind.
	if ents, err := os.ReadDir(a.cfg.CNIConfDir); err != nil || len(ents) != 1 {
		t.Errorf("conf dir holds %v (%v), want only %s", ents, err, ConfListName)
	}
}

func executable(path string) error { return os.WriteFile(path, []byte("#!/bin/sh\n"), 0o755) }

func newConflistAgent(t *testing.T, chainPortmap bool) (*Agent, *record.FakeRecorder) {
	t.Helper()
	dir := t.TempDir()
	cfg := Config{NodeName: "n", CNIConfDir: filepath.Join(dir, "net.d"), CNIBinDir: filepath.Join(dir, "bin"),
		Socket: filepath.Join(dir, "agent.sock"), ChainPortmap: chainPortmap}
	for _, d := range []string{cfg.CNIConfDir, cfg.CNIBinDir} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	rec := record.NewFakeRecorder(10)
	return New(cfg, nil, rec, NewMetrics(prometheus.NewRegistry())), rec
}

// The plugin binary is replaced when it differs (an upgrade) and left in
// place when it is the same (a restart: no write, no fsync of megabytes).
func TestCopyAtomicSkipsIdentical(t *testing.T) {
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "bin", "aliasip-cni")
	os.WriteFile(src, []byte("v1"), 0o644)
	if err := copyAtomic(src, dst, 0o755); err != nil {
		t.Fatal(err)
	}
	before, _ := os.Stat(dst)
	if err := copyAtomic(src, dst, 0o755); err != nil {
		t.Fatal(err)
	}
	if after, _ := os.Stat(dst); !os.SameFile(before, after) {
		t.Error("an identical binary was rewritten")
	}
	os.WriteFile(src, []byte("v2"), 0o644)
	if err := copyAtomic(src, dst, 0o755); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(dst); string(b) != "v2" {
		t.Errorf("installed %q after an upgrade, want v2", b)
	}
	os.Chmod(dst, 0o644)
	copyAtomic(src, dst, 0o755)
	if st, _ := os.Stat(dst); st.Mode().Perm() != 0o755 {
		t.Errorf("mode %v not restored to 0755", st.Mode().Perm())
	}
}
