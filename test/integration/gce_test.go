package integration

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	compute "google.golang.org/api/compute/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/aliasip/aliasip/cloud"
	"github.com/aliasip/aliasip/cloud/gce/gcetest"
	"github.com/aliasip/aliasip/test/framework"
)

const (
	gceProject = "test-project"
	gceZone    = "us-central1-a"
)

// serverReader reads the GCE test server's state directly (not through the
// API, so injected faults never disturb the test's own checks).
type serverReader struct {
	s       *gcetest.Server
	cluster netip.Prefix
}

func (r serverReader) PodRange(context.Context) (netip.Prefix, string, error) {
	return r.cluster, "pods", nil
}

func (r serverReader) ListInstances(context.Context) ([]cloud.Instance, error) {
	var out []cloud.Instance
	for name, list := range r.s.Aliases() {
		in := cloud.Instance{Ref: cloud.InstanceRef{Project: gceProject, Zone: gceZone, Name: name}}
		for _, a := range list {
			in.Aliases = append(in.Aliases, cloud.AliasRange{CIDR: netip.MustParsePrefix(a.IpCidrRange), RangeName: a.SubnetworkRangeName})
		}
		out = append(out, in)
	}
	return out, nil
}

// newGCEEnv is an env whose cloud is a GCE test server in this process; the
// controller binary talks to it over HTTP with --cloud=gce --gce-endpoint.
func newGCEEnv(t *testing.T, cluster string, o gcetest.Options) (*env, *gcetest.Server) {
	e := newEnv(t, cluster)
	o.Project, o.Region, o.Subnetwork = gceProject, "us-central1", "nodes"
	o.SecondaryRanges = map[string]netip.Prefix{
		"pods":     e.cluster,
		"services": netip.MustParsePrefix("172.20.0.0/20"),
	}
	s := gcetest.NewServer(o)
	t.Cleanup(s.Close)
	e.reader = serverReader{s: s, cluster: e.cluster}
	e.args = []string{"--cloud", "gce", "--gce-endpoint", s.Endpoint(),
		"--gce-project", gceProject, "--gce-region", "us-central1", "--gce-zone", gceZone,
		"--gce-subnetwork", "nodes", "--gce-secondary-range", "pods"}
	return e, s
}

// gceNodes creates instances and Nodes (with gce:// providerIDs) for names.
func gceNodes(t *testing.T, e *env, s *gcetest.Server, names []string) {
	t.Helper()
	for _, n := range names {
		s.AddInstance(gceZone, n)
	}
	if err := framework.CreateNodes(e.ctx, e.client, names, func(n *corev1.Node) {
		n.Spec.ProviderID = fmt.Sprintf("gce://%s/%s/%s", gceProject, gceZone, n.Name)
	}); err != nil {
		t.Fatal(err)
	}
}

// 300 nodes converge against the GCE server, at most 1.2 alias writes per
// node; an alias from another secondary range on an instance survives.
func TestGCEConverges(t *testing.T) {
	e, s := newGCEEnv(t, "10.64.0.0/14", gcetest.Options{OpDelay: 20 * time.Millisecond})
	names := framework.NodeNames("g", 300)
	gceNodes(t, e, s, names[:1])
	// g-0000 already carries a range from another secondary range.
	s.DeleteInstance(gceZone, "g-0000")
	s.AddInstance(gceZone, "g-0000", &compute.AliasIpRange{IpCidrRange: "172.20.1.0/24", SubnetworkRangeName: "services"})
	c := e.startController("controller", "--cloud-qps", "500", "--cloud-burst", "500", "--workers", "20")
	gceNodes(t, e, s, names[1:])
	snap := e.waitConverged(2 * time.Minute)
	snap.CheckInvariants(t, e.cluster, true)
	writes := s.Count("instances.updateNetworkInterface")
	if per := float64(writes) / 300; per > 1.2 {
		t.Errorf("%d alias writes for 300 nodes (%.2f per node), want at most 1.2", writes, per)
	}
	t.Logf("%d alias writes for 300 nodes", writes)
	kept := false
	for _, a := range s.Aliases()["g-0000"] {
		if a.SubnetworkRangeName == "services" && a.IpCidrRange == "172.20.1.0/24" {
			kept = true
		}
	}
	if !kept {
		t.Errorf("the services range on g-0000 did not survive our update: %v", s.Aliases()["g-0000"])
	}
	if v, ok := c.metric("aliasip_cloud_requests_total", `method="instances.updateNetworkInterface"`); !ok || v == 0 {
		t.Errorf("no per-request metric for updateNetworkInterface (%v)", v)
	}
}

