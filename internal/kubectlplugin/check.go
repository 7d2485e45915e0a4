// Package kubectlplugin is kubectl aliasip: status, check and release --from-report.
//
// check cross-checks three views that must agree: the Nodes' podCIDRs (the
// API), the alias ranges on the instances (the cloud, as the controller
// sees it), and the addresses each node's agent has handed out. It reads
// the last two by running the daemons' "admin" subcommand in their pods
// with kubectl exec, so it needs no network path to the nodes and no new
// port: who may run it is who may exec into those pods (RBAC pods/exec in
// the release namespace, and reading the release's DaemonSet, Deployment
// and ReplicaSets, by which it tells its daemons' pods from pods that
// only carry their labels). Its findings are what calicoctl ipam check
// reports for Calico: addresses or blocks held twice, resources leaked,
// and views that disagree.
package kubectlplugin

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/aliasip/aliasip/controller/adminapi"
	aliasipv1 "github.com/aliasip/aliasip/controller/apis/aliasip/v1alpha1"
	"github.com/aliasip/aliasip/node-agent/api"
)

// Finding classes.
const (
	ClassDuplicate = "duplicate" // something held twice: traffic goes to the wrong pod or node
	ClassLeak      = "leak"      // held for nobody; release --from-report takes it back
	ClassMismatch  = "mismatch"  // two views disagree; a person must look
)

// Finding kinds.
const (
	KindDuplicatePodCIDR   = "duplicate-podcidr"    // two Nodes' podCIDRs overlap
	KindDuplicateAlias     = "duplicate-alias"      // two instances carry overlapping aliases of our ranges
	KindDuplicateIP        = "duplicate-ip"         // one address allocated, or used by running pods, twice
	KindAliasLeak          = "alias-leak"           // an alias of our ranges on an instance without a Node
	KindAllocationLeak     = "allocation-leak"      // an agent's address whose pod is gone
	KindAliasMissing       = "alias-missing"        // a Node's podCIDR is not on its instance
	KindAliasMismatch      = "alias-mismatch"       // its instance carries another block of ours
	KindAliasExtra         = "alias-extra"          // its instance carries a block besides its podCIDR
	KindInstanceMissing    = "instance-missing"     // no instance belongs to a Node with a podCIDR
	KindPodCIDRInvalid     = "podcidr-invalid"      // a podCIDR that does not parse
	KindPodCIDROutOfRange  = "podcidr-out-of-range" // a podCIDR in none of our ranges
	KindLabelMismatch      = "label-mismatch"       // aliasip.io/pod-range names another range
	KindAgentPodCIDR       = "agent-podcidr"        // the agent works on another block than its Node's
	KindAllocationOutside  = "allocation-outside"   // an agent's address outside its node's podCIDR
	KindPodIPUntracked     = "pod-ip-untracked"     // a running pod's address its agent does not hold
	KindAllocationMismatch = "allocation-mismatch"  // the agent holds another address for a running pod
	KindIPv6PodCIDR        = "ipv6-podcidr"         // a dual-stack Node's IPv6 podCIDR is not the first /112 of its NIC's IPv6 range, or one side is missing
	KindPodIPOutside       = "pod-ip-outside"       // a running pod's IPv6 address outside its dual-stack node's IPv6 podCIDR
)

var listAll = metav1.ListOptions{}

// Finding is one problem. The fields that identify it depend on its kind;
// for leaks they are what release needs.
type Finding struct {
	Kind        string `json:"kind"`
	Class       string `json:"class"`
	Node        string `json:"node,omitempty"`
	Instance    string `json:"instance,omitempty"`
	CIDR        string `json:"cidr,omitempty"`
	IP          string `json:"ip,omitempty"`
	Namespace   string `json:"namespace,omitempty"`
	Pod         string `json:"pod,omitempty"`
	ContainerID string `json:"containerID,omitempty"`
	IfName      string `json:"ifName,omitempty"`
	Message     string `json:"message"`
}

