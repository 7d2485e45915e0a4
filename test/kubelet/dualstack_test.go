package kubelet

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// nodePodCIDRs returns the node's spec.podCIDRs, one per family.
func nodePodCIDRs(t *testing.T, ctx context.Context, e *clusterEnv, node string) []netip.Prefix {
	t.Helper()
	n, err := e.Client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var out []netip.Prefix
	for _, c := range n.Spec.PodCIDRs {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			t.Fatalf("node %s podCIDRs %v: %v", node, n.Spec.PodCIDRs, err)
		}
		out = append(out, p)
	}
	return out
}

// podIPv6 returns the pod's IPv6 address from status.podIPs.
func podIPv6(p corev1.Pod) (netip.Addr, bool) {
	for _, ip := range p.Status.PodIPs {
		if a, err := netip.ParseAddr(ip.IP); err == nil && a.Is6() {
			return a, true
		}
	}
	return netip.Addr{}, false
}

// TestDualStackPods: on the dual-stack cluster (hack/cluster.sh: the chart
// with ipv6.enabled, the API server with an IPv6 service range, kubelets
// with an IPv4 and an IPv6 node IP), every node's podCIDRs are [its IPv4
// block, an IPv6 /112], none shared; every pod of a Deployment spread over
// all nodes has status.podIPs [IPv4, IPv6], each inside its node's block
// of that family, none shared; and a Job on every node reaches every pod
// on its IPv6 address, on its own node and across nodes.
func TestDualStackPods(t *testing.T) {
	e, ctx := setup(t, 8*time.Minute)
	blocks := map[netip.Prefix]string{}
	cidrs := map[string][]netip.Prefix{}
	for _, n := range e.Nodes {
		c := nodePodCIDRs(t, ctx, e, n)
		if len(c) != 2 || !c[0].Addr().Is4() || !c[1].Addr().Is6() || c[1].Bits() != 112 {
			t.Fatalf("node %s podCIDRs %v; want [IPv4 block, IPv6 /112]", n, c)
		}
		for _, b := range c {
			if other, dup := blocks[b]; dup {
				t.Errorf("nodes %s and %s share %s", other, n, b)
			}
			blocks[b] = n
		}
		cidrs[n] = c
	}
	pods := ensureNetcheck(t, ctx, e, int32(2*len(e.Nodes)))
	seen := map[netip.Addr]string{}
	var urls6 []string
	for _, p := range pods {
		if len(p.Status.PodIPs) != 2 {
			t.Errorf("pod %s podIPs %v; want one per family", p.Name, p.Status.PodIPs)
			continue
		}
		c := cidrs[p.Spec.NodeName]
		for i, ip := range p.Status.PodIPs {
			a, err := netip.ParseAddr(ip.IP)
			if err != nil {
				t.Fatalf("pod %s podIPs %v: %v", p.Name, p.Status.PodIPs, err)
			}
			// IPv4 first: the kubelet orders podIPs as the runtime reports
			// them, and the plugin's result lists IPv4 first, as the
			// node's podCIDRs do.
			if !c[i].Contains(a) {
				t.Errorf("pod %s on %s: podIPs[%d] %s is outside the node's %s", p.Name, p.Spec.NodeName, i, a, c[i])
			}
			if other, dup := seen[a]; dup {
				t.Errorf("pods %s and %s share %s", other, p.Name, a)
			}
			seen[a] = p.Name
		}
		a6, _ := podIPv6(p)
		urls6 = append(urls6, fmt.Sprintf("http://%s/", net.JoinHostPort(a6.String(), "8080")))
	}
	for _, node := range e.Nodes {
		name := "reach6-from-" + node
		logs := runJobOn(t, ctx, e, node, name, append([]string{"get"}, urls6...)...)
		if got := strings.Count(logs, "OK "); got != len(urls6) {
			t.Errorf("job on %s: %d of %d pods reached over IPv6:\n%s", node, got, len(urls6), logs)
		}
		deleteJob(ctx, e, name)
	}
}

// TestDualStackService: a RequireDualStack ClusterIP Service in front of
// netcheck gets one ClusterIP per family (the API server's two service
// ranges), and kube-proxy on every node answers both, from more than one
// backend, and the backend sees the client pod's own address of that
// family (inside its node's block: no SNAT on the way).
func TestDualStackService(t *testing.T) {
	e, ctx := setup(t, 8*time.Minute)
	ensureNetcheck(t, ctx, e, int32(2*len(e.Nodes)))
	name := netcheckName + "-ds"
	require := corev1.IPFamilyPolicyRequireDualStack
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: testNS},
		Spec: corev1.ServiceSpec{
			Selector:       map[string]string{"app": netcheckName},
			Ports:          []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}},
			IPFamilyPolicy: &require,
			IPFamilies:     []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol},
		},
	}
	created, err := e.Client.CoreV1().Services(testNS).Create(ctx, svc, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		created, err = e.Client.CoreV1().Services(testNS).Get(ctx, name, metav1.GetOptions{})
	}
	if err != nil {
		t.Fatal(err)
	}
	if len(created.Spec.ClusterIPs) != 2 {
		t.Fatalf("service %s clusterIPs %v; want one per family", name, created.Spec.ClusterIPs)
	}
	for i, ip := range created.Spec.ClusterIPs {
		fam := "IPv4"
		if i == 1 {
			fam = "IPv6"
		}
		url := fmt.Sprintf("http://%s/", net.JoinHostPort(ip, "80"))
		var urls []string
		for range 12 {
			urls = append(urls, url)
		}
		for _, node := range e.Nodes {
			// IPv4: the podCIDR or, on pool-g's node, an extra block.
			block := blockSet{nodePodCIDRs(t, ctx, e, node)[i]}
			if i == 0 {
				block = nodeBlocks(t, ctx, e, node)
			}
			job := fmt.Sprintf("svc%d-from-%s", i, node)
			logs := runJobOn(t, ctx, e, node, job, append([]string{"get"}, urls...)...)
			backends := map[string]bool{}
			for _, l := range strings.Split(logs, "\n") {
				// OK URL -> POD_IP on NODE (seen from PEER)
				f := strings.Fields(l)
				if len(f) != 9 || f[0] != "OK" {
					continue
				}
				backends[f[3]] = true
				host, _, err := net.SplitHostPort(strings.TrimSuffix(f[8], ")"))
				if peer, perr := netip.ParseAddr(host); err != nil || perr != nil || !block.Contains(peer) {
					t.Errorf("%s ClusterIP %s from %s: the backend saw %s; want the Job pod's own address in %s", fam, ip, node, f[8], block)
				}
			}
			if len(backends) < 2 {
				t.Errorf("%s ClusterIP %s from %s: answers from %d backends, want several:\n%s", fam, ip, node, len(backends), logs)
			}
			deleteJob(ctx, e, job)
		}
	}
}
