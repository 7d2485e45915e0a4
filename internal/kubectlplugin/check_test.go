package kubectlplugin

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/aliasip/aliasip/controller/adminapi"
	aliasipv1 "github.com/aliasip/aliasip/controller/apis/aliasip/v1alpha1"
	"github.com/aliasip/aliasip/node-agent/api"
)

var now = time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)

func node(name, cidr, rng string) corev1.Node {
	n := corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.NodeSpec{PodCIDR: cidr}}
	if rng != "" {
		n.Labels = map[string]string{aliasipv1.NodeLabel: rng}
	}
	return n
}

func pod(ns, name, uid, nodeName, ip string) corev1.Pod {
	p := corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(uid)},
		Spec: corev1.PodSpec{NodeName: nodeName}, Status: corev1.PodStatus{Phase: corev1.PodRunning}}
	if ip != "" {
		p.Status.PodIP, p.Status.PodIPs = ip, []corev1.PodIP{{IP: ip}}
	}
	return p
}

func alloc(ip, ns, name, uid, container string, age time.Duration) api.AllocationEntry {
	return api.AllocationEntry{IP: ip, Namespace: ns, Pod: name, PodUID: uid, ContainerID: container, IfName: "eth0", Created: now.Add(-age)}
}

// healthy is a consistent cluster: two nodes, each with its alias and an
// agent that holds its running pods' addresses.
func healthy() Snapshot {
	return Snapshot{
		Time:   now,
		MinAge: time.Minute,
		Nodes:  []corev1.Node{node("a", "10.0.1.0/24", "default"), node("b", "10.1.0.0/26", "pool-b"), node("new", "", "")},
		Pods: []corev1.Pod{
			pod("default", "web", "u1", "a", "10.0.1.5"),
			pod("default", "db", "u2", "b", "10.1.0.7"),
			{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "agent-a"}, // host network: the node's address
				Spec: corev1.PodSpec{NodeName: "a", HostNetwork: true}, Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "192.168.0.2", PodIPs: []corev1.PodIP{{IP: "192.168.0.2"}}}},
		},
		Cloud: &adminapi.CloudView{Ready: true,
			Ranges: []adminapi.Range{{Name: "default", CIDR: "10.0.0.0/16", MaskSize: 24, Default: true}, {Name: "pool-b", CIDR: "10.1.0.0/20", MaskSize: 26}},
			Instances: []adminapi.Instance{
				{Ref: "p/z/a", Node: "a", Aliases: []adminapi.Alias{{CIDR: "10.0.1.0/24", CloudName: "pods", Range: "default"}, {CIDR: "192.168.9.0/24", CloudName: "other"}}},
				{Ref: "p/z/b", Node: "b", Aliases: []adminapi.Alias{{CIDR: "10.1.0.0/26", CloudName: "pods-b", Range: "pool-b"}}},
				{Ref: "p/z/new", Node: "new", Aliases: []adminapi.Alias{}},
			}},
		Agents: map[string]*api.Allocations{
			"a": {Node: "a", PodCIDR: "10.0.1.0/24", Ready: true, Allocations: []api.AllocationEntry{alloc("10.0.1.5", "default", "web", "u1", "c1", time.Hour)}},
			"b": {Node: "b", PodCIDR: "10.1.0.0/26", Ready: true, Allocations: []api.AllocationEntry{
				alloc("10.1.0.7", "default", "db", "u2", "c2", time.Hour),
				alloc("10.1.0.9", "default", "starting", "u9", "c9", time.Second),                   // ADD in flight: its pod not in the list yet
				{IP: "10.1.0.10", ContainerID: "raw", IfName: "eth0", Created: now.Add(-time.Hour)}, // no pod: not a kubelet's
			}},
		},
		Unread: map[string]string{},
	}
}

func kinds(r Report) []string {
	var out []string
	for _, f := range r.Findings {
		out = append(out, f.Class+"/"+f.Kind)
	}
	return out
}

func TestCheckHealthyClusterIsClean(t *testing.T) {
	r := Check(healthy())
	if len(r.Findings) != 0 || len(r.Incomplete) != 0 {
		t.Fatalf("findings on a consistent cluster: %+v, incomplete %v", r.Findings, r.Incomplete)
	}
}