// key identifies a leak across two checks.
func (f Finding) key() string {
	return strings.Join([]string{f.Kind, f.Node, f.Instance, f.CIDR, f.IP, f.ContainerID, f.IfName}, "|")
}

// Report is check's result, and release's input.
type Report struct {
	Time     time.Time `json:"time"`
	Findings []Finding `json:"findings"`
	// Incomplete lists the views check could not read (the controller, a
	// node's agent): what they would have shown is not checked.
	Incomplete []string `json:"incomplete,omitempty"`
}

// Snapshot is what check reads.
type Snapshot struct {
	Time  time.Time
	Nodes []corev1.Node
	Pods  []corev1.Pod
	// Cloud is the controller's view; nil when it could not be read.
	Cloud *adminapi.CloudView
	// Agents are the agents' allocations by node; a node missing here was
	// not read (Unread says why).
	Agents map[string]*api.Allocations
	Unread map[string]string
	// MinAge: allocations younger than this are not judged leaked (the
	// pod may not be in the API's answer yet).
	MinAge time.Duration
	// leader is the controller Cloud was read from.
	leader *target
	// ExtraBlocks are the Nodes' extra blocks of growable ranges (their
	// NodeBlocks status), by Node name; nil when not read.
	ExtraBlocks map[string][]netip.Prefix
}

// span is an address interval [lo, hi] with what holds it.
type span struct {
	lo, hi netip.Addr
	p      netip.Prefix
	who    string
}

// overlaps returns each pair of overlapping spans (sorted sweep).
func overlaps(spans []span) [][2]span {
	slices.SortFunc(spans, func(a, b span) int {
		return cmp.Or(a.lo.Compare(b.lo), b.hi.Compare(a.hi), strings.Compare(a.who, b.who))
	})
	var out [][2]span
	var open []span // spans that may still overlap the next, by hi
	for _, s := range spans {
		kept := open[:0]
		for _, o := range open {
			if o.hi.Compare(s.lo) >= 0 {
				kept = append(kept, o)
				out = append(out, [2]span{o, s})
			}
		}
		open = append(kept, s)
	}
	return out
}

func spanOf(p netip.Prefix, who string) span {
	p = p.Masked()
	return span{lo: p.Addr(), hi: lastAddr(p), p: p, who: who}
}

func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Addr().As16()
	bits := p.Bits()
	if p.Addr().Is4() {
		bits += 96
	}
	for i := bits; i < 128; i++ {
		a[i/8] |= 1 << (7 - uint(i%8))
	}
	out := netip.AddrFrom16(a)
	if p.Addr().Is4() {
		return out.Unmap()
	}
	return out
}

