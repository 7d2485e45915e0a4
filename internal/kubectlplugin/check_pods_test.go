package kubectlplugin

import (
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/aliasip/aliasip/controller/adminapi"
	"github.com/aliasip/aliasip/node-agent/api"
)

// TestCheckHealthyClusterStates: states a healthy cluster passes through
// all the time; check must stay clean on each (a platform team runs it
// from a cron job and pages on exit 1).
func TestCheckHealthyClusterStates(t *testing.T) {
	for _, tc := range []struct {
		name  string
		state func(*Snapshot)
	}{
		{"a terminating pod whose DEL came before the API forgot it", func(s *Snapshot) {
			s.Pods[0].DeletionTimestamp = &metav1.Time{Time: now.Add(-time.Minute)}
			s.Agents["a"].Allocations = nil
		}},
		{"a pod that got its address after its agent was read", func(s *Snapshot) {
			p := pod("default", "fresh", "u7", "a", "10.0.1.9")
			p.CreationTimestamp = metav1.Time{Time: now.Add(-time.Hour)}
			p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReadyToStartContainers, Status: corev1.ConditionTrue,
				LastTransitionTime: metav1.Time{Time: now.Add(time.Second)}}}
			s.Pods = append(s.Pods, p)
		}},
		{"a new pod without the sandbox condition", func(s *Snapshot) {
			p := pod("default", "fresh", "u7", "a", "10.0.1.9")
			p.CreationTimestamp = metav1.Time{Time: now.Add(-5 * time.Second)}
			s.Pods = append(s.Pods, p)
		}},
		{"a re-created sandbox whose new address status.podIP does not show yet", func(s *Snapshot) {
			s.Agents["a"].Allocations = []api.AllocationEntry{alloc("10.0.1.6", "default", "web", "u1", "c1b", 5*time.Second)}
		}},
		{"a dual-stack pod whose other address is not the agent's", func(s *Snapshot) {
			s.Pods[0].Status.PodIPs = append(s.Pods[0].Status.PodIPs, corev1.PodIP{IP: "fd00::5"})
		}},
		{"a dual-stack pod whose IPv6 address its agent holds", func(s *Snapshot) {
			dual(s, "a", "fd00::/112")
			s.Pods[0].Status.PodIPs = append(s.Pods[0].Status.PodIPs, corev1.PodIP{IP: "fd00::5"})
			s.Agents["a"].Allocations[0].IPv6 = "fd00::5"
		}},
		{"a static pod (its mirror has another UID)", func(s *Snapshot) {
			p := pod("kube-system", "proxy-a", "mirror-uid", "a", "10.0.1.7")
			p.Annotations = map[string]string{"kubernetes.io/config.mirror": "0123abcd", "kubernetes.io/config.hash": "0123abcd"}
			s.Pods = append(s.Pods, p)
			s.Agents["a"].Allocations = append(s.Agents["a"].Allocations, alloc("10.0.1.7", "kube-system", "proxy-a", "0123abcd", "c3", time.Hour))
		}},
		{"a podCIDR written with host bits (the API accepts it)", func(s *Snapshot) {
			s.Nodes[0].Spec.PodCIDR = "10.0.1.1/24"
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := healthy()
			tc.state(&s)
			if r := Check(s); len(r.Findings) != 0 || len(r.Incomplete) != 0 {
				t.Fatalf("findings on a healthy cluster: %+v, incomplete %v", r.Findings, r.Incomplete)
			}
		})
	}
}

// TestCheckFindsMore: problems check must not miss.
func TestCheckFindsMore(t *testing.T) {
	for _, tc := range []struct {
		name   string
		break_ func(*Snapshot)
		want   []string
	}{
		{"an allocation and another node's running pod share an address", func(s *Snapshot) {
			job := pod("default", "job", "u8", "a", "") // scheduled, its containers not started
			job.Status.Phase = corev1.PodPending
			s.Pods = append(s.Pods, job, pod("other", "x", "u9", "b", "10.0.1.20"))
			s.Agents["a"].Allocations = append(s.Agents["a"].Allocations, alloc("10.0.1.20", "default", "job", "u8", "c8", time.Hour))
		}, []string{"duplicate/duplicate-ip"}},
		{"two running pods share an address, one on a node whose agent was not read", func(s *Snapshot) {
			delete(s.Agents, "b")
			s.Unread["b"] = "exec: timeout"
			s.Pods = append(s.Pods, pod("other", "web", "u5", "b", "10.0.1.5"))
		}, []string{"duplicate/duplicate-ip"}},
		{"another node's running pod has an allocation's IPv6 address", func(s *Snapshot) {
			dual(s, "a", "fd00::/112")
			s.Agents["a"].Allocations[0].IPv6 = "fd00::5"
			p := pod("other", "x", "u9", "b", "10.0.2.20")
			p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: "fd00::5"})
			s.Pods = append(s.Pods, p)
		}, []string{"duplicate/duplicate-ip"}},
		{"an older sandbox of a running pod whose DEL never came", func(s *Snapshot) {
			s.Agents["a"].Allocations = append(s.Agents["a"].Allocations, alloc("10.0.1.8", "default", "web", "u1", "c0", 2*time.Hour))
		}, []string{"leak/allocation-leak"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := healthy()
			tc.break_(&s)
			if got := kinds(Check(s)); !slices.Equal(got, tc.want) {
				t.Fatalf("findings %v, want %v", got, tc.want)
			}
		})
	}
}

// TestCheckAliasOfAnUnresolvedNode: a Node whose instance the controller
// cannot resolve is reported, and its block on an instance "without a
// Node" is not called a leak (release would take it from the Node).
func TestCheckAliasOfAnUnresolvedNode(t *testing.T) {
	s := healthy()
	s.Nodes = append(s.Nodes, node("odd", "10.0.9.0/24", "default"))
	s.Cloud.Instances = append(s.Cloud.Instances, adminapi.Instance{Ref: "p/z/vm-odd", Aliases: []adminapi.Alias{{CIDR: "10.0.9.0/24", Range: "default"}}})
	s.Agents["odd"] = &api.Allocations{Node: "odd", PodCIDR: "10.0.9.0/24", Allocations: []api.AllocationEntry{}}
	if got, want := kinds(Check(s)), []string{"mismatch/instance-missing"}; !slices.Equal(got, want) {
		t.Fatalf("findings %v, want %v", got, want)
	}
}
