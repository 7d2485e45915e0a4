package kubectlplugin

import (
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/aliasip/aliasip/controller/adminapi"
	"github.com/aliasip/aliasip/node-agent/api"
)

// dual makes node name dual-stack in s: its podCIDRs gain block6 (IPv4
// first, as the controller writes them) and its agent, if read, works on
// it.
func dual(s *Snapshot, name, block6 string) {
	for i := range s.Nodes {
		if n := &s.Nodes[i]; n.Name == name {
			n.Spec.PodCIDRs = []string{n.Spec.PodCIDR, block6}
		}
	}
	if ag := s.Agents[name]; ag != nil {
		ag.PodCIDRIPv6 = block6
	}
}

// healthyDualStack is healthy() on a dual-stack cluster: each node's
// podCIDRs are [its IPv4 block, the first /112 of its NIC's /96], its
// agent works on both, and its pods hold one address of each family.
func healthyDualStack() Snapshot {
	s := healthy()
	s.Cloud.DualStack = true
	nics := map[string]string{"a": "fd20:1:2:3:a::/96", "b": "fd20:1:2:3:b::/96", "new": "fd20:1:2:3:c::/96"}
	for i := range s.Cloud.Instances {
		s.Cloud.Instances[i].IPv6 = nics[s.Cloud.Instances[i].Node]
	}
	dual(&s, "a", "fd20:1:2:3:a::/112")
	dual(&s, "b", "fd20:1:2:3:b::/112")
	s.Agents["a"].Allocations[0].IPv6 = "fd20:1:2:3:a::5"
	s.Agents["b"].Allocations[0].IPv6 = "fd20:1:2:3:b::7"
	s.Agents["b"].Allocations[1].IPv6 = "fd20:1:2:3:b::9"
	s.Pods[0].Status.PodIPs = append(s.Pods[0].Status.PodIPs, corev1.PodIP{IP: "fd20:1:2:3:a::5"})
	s.Pods[1].Status.PodIPs = append(s.Pods[1].Status.PodIPs, corev1.PodIP{IP: "fd20:1:2:3:b::7"})
	return s
}

func TestCheckHealthyDualStackClusterIsClean(t *testing.T) {
	for _, tc := range []struct {
		name  string
		state func(*Snapshot)
	}{
		{"as built", func(*Snapshot) {}},
		{"an IPv6 podCIDR written in another spelling", func(s *Snapshot) {
			s.Nodes[0].Spec.PodCIDRs[1] = "FD20:0001:2:3:a:0:0:0/112"
		}},
		{"an agent not ready yet (no state open: no IPv6 block reported)", func(s *Snapshot) {
			s.Agents["a"].Ready, s.Agents["a"].PodCIDRIPv6, s.Agents["a"].Allocations = false, "", nil
			s.Pods = s.Pods[1:]
		}},
		{"a controller that reports no NIC ranges (single-stack, older)", func(s *Snapshot) {
			s.Cloud.DualStack = false
			for i := range s.Cloud.Instances {
				s.Cloud.Instances[i].IPv6 = ""
			}
		}},
		{"a dual-stack pod whose IPv6 address came after its agent was read", func(s *Snapshot) {
			s.Pods[0].Status.PodIPs[1].IP = "fd20:1:2:3:a::6"
			s.Agents["a"].Allocations[0].Created = now.Add(-time.Second)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := healthyDualStack()
			tc.state(&s)
			if r := Check(s); len(r.Findings) != 0 || len(r.Incomplete) != 0 {
				t.Fatalf("findings on a healthy dual-stack cluster: %+v, incomplete %v", r.Findings, r.Incomplete)
			}
		})
	}
}

