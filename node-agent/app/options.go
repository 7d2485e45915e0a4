// Package app is the node agent's application layer, shaped like the
// controller's: flags into Options (NewOptions, AddFlags), Options checked
// (Validate, which changes nothing, one-line errors), Options parsed once
// into the typed Config (Config), and Run wiring the clients, metrics,
// events and health endpoints around the agent from that Config. The
// command's main only parses and calls it.
package app

import (
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"time"

	"github.com/aliasip/aliasip/node-agent/agent"
	"github.com/spf13/pflag"
)

// Options are aliasip-agent's flags.
type Options struct {
	NodeName      string
	Kubeconfig    string
	Cloud         string
	Fabric        string
	HostInterface string
	NetNS         string
	CNIConfDir    string
	CNIBinDir     string
	StateDir      string
	Socket        string
	PluginBinary  string
	PluginLogFile string
	ChainPortmap  bool
	IPCooldown    time.Duration
	PodGCGrace    time.Duration
	PodGCInterval time.Duration
	ResyncPeriod  time.Duration
	MetricsAddr   string
	// GuestAgentConfig is the GCE guest agent's configuration file
	// (default with --cloud=gce: /etc/default/instance_configs.cfg).
	GuestAgentConfig string
	// ProcSys is where the agent reads and writes sysctls.
	ProcSys string
	// Masquerade, MasqConfigMap and ClusterCIDRs configure egress
	// masquerade (package egress).
	Masquerade    bool
	MasqConfigMap string
	ClusterCIDRs  []string
	// NodeCIDRMaskSize is the default IPv4 range's block length (0: not
	// known).
	NodeCIDRMaskSize int
}

// NewOptions returns the defaults: here, in the flags' defaults, and (for
// the two that depend on --cloud) in cloudDefaults. nodeName comes from
// $NODE_NAME and pluginDir is where the aliasip-cni to install sits (next
// to the agent): the command's main reads both before the flags are parsed.
func NewOptions(nodeName, pluginDir string) *Options {
	return &Options{
		NodeName:      nodeName,
		Cloud:         "gce",
		CNIConfDir:    "/etc/cni/net.d",
		CNIBinDir:     "/opt/cni/bin",
		StateDir:      "/var/lib/aliasip",
		Socket:        "/run/aliasip/agent.sock",
		PluginBinary:  filepath.Join(pluginDir, "aliasip-cni"),
		PluginLogFile: "/var/log/aliasip-cni.log",
		ChainPortmap:  true,
		IPCooldown:    30 * time.Second,
		PodGCGrace:    2 * time.Minute,
		PodGCInterval: time.Minute,
		ResyncPeriod:  30 * time.Second,
		MetricsAddr:   ":9982",
		ProcSys:       "/proc/sys",
		Masquerade:    true,
		// Where GKE keeps ip-masq-agent's configuration, so a GKE user's
		// ConfigMap works unchanged (https://cloud.google.com/kubernetes-engine/docs/how-to/ip-masquerade-agent).
		MasqConfigMap: "kube-system/ip-masq-agent",
	}
}

