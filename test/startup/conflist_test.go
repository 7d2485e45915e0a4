package startup

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
)

// How the nodes are switched between CNIs.
//
// The agent writes 10-aliasip.conflist into the node's /etc/cni/net.d once
// and rewrites it only when what it chains changes (node-agent/agent
// cniconfig.go writeConflist, also called on each resync). containerd
// 1.6's CRI loads only the first config file of conf_dir in lexical order
// (max_conf_num, default 1: containerd docs/cri/config.md; go-cni
// loadFromConfDir sorts libcni.ConfFiles) and reloads when the directory
// changes (containerd pkg/cri/server/cni_conf_syncer.go, fsnotify). So the
// benchmark writes its own 00-startup.conflist, which shadows the agent's
// file without touching it, and removes it at the end: the node is back on
// the agent's conflist.
//
// Both configs name a cnitimer wrapper (test/startup/cnitimer) as their
// first plugin, so the runtime's CNI ADD of each sandbox can be timed the
// same way for both: from the wrapper's start to libcni's result cache
// file. The aliasip config is the agent's own, only with the wrapper's
// type; the bridge config is kubenet's shape (bridge cni0, isGateway,
// hairpin, host-local), dual-stack as the cluster is, chained to portmap
// as the agent chains it.
const (
	confName     = "00-startup.conflist"
	agentConf    = "10-aliasip.conflist"
	bridgeNet    = "startup-bridge"
	bridgeDev    = "cni0"
	debianCNIDir = "/usr/lib/cni" // Debian's containernetworking-plugins (make deps)
	cniTimerLog  = "cni-timer.log"
)

// nodeFS is the host path of the node's private copy of path (hack/cluster.sh
// node_mounts: the node's /etc/cni/net.d, /opt/cni/bin, /var/log, ... are
// bind mounts of $dir/nodes/<node>/fs/...).
func nodeFS(node, path string) string {
	return filepath.Join(clusterDir, "nodes", node, "fs", path)
}

// installPlugins puts Debian's bridge and host-local and the cnitimer
// wrappers (timed-bridge, timed-aliasip-cni) into the node's CNI bin dir.
func installPlugins(node, timer string) error {
	bin := nodeFS(node, "/opt/cni/bin")
	for _, p := range []struct{ src, dst string }{
		{filepath.Join(debianCNIDir, "bridge"), "bridge"},
		{filepath.Join(debianCNIDir, "host-local"), "host-local"},
		{timer, "timed-bridge"},
		{timer, "timed-aliasip-cni"},
	} {
		b, err := os.ReadFile(p.src)
		if err != nil {
			return err
		}
		if err := writeAtomic(filepath.Join(bin, p.dst), b, 0o755); err != nil {
			return err
		}
	}
	return nil
}