func TestCheckDualStackFindings(t *testing.T) {
	for _, tc := range []struct {
		name   string
		break_ func(*Snapshot)
		want   []string // class/kind, in report order
		match  string   // a substring of the first finding's message
	}{
		{"two nodes with one IPv6 block", func(s *Snapshot) { s.Nodes[1].Spec.PodCIDRs[1] = "fd20:1:2:3:a::/112" },
			[]string{"duplicate/duplicate-podcidr", "mismatch/agent-podcidr", "mismatch/allocation-outside", "mismatch/allocation-outside", "mismatch/ipv6-podcidr", "mismatch/pod-ip-outside"}, "a (fd20:1:2:3:a::/112) and b (fd20:1:2:3:a::/112)"},
		{"an IPv6 block inside another node's", func(s *Snapshot) {
			s.Nodes[1].Spec.PodCIDRs[1] = "fd20:1:2:3:a::/120"
			s.Agents["b"].PodCIDRIPv6 = "fd20:1:2:3:a::/120"
		}, []string{"duplicate/duplicate-podcidr", "mismatch/allocation-outside", "mismatch/allocation-outside", "mismatch/ipv6-podcidr", "mismatch/pod-ip-outside"}, "overlapping"},
		{"an IPv6 podCIDR that is not the first /112 of its NIC's range", func(s *Snapshot) {
			s.Nodes[0].Spec.PodCIDRs[1] = "fd20:1:2:3:a:0:1:0/112"
			s.Agents["a"].PodCIDRIPv6 = "fd20:1:2:3:a:0:1:0/112"
		}, []string{"mismatch/allocation-outside", "mismatch/ipv6-podcidr", "mismatch/pod-ip-outside"}, "holds fd20:1:2:3:a::5, outside the IPv6 podCIDR fd20:1:2:3:a:0:1:0/112"},
		{"a /112 not inside its NIC's /96", func(s *Snapshot) {
			s.Cloud.Instances[0].IPv6 = "fd20:1:2:3:9::/96"
		}, []string{"mismatch/ipv6-podcidr"}, "is not inside its NIC's IPv6 range fd20:1:2:3:9::/96"},
		{"an IPv6 podCIDR of the wrong length", func(s *Snapshot) {
			s.Nodes[0].Spec.PodCIDRs[1] = "fd20:1:2:3:a::/96"
			s.Agents["a"].PodCIDRIPv6 = "fd20:1:2:3:a::/96"
		}, []string{"mismatch/ipv6-podcidr"}, "is not the first /112 of its NIC's IPv6 range fd20:1:2:3:a::/96"},
		{"an IPv6 podCIDR wider than its NIC's range", func(s *Snapshot) {
			s.Nodes[0].Spec.PodCIDRs[1] = "fd20:1:2:3::/64"
			s.Agents["a"].PodCIDRIPv6 = "fd20:1:2:3::/64"
		}, []string{"duplicate/duplicate-podcidr", "mismatch/ipv6-podcidr"}, "fd20:1:2:3::/64 is not inside its NIC's IPv6 range fd20:1:2:3:a::/96"},
		{"an IPv6 podCIDR whose NIC has no IPv6 range", func(s *Snapshot) { s.Cloud.Instances[1].IPv6 = "" },
			[]string{"mismatch/ipv6-podcidr"}, "the NIC of instance p/z/b has no IPv6 range"},
		{"a node without an IPv6 podCIDR on a dual-stack cluster", func(s *Snapshot) {
			s.Nodes[1].Spec.PodCIDRs = []string{s.Nodes[1].Spec.PodCIDR}
		}, []string{"mismatch/agent-podcidr", "mismatch/allocation-outside", "mismatch/allocation-outside", "mismatch/ipv6-podcidr"}, "the Node has no IPv6 podCIDR"},
		{"an IPv6 podCIDR that does not parse", func(s *Snapshot) { s.Nodes[0].Spec.PodCIDRs[1] = "fd20::/129" },
			[]string{"mismatch/agent-podcidr", "mismatch/allocation-outside", "mismatch/ipv6-podcidr", "mismatch/podcidr-invalid"}, "the Node has no IPv6 podCIDR"},
		{"an agent on another IPv6 block", func(s *Snapshot) { s.Agents["a"].PodCIDRIPv6 = "fd20:1:2:3:f::/112" },
			[]string{"mismatch/agent-podcidr"}, "works on IPv6 block fd20:1:2:3:f::/112, the Node's IPv6 podCIDR is fd20:1:2:3:a::/112"},
		{"an agent single-stack on a dual-stack node", func(s *Snapshot) { s.Agents["a"].PodCIDRIPv6 = "" },
			[]string{"mismatch/agent-podcidr"}, "works single-stack on 10.0.1.0/24"},
		{"an IPv6 address allocated on two nodes", func(s *Snapshot) {
			s.Agents["b"].Allocations[2].IPv6 = "fd20:1:2:3:a::5"
		}, []string{"duplicate/duplicate-ip", "mismatch/allocation-outside"}, "fd20:1:2:3:a::5 is held twice"},
		{"two allocations of one node with one IPv6 address", func(s *Snapshot) {
			s.Agents["b"].Allocations[2].IPv6 = "fd20:1:2:3:b::7"
		}, []string{"duplicate/duplicate-ip"}, "fd20:1:2:3:b::7 is held twice"},
		{"two running pods with one IPv6 address", func(s *Snapshot) {
			p := pod("other", "web", "u5", "b", "10.1.0.11")
			p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: "fd20:1:2:3:a::5"})
			s.Pods = append(s.Pods, p)
		}, []string{"duplicate/duplicate-ip", "mismatch/pod-ip-outside", "mismatch/pod-ip-untracked"}, "running pod other/web on b"},
		{"a running pod's IPv6 address outside its node's IPv6 block", func(s *Snapshot) {
			s.Pods[0].Status.PodIPs[1].IP = "fd99::5"
		}, []string{"mismatch/pod-ip-outside"}, "runs with fd99::5, outside the node's IPv6 podCIDR fd20:1:2:3:a::/112"},
		{"a running pod whose IPv6 address the agent does not hold", func(s *Snapshot) {
			s.Agents["a"].Allocations[0].IPv6 = ""
		}, []string{"mismatch/allocation-mismatch"}, "the agent holds no IPv6 address for it"},
		{"a running pod with another IPv6 address than its allocation", func(s *Snapshot) {
			s.Pods[0].Status.PodIPs[1].IP = "fd20:1:2:3:a::6"
		}, []string{"mismatch/allocation-mismatch"}, "the agent holds fd20:1:2:3:a::5 for it"},
		{"a running pod's IPv6 address no allocation holds", func(s *Snapshot) {
			s.Agents["a"].Allocations = nil
		}, []string{"mismatch/pod-ip-untracked", "mismatch/pod-ip-untracked"}, "may be handed out again"},
		{"an allocation's IPv6 address outside the node's IPv6 block", func(s *Snapshot) {
			s.Agents["b"].Allocations[1].IPv6 = "fd20:1:2:3:a::9"
		}, []string{"mismatch/allocation-outside"}, "holds fd20:1:2:3:a::9, outside the IPv6 podCIDR fd20:1:2:3:b::/112"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := healthyDualStack()
			tc.break_(&s)
			r := Check(s)
			if got := kinds(r); !slices.Equal(got, tc.want) {
				t.Fatalf("findings %v, want %v\n%+v", got, tc.want, r.Findings)
			}
			if !slices.ContainsFunc(r.Findings, func(f Finding) bool { return strings.Contains(f.Message, tc.match) }) {
				t.Errorf("no finding says %q: %+v", tc.match, r.Findings)
			}
		})
	}
}

