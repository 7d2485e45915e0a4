// Command demo runs aliasip on a local control plane: a real etcd and
// kube-apiserver on loopback, aliasip-controller with the fake cloud, and a
// set of Nodes; it prints each node's podCIDR beside the alias range the
// fake cloud holds for its instance, then cleans up (or, with --keep, leaves
// everything running for kubectl).
package main

import (
	"context"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/aliasip/aliasip/fake"
	"github.com/aliasip/aliasip/test/framework"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	nodes := flag.Int("nodes", 6, "Nodes to create.")
	cluster := flag.String("cluster-cidr", "10.100.0.0/16", "Pod range.")
	keep := flag.Bool("keep", false, "Keep the cluster running until Ctrl-C.")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	dir, err := os.MkdirTemp("", "aliasip-demo-")
	if err != nil {
		return err
	}
	fmt.Printf("== starting etcd and kube-apiserver (state in %s)\n", dir)
	cp, err := framework.StartControlPlane(ctx, filepath.Join(dir, "cp"))
	if err != nil {
		return err
	}
	defer cp.Stop()
	bin, err := framework.BuildBinary(dir, "aliasip-controller", "./controller/cmd/aliasip-controller")
	if err != nil {
		return err
	}
	state := filepath.Join(dir, "fake-cloud.json")
	fmt.Println("== starting aliasip-controller --cloud=fake --cluster-cidr", *cluster)
	ctrl, err := framework.StartProcess(filepath.Join(dir, "controller.log"), nil, bin,
		"--kubeconfig", cp.Kubeconfig, "--cloud", "fake", "--cluster-cidr", *cluster,
		"--fake-state-file", state, "--fake-latency", "50ms",
		"--metrics-addr", "127.0.0.1:0", "--health-addr", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer ctrl.Stop()

	client := cp.Client(0)
	names := framework.NodeNames("node", *nodes)
	fmt.Printf("== creating %d Nodes\n", *nodes)
	start := time.Now()
	if err := framework.CreateNodes(ctx, client, names, nil); err != nil {
		return err
	}
	cl, err := fake.New(fake.Options{PodRange: netip.MustParsePrefix(*cluster), StatePath: state})
	if err != nil {
		return err
	}
	var snap *framework.Snapshot
	if err := framework.Eventually(ctx, time.Minute, func() (bool, error) {
		snap, err = framework.TakeSnapshot(ctx, client, cl)
		return err == nil && snap.Converged(), err
	}); err != nil {
		return fmt.Errorf("nodes did not converge (log: %s): %w", ctrl.Log, err)
	}
	fmt.Printf("== all %d nodes converged in %v\n\n", *nodes, time.Since(start).Round(time.Millisecond))
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tspec.podCIDR\tALIAS ON FAKE CLOUD NIC\tEVENT")
	sort.Strings(names)
	for _, n := range names {
		var aliases []string
		for _, a := range snap.Aliases[n] {
			aliases = append(aliases, a.String())
		}
		ev := ""
		if evs, err := framework.Events(ctx, client, n); err == nil && len(evs) > 0 {
			ev = evs[0].Reason + ": " + evs[0].Message
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", n, snap.PodCIDR[n], strings.Join(aliases, ","), ev)
	}
	tw.Flush()

	victim := names[0]
	fmt.Printf("\n== deleting %s: its alias is removed and its block cools down before reuse\n", victim)
	if err := client.CoreV1().Nodes().Delete(ctx, victim, metav1.DeleteOptions{}); err != nil {
		return err
	}
	if err := framework.Eventually(ctx, 30*time.Second, func() (bool, error) {
		snap, err = framework.TakeSnapshot(ctx, client, cl)
		return err == nil && len(snap.Aliases[victim]) == 0, err
	}); err != nil {
		return err
	}
	fmt.Printf("   alias of %s removed from its instance\n", victim)

	if *keep {
		fmt.Printf("\n== cluster kept running; try:\n   kubectl --kubeconfig %s get nodes -o custom-columns=NAME:.metadata.name,PODCIDR:.spec.podCIDR\n   cat %s\nCtrl-C to stop.\n", cp.Kubeconfig, state)
		<-ctx.Done()
	}
	fmt.Println("\n== cleaning up")
	ctrl.Stop()
	cp.Stop()
	os.RemoveAll(dir)
	return nil
}
