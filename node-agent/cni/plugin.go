// Package cni is aliasip-cni, the CNI plugin the node agent installs. It
// speaks CNI 1.1 (ADD, DEL, CHECK, STATUS, GC, VERSION): the address comes
// from the agent over its unix socket, the data path is built here with
// package datapath. It logs to a file, never to stdout, and answers with CNI
// errors that name the cause.
package cni

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/aliasip/aliasip/internal/sockrpc"
	"github.com/aliasip/aliasip/node-agent/api"
	"github.com/aliasip/aliasip/node-agent/datapath"
)

// Plugin-specific CNI error codes (100 and up are the plugin's own).
const (
	// ErrRangeExhausted: the node's podCIDR has no free address.
	ErrRangeExhausted uint = 100
	// ErrDataPath: building the pod's veth, address or routes failed.
	ErrDataPath uint = 101
	// ErrCheckFailed: CHECK found the data path or allocation wrong.
	ErrCheckFailed uint = 102
)

// DefaultLogFile is where the plugin logs unless the config says otherwise.
const DefaultLogFile = "/var/log/aliasip-cni.log"

// NetConf is the plugin's configuration in the conflist.
type NetConf struct {
	types.PluginConf
	// Socket is the agent's unix socket.
	Socket string `json:"socket"`
	// LogFile is the plugin's log ("" means DefaultLogFile, "-" none).
	LogFile string `json:"logFile,omitempty"`
	// TimeoutSeconds bounds each call to the agent (default 10).
	TimeoutSeconds int `json:"timeoutSeconds,omitempty"`
}

// K8sArgs are the CNI_ARGS a kubelet passes.
type K8sArgs struct {
	types.CommonArgs
	K8S_POD_NAMESPACE          types.UnmarshallableString //nolint:revive // CNI_ARGS key
	K8S_POD_NAME               types.UnmarshallableString //nolint:revive
	K8S_POD_INFRA_CONTAINER_ID types.UnmarshallableString //nolint:revive
	K8S_POD_UID                types.UnmarshallableString //nolint:revive
}

// Main runs the plugin.
func Main() {
	skel.PluginMainFuncs(skel.CNIFuncs{Add: cmdAdd, Del: cmdDel, Check: cmdCheck, GC: cmdGC, Status: cmdStatus},
		version.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"), "aliasip-cni: VPC-native pod networking with alias IP ranges")
}

func parseConf(data []byte) (*NetConf, error) {
	conf := &NetConf{}
	if err := json.Unmarshal(data, conf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "malformed aliasip-cni configuration", err.Error())
	}
	if conf.Socket == "" {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, "aliasip-cni configuration lacks \"socket\" (the node agent's unix socket)", "")
	}
	if conf.TimeoutSeconds <= 0 {
		conf.TimeoutSeconds = 10
	}
	return conf, nil
}

// maxLogSize bounds the plugin's log file.
var maxLogSize int64 = 10 << 20

func logger(conf *NetConf) (*log.Logger, func()) {
	path := conf.LogFile
	if path == "" {
		path = DefaultLogFile
	}
	if path == "-" {
		return log.New(io.Discard, "", 0), func() {}
	}
	// The log is bounded: past maxLogSize it becomes path.1 (replacing the
	// previous one) and a new file starts. Two plugin processes may race
	// here; the worst case is one extra rotation.
	if st, err := os.Stat(path); err == nil && st.Size() > maxLogSize {
		os.Rename(path, path+".1")
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return log.New(io.Discard, "", 0), func() {}
	}
	return log.New(f, "", log.LstdFlags|log.Lmicroseconds), func() { f.Close() }
}

type podInfo struct{ namespace, name, uid string }

func podOf(args *skel.CmdArgs) podInfo {
	var k K8sArgs
	if err := types.LoadArgs(args.Args, &k); err != nil {
		return podInfo{}
	}
	// containerd's CRI plugin passes K8S_POD_NAMESPACE, K8S_POD_NAME,
	// K8S_POD_INFRA_CONTAINER_ID and K8S_POD_UID (containerd,
	// pkg/cri/server, toCNILabels).
	return podInfo{namespace: string(k.K8S_POD_NAMESPACE), name: string(k.K8S_POD_NAME), uid: string(k.K8S_POD_UID)}
}

