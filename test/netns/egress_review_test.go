package netns

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"

	"github.com/aliasip/aliasip/test/framework"
)

// TestEgressPodRangeKeptAcrossRestart: a PodRange's CIDR is in the
// non-masquerade set; an agent restart must not write a table without it
// (new pod-to-pod connections to that range's blocks would leave
// masqueraded until the PodRange informer lists) — the table that was
// right is left alone, as with no PodRange.
func TestEgressPodRangeKeptAcrossRestart(t *testing.T) {
	e := newEnv(t)
	if err := framework.InstallCRDs(e.ctx, cp.Config, framework.CRDDir()); err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(cp.Config)
	if err != nil {
		t.Fatal(err)
	}
	gvr := schema.GroupVersionResource{Group: "aliasip.io", Version: "v1alpha1", Resource: "podranges"}
	name := fmt.Sprintf("review-%d", time.Now().UnixNano())
	pr := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "aliasip.io/v1alpha1", "kind": "PodRange",
		"metadata": map[string]any{"name": name},
		"spec": map[string]any{"cidr": "10.231.0.0/16", "maskSize": int64(24),
			"nodeSelector": map[string]any{"matchLabels": map[string]any{"review": name}}},
	}}
	created, err := dyn.Resource(gvr).Create(e.ctx, pr, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// The agent takes a range the controller accepted (status, which only
	// the controller writes): written here as the controller would.
	created.Object["status"] = map[string]any{"cidr": "10.231.0.0/16", "maskSize": int64(24),
		"conditions": []any{map[string]any{"type": "Ready", "status": "True", "reason": "Valid", "message": "in use",
			"lastTransitionTime": time.Now().UTC().Format(time.RFC3339)}}}
	if _, err := dyn.Resource(gvr).UpdateStatus(e.ctx, created, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	// One the controller refused (no status) and one whose spec names half
	// the internet stay out of the set.
	for i, cidr := range []string{"10.232.0.0/16", "0.0.0.0/1"} {
		bad := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "aliasip.io/v1alpha1", "kind": "PodRange",
			"metadata": map[string]any{"name": fmt.Sprintf("%s-unaccepted-%d", name, i)},
			"spec": map[string]any{"cidr": cidr, "maskSize": int64(25),
				"nodeSelector": map[string]any{"matchLabels": map[string]any{"review": name}}},
		}}
		if _, err := dyn.Resource(gvr).Create(e.ctx, bad, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { dyn.Resource(gvr).Delete(context.Background(), bad.GetName(), metav1.DeleteOptions{}) })
	}
	t.Cleanup(func() { dyn.Resource(gvr).Delete(context.Background(), name, metav1.DeleteOptions{}) })
	flags := []string{"--masq-config", "", "--cluster-cidr", "10.221.0.0/16"}
	n1 := e.node("10.221.1.0/24", flags...)
	if err := framework.Eventually(e.ctx, 15*time.Second, func() (bool, error) {
		return strings.Contains(nftListIn(t, n1.NS), "10.231.0.0/16"), nil
	}); err != nil {
		t.Fatalf("the PodRange's CIDR never reached the table: %v\n%s", err, nftListIn(t, n1.NS))
	}
	before := nftListIn(t, n1.NS)
	for _, unaccepted := range []string{"10.232.0.0/16", "0.0.0.0/1"} {
		if strings.Contains(before, unaccepted) {
			t.Errorf("a PodRange the controller has not accepted (%s) entered the non-masquerade set:\n%s", unaccepted, before)
		}
	}
	n1.Agent.Stop()
	// startAgent returns once the agent is ready, and the agent writes its
	// first rules before it becomes ready.
	e.startAgent(n1, flags...)
	if got := nftListIn(t, n1.NS); got != before {
		t.Errorf("table after the restart differs:\n%s", got)
	}
	if got := agentMetric(t, n1, "aliasip_egress_rules_programmed_total", "") + agentMetric(t, n1, "aliasip_egress_rules_repaired_total", ""); got != 0 {
		t.Errorf("the restarted agent rewrote a table that was right (%v writes): for a while it held no PodRange CIDR", got)
	}
}

// TestEgressMalformedConfigAtStartKeepsRules: an agent that starts while
// the ConfigMap is malformed has no good configuration of its own; the
// table an earlier agent wrote from the last good one stays as it is
// (Warning EgressConfigInvalid), and the fixed ConfigMap applies at once.
func TestEgressMalformedConfigAtStartKeepsRules(t *testing.T) {
	e := newEnv(t)
	cmName := fmt.Sprintf("masq-start-%d", time.Now().UnixNano())
	flags := []string{"--masq-config", "default/" + cmName, "--cluster-cidr", "10.222.0.0/16"}
	setMasqConfig(t, e, cmName, "nonMasqueradeCIDRs: [198.18.0.0/15]\n")
	n := e.node("10.222.1.0/24", flags...)
	good := nftListIn(t, n.NS)
	if !strings.Contains(good, "198.18.0.0/15") {
		t.Fatalf("the configured range is not in the table:\n%s", good)
	}
	n.Agent.Stop()
	setMasqConfig(t, e, cmName, "nonMasqueradeCIDRs: [198.18.0.0/33]\n")
	e.startAgent(n, flags...) // ready: its first pass is done
	e.waitNodeEvent(n, "EgressConfigInvalid")
	if got := nftListIn(t, n.NS); got != good {
		t.Errorf("an agent starting with a malformed ConfigMap replaced the last good rules:\n%s", got)
	}
	if got := agentMetric(t, n, "aliasip_egress_rules_programmed_total", ""); got != 0 {
		t.Errorf("%v writes with no good configuration", got)
	}
	setMasqConfig(t, e, cmName, "nonMasqueradeCIDRs: [198.51.100.0/24]\n")
	if err := framework.Eventually(e.ctx, 15*time.Second, func() (bool, error) {
		tbl := nftListIn(t, n.NS)
		return strings.Contains(tbl, "198.51.100.0/24") && !strings.Contains(tbl, "198.18.0.0/15"), nil
	}); err != nil {
		t.Errorf("the fixed ConfigMap was not applied: %v\n%s", err, nftListIn(t, n.NS))
	}
}