// uninstall removes what installPlugins and setConf added: the node is on
// the agent's conflist again, and cni0 is gone.
func uninstall(node string) error {
	var errs []error
	for _, p := range []string{nodeFS(node, "/etc/cni/net.d/"+confName), nodeFS(node, "/opt/cni/bin/bridge"),
		nodeFS(node, "/opt/cni/bin/host-local"), nodeFS(node, "/opt/cni/bin/timed-bridge"), nodeFS(node, "/opt/cni/bin/timed-aliasip-cni")} {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	errs = append(errs, deleteBridge(node))
	os.RemoveAll(hostLocalDir(node))
	return errors.Join(errs...)
}

// aliasipConf is the agent's conflist with the wrapper as the first
// plugin's type.
func aliasipConf(node string) ([]byte, error) {
	b, err := os.ReadFile(nodeFS(node, "/etc/cni/net.d/"+agentConf))
	if err != nil {
		return nil, err
	}
	var conf map[string]any
	if err := json.Unmarshal(b, &conf); err != nil {
		return nil, err
	}
	plugins, _ := conf["plugins"].([]any)
	if len(plugins) == 0 {
		return nil, fmt.Errorf("%s: no plugins", agentConf)
	}
	first, _ := plugins[0].(map[string]any)
	if first == nil || first["type"] != "aliasip-cni" {
		return nil, fmt.Errorf("%s: first plugin %v, want aliasip-cni", agentConf, plugins[0])
	}
	first["type"] = "timed-aliasip-cni"
	return json.MarshalIndent(conf, "", "  ")
}

func hostLocalDir(node string) string {
	return filepath.Join(clusterDir, "nodes", node, "startup-host-local")
}

// upperHalf is the upper half of a block, less its last address: the
// bridge's host-local range within the node's podCIDR, away from the
// addresses aliasip gave the pods that stay while the bridge is measured
// (CoreDNS: the agent hands out a fresh block's addresses from its start,
// node-agent/ipam addresses.go findFree).
func upperHalf(p netip.Prefix) (start, end netip.Addr) {
	a := p.Masked().Addr().AsSlice()
	bits := p.Bits() + 1 // the first address of the upper half
	a[(bits-1)/8] |= 1 << (7 - (bits-1)%8)
	start, _ = netip.AddrFromSlice(a)
	b := p.Masked().Addr().AsSlice()
	for i := range b {
		host := max(0, min(8, (i+1)*8-p.Bits()))
		b[i] |= byte(1<<host - 1)
	}
	last, _ := netip.AddrFromSlice(b)
	return start, last.Prev() // IPv4: not the broadcast address
}

// bridgeConf is kubenet's bridge + host-local on the node's podCIDRs
// (upper halves), chained to portmap.
func bridgeConf(node string, podCIDRs []netip.Prefix) ([]byte, error) {
	var ranges [][]map[string]string
	var routes []map[string]string
	for _, p := range podCIDRs {
		s, e := upperHalf(p)
		ranges = append(ranges, []map[string]string{{"subnet": p.String(), "rangeStart": s.String(), "rangeEnd": e.String()}})
		dst := "0.0.0.0/0"
		if p.Addr().Is6() {
			dst = "::/0"
		}
		routes = append(routes, map[string]string{"dst": dst})
	}
	conf := map[string]any{
		"cniVersion": "1.0.0", "name": bridgeNet,
		"plugins": []any{
			map[string]any{
				"type": "timed-bridge", "bridge": bridgeDev, "isGateway": true, "ipMasq": false,
				// kubenet's hairpin mode; with it, bridge also turns IPv6
				// DAD off on the pod's interface (plugins bridge.go).
				"hairpinMode": true, "mtu": 1460,
				"ipam": map[string]any{"type": "host-local", "ranges": ranges, "routes": routes, "dataDir": hostLocalDir(node)},
			},
			map[string]any{"type": "portmap", "capabilities": map[string]bool{"portMappings": true}, "snat": true},
		},
	}
	return json.MarshalIndent(conf, "", "  ")
}

// setConf makes conf the node's first CNI config.
func setConf(node string, conf []byte) error {
	return writeAtomic(nodeFS(node, "/etc/cni/net.d/"+confName), conf, 0o644)
}

// deleteBridge removes cni0 (and with it the bridge's gateway addresses and
// connected routes) from the node, so aliasip is measured on a node as the
// agent left it.
func deleteBridge(node string) error {
	n, err := ns.GetNS("/run/netns/aliasip-" + node)
	if err != nil {
		return err
	}
	defer n.Close()
	return n.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName(bridgeDev)
		if err != nil {
			if _, ok := err.(netlink.LinkNotFoundError); ok {
				return nil
			}
			return err
		}
		return netlink.LinkDel(l)
	})
}

// routeDev is the host's device towards ip on the node: ali* for an
// aliasip pod, cni0 for a bridge pod.
func routeDev(node string, ip netip.Addr) (string, error) {
	n, err := ns.GetNS("/run/netns/aliasip-" + node)
	if err != nil {
		return "", err
	}
	defer n.Close()
	var dev string
	err = n.Do(func(ns.NetNS) error {
		rs, err := netlink.RouteGet(ip.AsSlice())
		if err != nil {
			return err
		}
		if len(rs) == 0 {
			return fmt.Errorf("no route to %s", ip)
		}
		l, err := netlink.LinkByIndex(rs[0].LinkIndex)
		if err != nil {
			return err
		}
		dev = l.Attrs().Name
		return nil
	})
	return dev, err
}

func writeAtomic(dst string, data []byte, mode os.FileMode) error {
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
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), dst)
}

// buildTimer builds the cnitimer wrapper, static like the plugins.
func buildTimer(root, dir string) (string, error) {
	out := filepath.Join(dir, "cnitimer")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", out, "./test/startup/cnitimer")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build cnitimer: %v\n%s", err, b)
	}
	return out, nil
}
