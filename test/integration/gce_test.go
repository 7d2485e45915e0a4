package integration

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	compute "google.golang.org/api/compute/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/aliasip/aliasip/cloud"
	"github.com/aliasip/aliasip/cloud/gce/gcetest"
	"github.com/aliasip/aliasip/controller/adminapi"
	"github.com/aliasip/aliasip/internal/sockrpc"
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
	ranges := map[string]netip.Prefix{
		"pods":     e.cluster,
		"services": netip.MustParsePrefix("172.20.0.0/20"),
	}
	for name, p := range o.SecondaryRanges { // the caller's, beside those
		ranges[name] = p
	}
	o.SecondaryRanges = ranges
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

// With 20% 503s, 10% forced 412s, a quota (per 1 s window here) below the
// controller's demand, operations that end RESOURCE_NOT_READY or
// CONDITION_NOT_MET and 500 ms operations, every node converges and no
// range is on two instances.
func TestGCEConvergesUnderFaults(t *testing.T) {
	e, s := newGCEEnv(t, "10.32.0.0/14", gcetest.Options{
		OpDelay: 500 * time.Millisecond,
		WaitMax: 200 * time.Millisecond,
		Faults: gcetest.Faults{Rate5xx: 0.2, Force412: 0.1, RateLimit: 20, RateWindow: time.Second,
			OpNotReady: 0.05, OpStaleFingerprint: 0.05},
	})
	c := e.startController("controller", "--cloud-qps", "150", "--cloud-burst", "150", "--workers", "40",
		"--gce-quota-window", "1s", "--gce-poll-interval", "100ms")
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

// A node whose NIC is on a subnetwork without the pod range: every alias
// write is refused with 400. Next to healthy nodes, it never holds more
// than one block however long it keeps failing (the issue measured 34
// blocks retired in 60 s), it gets a CloudAliasRefused Warning naming the
// cause, and it is retried with backoff, not hot.
func TestGCERefusedNodeHoldsOneBlock(t *testing.T) {
	e, s := newGCEEnv(t, "10.4.0.0/16", gcetest.Options{OpDelay: 50 * time.Millisecond})
	c := e.startController("controller", "--cloud-qps", "200", "--cloud-burst", "200")
	healthy := framework.NodeNames("h", 5)
	gceNodes(t, e, s, healthy)
	s.AddInstanceOn(gceZone, "bad-0", "legacy")
	if err := framework.CreateNodes(e.ctx, e.client, []string{"bad-0"}, func(n *corev1.Node) {
		n.Spec.ProviderID = fmt.Sprintf("gce://%s/%s/bad-0", gceProject, gceZone)
	}); err != nil {
		t.Fatal(err)
	}
	e.waitEvent("bad-0", corev1.EventTypeWarning, "CloudAliasRefused", time.Minute)
	writesAt := func() int { return s.Count("instances.updateNetworkInterface") }
	// Five more refused writes, the fact that the controller kept trying;
	// meanwhile the blocks used are sampled.
	const retries = 5
	start, w0 := time.Now(), writesAt()
	maxUsed := 0.0
	if err := framework.Eventually(e.ctx, 2*time.Minute, func() (bool, error) {
		if v, ok := c.metric("aliasip_pool_blocks", `state="used"`); ok && v > maxUsed {
			maxUsed = v
		}
		w := writesAt() - w0
		return w >= retries, fmt.Errorf("%d of %d more writes for the refused node", w, retries)
	}); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	if maxUsed > 6 {
		t.Errorf("up to %v blocks used for 5 healthy nodes and one refused node; want at most 6", maxUsed)
	}
	// Healthy nodes all converged; the bad node has no podCIDR.
	n, err := e.client.CoreV1().Nodes().Get(e.ctx, "bad-0", metav1.GetOptions{})
	if err != nil || n.Spec.PodCIDR != "" {
		t.Errorf("bad-0: podCIDR %q, %v", n.Spec.PodCIDR, err)
	}
	for _, h := range healthy {
		n, err := e.client.CoreV1().Nodes().Get(e.ctx, h, metav1.GetOptions{})
		if err != nil || n.Spec.PodCIDR == "" {
			t.Errorf("healthy node %s: podCIDR %q, %v", h, n.Spec.PodCIDR, err)
		}
	}
	// Backoff: exponential from 50 ms to a minute. Five retries after the
	// first refusal wait at least 100 ms + 200 ms + 400 ms + 800 ms (the
	// first of them may have been under way at start): 1.5 s. Retried
	// hot, the five take a few milliseconds.
	if took < 1500*time.Millisecond {
		t.Errorf("%d writes for the refused node in %v: not backing off", retries, took)
	}
	if v, _ := c.metric("aliasip_allocations_total", `result="refused"`); v == 0 {
		t.Error("aliasip_allocations_total{result=\"refused\"} is 0")
	}
	// Recreated on the right subnetwork, the node gets its block.
	if err := e.client.CoreV1().Nodes().Delete(e.ctx, "bad-0", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	s.DeleteInstance(gceZone, "bad-0")
	gceNodes(t, e, s, []string{"bad-0"})
	e.waitConverged(time.Minute).CheckInvariants(t, e.cluster, true)
}

// Leader failover in the middle of a burst with 8-second operations: the
// leader is SIGTERM'd while its operations run. It finishes the syncs in
// flight before it releases the Lease, the standby takes over, and in the
// end every instance holds exactly its node's podCIDR (no second alias)
// and no block is anywhere twice.
func TestGCELeaderFailoverSlowOperations(t *testing.T) {
	e, s := newGCEEnv(t, "10.12.0.0/16", gcetest.Options{OpDelay: 8 * time.Second})
	flags := []string{"--cloud-qps", "200", "--cloud-burst", "200", "--workers", "20", "--gce-poll-interval", "200ms"}
	a := e.startController("controller-a", flags...)
	b := e.startController("controller-b", flags...)
	leader, standby := e.waitSingleLeader(a, b)
	gceNodes(t, e, s, framework.NodeNames("lf", 40))
	// Let the leader start its operations, then stop it while they run.
	if err := framework.Eventually(e.ctx, 30*time.Second, func() (bool, error) {
		return s.Count("instances.updateNetworkInterface") >= 20, nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(s.Aliases()) != 0 {
		t.Fatal("operations finished before the SIGTERM; nothing was in flight")
	}
	stopped := time.Now()
	leader.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-waitDone(leader):
	case <-time.After(60 * time.Second):
		t.Fatal("the old leader did not exit within 60s of SIGTERM")
	}
	took := time.Since(stopped)
	// It waited for its operations (8 s) instead of walking away from them.
	if took < 5*time.Second {
		t.Errorf("the old leader exited %v after SIGTERM, before its 8 s operations could finish", took)
	}
	snap := e.waitConverged(3 * time.Minute)
	snap.CheckInvariants(t, e.cluster, true)
	for inst, ps := range snap.Aliases {
		if len(ps) != 1 {
			t.Errorf("instance %s holds %v, want exactly one alias", inst, ps)
		}
	}
	if v, _ := standby.metric("aliasip_leader", ""); v != 1 {
		t.Errorf("standby did not become leader")
	}
	t.Logf("old leader exited %v after SIGTERM", took.Round(100*time.Millisecond))
}

func waitDone(c *ctrlProc) <-chan struct{} {
	ch := make(chan struct{})
	go func() { c.Wait(); close(ch) }()
	return ch
}

// TestGCEAdminCloudAndRelease: kubectl aliasip's calls on the controller
// against the GCE server through the real compute client: "cloud" lists
// every instance with its aliases, whose Node it belongs to and which of
// our ranges each alias comes from; "release-alias" removes a leaked alias
// (an instance without a Node) with a real updateNetworkInterface, and
// refuses a Node's alias and another secondary range's.
func TestGCEAdminCloudAndRelease(t *testing.T) {
	e, s := newGCEEnv(t, "10.72.0.0/16", gcetest.Options{OpDelay: 20 * time.Millisecond})
	sock := filepath.Join(t.TempDir(), "admin.sock")
	e.startController("controller", "--leader-elect=false", "--admin-socket", sock, "--leak-grace-period", "1h")
	gceNodes(t, e, s, []string{"g-a", "g-b"})
	e.waitConverged(time.Minute)
	s.AddInstance(gceZone, "ghost", &compute.AliasIpRange{IpCidrRange: "10.72.200.0/24", SubnetworkRangeName: "pods"})
	s.AddInstance(gceZone, "other", &compute.AliasIpRange{IpCidrRange: "172.20.3.0/24", SubnetworkRangeName: "services"})

	client := sockrpc.NewClient(sock, 30*time.Second)
	var v adminapi.CloudView
	if err := framework.Eventually(e.ctx, 30*time.Second, func() (bool, error) {
		err := client.Call(e.ctx, adminapi.OpCloud, nil, &v)
		return err == nil && v.Ready, nil
	}); err != nil {
		t.Fatalf("cloud view never ready: %+v", v)
	}
	if len(v.Ranges) != 1 || v.Ranges[0].Name != "default" || v.Ranges[0].CIDR != "10.72.0.0/16" || v.Ranges[0].CloudName != "pods" || v.Ranges[0].Used != 2 {
		t.Errorf("ranges %+v, want default 10.72.0.0/16 (pods) with 2 blocks used", v.Ranges)
	}
	ref := func(n string) string { return gceProject + "/" + gceZone + "/" + n }
	got := map[string]string{}
	for _, in := range v.Instances {
		var as []string
		for _, a := range in.Aliases {
			as = append(as, a.CIDR+"("+a.CloudName+"→"+a.Range+")")
		}
		got[in.Ref] = in.Node + " " + strings.Join(as, ",")
	}
	snap := e.snapshot()
	want := map[string]string{
		ref("g-a"):   "g-a " + snap.PodCIDR["g-a"] + "(pods→default)",
		ref("g-b"):   "g-b " + snap.PodCIDR["g-b"] + "(pods→default)",
		ref("ghost"): " 10.72.200.0/24(pods→default)",
		ref("other"): " 172.20.3.0/24(services→)",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("instances\n%v\nwant\n%v", got, want)
	}

	for _, tc := range []struct {
		inst, cidr string
		released   bool
		reason     string
	}{
		{ref("g-a"), snap.PodCIDR["g-a"], false, "Node g-a"},
		{ref("other"), "172.20.3.0/24", false, "not from one of our ranges"},
		{ref("ghost"), "10.72.200.0/24", true, "without a Node"},
		{ref("ghost"), "10.72.200.0/24", false, "no longer carries it"},
	} {
		var res adminapi.LeakResult
		if err := client.Call(e.ctx, adminapi.OpReleaseAlias, adminapi.AliasLeak{Instance: tc.inst, CIDR: tc.cidr}, &res); err != nil {
			t.Fatalf("release-alias %s %s: %v", tc.inst, tc.cidr, err)
		}
		if res.Released != tc.released || !strings.Contains(res.Reason, tc.reason) {
			t.Errorf("release-alias %s %s: %+v, want released=%v, %q", tc.inst, tc.cidr, res, tc.released, tc.reason)
		}
	}
	aliases := s.Aliases()
	if len(aliases["ghost"]) != 0 || len(aliases["g-a"]) != 1 || len(aliases["other"]) != 1 {
		t.Errorf("aliases after the releases: ghost %v, g-a %v, other %v", aliases["ghost"], aliases["g-a"], aliases["other"])
	}
}