// hostVeth names the host end: from the pod's namespace/name, or from the
// container ID when the runtime passes no pod (not Kubernetes).
func hostVeth(args *skel.CmdArgs, p podInfo) string {
	if p.name != "" {
		return datapath.HostVethName(p.namespace, p.name)
	}
	return datapath.HostVethName("", args.ContainerID+"/"+args.IfName)
}

// setUp parses the network configuration and opens the plugin's log
// (logger); the caller calls done when finished.
func setUp(args *skel.CmdArgs) (conf *NetConf, lg *log.Logger, done func(), err error) {
	if conf, err = parseConf(args.StdinData); err != nil {
		return nil, nil, nil, err
	}
	lg, done = logger(conf)
	return conf, lg, done, nil
}

// agent returns a context bounded by the configured timeout, its cancel,
// and a client of the node agent with the same timeout.
func (conf *NetConf) agent() (context.Context, context.CancelFunc, *api.Client) {
	timeout := time.Duration(conf.TimeoutSeconds) * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	return ctx, cancel, api.NewClient(conf.Socket, timeout)
}

// agentError turns an agent failure into a CNI error naming the cause.
func agentError(what string, err error) error {
	var ae *sockrpc.Error
	switch {
	case errors.Is(err, sockrpc.ErrUnreachable):
		return types.NewError(types.ErrTryAgainLater, "aliasip node agent unreachable (is aliasip-agent running?)", err.Error())
	case errors.As(err, &ae) && ae.Code == api.CodeExhausted:
		return types.NewError(ErrRangeExhausted, "node pod IP range exhausted", ae.Message)
	case errors.As(err, &ae) && ae.Code == sockrpc.CodeNotReady:
		return types.NewError(types.ErrTryAgainLater, "aliasip node agent not ready", ae.Message)
	case errors.As(err, &ae) && ae.Code == api.CodeHostVethHeld:
		return types.NewError(types.ErrTryAgainLater, "another pod of this name still runs on the node", ae.Message)
	default:
		return types.NewError(types.ErrInternal, what, err.Error())
	}
}

func cmdAdd(args *skel.CmdArgs) error {
	start := time.Now()
	conf, lg, done, err := setUp(args)
	if err != nil {
		return err
	}
	defer done()
	pod := podOf(args)
	veth := hostVeth(args, pod)
	ctx, cancel, client := conf.agent()
	defer cancel()
	att := api.Attachment{ContainerID: args.ContainerID, IfName: args.IfName}
	allocStart := time.Now()
	alloc, err := client.Allocate(ctx, api.AllocateRequest{Attachment: att, Namespace: pod.namespace, Pod: pod.name, PodUID: pod.uid, HostVeth: veth})
	if err != nil {
		lg.Printf("ADD %s %s/%s: allocate: %v", args.ContainerID, pod.namespace, pod.name, err)
		return agentError("allocate pod IP", err)
	}
	allocTook := time.Since(allocStart)
	ip, err := netip.ParseAddr(alloc.IP)
	if err != nil {
		return types.NewError(types.ErrInternal, "agent returned a bad address", alloc.IP)
	}
	var ip6 netip.Addr
	if alloc.IPv6 != "" {
		if ip6, err = netip.ParseAddr(alloc.IPv6); err != nil || !ip6.Is6() {
			if _, rerr := client.Release(ctx, att); rerr != nil {
				lg.Printf("ADD %s: release after a bad IPv6 address: %v", args.ContainerID, rerr)
			}
			return types.NewError(types.ErrInternal, "agent returned a bad IPv6 address", alloc.IPv6)
		}
	}
	res, err := datapath.SetupPod(datapath.Pod{NetNS: args.Netns, IfName: args.IfName, HostVeth: veth, ContainerID: args.ContainerID, IP: ip, IPv6: ip6, MTU: alloc.MTU})
	if err != nil {
		lg.Printf("ADD %s %s/%s: data path: %v; releasing %s", args.ContainerID, pod.namespace, pod.name, err, addrs(ip, ip6))
		datapath.TeardownPod(veth, args.ContainerID)
		if _, rerr := client.Release(ctx, att); rerr != nil {
			lg.Printf("ADD %s: release after failure: %v", args.ContainerID, rerr)
		}
		return types.NewError(ErrDataPath, "build pod data path", err.Error())
	}
	result := addResult(veth, args.IfName, args.Netns, res, ip, ip6)
	lg.Printf("ADD %s %s/%s: %s on %s in %v [%s]", args.ContainerID, pod.namespace, pod.name, addrs(ip, ip6), veth, time.Since(start), breakdown(start, allocStart, allocTook, alloc.IPAMMicros, res.Phases))
	return types.PrintResult(result, conf.CNIVersion)
}