// Check compares the views in s.
func Check(s Snapshot) Report {
	r := Report{Time: s.Time, Findings: []Finding{}}
	add := func(f Finding) { r.Findings = append(r.Findings, f) }

	// Nodes' podCIDRs: parse, and no two may overlap. A dual-stack Node's
	// IPv6 block (the second of spec.podCIDRs, IPv4 first) is checked the
	// same way: IPv4 and IPv6 spans never overlap each other.
	podCIDR, podCIDR6 := map[string]netip.Prefix{}, map[string]netip.Prefix{}
	var nodeSpans []span
	for _, n := range s.Nodes {
		if n.Spec.PodCIDR == "" {
			continue
		}
		for _, c := range n.Spec.PodCIDRs[min(1, len(n.Spec.PodCIDRs)):] {
			p, err := netip.ParsePrefix(c)
			if err != nil {
				add(Finding{Kind: KindPodCIDRInvalid, Class: ClassMismatch, Node: n.Name, CIDR: c,
					Message: fmt.Sprintf("Node %s: podCIDRs entry %q does not parse", n.Name, c)})
				continue
			}
			if p.Addr().Is6() && !p.Addr().Is4In6() {
				podCIDR6[n.Name] = p.Masked()
				nodeSpans = append(nodeSpans, spanOf(p, n.Name))
			}
		}
		p, err := netip.ParsePrefix(n.Spec.PodCIDR)
		if err != nil {
			add(Finding{Kind: KindPodCIDRInvalid, Class: ClassMismatch, Node: n.Name, CIDR: n.Spec.PodCIDR,
				Message: fmt.Sprintf("Node %s: podCIDR %q does not parse", n.Name, n.Spec.PodCIDR)})
			continue
		}
		// The API accepts a podCIDR with host bits set and means its
		// network, as Kubernetes parses it (net.ParseCIDR).
		p = p.Masked()
		podCIDR[n.Name] = p
		nodeSpans = append(nodeSpans, spanOf(p, n.Name))
		// Its extra blocks are its own as much as its podCIDR: no other
		// Node's block may overlap them either.
		for _, x := range s.ExtraBlocks[n.Name] {
			nodeSpans = append(nodeSpans, spanOf(x, n.Name))
		}
	}
	for _, o := range overlaps(nodeSpans) {
		add(Finding{Kind: KindDuplicatePodCIDR, Class: ClassDuplicate, Node: o[0].who, CIDR: o[0].p.String(),
			Message: fmt.Sprintf("Nodes %s (%v) and %s (%v) hold overlapping podCIDRs", o[0].who, o[0].p, o[1].who, o[1].p)})
	}

	if s.Cloud == nil || !s.Cloud.Ready {
		r.Incomplete = append(r.Incomplete, "cloud: the controller's view could not be read (its aliases, leaks and ranges are not checked)")
	} else {
		checkCloud(s, podCIDR, add)
		checkCloudIPv6(s, podCIDR, podCIDR6, add)
	}
	checkAgents(s, podCIDR, podCIDR6, add, &r)

	sort.SliceStable(r.Findings, func(i, j int) bool {
		a, b := r.Findings[i], r.Findings[j]
		return cmp.Or(strings.Compare(classOrder(a.Class), classOrder(b.Class)), strings.Compare(a.Kind, b.Kind),
			strings.Compare(a.Node, b.Node), strings.Compare(a.Instance, b.Instance), strings.Compare(a.CIDR, b.CIDR), strings.Compare(a.IP, b.IP)) < 0
	})
	sort.Strings(r.Incomplete)
	return r
}

func classOrder(c string) string {
	switch c {
	case ClassDuplicate:
		return "0"
	case ClassLeak:
		return "1"
	}
	return "2"
}

