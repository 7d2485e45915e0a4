package kubelet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The cluster DNS and the outside host as hack/cluster.sh makes them.
const (
	clusterDNSIP  = "10.96.0.10"       // kubeadm's: the 10th address of the service CIDR
	kubernetesSvc = "10.96.0.1"        // the kubernetes Service: the first
	outsideDNS    = "198.18.0.10:53"   // the outside host's DNS server, the nodes' resolver
	outsideName   = "www.outside.test" // in its zone outside.test,
	outsideAddr   = "198.18.0.10"      // the outside host itself
)

// lookupResults parses netcheck lookup's "OK NAME -> ADDR ..." lines.
func lookupResults(logs string) map[string][]string {
	got := map[string][]string{}
	for _, l := range strings.Split(logs, "\n") {
		f := strings.Fields(l)
		if len(f) >= 4 && f[0] == "OK" && f[2] == "->" {
			got[f[1]] = f[3:]
		}
	}
	return got
}

// resolvConf parses netcheck lookup --show-resolv-conf's "resolv.conf:
// LINE" lines into the values of each keyword.
func resolvConf(logs string) map[string][]string {
	conf := map[string][]string{}
	for _, l := range strings.Split(logs, "\n") {
		line, ok := strings.CutPrefix(l, "resolv.conf: ")
		if f := strings.Fields(line); ok && len(f) > 0 {
			conf[f[0]] = append(conf[f[0]], f[1:]...)
		}
	}
	return conf
}

// waitForCoreDNS waits until the kube-dns Service has kubeadm's address and
// the CoreDNS Deployment's replicas are all ready.
func waitForCoreDNS(t *testing.T, ctx context.Context, e *clusterEnv) {
	t.Helper()
	var last string
	eventually(t, ctx, 3*time.Minute, "CoreDNS ready behind kube-dns", func() (bool, error) {
		svc, err := e.Client.CoreV1().Services("kube-system").Get(ctx, "kube-dns", metav1.GetOptions{})
		if err != nil {
			last = err.Error()
			return false, nil
		}
		d, err := e.Client.AppsV1().Deployments("kube-system").Get(ctx, "coredns", metav1.GetOptions{})
		if err != nil {
			last = err.Error()
			return false, nil
		}
		last = fmt.Sprintf("kube-dns %s, coredns %d of %d ready", svc.Spec.ClusterIP, d.Status.ReadyReplicas, *d.Spec.Replicas)
		return svc.Spec.ClusterIP == clusterDNSIP && *d.Spec.Replicas > 0 && d.Status.ReadyReplicas == *d.Spec.Replicas, nil
	})
	t.Log(last)
}

// TestDNSResolvesServices: a pod on every node, in both node pools, is
// given the cluster DNS by its kubelet (nameserver 10.96.0.10, the
// namespace's search path) and resolves through CoreDNS the kubernetes
// Service's full name and a test Service's full and short names, to their
// cluster IPs; a GET through the Service by name works. No
// MissingClusterDNS Warning is recorded for those pods or their nodes.
func TestDNSResolvesServices(t *testing.T) {
	e, ctx := setup(t, 10*time.Minute)
	if len(e.PoolB) == 0 {
		t.Fatal("the cluster has no pool-b node")
	}
	waitForCoreDNS(t, ctx, e)
	ensureNetcheck(t, ctx, e, int32(2*len(e.Nodes)))
	svcIP := ensureNetcheckService(t, ctx, e)
	full := fmt.Sprintf("%s.%s.svc.cluster.local", netcheckName, testNS)
	started := time.Now()
	for _, node := range e.Nodes {
		job := "dns-" + node
		logs := runJobOn(t, ctx, e, node, job, "lookup", "--show-resolv-conf",
			"kubernetes.default.svc.cluster.local", full, netcheckName)
		conf := resolvConf(logs)
		wantSearch := []string{testNS + ".svc.cluster.local", "svc.cluster.local", "cluster.local"}
		if !slices.Equal(conf["nameserver"], []string{clusterDNSIP}) || !slices.Equal(conf["search"], wantSearch) {
			t.Errorf("%s: pod resolv.conf nameserver %v search %v, want [%s] %v (kubelet clusterDNS, clusterDomain)\n%s",
				node, conf["nameserver"], conf["search"], clusterDNSIP, wantSearch, logs)
		}
		got := lookupResults(logs)
		for name, want := range map[string]string{"kubernetes.default.svc.cluster.local": kubernetesSvc, full: svcIP, netcheckName: svcIP} {
			if !slices.Equal(got[name], []string{want}) {
				t.Errorf("%s: %s resolved to %v, want [%s]\n%s", node, name, got[name], want, logs)
			}
		}
		deleteJob(ctx, e, job)

		job = "dns-get-" + node
		urls := []string{"http://" + netcheckName + "/", "http://" + full + "/"}
		logs = runJobOn(t, ctx, e, node, job, append([]string{"get"}, urls...)...)
		if n := strings.Count(logs, "OK "); n != len(urls) {
			t.Errorf("%s: %d of %d GETs through the Service by name OK:\n%s", node, n, len(urls), logs)
		}
		deleteJob(ctx, e, job)
	}
	checkNoMissingClusterDNS(t, ctx, e, started)
}

