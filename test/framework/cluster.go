package framework

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/aliasip/aliasip/cloud"
)

// CreateNodes creates Nodes concurrently. mutate, if set, edits each before
// it is created.
func CreateNodes(ctx context.Context, client kubernetes.Interface, names []string, mutate func(*corev1.Node)) error {
	var wg sync.WaitGroup
	errs := make(chan error, len(names))
	work := make(chan string)
	for w := 0; w < 32; w++ {
		wg.Go(func() {
			for name := range work {
				n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
				if mutate != nil {
					mutate(n)
				}
				if _, err := client.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{}); err != nil {
					errs <- fmt.Errorf("create node %s: %w", name, err)
				}
			}
		})
	}
	for _, n := range names {
		work <- n
	}
	close(work)
	wg.Wait()
	close(errs)
	return <-errs
}

// NodeNames returns prefix-0000 … prefix-(n-1).
func NodeNames(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s-%04d", prefix, i)
	}
	return out
}

// DeleteAllNodes deletes every Node and waits until none is left.
func DeleteAllNodes(ctx context.Context, client kubernetes.Interface) error {
	if err := client.CoreV1().Nodes().DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
		return err
	}
	return Eventually(ctx, time.Minute, func() (bool, error) {
		l, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		return err == nil && len(l.Items) == 0, err
	})
}

// Eventually is Poll every 100 ms: the one poller of the tests.
func Eventually(ctx context.Context, timeout time.Duration, cond func() (bool, error)) error {
	return Poll(ctx, 100*time.Millisecond, timeout, cond)
}

// Poll calls cond every interval (the first time at once) until it
// reports true, ctx ends or timeout passes; then, once more at the
// deadline. An error from cond does not end the polling: it is the state
// cond saw, and the last one is in the error Poll returns, so a cond says
// why it is not done yet by returning one ("3 of 5 nodes"). An error
// wrapped by Stop ends the polling at once (a process that exited).
func Poll(ctx context.Context, interval, timeout time.Duration, cond func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	var last error
	failed := func(why error) error {
		if last != nil {
			return fmt.Errorf("%w; last: %w", why, last)
		}
		return why
	}
	for {
		ok, err := cond()
		if ok {
			return nil
		}
		if err != nil {
			last = err
			var s stopError
			if errors.As(err, &s) {
				return s.err
			}
		}
		if time.Now().After(deadline) {
			return failed(fmt.Errorf("timed out after %v", timeout))
		}
		select {
		case <-ctx.Done():
			return failed(ctx.Err())
		case <-time.After(min(interval, time.Until(deadline)+time.Millisecond)):
		}
	}
}

// Stop wraps err so that Poll (and Eventually) return it at once instead of
// polling on.
func Stop(err error) error { return stopError{err} }

type stopError struct{ err error }

func (s stopError) Error() string { return s.err.Error() }
func (s stopError) Unwrap() error { return s.err }

// Snapshot is the cluster's allocation state as seen from outside: nodes'
// podCIDRs and the cloud's alias ranges from the pod range.
type Snapshot struct {
	PodCIDR  map[string]string         // node -> spec.podCIDR ("" if none)
	PodCIDRs map[string][]string       // node -> spec.podCIDRs (both families when dual-stack)
	Aliases  map[string][]netip.Prefix // instance name -> our alias ranges
	IPv6     map[string]netip.Prefix   // instance name -> its NIC's IPv6 range, if it has one
}

// AliasLister is the part of a cloud a snapshot reads.
type AliasLister interface {
	PodRange(ctx context.Context) (netip.Prefix, string, error)
	ListInstances(ctx context.Context) ([]cloud.Instance, error)
}

// TakeSnapshot lists Nodes and cloud instances. Instances are matched to
// nodes by name (the fake cloud's convention for nodes without providerID).
func TakeSnapshot(ctx context.Context, client kubernetes.Interface, cl AliasLister) (*Snapshot, error) {
	nodes, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	pr, rangeName, err := cl.PodRange(ctx)
	if err != nil {
		return nil, err
	}
	insts, err := cl.ListInstances(ctx)
	if err != nil {
		return nil, err
	}
	s := &Snapshot{PodCIDR: map[string]string{}, PodCIDRs: map[string][]string{}, Aliases: map[string][]netip.Prefix{}, IPv6: map[string]netip.Prefix{}}
	for _, n := range nodes.Items {
		s.PodCIDR[n.Name] = n.Spec.PodCIDR
		s.PodCIDRs[n.Name] = n.Spec.PodCIDRs
	}
	for _, in := range insts {
		if in.IPv6.IsValid() {
			s.IPv6[in.Ref.Name] = in.IPv6
		}
		for _, a := range in.Aliases {
			if a.RangeName == rangeName && pr.Contains(a.CIDR.Addr()) {
				s.Aliases[in.Ref.Name] = append(s.Aliases[in.Ref.Name], a.CIDR)
			}
		}
	}
	return s, nil
}