func checkCloud(s Snapshot, podCIDR map[string]netip.Prefix, add func(Finding)) {
	type rng struct {
		name string
		cidr netip.Prefix
	}
	var ranges []rng
	for _, rg := range s.Cloud.Ranges {
		if p, err := netip.ParsePrefix(rg.CIDR); err == nil {
			ranges = append(ranges, rng{rg.Name, p})
		}
	}
	rangeOf := func(p netip.Prefix) string {
		for _, rg := range ranges {
			if rg.cidr.Bits() <= p.Bits() && rg.cidr.Contains(p.Addr()) {
				return rg.name
			}
		}
		return ""
	}
	byNode := map[string]adminapi.Instance{}
	for _, in := range s.Cloud.Instances {
		if in.Node != "" {
			byNode[in.Node] = in
		}
	}
	// A Node no instance resolves to (an odd providerID) may be the one
	// on an instance "without a Node": its block there is no leak.
	unresolved := func(p netip.Prefix) string {
		for _, n := range s.Nodes {
			if q, ok := podCIDR[n.Name]; ok && q.Overlaps(p) {
				if _, ok := byNode[n.Name]; !ok {
					return n.Name
				}
			}
		}
		return ""
	}
	var aliasSpans []span
	for _, in := range s.Cloud.Instances {
		for _, a := range in.Aliases {
			if a.Range == "" {
				continue
			}
			p, err := netip.ParsePrefix(a.CIDR)
			if err != nil {
				continue
			}
			aliasSpans = append(aliasSpans, spanOf(p, in.Ref))
			if in.Node == "" && unresolved(p) == "" {
				add(Finding{Kind: KindAliasLeak, Class: ClassLeak, Instance: in.Ref, CIDR: p.String(),
					Message: fmt.Sprintf("instance %s carries %v of range %s but no Node belongs to it", in.Ref, p, a.Range)})
			}
		}
	}
	for _, o := range overlaps(aliasSpans) {
		add(Finding{Kind: KindDuplicateAlias, Class: ClassDuplicate, Instance: o[0].who, CIDR: o[0].p.String(),
			Message: fmt.Sprintf("instances %s (%v) and %s (%v) carry overlapping aliases", o[0].who, o[0].p, o[1].who, o[1].p)})
	}
	for _, n := range s.Nodes {
		p, ok := podCIDR[n.Name]
		if !ok {
			continue
		}
		rg := rangeOf(p)
		if rg == "" {
			add(Finding{Kind: KindPodCIDROutOfRange, Class: ClassMismatch, Node: n.Name, CIDR: p.String(),
				Message: fmt.Sprintf("Node %s: podCIDR %v is in none of the ranges", n.Name, p)})
		} else if l, ok := n.Labels[aliasipv1.NodeLabel]; ok && l != rg {
			add(Finding{Kind: KindLabelMismatch, Class: ClassMismatch, Node: n.Name, CIDR: p.String(),
				Message: fmt.Sprintf("Node %s: label %s=%s but its podCIDR %v is in range %s", n.Name, aliasipv1.NodeLabel, l, p, rg)})
		}
		in, ok := byNode[n.Name]
		if !ok {
			add(Finding{Kind: KindInstanceMissing, Class: ClassMismatch, Node: n.Name, CIDR: p.String(),
				Message: fmt.Sprintf("Node %s: podCIDR %v but no instance of the cloud belongs to it", n.Name, p)})
			continue
		}
		var ours []netip.Prefix
		has := false
		extras := s.ExtraBlocks[n.Name]
		carried := map[netip.Prefix]bool{}
		for _, a := range in.Aliases {
			q, err := netip.ParsePrefix(a.CIDR)
			if err != nil || a.Range == "" {
				continue
			}
			carried[q.Masked()] = true
			switch {
			case q == p:
				has = true
			case slices.Contains(extras, q.Masked()):
				// one of its extra blocks: expected beside the podCIDR
			default:
				ours = append(ours, q)
			}
		}
		for _, x := range extras {
			if !carried[x] {
				add(Finding{Kind: KindAliasMissing, Class: ClassMismatch, Node: n.Name, Instance: in.Ref, CIDR: x.String(),
					Message: fmt.Sprintf("Node %s: extra block %v (its NodeBlocks) is not an alias of instance %s", n.Name, x, in.Ref)})
			}
		}
		switch {
		case !has && len(ours) == 0:
			add(Finding{Kind: KindAliasMissing, Class: ClassMismatch, Node: n.Name, Instance: in.Ref, CIDR: p.String(),
				Message: fmt.Sprintf("Node %s: podCIDR %v is not an alias of instance %s", n.Name, p, in.Ref)})
		case !has:
			add(Finding{Kind: KindAliasMismatch, Class: ClassMismatch, Node: n.Name, Instance: in.Ref, CIDR: p.String(),
				Message: fmt.Sprintf("Node %s: podCIDR %v but instance %s carries %v", n.Name, p, in.Ref, ours)})
		case len(ours) > 0:
			add(Finding{Kind: KindAliasExtra, Class: ClassMismatch, Node: n.Name, Instance: in.Ref, CIDR: p.String(),
				Message: fmt.Sprintf("Node %s: instance %s carries %v besides its podCIDR %v", n.Name, in.Ref, ours, p)})
		}
	}
}