func TestCheckFindings(t *testing.T) {
	for _, tc := range []struct {
		name   string
		break_ func(*Snapshot)
		want   []string // class/kind, in report order
		match  string   // a substring of the first finding's message
	}{
		{"two nodes with one block", func(s *Snapshot) { s.Nodes[2].Spec.PodCIDR = "10.0.1.0/24" },
			[]string{"duplicate/duplicate-podcidr", "mismatch/alias-missing"}, "a (10.0.1.0/24) and new (10.0.1.0/24)"},
		{"a block inside another node's", func(s *Snapshot) { s.Nodes[2].Spec.PodCIDR = "10.0.1.128/25" },
			[]string{"duplicate/duplicate-podcidr", "mismatch/alias-missing"}, "overlapping"},
		{"two instances with one alias", func(s *Snapshot) {
			s.Cloud.Instances[2].Aliases = []adminapi.Alias{{CIDR: "10.0.1.0/24", Range: "default"}}
		}, []string{"duplicate/duplicate-alias"}, "p/z/a"},
		{"an address allocated on two nodes", func(s *Snapshot) {
			s.Agents["b"].Allocations = append(s.Agents["b"].Allocations, alloc("10.0.1.5", "default", "web2", "", "c7", time.Hour))
		}, []string{"duplicate/duplicate-ip", "leak/allocation-leak", "mismatch/allocation-outside"}, "10.0.1.5 is held twice"},
		{"two running pods with one address", func(s *Snapshot) {
			s.Pods = append(s.Pods, pod("other", "web", "u5", "a", "10.0.1.5"))
		}, []string{"duplicate/duplicate-ip", "mismatch/pod-ip-untracked"}, "running pod"},
		{"an alias on an instance without a Node", func(s *Snapshot) {
			s.Cloud.Instances = append(s.Cloud.Instances, adminapi.Instance{Ref: "p/z/gone", Aliases: []adminapi.Alias{{CIDR: "10.0.7.0/24", Range: "default"}}})
		}, []string{"leak/alias-leak"}, "p/z/gone carries 10.0.7.0/24"},
		{"a pod deleted without DEL", func(s *Snapshot) { s.Pods = slices.Delete(s.Pods, 0, 1) },
			[]string{"leak/allocation-leak"}, "default/web, which is gone"},
		{"a pod re-created under its name", func(s *Snapshot) { s.Pods[0].UID = "u1-new"; s.Pods[0].Status.PodIP, s.Pods[0].Status.PodIPs = "", nil },
			[]string{"leak/allocation-leak"}, "replaced"},
		{"a finished pod", func(s *Snapshot) { s.Pods[1].Status.Phase = corev1.PodSucceeded },
			[]string{"leak/allocation-leak"}, "finished"},
		{"a podCIDR without its alias", func(s *Snapshot) { s.Cloud.Instances[0].Aliases = s.Cloud.Instances[0].Aliases[1:] },
			[]string{"mismatch/alias-missing"}, "not an alias"},
		{"an instance with another block", func(s *Snapshot) {
			s.Cloud.Instances[0].Aliases[0].CIDR = "10.0.2.0/24"
		}, []string{"mismatch/alias-mismatch"}, "carries [10.0.2.0/24]"},
		{"an instance with a block too many", func(s *Snapshot) {
			s.Cloud.Instances[0].Aliases = append(s.Cloud.Instances[0].Aliases, adminapi.Alias{CIDR: "10.0.3.0/24", Range: "default"})
		}, []string{"mismatch/alias-extra"}, "besides"},
		{"a node without an instance", func(s *Snapshot) { s.Cloud.Instances = s.Cloud.Instances[1:] },
			[]string{"mismatch/instance-missing"}, "no instance"},
		{"a foreign podCIDR", func(s *Snapshot) {
			s.Nodes[2].Spec.PodCIDR = "172.16.0.0/24"
			s.Cloud.Instances[2].Aliases = []adminapi.Alias{{CIDR: "172.16.0.0/24", Range: "x"}}
		}, []string{"mismatch/podcidr-out-of-range"}, "none of the ranges"},
		{"a podCIDR that does not parse", func(s *Snapshot) { s.Nodes[2].Spec.PodCIDR = "10.0.9.0/33" },
			[]string{"mismatch/podcidr-invalid"}, "does not parse"},
		{"a wrong range label", func(s *Snapshot) { s.Nodes[1].Labels[aliasipv1.NodeLabel] = "default" },
			[]string{"mismatch/label-mismatch"}, "is in range pool-b"},
		{"an agent on another block", func(s *Snapshot) { s.Agents["a"].PodCIDR = "10.0.2.0/24" },
			[]string{"mismatch/agent-podcidr"}, "works on 10.0.2.0/24"},
		{"a running pod whose address the agent does not hold", func(s *Snapshot) {
			s.Agents["a"].Allocations = nil
		}, []string{"mismatch/pod-ip-untracked"}, "may be handed out again"},
		{"a running pod with another address than its allocation", func(s *Snapshot) {
			s.Pods[0].Status.PodIP, s.Pods[0].Status.PodIPs = "10.0.1.6", []corev1.PodIP{{IP: "10.0.1.6"}}
		}, []string{"mismatch/allocation-mismatch"}, "holds 10.0.1.5"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := healthy()
			tc.break_(&s)
			r := Check(s)
			if got := kinds(r); !slices.Equal(got, tc.want) {
				t.Fatalf("findings %v, want %v\n%+v", got, tc.want, r.Findings)
			}
			if !strings.Contains(r.Findings[0].Message, tc.match) {
				t.Errorf("message %q does not say %q", r.Findings[0].Message, tc.match)
			}
		})
	}
}