// AddFlags registers the flags.
func (o *Options) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.NodeName, "node-name", o.NodeName, "This node's name (default: $NODE_NAME).")
	fs.StringVar(&o.Kubeconfig, "kubeconfig", o.Kubeconfig, "Path to a kubeconfig; empty means in-cluster configuration.")
	fs.StringVar(&o.Cloud, "cloud", o.Cloud, "Cloud: gce (the podCIDR must be an alias range of this VM, checked through the metadata server) or fake.")
	fs.StringVar(&o.GuestAgentConfig, "guest-agent-config", o.GuestAgentConfig, "The GCE guest agent's configuration file, read for [IpForwarding] ip_aliases and ethernet_proto_id (default with --cloud=gce: /etc/default/instance_configs.cfg).")
	fs.StringVar(&o.Fabric, "fabric", o.Fabric, "none, or routes: route other nodes' podCIDRs via their InternalIPs, as the VPC does (default: routes with the fake cloud, none on GCE).")
	fs.StringVar(&o.HostInterface, "host-interface", o.HostInterface, "The node's interface to the VPC (default: the default route's).")
	fs.StringVar(&o.NetNS, "netns", o.NetNS, "Network namespace to treat as the host (default: the agent's own; for several agents on one machine).")
	fs.StringVar(&o.CNIConfDir, "cni-conf-dir", o.CNIConfDir, "Where to write "+agent.ConfListName+".")
	fs.StringVar(&o.CNIBinDir, "cni-bin-dir", o.CNIBinDir, "Where to install aliasip-cni.")
	fs.StringVar(&o.StateDir, "state-dir", o.StateDir, "Where the IPAM state lives.")
	fs.StringVar(&o.Socket, "socket", o.Socket, "The agent's unix socket for aliasip-cni.")
	fs.StringVar(&o.PluginBinary, "plugin-binary", o.PluginBinary, "The aliasip-cni binary to install (empty: do not install).")
	fs.StringVar(&o.PluginLogFile, "cni-log-file", o.PluginLogFile, "Log file of aliasip-cni on the host, written into the conflist (the plugin keeps it under 10 MiB, rotating to one .1 file).")
	fs.StringVar(&o.ProcSys, "proc-sys-dir", o.ProcSys, "Where sysctls are read and written: /proc/sys, or (for an agent that is not privileged) a writable mount of the host's /proc/sys/net at DIR/net.")
	fs.BoolVar(&o.ChainPortmap, "chain-portmap", o.ChainPortmap, "Chain the portmap plugin (hostPort) after aliasip-cni in the conflist, once --cni-bin-dir holds an executable portmap (checked every --resync-period; a Warning event PortmapMissing while it does not).")
	fs.DurationVar(&o.IPCooldown, "ip-cooldown", o.IPCooldown, "How long a released pod address waits before reuse.")
	fs.DurationVar(&o.PodGCGrace, "pod-gc-grace", o.PodGCGrace, "Age before an allocation whose pod is not in the API is released.")
	fs.DurationVar(&o.PodGCInterval, "pod-gc-interval", o.PodGCInterval, "How often allocations are checked against the API's pods.")
	fs.DurationVar(&o.ResyncPeriod, "resync-period", o.ResyncPeriod, "Periodic reconcile of routes and sysctls (netlink events trigger it too).")
	fs.BoolVar(&o.Masquerade, "masquerade", o.Masquerade, "SNAT this node's pods' traffic to destinations outside the non-masquerade set to the node's address (nftables table ip aliasip). false removes the table: for Cloud NAT set-ups that cover the pod ranges.")
	fs.StringVar(&o.MasqConfigMap, "masq-config", o.MasqConfigMap, "NAMESPACE/NAME of the ConfigMap holding the non-masquerade set in ip-masq-agent's format (key \"config\": nonMasqueradeCIDRs, masqLinkLocal, resyncInterval); without it, or while it does not exist, the cloud's defaults (gce: GKE's list; fake: none). Empty: never read one.")
	fs.StringSliceVar(&o.ClusterCIDRs, "cluster-cidr", o.ClusterCIDRs, "The default pod range(s) (the controller's --cluster-cidr; on a dual-stack cluster also the IPv6 range the nodes' /112s come from), never masqueraded; PodRanges are followed on their own. Needed on GCE when the default range is outside GKE's default non-masquerade list (a privately used public range). With --fabric=routes these ranges and the PodRanges bound which other nodes' blocks are routed, and an IPv4 one is required.")
	fs.IntVar(&o.NodeCIDRMaskSize, "node-cidr-mask-size", o.NodeCIDRMaskSize, "The length of the blocks of the first IPv4 --cluster-cidr (the controller's --node-cidr-mask-size); with --fabric=routes another node's IPv4 block of another length in that range is not routed. 0: any length.")
	fs.StringVar(&o.MetricsAddr, "metrics-addr", o.MetricsAddr, "Address of /metrics, /healthz and /readyz (empty: off).")
}

// cloudDefaults returns the two defaults that depend on --cloud, for the
// flags left empty: the guest agent's configuration file (read on GCE
// only) and the fabric. It changes nothing.
func (o *Options) cloudDefaults() (guestAgentConfig, fabric string) {
	guestAgentConfig, fabric = o.GuestAgentConfig, o.Fabric
	if guestAgentConfig == "" && o.Cloud == "gce" {
		guestAgentConfig = "/etc/default/instance_configs.cfg"
	}
	if fabric == "" {
		fabric = map[string]string{"gce": "none", "fake": "routes"}[o.Cloud]
	}
	return guestAgentConfig, fabric
}

// Config is what Run runs on: the options parsed into typed values, with
// the defaults that depend on --cloud applied. Options.Config builds it.
type Config struct {
	// Agent configures the agent.
	Agent agent.Config
	// Kubeconfig is the kubeconfig's path (empty: in-cluster).
	Kubeconfig string
	// MetricsAddr serves /metrics, /healthz and /readyz (empty: off).
	MetricsAddr string
}