// checkCloudIPv6 compares each Node's IPv6 podCIDR with its NIC's IPv6
// range as the controller reads it: on a dual-stack cluster the podCIDR
// is the first /112 of that range (what the controller writes, as GKE's
// allocator does). A NIC range is only known from a controller that
// reports it; a missing side is judged only when the controller runs
// dual-stack.
func checkCloudIPv6(s Snapshot, podCIDR, podCIDR6 map[string]netip.Prefix, add func(Finding)) {
	byNode := map[string]adminapi.Instance{}
	for _, in := range s.Cloud.Instances {
		if in.Node != "" {
			byNode[in.Node] = in
		}
	}
	for _, n := range s.Nodes {
		if _, ok := podCIDR[n.Name]; !ok {
			continue
		}
		in, ok := byNode[n.Name]
		if !ok {
			continue // instance-missing, reported with the IPv4 side
		}
		got, has := podCIDR6[n.Name]
		nic, err := netip.ParsePrefix(in.IPv6)
		hasNIC := err == nil && nic.Addr().Is6()
		f := Finding{Kind: KindIPv6PodCIDR, Class: ClassMismatch, Node: n.Name, Instance: in.Ref}
		switch {
		case has && hasNIC:
			want := netip.PrefixFrom(nic.Masked().Addr(), 112)
			if got == want {
				continue
			}
			f.CIDR = got.String()
			if got.Bits() < nic.Bits() || !nic.Contains(got.Addr()) {
				f.Message = fmt.Sprintf("Node %s: IPv6 podCIDR %v is not inside its NIC's IPv6 range %v (instance %s); the VPC routes that range, not this block, to the node", n.Name, got, nic.Masked(), in.Ref)
			} else {
				f.Message = fmt.Sprintf("Node %s: IPv6 podCIDR %v is not the first /112 of its NIC's IPv6 range %v (instance %s), %v", n.Name, got, nic.Masked(), in.Ref, want)
			}
		case has && s.Cloud.DualStack:
			f.CIDR = got.String()
			f.Message = fmt.Sprintf("Node %s: IPv6 podCIDR %v, but the NIC of instance %s has no IPv6 range", n.Name, got, in.Ref)
		case !has && s.Cloud.DualStack:
			f.CIDR = podCIDR[n.Name].String()
			f.Message = fmt.Sprintf("Node %s: the cluster is dual-stack but its podCIDRs %v have no IPv6 block (podCIDRs cannot change once set)", n.Name, n.Spec.PodCIDRs)
		default:
			continue
		}
		add(f)
	}
}

// Pod annotations of a static pod's mirror (kubelet's
// pkg/kubelet/types: ConfigMirrorAnnotationKey, ConfigHashAnnotationKey):
// the kubelet runs a static pod under a UID of its own (the config hash,
// what the runtime passes as K8S_POD_UID) and the API server gives its
// mirror pod another; the mirror's annotation names the kubelet's.
const (
	mirrorAnnotation = "kubernetes.io/config.mirror"
	hashAnnotation   = "kubernetes.io/config.hash"
)

// SamePod reports whether p is the pod an allocation recorded with podUID
// was made for: the same UID, no UID recorded, or p is the mirror of the
// static pod with that UID.
func SamePod(p *corev1.Pod, podUID string) bool {
	if podUID == "" || string(p.UID) == podUID {
		return true
	}
	if m, ok := p.Annotations[mirrorAnnotation]; ok {
		return m == podUID || p.Annotations[hashAnnotation] == podUID
	}
	return false
}

// addressedSince returns when p's sandbox last got its network (the
// PodReadyToStartContainers condition), or its creation when the kubelet
// does not report that condition.
func addressedSince(p *corev1.Pod) time.Time {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReadyToStartContainers && !c.LastTransitionTime.IsZero() {
			return c.LastTransitionTime.Time
		}
	}
	return p.CreationTimestamp.Time
}

