package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
)

// installCNI copies the plugin into the bin dir and writes the conflist,
// each atomically (temporary file, rename), so a runtime never runs a
// half-written binary or reads a half-written config.
func (a *Agent) installCNI(ctx context.Context) error {
	if a.cfg.PluginBinary != "" {
		if err := copyAtomic(a.cfg.PluginBinary, filepath.Join(a.cfg.CNIBinDir, "aliasip-cni"), 0o755); err != nil {
			return fmt.Errorf("install aliasip-cni: %w", err)
		}
	}
	return a.writeConflist(ctx)
}

// writeConflist writes the conflist if what it should chain changed since
// the last write. It never names a plugin missing from --cni-bin-dir: the
// runtime looks plugins up there and fails every ADD of a conflist that
// names a missing one (libcni: `failed to find plugin "portmap" in path`).
// A portmap that appears later is chained on the next resync.
func (a *Agent) writeConflist(ctx context.Context) error {
	portmap := a.cfg.ChainPortmap && isExecutable(filepath.Join(a.cfg.CNIBinDir, "portmap"))
	chain := "aliasip-cni"
	if portmap {
		chain += ",portmap"
	}
	a.mu.Lock()
	prev := a.conflistChain
	a.mu.Unlock()
	if prev == chain {
		return nil
	}
	plugins := []map[string]any{{
		"type":    "aliasip-cni",
		"socket":  a.cfg.Socket,
		"logFile": a.cfg.PluginLogFile,
	}}
	if portmap {
		plugins = append(plugins, map[string]any{"type": "portmap", "capabilities": map[string]bool{"portMappings": true}, "snat": true})
	}
	// cniVersion 1.0.0 for runtimes whose libcni predates spec 1.1 (containerd
	// 1.6 vendors CNI v1.1.2 and rejects a 1.1.0 result: "unsupported CNI
	// result version"); cniVersions lets newer runtimes pick 1.1.0 and so
	// call STATUS and GC ("CNI runtimes MUST select the highest supported
	// version from ... cniVersion and cniVersions": CNI SPEC.md, Version
	// considerations; libcni v1.2+ conf.go reads cniVersions).
	conf, err := json.MarshalIndent(map[string]any{
		"cniVersion": "1.0.0", "cniVersions": []string{"1.0.0", "1.1.0"},
		"name": NetworkName, "plugins": plugins,
	}, "", "  ")
	if err != nil {
		return err
	}
	if err := writeAtomic(filepath.Join(a.cfg.CNIConfDir, ConfListName), conf, 0o644); err != nil {
		return fmt.Errorf("write %s: %w", ConfListName, err)
	}
	a.mu.Lock()
	a.conflistChain = chain
	a.mu.Unlock()
	missing := a.cfg.ChainPortmap && !portmap
	a.metrics.ChainedPluginMissing.WithLabelValues("portmap").Set(map[bool]float64{true: 1}[missing])
	logger := klog.FromContext(ctx)
	switch {
	case missing:
		logger.Info("portmap is not in the CNI bin dir: the conflist chains only aliasip-cni; hostPorts will not work", "cniBinDir", a.cfg.CNIBinDir)
		a.event(corev1.EventTypeWarning, EventPortmapMissing,
			"--chain-portmap is set but %s has no portmap plugin: the CNI config chains only aliasip-cni, so hostPort mappings do not work. Install the CNI reference plugin portmap there (picked up within --resync-period) or set --chain-portmap=false.", a.cfg.CNIBinDir)
	case prev != "":
		logger.Info("CNI config rewritten", "plugins", chain)
	}
	return nil
}

func isExecutable(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0
}

func copyAtomic(src, dst string, mode os.FileMode) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	// The same binary already in place (an agent restart): leave it, rather
	// than spend a write and an fsync of megabytes on every start.
	if st, err := os.Stat(dst); err == nil && st.Mode().Perm() == mode.Perm() && st.Size() == int64(len(data)) {
		if cur, err := os.ReadFile(dst); err == nil && bytes.Equal(cur, data) {
			return nil
		}
	}
	return writeAtomic(dst, data, mode)
}

func writeAtomic(dst string, data []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), dst)
}