// addResult is ADD's CNI result: the host veth and the pod's interface;
// the pod's IPv4 address (/32, gateway GatewayIP) and, when it has one,
// its IPv6 address (/128, gateway GatewayIPv6), IPv4 first, as the
// runtime reports them in status.podIPs; a default route of each family.
func addResult(veth, ifName, netns string, res *datapath.SetupResult, ip, ip6 netip.Addr) *current.Result {
	result := &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{
			{Name: veth, Mac: res.HostMAC.String()},
			{Name: ifName, Mac: res.PodMAC.String(), Sandbox: netns},
		},
		IPs: []*current.IPConfig{{
			Interface: current.Int(1),
			Address:   net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(32, 32)},
			Gateway:   datapath.GatewayIP.AsSlice(),
		}},
		Routes: []*types.Route{{Dst: net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}, GW: datapath.GatewayIP.AsSlice()}},
	}
	if ip6.IsValid() {
		result.IPs = append(result.IPs, &current.IPConfig{
			Interface: current.Int(1),
			Address:   net.IPNet{IP: ip6.AsSlice(), Mask: net.CIDRMask(128, 128)},
			Gateway:   datapath.GatewayIPv6.AsSlice(),
		})
		result.Routes = append(result.Routes, &types.Route{Dst: net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}, GW: datapath.GatewayIPv6.AsSlice()})
	}
	return result
}

// addrs is the pod's addresses for the log: "IP" or "IP,IP6".
func addrs(ip, ip6 netip.Addr) string {
	if ip6.IsValid() {
		return ip.String() + "," + ip6.String()
	}
	return ip.String()
}

// breakdown is the ADD log's account of where the time went, in µs:
// "total=… setup=… allocate=… ipam=… netns=… veth=…" — total is from the
// plugin's main to the result, setup is config and log
// before the agent is asked, allocate the socket round trip of which ipam is
// the agent's IPAM (save included), then SetupPod's phases. The benchmark
// parses it (test/bench/cni_test.go).
func breakdown(start, allocStart time.Time, allocTook time.Duration, ipamMicros int64, phases []datapath.Phase) string {
	var b strings.Builder
	fmt.Fprintf(&b, "total=%d setup=%d allocate=%d ipam=%d", time.Since(start).Microseconds(), allocStart.Sub(start).Microseconds(), allocTook.Microseconds(), ipamMicros)
	for _, p := range phases {
		fmt.Fprintf(&b, " %s=%d", p.Name, p.Took.Microseconds())
	}
	return b.String()
}

// cmdDel releases the address and removes the host veth. A missing netns,
// link or allocation is success (DEL must be idempotent). It fails — and
// the runtime calls DEL again — when the host veth cannot be removed or the
// agent cannot be reached, so the address is freed on a later call rather
// than leaked.
func cmdDel(args *skel.CmdArgs) error {
	conf, lg, done, err := setUp(args)
	if err != nil {
		return err
	}
	defer done()
	pod := podOf(args)
	ctx, cancel, client := conf.agent()
	defer cancel()
	rel, relErr := client.Release(ctx, api.Attachment{ContainerID: args.ContainerID, IfName: args.IfName})
	veth := hostVeth(args, pod)
	if relErr == nil && rel.HostVeth != "" {
		veth = rel.HostVeth
	}
	if err := datapath.TeardownPod(veth, args.ContainerID); err != nil {
		lg.Printf("DEL %s: teardown %s: %v", args.ContainerID, veth, err)
		return types.NewError(ErrDataPath, "remove pod data path", err.Error())
	}
	if relErr != nil {
		lg.Printf("DEL %s: release: %v", args.ContainerID, relErr)
		return agentError("release pod IP", relErr)
	}
	if rel.IPv6 != "" {
		lg.Printf("DEL %s %s/%s: released=%v %s,%s", args.ContainerID, pod.namespace, pod.name, rel.Found, rel.IP, rel.IPv6)
	} else {
		lg.Printf("DEL %s %s/%s: released=%v %s", args.ContainerID, pod.namespace, pod.name, rel.Found, rel.IP)
	}
	return nil
}