func checkAgents(s Snapshot, podCIDR, podCIDR6 map[string]netip.Prefix, add func(Finding), r *Report) {
	pods := map[string]*corev1.Pod{}
	for i := range s.Pods {
		p := &s.Pods[i]
		pods[p.Namespace+"/"+p.Name] = p
	}
	live := func(p *corev1.Pod) bool {
		return p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed
	}
	// A holder of an address is one pod on one node (its allocation and
	// its running copy are the same holder), or an allocation that names
	// no pod.
	type holder struct{ node, id, what string }
	holders := map[netip.Addr][]holder{}
	hold := func(ip netip.Addr, h holder) {
		if !slices.ContainsFunc(holders[ip], func(o holder) bool { return o.node == h.node && o.id == h.id }) {
			holders[ip] = append(holders[ip], h)
		}
	}
	for _, n := range s.Nodes {
		if _, ok := podCIDR[n.Name]; !ok {
			continue
		}
		ag := s.Agents[n.Name]
		if ag == nil {
			why := s.Unread[n.Name]
			if why == "" {
				why = "no agent pod"
			}
			r.Incomplete = append(r.Incomplete, fmt.Sprintf("node %s: agent not read (%s)", n.Name, why))
			continue
		}
		block := podCIDR[n.Name]
		if ag.PodCIDR != "" && ag.PodCIDR != block.String() {
			add(Finding{Kind: KindAgentPodCIDR, Class: ClassMismatch, Node: n.Name, CIDR: ag.PodCIDR,
				Message: fmt.Sprintf("node %s: the agent works on %s, the Node's podCIDR is %v", n.Name, ag.PodCIDR, block)})
		}
		// The IPv6 side: the block the agent works on, against the Node's.
		// An agent that is not ready may not have opened its state yet
		// (it reports no IPv6 block then): only one that works on a block
		// is judged single-stack.
		block6, dual := podCIDR6[n.Name]
		agent6, err6 := netip.ParsePrefix(ag.PodCIDRIPv6)
		switch {
		case ag.PodCIDRIPv6 != "" && (err6 != nil || !dual || agent6.Masked() != block6):
			want := " has no IPv6 podCIDR"
			if dual {
				want = "'s IPv6 podCIDR is " + block6.String()
			}
			add(Finding{Kind: KindAgentPodCIDR, Class: ClassMismatch, Node: n.Name, CIDR: ag.PodCIDRIPv6,
				Message: fmt.Sprintf("node %s: the agent works on IPv6 block %s, the Node%s", n.Name, ag.PodCIDRIPv6, want)})
		case ag.PodCIDRIPv6 == "" && dual && ag.Ready && ag.PodCIDR != "":
			add(Finding{Kind: KindAgentPodCIDR, Class: ClassMismatch, Node: n.Name, CIDR: block6.String(),
				Message: fmt.Sprintf("node %s: the agent works single-stack on %s, the Node's podCIDRs carry the IPv6 block %v too", n.Name, ag.PodCIDR, block6)})
		}
		// The newest sandbox of a pod per interface: the kubelet runs one
		// at a time, so an older allocation for the same pod and
		// interface is one whose DEL never came.
		newest := map[string]api.AllocationEntry{}
		for _, al := range ag.Allocations {
			k := al.Namespace + "/" + al.Pod + "|" + al.PodUID + "|" + al.IfName
			if cur, ok := newest[k]; al.Pod != "" && (!ok || al.Created.After(cur.Created)) {
				newest[k] = al
			}
		}
		for _, al := range ag.Allocations {
			ip, err := netip.ParseAddr(al.IP)
			if err != nil {
				continue
			}
			id := "container " + al.ContainerID
			if al.Pod != "" {
				id = "pod " + al.Namespace + "/" + al.Pod
			}
			hold(ip, holder{n.Name, id, "allocation of " + podName(al.Namespace, al.Pod, al.ContainerID)})
			// A dual-stack allocation holds its IPv6 address too: another
			// holder of it is a duplicate like one of the IPv4 address.
			if ip6, err := netip.ParseAddr(al.IPv6); err == nil {
				hold(ip6, holder{n.Name, id, "allocation of " + podName(al.Namespace, al.Pod, al.ContainerID)})
				if !block6.Contains(ip6) {
					where := "the node has no IPv6 podCIDR"
					if dual {
						where = "outside the IPv6 podCIDR " + block6.String()
					}
					add(Finding{Kind: KindAllocationOutside, Class: ClassMismatch, Node: n.Name, IP: al.IPv6, Namespace: al.Namespace, Pod: al.Pod,
						Message: fmt.Sprintf("node %s: %s holds %s, %s", n.Name, podName(al.Namespace, al.Pod, al.ContainerID), al.IPv6, where)})
				}
			}
			if !block.Contains(ip) && !slices.ContainsFunc(s.ExtraBlocks[n.Name], func(x netip.Prefix) bool { return x.Contains(ip) }) {
				where := fmt.Sprintf("outside the podCIDR %v", block)
				if x := s.ExtraBlocks[n.Name]; len(x) > 0 {
					where += fmt.Sprintf(" and the extra blocks %v", x)
				}
				add(Finding{Kind: KindAllocationOutside, Class: ClassMismatch, Node: n.Name, IP: al.IP, Namespace: al.Namespace, Pod: al.Pod,
					Message: fmt.Sprintf("node %s: %s holds %s, %s", n.Name, podName(al.Namespace, al.Pod, al.ContainerID), al.IP, where)})
			}
			if al.Pod == "" || s.Time.Sub(al.Created) < s.MinAge {
				continue
			}
			p := pods[al.Namespace+"/"+al.Pod]
			var why string
			switch {
			case p == nil:
				why = "is gone"
			case !SamePod(p, al.PodUID):
				why = "was replaced by another pod of that name"
			case p.Spec.NodeName != "" && p.Spec.NodeName != n.Name:
				why = "now runs on node " + p.Spec.NodeName
			case !live(p):
				why = "has finished"
			default:
				nw := newest[al.Namespace+"/"+al.Pod+"|"+al.PodUID+"|"+al.IfName]
				if nw.ContainerID != al.ContainerID && s.Time.Sub(nw.Created) >= s.MinAge {
					why = "runs in a newer sandbox (" + nw.ContainerID + ", " + nw.IP + ")"
				}
			}
			if why != "" {
				add(Finding{Kind: KindAllocationLeak, Class: ClassLeak, Node: n.Name, IP: al.IP, Namespace: al.Namespace, Pod: al.Pod,
					ContainerID: al.ContainerID, IfName: al.IfName,
					Message: fmt.Sprintf("node %s: %s is held for pod %s/%s, which %s", n.Name, al.IP, al.Namespace, al.Pod, why)})
			}
		}
	}
	// Running pods: no two may share an address, and on nodes whose agent
	// answered each address in the node's block must be one its agent
	// holds for it. Not judged: host-network pods (the node's address),
	// terminating pods (their DEL may have come before the API forgets
	// them; their allocation, while held, is a holder above), and pods
	// that got their address after the snapshot began or less than
	// MinAge before (the agent was read before them; status.podIP lags a
	// re-created sandbox).
	byPod := map[string][]api.AllocationEntry{}
	for node, ag := range s.Agents {
		if ag == nil {
			continue
		}
		for _, al := range ag.Allocations {
			byPod[node+"|"+al.Namespace+"/"+al.Pod] = append(byPod[node+"|"+al.Namespace+"/"+al.Pod], al)
		}
	}
	for i := range s.Pods {
		p := &s.Pods[i]
		if p.Spec.HostNetwork || !live(p) || p.DeletionTimestamp != nil || p.Spec.NodeName == "" {
			continue
		}
		als := byPod[p.Spec.NodeName+"|"+p.Namespace+"/"+p.Name]
		block, judged := podCIDR[p.Spec.NodeName]
		judged = judged && s.Agents[p.Spec.NodeName] != nil && s.Time.Sub(addressedSince(p)) >= s.MinAge &&
			!slices.ContainsFunc(als, func(a api.AllocationEntry) bool { return s.Time.Sub(a.Created) < s.MinAge })
		block6, dual := podCIDR6[p.Spec.NodeName]
		for _, pip := range p.Status.PodIPs {
			ip, err := netip.ParseAddr(pip.IP)
			if err != nil {
				continue
			}
			hold(ip, holder{p.Spec.NodeName, "pod " + p.Namespace + "/" + p.Name, "running pod " + p.Namespace + "/" + p.Name})
			if !judged {
				continue
			}
			// The node's block and the allocation's address of the
			// pod's family.
			b, held := block, func(a api.AllocationEntry) string { return a.IP }
			if ip.Is6() && dual {
				// On a dual-stack node the agent hands out every pod's
				// IPv6 address from the node's IPv6 block: one outside
				// it came from somewhere else.
				if !block6.Contains(ip) {
					add(Finding{Kind: KindPodIPOutside, Class: ClassMismatch, Node: p.Spec.NodeName, IP: pip.IP, Namespace: p.Namespace, Pod: p.Name,
						Message: fmt.Sprintf("pod %s/%s on %s runs with %s, outside the node's IPv6 podCIDR %v", p.Namespace, p.Name, p.Spec.NodeName, pip.IP, block6)})
					continue
				}
				b, held = block6, func(a api.AllocationEntry) string { return a.IPv6 }
			}
			// Otherwise an address outside the node's block is none of
			// the agent's (another family on a single-stack node, another
			// IPAM): only the duplicates above.
			if !b.Contains(ip) {
				continue
			}
			if !slices.ContainsFunc(als, func(a api.AllocationEntry) bool {
				h, err := netip.ParseAddr(held(a))
				return err == nil && h == ip
			}) {
				kind, msg := KindPodIPUntracked, "the agent holds no such address for it: it may be handed out again"
				if len(als) > 0 {
					kind, msg = KindAllocationMismatch, fmt.Sprintf("the agent holds %s for it", cmp.Or(held(als[0]), "no "+familyName(ip)+" address"))
				}
				add(Finding{Kind: kind, Class: ClassMismatch, Node: p.Spec.NodeName, IP: pip.IP, Namespace: p.Namespace, Pod: p.Name,
					Message: fmt.Sprintf("pod %s/%s on %s runs with %s; %s", p.Namespace, p.Name, p.Spec.NodeName, pip.IP, msg)})
			}
		}
	}
	ips := make([]netip.Addr, 0, len(holders))
	for ip := range holders {
		ips = append(ips, ip)
	}
	slices.SortFunc(ips, netip.Addr.Compare)
	for _, ip := range ips {
		hs := holders[ip]
		if len(hs) < 2 {
			continue
		}
		var names []string
		for _, h := range hs {
			names = append(names, h.what+" on "+h.node)
		}
		add(Finding{Kind: KindDuplicateIP, Class: ClassDuplicate, Node: hs[0].node, IP: ip.String(),
			Message: fmt.Sprintf("%v is held twice: %s", ip, strings.Join(names, "; "))})
	}
}

func familyName(ip netip.Addr) string {
	if ip.Is4() {
		return "IPv4"
	}
	return "IPv6"
}

func podName(ns, pod, container string) string {
	if pod == "" {
		return "container " + container
	}
	return "pod " + ns + "/" + pod
}