// Converged reports whether every node has a podCIDR and exactly that alias.
func (s *Snapshot) Converged() bool {
	for n, c := range s.PodCIDR {
		a := s.Aliases[n]
		if c == "" || len(a) != 1 || a[0].String() != c {
			return false
		}
	}
	return true
}

// Pending returns the nodes that have not converged, sorted, at most 10.
func (s *Snapshot) Pending() []string {
	var out []string
	for n, c := range s.PodCIDR {
		a := s.Aliases[n]
		if c == "" || len(a) != 1 || a[0].String() != c {
			out = append(out, fmt.Sprintf("%s(podCIDR=%q aliases=%v)", n, c, a))
		}
	}
	sort.Strings(out)
	if len(out) > 10 {
		out = append(out[:10], "…")
	}
	return out
}

// CheckInvariants reports every violation of aliasip's promises: no two
// nodes share or overlap a podCIDR, no range is on two instances, every
// podCIDR is inside cluster, and (when strict) no alias sits on an instance
// without a Node holding exactly that podCIDR.
func (s *Snapshot) CheckInvariants(t testing.TB, cluster netip.Prefix, strict bool) {
	t.Helper()
	var all []struct {
		p   netip.Prefix
		who string
	}
	for n, c := range s.PodCIDR {
		if c == "" {
			continue
		}
		p, err := netip.ParsePrefix(c)
		if err != nil || !cluster.Contains(p.Addr()) || p.Bits() < cluster.Bits() {
			t.Errorf("node %s: podCIDR %q not inside %v", n, c, cluster)
			continue
		}
		all = append(all, struct {
			p   netip.Prefix
			who string
		}{p, "node " + n})
	}
	var aliases []struct {
		p   netip.Prefix
		who string
	}
	for inst, ps := range s.Aliases {
		for _, p := range ps {
			aliases = append(aliases, struct {
				p   netip.Prefix
				who string
			}{p, "instance " + inst})
			if strict {
				if c, ok := s.PodCIDR[inst]; !ok {
					t.Errorf("alias %v on instance %s, which has no Node", p, inst)
				} else if c != p.String() {
					t.Errorf("alias %v on instance %s, whose node's podCIDR is %q", p, inst, c)
				}
			}
		}
	}
	for _, set := range [][]struct {
		p   netip.Prefix
		who string
	}{all, aliases} {
		sort.Slice(set, func(i, j int) bool { return set[i].p.Addr().Less(set[j].p.Addr()) })
		for i := 1; i < len(set); i++ {
			if set[i-1].p.Overlaps(set[i].p) {
				t.Errorf("%v (%s) overlaps %v (%s)", set[i-1].p, set[i-1].who, set[i].p, set[i].who)
			}
		}
	}
}

// Events returns the reasons of events recorded on a node.
func Events(ctx context.Context, client kubernetes.Interface, node string) ([]corev1.Event, error) {
	l, err := client.CoreV1().Events("default").List(ctx, metav1.ListOptions{
		FieldSelector: "involvedObject.kind=Node,involvedObject.name=" + node,
	})
	if err != nil {
		return nil, err
	}
	return l.Items, nil
}

// HasEvent reports whether node has an event with reason and type.
func HasEvent(ctx context.Context, client kubernetes.Interface, node, eventType, reason string) (bool, error) {
	evs, err := Events(ctx, client, node)
	if err != nil {
		return false, err
	}
	for _, e := range evs {
		if e.Reason == reason && e.Type == eventType {
			return true, nil
		}
	}
	return false, nil
}

// IgnoreNotFound returns nil for a NotFound error.
func IgnoreNotFound(err error) error {
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

// ScrapeMetric returns the value of the first sample of name (with the
// label fragment, if given) from a Prometheus text endpoint.
func ScrapeMetric(body, name, labels string) (float64, bool) {
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, "#") || !strings.HasPrefix(line, name) {
			continue
		}
		rest := line[len(name):]
		if labels != "" && !strings.Contains(rest, labels) {
			continue
		}
		if len(rest) > 0 && rest[0] != ' ' && rest[0] != '{' {
			continue
		}
		f := strings.Fields(line)
		var v float64
		if _, err := fmt.Sscan(f[len(f)-1], &v); err == nil {
			return v, true
		}
	}
	return 0, false
}