// With 20% 503s, 10% forced 412s, a rate limit below the controller's
// demand and 500 ms operations, every node converges and no range is on two
// instances.
func TestGCEConvergesUnderFaults(t *testing.T) {
	e, s := newGCEEnv(t, "10.32.0.0/14", gcetest.Options{
		OpDelay: 500 * time.Millisecond,
		WaitMax: 200 * time.Millisecond,
		Faults:  gcetest.Faults{Rate5xx: 0.2, Force412: 0.1, RateLimit: 60},
	})
	c := e.startController("controller", "--cloud-qps", "150", "--cloud-burst", "150", "--workers", "40")
	gceNodes(t, e, s, framework.NodeNames("f", 300))
	snap := e.waitConverged(4 * time.Minute)
	snap.CheckInvariants(t, e.cluster, true)
	for _, code := range []string{"503", "412", "403"} {
		if v, _ := c.metric("aliasip_cloud_requests_total", `code="`+code+`"`); v == 0 {
			t.Errorf("no %s was seen by the controller; the fault was not exercised", code)
		}
	}
}

// SIGKILL in the middle of a burst of 200 new nodes, some nodes deleted
// while the controller is down, restart: every node converges, no range on
// two instances, and no alias left on an instance without a Node once the
// leak grace period has passed.
func TestGCEKilledMidBurst(t *testing.T) {
	e, s := newGCEEnv(t, "10.16.0.0/14", gcetest.Options{OpDelay: 100 * time.Millisecond})
	c := e.startController("controller-1", "--leader-elect=false", "--workers", "10", "--cloud-qps", "200")
	names := framework.NodeNames("b", 200)
	gceNodes(t, e, s, names)
	if err := framework.Eventually(e.ctx, time.Minute, func() (bool, error) {
		return len(s.Aliases()) >= 50, nil
	}); err != nil {
		t.Fatal(err)
	}
	c.Kill()
	if e.snapshot().Converged() {
		t.Fatal("converged before the kill; nothing was in flight")
	}
	// Nodes deleted while no controller runs: their VMs keep the aliases.
	for _, n := range names[:20] {
		if err := e.client.CoreV1().Nodes().Delete(e.ctx, n, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	e.startController("controller-2", "--leader-elect=false", "--workers", "10", "--cloud-qps", "200",
		"--leak-grace-period", "2s", "--release-cooldown", "1s")
	err := framework.Eventually(e.ctx, 2*time.Minute, func() (bool, error) {
		snap := e.snapshot()
		if !snap.Converged() || len(snap.PodCIDR) != 180 {
			return false, nil
		}
		for inst := range snap.Aliases {
			if _, ok := snap.PodCIDR[inst]; !ok {
				return false, nil
			}
		}
		return true, nil
	})
	snap := e.snapshot()
	if err != nil {
		t.Fatalf("%v; pending %v", err, snap.Pending())
	}
	snap.CheckInvariants(t, e.cluster, true)
}

// Started on "a VM" with no GCE location flags, the controller finds its
// project, zone, subnetwork and secondary range in the metadata server.
func TestGCEMetadataDefaults(t *testing.T) {
	e, s := newGCEEnv(t, "10.8.0.0/16", gcetest.Options{Metadata: gcetest.Metadata{
		Project: gceProject, NumericProject: "1234", Zone: gceZone, InstanceName: "controller-vm",
		InstanceAttrs: map[string]string{"aliasip-secondary-range": "pods"},
	}})
	s.AddInstance(gceZone, "controller-vm")
	e.args = []string{"--cloud", "gce", "--gce-endpoint", s.Endpoint()}
	e.environ = []string{"GCE_METADATA_HOST=" + s.MetadataHost()}
	e.startController("controller")
	gceNodes(t, e, s, framework.NodeNames("m", 10))
	snap := e.waitConverged(time.Minute)
	snap.CheckInvariants(t, e.cluster, false)
	if s.Count("subnetworks.get") == 0 || s.Counts()["metadata"] == 0 {
		t.Errorf("the pod range was not read from the subnetwork found through the metadata: %v", s.Counts())
	}
}