// checkNoMissingClusterDNS: the kubelet records MissingClusterDNS when it
// starts a ClusterFirst pod without clusterDNS (pkg/kubelet/network/dns
// dns.go GetPodDNS), on the pod and on its node, as it computes the
// sandbox's DNS config: before the container's Started event. So once the
// Started events of the pods created since since are in, any such Warning
// about them would be too.
func checkNoMissingClusterDNS(t *testing.T, ctx context.Context, e *clusterEnv, since time.Time) {
	t.Helper()
	var pods []string
	eventually(t, ctx, time.Minute, "Started events of the DNS test's pods", func() (bool, error) {
		evs, err := e.Client.CoreV1().Events(testNS).List(ctx, metav1.ListOptions{FieldSelector: "reason=Started"})
		if err != nil {
			return false, nil
		}
		started := map[string]bool{}
		for _, ev := range evs.Items {
			if ev.InvolvedObject.Kind == "Pod" && strings.HasPrefix(ev.InvolvedObject.Name, "dns-") && !eventTime(ev).Before(since.Add(-time.Second)) {
				started[ev.InvolvedObject.Name] = true
			}
		}
		pods = nil
		for p := range started {
			pods = append(pods, p)
		}
		// Two Jobs per node, each one pod.
		return len(started) >= 2*len(e.Nodes), nil
	})
	evs, err := e.Client.CoreV1().Events("").List(ctx, metav1.ListOptions{FieldSelector: "reason=MissingClusterDNS"})
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range evs.Items {
		if eventTime(ev).Before(since.Add(-time.Second)) {
			continue
		}
		t.Errorf("MissingClusterDNS on %s %s/%s: %s", ev.InvolvedObject.Kind, ev.InvolvedObject.Namespace, ev.InvolvedObject.Name, ev.Message)
	}
	t.Logf("no MissingClusterDNS Warning for %d pods started since %s, nor for their nodes", len(pods), since.Format(time.TimeOnly))
}

// eventTime is when an event last happened, whichever API wrote it.
func eventTime(ev corev1.Event) time.Time {
	switch {
	case !ev.LastTimestamp.IsZero():
		return ev.LastTimestamp.Time
	case !ev.EventTime.IsZero():
		return ev.EventTime.Time
	}
	return ev.CreationTimestamp.Time
}

// resolverIn returns a Go resolver whose queries go to server from inside
// netns (the socket belongs to the namespace it was created in).
func resolverIn(netns ns.NetNS, server string) *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var c net.Conn
		err := netns.Do(func(ns.NetNS) error {
			var err error
			c, err = (&net.Dialer{Timeout: 2 * time.Second}).DialContext(ctx, network, server)
			return err
		})
		return c, err
	}}
}

// TestDNSOutside: the outside host's DNS server answers every node (asked
// from the node's own address, which the outside routes back to):
// www.outside.test is 198.18.0.10 and a name it does not hold is
// NXDOMAIN. A pod on every node, in both pools, resolves www.outside.test
// through the cluster DNS, whose CoreDNS forwards it to the node's
// resolver (the outside's, its resolv.conf with dnsPolicy Default) from
// its pod address, which only masquerade makes answerable.
func TestDNSOutside(t *testing.T) {
	e, ctx := setup(t, 8*time.Minute)
	if len(e.PoolB) == 0 {
		t.Fatal("the cluster has no pool-b node")
	}
	for _, node := range e.Nodes {
		r := resolverIn(nodeNetNS(t, node), outsideDNS)
		var last string
		// Rooted names: the host's resolv.conf search list stays out of it.
		eventually(t, ctx, 30*time.Second, node+": the outside's DNS server answers "+outsideName, func() (bool, error) {
			addrs, err := r.LookupHost(ctx, outsideName+".")
			last = fmt.Sprintf("%v %v", addrs, err)
			return err == nil && slices.Equal(addrs, []string{outsideAddr}), nil
		})
		_, err := r.LookupHost(ctx, "nothere.outside.test.")
		var de *net.DNSError
		if !errors.As(err, &de) || !de.IsNotFound {
			t.Errorf("%s: nothere.outside.test from the outside's DNS server: %v, want NXDOMAIN", node, err)
		}
		t.Logf("%s: %s -> %s from the outside's DNS server", node, outsideName, last)
	}

	waitForCoreDNS(t, ctx, e)
	ensureNamespace(t, ctx, e)
	for _, node := range e.Nodes {
		job := "dns-outside-" + node
		logs := runJobOn(t, ctx, e, node, job, "lookup", outsideName)
		if got := lookupResults(logs)[outsideName]; !slices.Equal(got, []string{outsideAddr}) {
			t.Errorf("%s: %s through the cluster DNS resolved to %v, want [%s]\n%s", node, outsideName, got, outsideAddr, logs)
		}
		deleteJob(ctx, e, job)
	}
}
