package kubectlplugin

import (
	"bytes"
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	dynamicfake "k8s.io/client-go/dynamic/fake"

	"github.com/aliasip/aliasip/controller/adminapi"
)

// TestStatusShowsIPv6: status lists each node's IPv6 block beside its
// IPv4 one when the cluster is dual-stack, and keeps the single-stack
// table as it was otherwise.
func TestStatusShowsIPv6(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name      string
		dualStack bool
		nodes     []corev1.Node
		want      []string // lines of the node table, spaces collapsed
	}{
		{"single-stack", false, nil, []string{"RANGE NODE PODCIDR", "default a 10.0.1.0/24"}},
		{"dual-stack controller", true, []corev1.Node{
			{ObjectMeta: metav1.ObjectMeta{Name: "b"}, Spec: corev1.NodeSpec{PodCIDR: "10.0.2.0/24", PodCIDRs: []string{"10.0.2.0/24", "fd20:1:2:3:b::/112"}}},
			{ObjectMeta: metav1.ObjectMeta{Name: "c"}},
		}, []string{"RANGE NODE PODCIDR IPV6", "- c (none yet) (none yet)", "default a 10.0.1.0/24 -", "default b 10.0.2.0/24 fd20:1:2:3:b::/112"}},
		{"a dual-stack node under a single-stack controller", false, []corev1.Node{
			{ObjectMeta: metav1.ObjectMeta{Name: "b"}, Spec: corev1.NodeSpec{PodCIDR: "10.0.2.0/24", PodCIDRs: []string{"10.0.2.0/24", "fd20:1:2:3:b::/112"}}},
		}, []string{"RANGE NODE PODCIDR IPV6", "default a 10.0.1.0/24 -", "default b 10.0.2.0/24 fd20:1:2:3:b::/112"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src, ex := releaseCluster(t)
			v := ex.answers["ctrl-0 cloud"].(adminapi.CloudView)
			v.DualStack = tc.dualStack
			ex.answers["ctrl-0 cloud"] = v
			for i := range tc.nodes {
				if _, err := src.Client.CoreV1().Nodes().Create(ctx, &tc.nodes[i], metav1.CreateOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			var out bytes.Buffer
			if err := Status(ctx, src, &out); err != nil {
				t.Fatal(err)
			}
			_, table, ok := strings.Cut(out.String(), "\n\n")
			if !ok {
				t.Fatalf("no node table:\n%s", out.String())
			}
			var got []string
			for _, l := range strings.Split(strings.TrimSpace(table), "\n") {
				got = append(got, strings.Join(strings.Fields(l), " "))
			}
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Fatalf("node table:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
		})
	}
}

// TestStatusShowsExtraBlocks: with NodeBlocks (growable ranges) status
// lists each node's extra blocks, from NodeBlocks owned by that Node only.
func TestStatusShowsExtraBlocks(t *testing.T) {
	ctx := context.Background()
	src, _ := releaseCluster(t)
	b := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "b", UID: "uid-b"}, Spec: corev1.NodeSpec{PodCIDR: "10.0.2.0/24"}}
	if _, err := src.Client.CoreV1().Nodes().Create(ctx, b, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	nb := func(name, uid string, cidrs ...string) *unstructured.Unstructured {
		var blocks []any
		for _, c := range cidrs {
			blocks = append(blocks, map[string]any{"cidr": c, "state": "Active"})
		}
		u := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "aliasip.io/v1alpha1", "kind": "NodeBlocks",
			"metadata": map[string]any{"name": name}, "status": map[string]any{"blocks": blocks}}}
		u.SetOwnerReferences([]metav1.OwnerReference{{APIVersion: "v1", Kind: "Node", Name: name, UID: types.UID(uid)}})
		return u
	}
	scheme := runtime.NewScheme()
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(scheme,
		map[schema.GroupVersionResource]string{nodeBlocksGVR: "NodeBlocksList"})
	// Created through the client: seeded objects would be filed under the
	// resource the fake guesses from the kind ("nodeblockses").
	for _, u := range []*unstructured.Unstructured{
		nb("b", "uid-b", "10.0.3.16/28", "10.0.3.32/28"),
		nb("a", "uid-of-a-deleted-node", "10.0.4.0/28"), // not a's: another Node object's
	} {
		if _, err := dyn.Resource(nodeBlocksGVR).Create(ctx, u, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	src.Dynamic = dyn
	var out bytes.Buffer
	if err := Status(ctx, src, &out); err != nil {
		t.Fatal(err)
	}
	_, table, _ := strings.Cut(out.String(), "\n\n")
	var got []string
	for _, l := range strings.Split(strings.TrimSpace(table), "\n") {
		got = append(got, strings.Join(strings.Fields(l), " "))
	}
	want := []string{"RANGE NODE PODCIDR EXTRA BLOCKS", "default a 10.0.1.0/24 -", "default b 10.0.2.0/24 10.0.3.16/28,10.0.3.32/28"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("node table:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
