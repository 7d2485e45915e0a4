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
	if _, err := dyn.Resource(gvr).Create(e.ctx, pr, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
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
	n1.Agent.Stop()
	e.startAgent(n1, flags...)
	time.Sleep(2 * time.Second)
	if got := nftListIn(t, n1.NS); got != before {
		t.Errorf("table after the restart differs:\n%s", got)
	}
	if got := agentMetric(t, n1, "aliasip_egress_rules_programmed_total", "") + agentMetric(t, n1, "aliasip_egress_rules_repaired_total", ""); got != 0 {
		t.Errorf("the restarted agent rewrote a table that was right (%v writes): for a while it held no PodRange CIDR", got)
	}
}