func TestCheckLeaksNameWhatReleaseNeeds(t *testing.T) {
	s := healthy()
	s.Pods = s.Pods[1:]
	s.Cloud.Instances = append(s.Cloud.Instances, adminapi.Instance{Ref: "p/z/gone", Aliases: []adminapi.Alias{{CIDR: "10.0.7.0/24", Range: "default"}}})
	r := Check(s)
	want := []Finding{
		{Kind: KindAliasLeak, Class: ClassLeak, Instance: "p/z/gone", CIDR: "10.0.7.0/24"},
		{Kind: KindAllocationLeak, Class: ClassLeak, Node: "a", IP: "10.0.1.5", Namespace: "default", Pod: "web", ContainerID: "c1", IfName: "eth0"},
	}
	if len(r.Findings) != len(want) {
		t.Fatalf("findings %+v", r.Findings)
	}
	for i, w := range want {
		got := r.Findings[i]
		got.Message = ""
		if got != w {
			t.Errorf("finding %d = %+v, want %+v", i, got, w)
		}
	}
}

func TestCheckUnreadViewsMakeItIncomplete(t *testing.T) {
	s := healthy()
	s.Cloud = nil
	delete(s.Agents, "b")
	s.Unread["b"] = "exec: timeout"
	r := Check(s)
	if len(r.Findings) != 0 {
		t.Fatalf("findings %+v", r.Findings)
	}
	if len(r.Incomplete) != 2 || !strings.Contains(strings.Join(r.Incomplete, "\n"), "node b: agent not read (exec: timeout)") {
		t.Fatalf("incomplete %v", r.Incomplete)
	}
}

func TestOverlapsFindsEveryPair(t *testing.T) {
	var spans []span
	for i, c := range []string{"10.0.0.0/16", "10.0.1.0/24", "10.0.2.0/24", "10.1.0.0/24", "10.0.255.0/24", "10.2.0.0/24"} {
		spans = append(spans, spanOf(mustPrefix(c), string(rune('a'+i))))
	}
	var got []string
	for _, o := range overlaps(spans) {
		got = append(got, o[0].who+o[1].who)
	}
	slices.Sort(got)
	if want := []string{"ab", "ac", "ae"}; !slices.Equal(got, want) {
		t.Fatalf("overlapping pairs %v, want %v", got, want)
	}
}

func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }
