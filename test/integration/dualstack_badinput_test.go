package integration

import (
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	compute "google.golang.org/api/compute/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/aliasip/aliasip/cloud/gce/gcetest"
	"github.com/aliasip/aliasip/controller"
	"github.com/aliasip/aliasip/test/framework"
)

// Dual-stack bad input (issue 23), through the controller binary, the real
// API server and the GCE test server: Nodes whose IPv6 podCIDR is not the
// first /112 of their NIC's /96 — one foreign to the subnetwork, another
// node's /112 (not inside its own /96), a later /112 of its own /96, its
// whole /96 — each get IPv6CIDRMismatch and keep everything: their
// podCIDRs (immutable) and the IPv4 alias on their NIC. A node beside
// them gets [its IPv4 block, its NIC's /112] as usual, a block none of
// theirs.
func TestGCEDualStackForeignIPv6PodCIDRs(t *testing.T) {
	e, s := newGCEEnv(t, "10.24.0.0/16", gcetest.Options{OpDelay: 10 * time.Millisecond,
		IPv6Range: netip.MustParsePrefix("fd20:0:0:5::/64")})
	nics := map[string]netip.Prefix{}
	for _, n := range []string{"good", "foreign", "stolen", "notfirst", "wide"} {
		nics[n] = s.AddInstanceDualStack(gceZone, n)
	}
	first := func(n string) netip.Prefix { return netip.PrefixFrom(nics[n].Addr(), 112) }
	// The second /112 of notfirst's /96: bits 96-111 are the /112's index.
	second := netip.PrefixFrom(netip.AddrFrom16(addAt(nics["notfirst"].Addr().As16(), 13)), 112)
	bad := map[string][2]string{ // node -> its podCIDRs as its kubelet wrote them
		"foreign":  {"10.24.7.0/24", "fd99::/112"},
		"stolen":   {"10.24.8.0/24", first("good").String()},
		"notfirst": {"10.24.9.0/24", second.String()},
		"wide":     {"10.24.10.0/24", nics["wide"].String()},
	}
	for n, c := range bad {
		// The IPv4 side is in sync: the alias is on the NIC.
		s.ApplyAliases(gceZone, n, &compute.AliasIpRange{IpCidrRange: c[0], SubnetworkRangeName: "pods"})
	}
	if err := framework.CreateNodes(e.ctx, e.client, []string{"good", "foreign", "stolen", "notfirst", "wide"}, func(n *corev1.Node) {
		n.Spec.ProviderID = fmt.Sprintf("gce://%s/%s/%s", gceProject, gceZone, n.Name)
		if c, ok := bad[n.Name]; ok {
			n.Spec.PodCIDR, n.Spec.PodCIDRs = c[0], c[:]
		}
	}); err != nil {
		t.Fatal(err)
	}
	e.startController("controller", "--dual-stack", "--leader-elect=false")
	for n := range bad {
		e.waitEvent(n, corev1.EventTypeWarning, controller.EventIPv6CIDRMismatch, 30*time.Second)
	}
	waitPodCIDRs(t, e, "good")
	good, err := e.client.CoreV1().Nodes().Get(e.ctx, "good", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if want := first("good").String(); len(good.Spec.PodCIDRs) != 2 || good.Spec.PodCIDRs[1] != want {
		t.Errorf("good: podCIDRs %v, want [its IPv4 block, %s]", good.Spec.PodCIDRs, want)
	}
	if ok, err := framework.HasEvent(e.ctx, e.client, "good", corev1.EventTypeWarning, controller.EventIPv6CIDRMismatch); err != nil || ok {
		t.Errorf("good got IPv6CIDRMismatch (%v): another node's podCIDR naming its /112 is that node's problem", err)
	}
	// Let the leak collector list the NICs (--gc-interval 1s) a few times
	// more: none of them may lose anything to it either.
	passes := s.Count("instances.aggregatedList")
	if err := framework.Eventually(e.ctx, 30*time.Second, func() (bool, error) {
		return s.Count("instances.aggregatedList") >= passes+3, nil
	}); err != nil {
		t.Fatalf("no instance lists after the mismatches (counts %v): %v", s.Counts(), err)
	}
	aliases := s.Aliases()
	for n, c := range bad {
		node, err := e.client.CoreV1().Nodes().Get(e.ctx, n, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if node.Spec.PodCIDR != c[0] || !slices.Equal(node.Spec.PodCIDRs, c[:]) {
			t.Errorf("%s: podCIDRs now %q %v, want %v untouched", n, node.Spec.PodCIDR, node.Spec.PodCIDRs, c)
		}
		if a := aliases[n]; len(a) != 1 || a[0].IpCidrRange != c[0] {
			t.Errorf("%s: NIC aliases %v, want only its IPv4 block %s", n, a, c[0])
		}
		if good.Spec.PodCIDR == c[0] {
			t.Errorf("good got %s, %s's block", c[0], n)
		}
	}
	e.snapshot().CheckInvariants(t, e.cluster, true)
}

// addAt adds 1 to a at byte i, carrying into the bytes before it.
func addAt(a [16]byte, i int) [16]byte {
	for ; i >= 0; i-- {
		a[i]++
		if a[i] != 0 {
			break
		}
	}
	return a
}

// The controller binary refuses an IPv6 range where an IPv4 one is
// expected, in one line saying why, with exit code 2 (bad usage): a GCE
// pod range (alias IP ranges are IPv4), the IPv4 side of a dual-stack
// cluster, and an IPv4 range as the fake's IPv6 subnetwork range.
func TestControllerRefusesIPv6WhereIPv4IsExpected(t *testing.T) {
	if setupErr != nil && controllerBin == "" {
		t.Skip(setupErr)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--cloud=gce", "--cluster-cidr=fd00:10::/48", "--node-cidr-mask-size=64"},
			"IPv6 pod ranges are not supported with --cloud=gce (GCE alias IP ranges are IPv4)"},
		{[]string{"--cloud=gce", "--cluster-cidr=fd00:10::/48", "--node-cidr-mask-size=64", "--dual-stack"},
			"IPv6 pod ranges are not supported with --cloud=gce"},
		{[]string{"--cloud=fake", "--cluster-cidr=fd00::/48", "--node-cidr-mask-size=64", "--dual-stack", "--fake-ipv6-range=fd20::/64"},
			"the pod range is the IPv4 side (the IPv6 side comes from each NIC's IPv6 range)"},
		{[]string{"--cloud=fake", "--cluster-cidr=10.0.0.0/16", "--dual-stack", "--fake-ipv6-range=10.1.0.0/16"},
			`--fake-ipv6-range="10.1.0.0/16": want an IPv6 network`},
	} {
		out, err := exec.Command(controllerBin, tc.args...).CombinedOutput()
		ee, ok := err.(*exec.ExitError)
		if !ok || ee.ExitCode() != 2 {
			t.Errorf("%v: exit %v, want 2 (%s)", tc.args, err, out)
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if len(lines) != 1 || !strings.HasPrefix(lines[0], "aliasip-controller: ") || !strings.Contains(lines[0], tc.want) {
			t.Errorf("%v: output %q, want one line saying %q", tc.args, out, tc.want)
		}
	}
}
