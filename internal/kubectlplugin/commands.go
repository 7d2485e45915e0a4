package kubectlplugin

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/aliasip/aliasip/controller/adminapi"
	"github.com/aliasip/aliasip/node-agent/api"
)

// Exit codes of check (and release).
const (
	ExitClean      = 0
	ExitFindings   = 1 // check found problems; release failed to release some
	ExitUsage      = 2
	ExitIncomplete = 3 // nothing found, but some views could not be read; release: some leaks could not be verified
)

// Status prints the ranges with their utilization, and the nodes of each.
func Status(ctx context.Context, s Source, w io.Writer) error {
	_, v, err := s.leader(ctx)
	if err != nil {
		return err
	}
	nodes, err := s.Client.CoreV1().Nodes().List(ctx, listAll)
	if err != nil {
		return fmt.Errorf("list nodes: %w", err)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RANGE\tCIDR\tMASK\tBLOCKS\tUSED\tFREE\tCOOLING\tUSED%\tNODES")
	ranges := map[string]netip.Prefix{}
	for _, r := range v.Ranges {
		name := r.Name
		if r.Default {
			name += " (flags)"
		}
		pct := 0.0
		if r.Total > 0 {
			pct = 100 * float64(r.Used) / float64(r.Total)
		}
		fmt.Fprintf(tw, "%s\t%s\t/%d\t%d\t%d\t%d\t%d\t%.0f%%\t%d\n", name, r.CIDR, r.MaskSize, r.Total, r.Used, r.Free, r.Cooling, pct, r.Nodes)
		if p, err := netip.ParsePrefix(r.CIDR); err == nil {
			ranges[r.Name] = p
		}
	}
	fmt.Fprintln(tw)
	// A dual-stack node's IPv6 block (the second of its podCIDRs) gets a
	// column of its own when the controller runs dual-stack or any node
	// has one; single-stack output is unchanged.
	ipv6Of := func(n *corev1.Node) string {
		if len(n.Spec.PodCIDRs) > 1 {
			return n.Spec.PodCIDRs[1]
		}
		return ""
	}
	dual := v.DualStack
	for i := range nodes.Items {
		dual = dual || ipv6Of(&nodes.Items[i]) != ""
	}
	// Growable ranges' extra blocks (NodeBlocks) get a column when any
	// node has one.
	var extras map[string][]netip.Prefix
	if s.Dynamic != nil {
		extras = readExtraBlocks(ctx, s.Dynamic, nodes.Items)
	}
	header := "RANGE\tNODE\tPODCIDR"
	if dual {
		header += "\tIPV6"
	}
	if len(extras) > 0 {
		header += "\tEXTRA BLOCKS"
	}
	fmt.Fprintln(tw, header)
	type row struct{ rng, node, cidr, cidr6, extra string }
	var rows []row
	for i := range nodes.Items {
		n := &nodes.Items[i]
		rng := "-"
		if p, err := netip.ParsePrefix(n.Spec.PodCIDR); err == nil {
			for name, r := range ranges {
				if r.Bits() <= p.Bits() && r.Contains(p.Addr()) {
					rng = name
				}
			}
		}
		cidr := n.Spec.PodCIDR
		if cidr == "" {
			cidr = "(none yet)"
		}
		cidr6 := cmp.Or(ipv6Of(n), "-")
		if n.Spec.PodCIDR == "" {
			cidr6 = "(none yet)"
		}
		extra := "-"
		if x := extras[n.Name]; len(x) > 0 {
			var ss []string
			for _, p := range x {
				ss = append(ss, p.String())
			}
			extra = strings.Join(ss, ",")
		}
		rows = append(rows, row{rng, n.Name, cidr, cidr6, extra})
	}
	sort.Slice(rows, func(i, j int) bool {
		if rows[i].rng != rows[j].rng {
			return rows[i].rng < rows[j].rng
		}
		return rows[i].node < rows[j].node
	})
	for _, r := range rows {
		line := fmt.Sprintf("%s\t%s\t%s", r.rng, r.node, r.cidr)
		if dual {
			line += "\t" + r.cidr6
		}
		if len(extras) > 0 {
			line += "\t" + r.extra
		}
		fmt.Fprintln(tw, line)
	}
	return tw.Flush()
}

// RunCheck reads, checks and prints the report (text or JSON), writes it
// to reportFile when set, and returns the exit code.
func RunCheck(ctx context.Context, s Source, minAge time.Duration, format, reportFile string, w io.Writer) (int, error) {
	snap, err := s.Read(ctx, minAge)
	if err != nil {
		return ExitIncomplete, err
	}
	r := Check(snap)
	for who, why := range snap.Unread {
		if who == "controller" {
			r.Incomplete = append(r.Incomplete, "controller: "+why)
		}
	}
	if reportFile != "" {
		b, _ := json.MarshalIndent(r, "", "  ")
		if err := os.WriteFile(reportFile, append(b, '\n'), 0o644); err != nil {
			return ExitIncomplete, err
		}
	}
	if format == "json" {
		b, _ := json.MarshalIndent(r, "", "  ")
		fmt.Fprintln(w, string(b))
	} else {
		printReport(w, r, len(snap.Nodes), len(snap.Agents))
	}
	switch {
	case len(r.Findings) > 0:
		return ExitFindings, nil
	case len(r.Incomplete) > 0:
		return ExitIncomplete, nil
	}
	return ExitClean, nil
}

func printReport(w io.Writer, r Report, nodes, agents int) {
	counts := map[string]int{}
	for _, f := range r.Findings {
		counts[f.Class]++
		fmt.Fprintf(w, "%-9s %-20s %s\n", f.Class, f.Kind, f.Message)
	}
	for _, i := range r.Incomplete {
		fmt.Fprintf(w, "%-9s %-20s %s\n", "unread", "", i)
	}
	fmt.Fprintf(w, "%d nodes, %d agents read: %d duplicates, %d leaks, %d mismatches\n",
		nodes, agents, counts[ClassDuplicate], counts[ClassLeak], counts[ClassMismatch])
}

// Release takes back the leaks of a report that a new check still finds
// leaked, each through the component that owns it, which checks once more
// before it releases: the controller for an alias, the node's agent for an
// address. Nothing else in the report is touched. With dryRun it only
// says what it would release.
func Release(ctx context.Context, s Source, report Report, minAge time.Duration, dryRun bool, w io.Writer) (int, error) {
	var leaks []Finding
	for _, f := range report.Findings {
		if f.Class == ClassLeak {
			leaks = append(leaks, f)
		}
	}
	if len(leaks) == 0 {
		fmt.Fprintln(w, "the report lists no leaks")
		return ExitClean, nil
	}
	snap, err := s.Read(ctx, minAge)
	if err != nil {
		return ExitIncomplete, err
	}
	still := map[string]bool{}
	for _, f := range Check(snap).Findings {
		still[f.key()] = true
	}
	// read says whether the new check saw what f's owner holds: a leak a
	// view it could not read would show is not verified, not gone.
	read := func(f Finding) bool {
		if f.Kind == KindAliasLeak {
			return snap.Cloud != nil && snap.Cloud.Ready
		}
		return snap.Agents[f.Node] != nil
	}
	code := ExitClean
	leader := snap.leader // the controller whose view the new check read
	agents, _, err := s.agents(ctx)
	if err != nil {
		return ExitIncomplete, err
	}
	for _, f := range leaks {
		what := f.Message
		if !read(f) {
			why := snap.Unread[f.Node]
			if f.Kind == KindAliasLeak {
				why = snap.Unread["controller"]
			}
			fmt.Fprintf(w, "unverified %s: its owner could not be read (%s)\n", what, cmp.Or(why, "not ready, or no such node"))
			if code == ExitClean {
				code = ExitIncomplete
			}
			continue
		}
		if !still[f.key()] {
			fmt.Fprintf(w, "skipped   %s: no longer leaked\n", what)
			continue
		}
		if dryRun {
			fmt.Fprintf(w, "would release %s\n", what)
			continue
		}
		var released bool
		var reason string
		var err error
		switch f.Kind {
		case KindAliasLeak:
			var res adminapi.LeakResult
			err = s.call(ctx, *leader, adminapi.OpReleaseAlias, adminapi.AliasLeak{Instance: f.Instance, CIDR: f.CIDR}, &res)
			released, reason = res.Released, res.Reason
		case KindAllocationLeak:
			t, ok := agents[f.Node]
			if !ok {
				err = fmt.Errorf("no running agent on node %s", f.Node)
				break
			}
			var res api.LeakResult
			err = s.call(ctx, t, api.OpReleaseLeak, api.LeakRequest{Attachment: api.Attachment{ContainerID: f.ContainerID, IfName: f.IfName}, IP: f.IP}, &res)
			released, reason = res.Released, res.Reason
		default:
			err = fmt.Errorf("unknown leak kind %q", f.Kind)
		}
		switch {
		case err != nil:
			fmt.Fprintf(w, "failed    %s: %v\n", what, err)
			code = ExitFindings
		case released:
			fmt.Fprintf(w, "released  %s (%s)\n", what, reason)
		default:
			fmt.Fprintf(w, "skipped   %s: %s\n", what, reason)
		}
	}
	return code, nil
}