// TestCheckSingleStackIPv6NodeIsNotDualStack: on a single-stack IPv6
// cluster (the fake cloud with an IPv6 --cluster-cidr) the podCIDR itself
// is the IPv6 block: checked as the IPv4 one is, not as a dual-stack side.
func TestCheckSingleStackIPv6NodeIsNotDualStack(t *testing.T) {
	s := healthy()
	s.Nodes = append(s.Nodes, node("v6", "fd00:10:0:1::/64", "v6"))
	s.Nodes[len(s.Nodes)-1].Spec.PodCIDRs = []string{"fd00:10:0:1::/64"}
	s.Cloud.Ranges = append(s.Cloud.Ranges, adminapiRange("v6", "fd00:10::/48", 64))
	s.Cloud.Instances = append(s.Cloud.Instances, adminapiInstance("p/z/v6", "v6", "fd00:10:0:1::/64", "v6"))
	s.Agents["v6"] = &api.Allocations{Node: "v6", PodCIDR: "fd00:10:0:1::/64", Ready: true,
		Allocations: []api.AllocationEntry{alloc("fd00:10:0:1::5", "default", "v6pod", "u6", "c6", time.Hour)}}
	s.Pods = append(s.Pods, pod("default", "v6pod", "u6", "v6", "fd00:10:0:1::5"))
	if r := Check(s); len(r.Findings) != 0 || len(r.Incomplete) != 0 {
		t.Fatalf("findings on a single-stack IPv6 node: %+v, incomplete %v", r.Findings, r.Incomplete)
	}
}

func adminapiRange(name, cidr string, mask int) adminapi.Range {
	return adminapi.Range{Name: name, CIDR: cidr, MaskSize: mask}
}

func adminapiInstance(ref, node, cidr, rng string) adminapi.Instance {
	return adminapi.Instance{Ref: ref, Node: node, Aliases: []adminapi.Alias{{CIDR: cidr, Range: rng}}}
}
