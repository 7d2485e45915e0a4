// Command demo runs aliasip end to end on this machine (as root): a real
// etcd and kube-apiserver on loopback, aliasip-controller with the fake
// cloud, three nodes (each a network namespace on a shared link that plays
// the VPC, each with its own aliasip-agent), and pods created the way the
// kubelet does it (a Pod object, then CNI ADD through libcni in a fresh
// network namespace). It prints node → podCIDRs → alias → pods, then a
// pod-to-pod ping matrix with round-trip times, and cleans up — or, with
// --keep, leaves the cluster running for kubectl until Ctrl-C.
//
// It runs dual-stack by default: the controller with --dual-stack and
// --fake-ipv6-range (--ipv6-range; each instance gets the next /96 of it
// and each node the first /112 of that as its second podCIDR), every node
// with an IPv6 address on the shared link and a second InternalIP, every
// pod with an IPv4 and an IPv6 address, and the ping matrix over both
// families. --single-stack (or --ipv6-range "") runs IPv4 only.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/aliasip/aliasip/test/framework"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	nodes := flag.Int("nodes", 3, "Nodes to run.")
	podsPerNode := flag.Int("pods", 2, "Pods per node.")
	cluster := flag.String("cluster-cidr", "10.100.0.0/16", "Pod range (the fake cloud's secondary range).")
	ipv6Range := flag.String("ipv6-range", "fd00:100::/64", "The fake cloud's subnetwork IPv6 range (a ULA /64): dual-stack, each instance gets the next /96 of it. Empty: single-stack.")
	singleStack := flag.Bool("single-stack", false, "IPv4 only (the same as --ipv6-range \"\").")
	keep := flag.Bool("keep", false, "Keep the cluster running until Ctrl-C.")
	flag.Parse()
	if *singleStack {
		*ipv6Range = ""
	}
	if reason := framework.RequireRoot(); reason != "" {
		return fmt.Errorf("the demo %s", reason)
	}
	dual := *ipv6Range != ""

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	dir, err := os.MkdirTemp("", "aliasip-demo-")
	if err != nil {
		return err
	}
	step := func(format string, a ...any) { fmt.Printf("==> "+format+"\n", a...) }

	ctrlFlags := "--cluster-cidr=" + *cluster
	if dual {
		ctrlFlags += " --dual-stack --fake-ipv6-range=" + *ipv6Range
	}
	step("starting etcd, kube-apiserver and aliasip-controller --cloud=fake %s (state in %s)", ctrlFlags, dir)
	lc, err := framework.StartLocalCluster(ctx, dir, framework.LocalClusterOptions{ClusterCIDR: *cluster, IPv6Range: *ipv6Range})
	if err != nil {
		return err
	}
	defer func() {
		step("cleaning up")
		lc.Close()
		os.RemoveAll(dir)
	}()

	if dual {
		step("starting %d nodes: one network namespace each on a shared dual-stack VPC link (%v, %v), one aliasip-agent each", *nodes, lc.Fabric.Subnet, lc.Fabric.Subnet6)
	} else {
		step("starting %d nodes: one network namespace each on a shared VPC link (%v), one aliasip-agent each", *nodes, lc.Fabric.Subnet)
	}
	start := time.Now()
	var all []*framework.Node
	for i := 0; i < *nodes; i++ {
		n, err := lc.AddNode(ctx, fmt.Sprintf("node-%d", i+1), false)
		if err != nil {
			return err
		}
		all = append(all, n)
	}
	for _, n := range all {
		if err := lc.WaitAgentReady(ctx, n, 2*time.Minute); err != nil {
			return err
		}
	}
	if dual {
		step("all nodes have podCIDRs (an IPv4 block and an IPv6 /112), an alias on the fake cloud, and a ready agent (%v)", time.Since(start).Round(time.Millisecond))
	} else {
		step("all nodes have a podCIDR, an alias on the fake cloud, and a ready agent (%v)", time.Since(start).Round(time.Millisecond))
	}
	// Each agent routes every other node's blocks via that node's
	// InternalIP of the same family (--fabric=routes, the fake cloud's
	// default): wait until all are in place, as they come from Node
	// events that may trail the agents' readiness.
	perFamily := 1
	if dual {
		perFamily = 2
	}
	want := float64(perFamily * (len(all) - 1))
	if err := framework.Eventually(ctx, time.Minute, func() (bool, error) {
		for _, n := range all {
			if v, err := agentMetric(n, "aliasip_fabric_routes"); err != nil || v != want {
				return false, fmt.Errorf("%s has %v fabric routes, want %v (%v)", n.Name, v, want, err)
			}
		}
		return true, nil
	}); err != nil {
		return err
	}
	step("every agent routes the other nodes' blocks via their InternalIPs (%v fabric routes each)", want)

	step("creating %d pods per node (Pod object, then CNI ADD through libcni)", *podsPerNode)
	pods := map[string][]*framework.Pod{}
	var order []*framework.Pod
	owner := map[*framework.Pod]string{}
	for _, n := range all {
		for j := 0; j < *podsPerNode; j++ {
			p, err := lc.RunPod(ctx, n, fmt.Sprintf("web-%s-%d", strings.TrimPrefix(n.Name, "node-"), j+1))
			if err != nil {
				return err
			}
			defer p.Close()
			pods[n.Name] = append(pods[n.Name], p)
			order = append(order, p)
			owner[p] = n.Name
		}
	}

	snap, err := framework.TakeSnapshot(ctx, lc.Client, lc.Cloud)
	if err != nil {
		return err
	}
	fmt.Println()
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	if dual {
		// One line per pod: a node's columns on its first line only.
		fmt.Fprintln(tw, "NODE\tINTERNAL IPs\tspec.podCIDRs\tALIAS ON FAKE CLOUD NIC\tNIC IPv6 RANGE\tPOD\tPOD IPs")
		for _, n := range all {
			var aliases []string
			for _, a := range snap.Aliases[n.Name] {
				aliases = append(aliases, a.String())
			}
			cols := []string{n.Name, n.IP.String() + "," + n.IPv6.String(), strings.Join(snap.PodCIDRs[n.Name], ","), strings.Join(aliases, ","), snap.IPv6[n.Name].String()}
			for i, p := range pods[n.Name] {
				if i > 0 {
					cols = []string{"", "", "", "", ""}
				}
				fmt.Fprintf(tw, "%s\t%s\t%s,%s\n", strings.Join(cols, "\t"), p.Name, p.IP, p.IPv6)
			}
		}
	} else {
		fmt.Fprintln(tw, "NODE\tINTERNAL IP\tspec.podCIDR\tALIAS ON FAKE CLOUD NIC\tPODS")
		for _, n := range all {
			var aliases, ps []string
			for _, a := range snap.Aliases[n.Name] {
				aliases = append(aliases, a.String())
			}
			for _, p := range pods[n.Name] {
				ps = append(ps, fmt.Sprintf("%s=%s", p.Name, p.IP))
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", n.Name, n.IP, snap.PodCIDR[n.Name], strings.Join(aliases, ","), strings.Join(ps, " "))
		}
	}
	tw.Flush()

	failures, pings := 0, 0
	families := []string{"IPv4"}
	if dual {
		families = append(families, "IPv6")
	}
	for _, family := range families {
		fmt.Println()
		step("%s ping matrix: one ICMP echo from each pod (rows) to each pod's %s address (columns), round-trip time", family, family)
		fmt.Println()
		tw = tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
		header := "FROM \\ TO\t"
		for _, p := range order {
			header += p.Name + "\t"
		}
		fmt.Fprintln(tw, header)
		for _, from := range order {
			row := from.Name + "\t"
			for _, to := range order {
				if from == to {
					row += "-\t"
					continue
				}
				var rtt time.Duration
				var err error
				pings++
				if family == "IPv4" {
					rtt, err = framework.Ping(from.NS, to.IP, 2*time.Second)
				} else if !to.IPv6.IsValid() {
					err = fmt.Errorf("%s has no IPv6 address", to.Name)
				} else {
					rtt, err = framework.Ping6(from.NS, to.IPv6, 2*time.Second)
				}
				if err != nil {
					failures++
					row += "FAIL\t"
					continue
				}
				row += fmt.Sprintf("%.3f ms\t", float64(rtt.Microseconds())/1000)
			}
			fmt.Fprintln(tw, row)
		}
		tw.Flush()
	}
	fmt.Println()
	if failures > 0 {
		return fmt.Errorf("%d of %d pings failed", failures, pings)
	}
	if dual {
		step("every pod reaches every other pod over IPv4 and IPv6 (%d pings answered), across nodes, with no overlay and no bridge", pings)
	} else {
		step("every pod reaches every other pod (%d pings answered), across nodes, with no overlay and no bridge", pings)
	}

	if *keep {
		fmt.Printf(`
The cluster keeps running. Try:
  kubectl --kubeconfig %s get nodes -o custom-columns=NAME:.metadata.name,PODCIDRS:.spec.podCIDRs,IPS:.status.addresses[*].address
  kubectl --kubeconfig %s get pods -o wide
  cat %s/fake-cloud.json          # the fake cloud's alias ranges (and IPv6 /96s)
  ip netns list                   # nodes and pods are network namespaces
Ctrl-C stops and cleans up.
`, lc.CP.Kubeconfig, lc.CP.Kubeconfig, dir)
		<-ctx.Done()
	}
	return nil
}

// agentMetric reads one unlabelled sample from the node's agent.
func agentMetric(n *framework.Node, name string) (float64, error) {
	resp, err := http.Get("http://" + n.Metrics + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	v, ok := framework.ScrapeMetric(string(body), name, "")
	if !ok {
		return 0, fmt.Errorf("no %s", name)
	}
	return v, nil
}