// Validate checks the options; the error is one line. It changes nothing:
// it is Config without the result.
func (o *Options) Validate() error {
	_, err := o.Config()
	return err
}

// Config checks the options and parses them, once, into the Config Run
// runs on; the error is one line. It changes nothing.
func (o *Options) Config() (Config, error) {
	if o.NodeName == "" {
		return Config{}, fmt.Errorf("--node-name (or $NODE_NAME) is required")
	}
	switch o.Cloud {
	case "gce", "fake":
	default:
		return Config{}, fmt.Errorf("--cloud=%q: want gce or fake", o.Cloud)
	}
	guestAgentConfig, fabric := o.cloudDefaults()
	switch fabric {
	case "none", "routes":
	default:
		return Config{}, fmt.Errorf("--fabric=%q: want none or routes", o.Fabric)
	}
	for name, v := range map[string]string{"--cni-conf-dir": o.CNIConfDir, "--cni-bin-dir": o.CNIBinDir, "--state-dir": o.StateDir, "--socket": o.Socket} {
		if v == "" || !filepath.IsAbs(v) {
			return Config{}, fmt.Errorf("%s=%q: want an absolute path", name, v)
		}
	}
	if o.IPCooldown < 0 || o.PodGCGrace < 0 || o.PodGCInterval <= 0 || o.ResyncPeriod <= 0 {
		return Config{}, fmt.Errorf("--ip-cooldown and --pod-gc-grace must not be negative, --pod-gc-interval and --resync-period must be positive")
	}
	if o.MasqConfigMap != "" {
		ns, name, ok := strings.Cut(o.MasqConfigMap, "/")
		if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
			return Config{}, fmt.Errorf("--masq-config=%q: want NAMESPACE/NAME", o.MasqConfigMap)
		}
	}
	var clusterCIDRs []netip.Prefix
	for _, c := range o.ClusterCIDRs {
		p, err := netip.ParsePrefix(c)
		if err != nil || p.Masked() != p {
			return Config{}, fmt.Errorf("--cluster-cidr=%q: want a network in CIDR notation, e.g. 10.244.0.0/16", c)
		}
		clusterCIDRs = append(clusterCIDRs, p)
	}
	var first4 netip.Prefix
	for _, p := range clusterCIDRs {
		if p.Addr().Is4() && !first4.IsValid() {
			first4 = p
		}
	}
	// Without an IPv4 range an agent emulating the VPC would route any
	// IPv4 podCIDR another Node claims (a kubelet may write its own), so
	// it must be told the ranges blocks come from.
	if fabric == "routes" && !first4.IsValid() {
		return Config{}, fmt.Errorf("--fabric=routes needs an IPv4 --cluster-cidr (the default pod range): other nodes' blocks are routed only inside the pod ranges")
	}
	if o.NodeCIDRMaskSize != 0 && (!first4.IsValid() || o.NodeCIDRMaskSize < first4.Bits() || o.NodeCIDRMaskSize > 32) {
		return Config{}, fmt.Errorf("--node-cidr-mask-size=%d: want 0, or a length between the first IPv4 --cluster-cidr's (%v) and 32", o.NodeCIDRMaskSize, first4)
	}
	if o.MetricsAddr != "" {
		if _, _, err := net.SplitHostPort(o.MetricsAddr); err != nil {
			return Config{}, fmt.Errorf("--metrics-addr=%q: %v", o.MetricsAddr, err)
		}
	}
	a := agent.Config{
		NodeName: o.NodeName, HostInterface: o.HostInterface, NetNS: o.NetNS, Cloud: o.Cloud,
		FabricRoutes: fabric == "routes",
		CNIConfDir:   o.CNIConfDir, CNIBinDir: o.CNIBinDir, StateDir: o.StateDir, Socket: o.Socket,
		PluginBinary: o.PluginBinary, PluginLogFile: o.PluginLogFile, ChainPortmap: o.ChainPortmap,
		IPCooldown: o.IPCooldown, PodGCGrace: o.PodGCGrace, PodGCInterval: o.PodGCInterval, ResyncPeriod: o.ResyncPeriod,
		GuestAgentConfig: guestAgentConfig, ProcSys: o.ProcSys,
		Masquerade: o.Masquerade, MasqConfigMap: o.MasqConfigMap,
		ClusterCIDRs: clusterCIDRs, NodeCIDRMaskSize: o.NodeCIDRMaskSize,
	}
	if o.Cloud == "gce" {
		a.AliasCheck = agent.GCEAliasCheck
	}
	return Config{Agent: a, Kubeconfig: o.Kubeconfig, MetricsAddr: o.MetricsAddr}, nil
}
