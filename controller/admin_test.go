package controller

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	k8sfake "k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/record"

	"github.com/aliasip/aliasip/cloud"
	"github.com/aliasip/aliasip/controller/adminapi"
	"github.com/aliasip/aliasip/fake"
)

// TestReleaseAliasReadsNodesLive: kubectl aliasip release asks the
// controller to remove an alias it reported on an instance without a Node.
// Unlike the leak collector, the call has no grace period to cover a Node
// its informer has not delivered yet, nor a Node whose instance it cannot
// resolve: each keeps the alias.
func TestReleaseAliasReadsNodesLive(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fc, err := fake.New(fake.Options{PodRange: netip.MustParsePrefix("10.0.0.0/16"), AutoRegister: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, vm := range []string{"new-vm", "other-vm", "ghost-vm"} {
		if err := fc.RegisterInstance(vm); err != nil {
			t.Fatal(err)
		}
	}
	aliases := map[string]netip.Prefix{
		"new-vm":   netip.MustParsePrefix("10.0.1.0/24"), // its Node just registered and adopts it
		"other-vm": netip.MustParsePrefix("10.0.2.0/24"), // a Node of another scheme holds it
		"ghost-vm": netip.MustParsePrefix("10.0.3.0/24"), // leaked
	}
	for vm, p := range aliases {
		if err := fc.AddAlias(ctx, cloud.InstanceRef{Name: vm}, cloud.AliasRange{CIDR: p, RangeName: "pods"}); err != nil {
			t.Fatal(err)
		}
	}
	client := k8sfake.NewClientset(
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "new-vm"}},
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "odd"},
			Spec: corev1.NodeSpec{ProviderID: "aws:///z/i-0123", PodCIDR: "10.0.2.0/24"}},
	)
	// The informer is never started: its cache has not seen the Nodes.
	factory := informers.NewSharedInformerFactory(client, 0)
	c := New(Config{MaskSize: 24, Workers: 1, CloudQPS: 1000, CloudBurst: 1000}, client, factory.Core().V1().Nodes(),
		fc, record.NewFakeRecorder(100), NewMetrics(prometheus.NewRegistry()))
	if err := c.rebuild(ctx); err != nil {
		t.Fatal(err)
	}
	refs := map[string]string{}
	instances, err := fc.ListInstances(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range instances {
		refs[in.Ref.Name] = in.Ref.String()
	}
	for _, tc := range []struct {
		vm       string
		released bool
		reason   string
	}{
		{"new-vm", false, "Node new-vm now belongs to the instance"},
		{"other-vm", false, "Node odd holds 10.0.2.0/24 and its instance cannot be resolved"},
		{"ghost-vm", true, "without a Node"},
	} {
		res, err := c.releaseAlias(ctx, adminapi.AliasLeak{Instance: refs[tc.vm], CIDR: aliases[tc.vm].String()})
		if err != nil {
			t.Fatalf("%s: %v", tc.vm, err)
		}
		if res.Released != tc.released || !strings.Contains(res.Reason, tc.reason) {
			t.Errorf("%s: %+v, want released=%v and %q", tc.vm, res, tc.released, tc.reason)
		}
		got, err := fc.Aliases(ctx, cloud.InstanceRef{Name: tc.vm})
		if err != nil {
			t.Fatal(err)
		}
		if kept := len(got) == 1; kept == tc.released {
			t.Errorf("%s: aliases %v after the call (released=%v)", tc.vm, got, res.Released)
		}
	}
}
