// Command demo runs aliasip end to end on this machine (as root): a real
// etcd and kube-apiserver on loopback, aliasip-controller with the fake
// cloud, three nodes (each a network namespace on a shared link that plays
// the VPC, each with its own aliasip-agent), and pods created the way the
// kubelet does it (a Pod object, then CNI ADD through libcni in a fresh
// network namespace). It prints node → podCIDR → alias → pods, then a
// pod-to-pod ping matrix with round-trip times, and cleans up — or, with
// --keep, leaves the cluster running for kubectl until Ctrl-C.
package main

import (
	"context"
	"flag"
	"fmt"
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
	keep := flag.Bool("keep", false, "Keep the cluster running until Ctrl-C.")
	flag.Parse()
	if reason := framework.RequireRoot(); reason != "" {
		return fmt.Errorf("the demo %s", reason)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	dir, err := os.MkdirTemp("", "aliasip-demo-")
	if err != nil {
		return err
	}
	step := func(format string, a ...any) { fmt.Printf("==> "+format+"\n", a...) }

	step("starting etcd, kube-apiserver and aliasip-controller --cloud=fake --cluster-cidr=%s (state in %s)", *cluster, dir)
	lc, err := framework.StartLocalCluster(ctx, dir, framework.LocalClusterOptions{ClusterCIDR: *cluster})
	if err != nil {
		return err
	}
	defer func() {
		step("cleaning up")
		lc.Close()
		os.RemoveAll(dir)
	}()

	step("starting %d nodes: one network namespace each on a shared VPC link, one aliasip-agent each", *nodes)
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
	step("all nodes have a podCIDR, an alias on the fake cloud, and a ready agent (%v)", time.Since(start).Round(time.Millisecond))

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
	tw.Flush()

	fmt.Println()
	step("ping matrix: one ICMP echo from each pod (rows) to each pod (columns), round-trip time")
	fmt.Println()
	tw = tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	header := "FROM \\ TO\t"
	for _, p := range order {
		header += p.Name + "\t"
	}
	fmt.Fprintln(tw, header)
	failures := 0
	for _, from := range order {
		row := from.Name + "\t"
		for _, to := range order {
			if from == to {
				row += "-\t"
				continue
			}
			rtt, err := framework.Ping(from.NS, to.IP, 2*time.Second)
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
	fmt.Println()
	if failures > 0 {
		return fmt.Errorf("%d pings failed", failures)
	}
	step("every pod reaches every other pod, across nodes, with no overlay and no bridge")

	if *keep {
		fmt.Printf(`
The cluster keeps running. Try:
  kubectl --kubeconfig %s get nodes -o custom-columns=NAME:.metadata.name,PODCIDR:.spec.podCIDR,IP:.status.addresses[0].address
  kubectl --kubeconfig %s get pods -o wide
  cat %s/fake-cloud.json          # the fake cloud's alias ranges
  ip netns list                   # nodes and pods are network namespaces
Ctrl-C stops and cleans up.
`, lc.CP.Kubeconfig, lc.CP.Kubeconfig, dir)
		<-ctx.Done()
	}
	return nil
}