// cmdCheck verifies the data path from the ADD result first (so a broken
// path is reported even when the agent is busy), then that the agent still
// holds the same address for the attachment.
func cmdCheck(args *skel.CmdArgs) error {
	conf, err := parseConf(args.StdinData)
	if err != nil {
		return err
	}
	if conf.RawPrevResult == nil {
		return types.NewError(ErrCheckFailed, "CHECK needs the ADD result (prevResult)", "")
	}
	if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
		return types.NewError(types.ErrDecodingFailure, "parse prevResult", err.Error())
	}
	prev, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil || len(prev.IPs) == 0 || len(prev.Interfaces) == 0 {
		return types.NewError(ErrCheckFailed, "prevResult lacks the address or host interface", fmt.Sprint(err))
	}
	ip, ok := netip.AddrFromSlice(prev.IPs[0].Address.IP.To4())
	if !ok {
		return types.NewError(ErrCheckFailed, "prevResult address is not IPv4", prev.IPs[0].Address.String())
	}
	// A dual-stack pod's IPv6 address follows its IPv4 one (addResult).
	var ip6 netip.Addr
	for _, c := range prev.IPs[1:] {
		if a, ok := netip.AddrFromSlice(c.Address.IP); ok && c.Address.IP.To4() == nil {
			ip6 = a
			break
		}
	}
	veth := prev.Interfaces[0].Name
	if err := datapath.CheckPod(datapath.Pod{NetNS: args.Netns, IfName: args.IfName, HostVeth: veth, ContainerID: args.ContainerID, IP: ip, IPv6: ip6}); err != nil {
		return types.NewError(ErrCheckFailed, "pod data path is broken", err.Error())
	}
	ctx, cancel, client := conf.agent()
	defer cancel()
	got, err := client.Get(ctx, api.Attachment{ContainerID: args.ContainerID, IfName: args.IfName})
	if err != nil {
		return agentError("look up allocation", err)
	}
	if !got.Found {
		return types.NewError(ErrCheckFailed, "the agent holds no address for this container", args.ContainerID)
	}
	if got.IP != ip.String() {
		return types.NewError(ErrCheckFailed, "the agent's address differs from the ADD result", fmt.Sprintf("%s vs %v", got.IP, ip))
	}
	if want6 := addrString(ip6); got.IPv6 != want6 {
		return types.NewError(ErrCheckFailed, "the agent's IPv6 address differs from the ADD result", fmt.Sprintf("%q vs %q", got.IPv6, want6))
	}
	return nil
}

// cmdGC releases every allocation not in cni.dev/valid-attachments and
// removes their host veths.
func cmdGC(args *skel.CmdArgs) error {
	conf, lg, done, err := setUp(args)
	if err != nil {
		return err
	}
	defer done()
	ctx, cancel, client := conf.agent()
	defer cancel()
	valid := make([]api.Attachment, 0, len(conf.ValidAttachments))
	for _, a := range conf.ValidAttachments {
		valid = append(valid, api.Attachment{ContainerID: a.ContainerID, IfName: a.IfName})
	}
	res, err := client.GC(ctx, valid)
	if err != nil {
		return agentError("garbage-collect allocations", err)
	}
	for _, r := range res.Released {
		datapath.TeardownPod(r.HostVeth, r.ContainerID)
		if r.IPv6 != "" {
			lg.Printf("GC released %s,%s (%s)", r.IP, r.IPv6, r.HostVeth)
		} else {
			lg.Printf("GC released %s (%s)", r.IP, r.HostVeth)
		}
	}
	return nil
}

func cmdStatus(args *skel.CmdArgs) error {
	conf, err := parseConf(args.StdinData)
	if err != nil {
		return err
	}
	ctx, cancel, client := conf.agent()
	defer cancel()
	st, err := client.Status(ctx)
	if err != nil {
		return types.NewError(types.ErrPluginNotAvailable, "aliasip node agent unreachable", err.Error())
	}
	if !st.Ready {
		return types.NewError(types.ErrPluginNotAvailable, "aliasip node agent not ready", st.Reason)
	}
	return nil
}

// addrString is ip as text, "" for the zero Addr.
func addrString(ip netip.Addr) string {
	if !ip.IsValid() {
		return ""
	}
	return ip.String()
}
