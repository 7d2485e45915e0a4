package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/aliasip/aliasip/test/framework"
)

// Where the pod path's time goes (issue 25): the CPU each contender's
// across-nodes TCP stream costs per gigabyte, by kernel function, sampled
// with perf while iperf3 runs.
//
// Method. `perf record -a -F dpPerfFreq` samples every CPU on the
// cpu-clock (on a VM without a PMU the only event there is; perf-record(1)),
// wrapped around one iperf3 client, so the profile covers the stream and
// nothing before or after it. Only samples of the iperf3 processes and
// ksoftirqd count (`perf report --comms`, perf-report(1)): on veth every hop
// of a packet is processed in softirq on the CPU that sent it, in the
// sender's context (veth_xmit hands the skb to the local CPU's backlog,
// drivers/net/veth.c veth_forward_skb → __netif_rx; the backlog runs when
// the sender re-enables bottom halves, or in ksoftirqd under load,
// Documentation/networking/scaling.rst "RPS" being off), so the sender's
// and receiver's samples are the whole path, and load from the rest of the
// machine is left out. samples / dpPerfFreq is CPU seconds; divided by the
// gigabytes the receiver got it is CPU time per GB, which unlike Gbit/s
// does not depend on how much CPU the rest of the machine left over.
//
// Symbols are put into the groups below by name (the first group that
// matches). One artefact: without a PMU, a sample taken while interrupts
// are off is delivered when they come back on, so softirq time spent with
// interrupts off lands on _raw_spin_unlock_irqrestore / handle_softirqs
// ("irq-off sections, attributed late").

const (
	dpPerfFreq   = 997 // Hz, prime so it does not beat with the 1 kHz tick
	dpPerfSecs   = 3   // seconds of one profiled iperf3 run
	dpPerfRounds = 3   // profiled runs per contender, interleaved; the median counts
)

var dpGroups = []struct {
	name string
	re   *regexp.Regexp
}{
	{"copy to/from user space", regexp.MustCompile(`^(_copy_(from|to)_iter|copy_user|rep_movs|__check_object_size|__virt_addr_valid|check_heap_object|skb_copy_datagram|__skb_datagram_iter|simple_copy_to_iter)`)},
	{"netfilter, conntrack, NAT", regexp.MustCompile(`^(nf_|__nf_|nft_|__nft|ipv4_conntrack|ipt_|br_nf|hash_conntrack|nf_conntrack|__nf_conntrack)`)},
	{"TCP and sockets", regexp.MustCompile(`^(__)?(tcp|inet|sk_|sock_|sk_stream|release_sock|lock_sock|skb_entail|bpf_skops|__sys_sendto|__sys_recvfrom|sock)`)},
	{"IP: receive, route lookup, forward, output, neighbour", regexp.MustCompile(`^(__)?(ip_|ip4_|fib|ipv4_|dst_|rt_|neigh_|raw_local_deliver|ip_forward|inet_gro|inet_gso)`)},
	{"device: veth, backlog, bridge, GRO/GSO", regexp.MustCompile(`^(__)?(veth_|dev_|netif_|net_rx_action|process_backlog|enqueue_to_backlog|validate_xmit|eth_|br_|napi_|netdev_|skb_network_protocol|skb_mac_gso|skb_segment|gro_|__dev_queue_xmit|sch_direct|qdisc|packet_rcv|netdev_core_pick)`)},
	{"skb and page memory", regexp.MustCompile(`(^(__)?(kmem_|kfree|alloc_skb|kmalloc|slab|page_|free_|skb_|pskb_|consume_skb|napi_consume|build_skb|get_page|put_page|folio|rmqueue|__rmqueue|memcg|mod_memcg|obj_cgroup|refill_obj))|page`)},
	{"irq-off sections, attributed late (VM without PMU)", regexp.MustCompile(`^(handle_softirqs|_raw_spin_unlock_irq|_raw_spin_unlock_irqrestore|__do_softirq|do_softirq|__local_bh_enable_ip|irq_exit)`)},
	{"scheduler, syscalls, timers", regexp.MustCompile(`^(__)?(schedule|finish_task_switch|do_syscall|entry_SYSCALL|syscall_|exit_to_user|pick_|enqueue_task|dequeue_task|update_|try_to_wake_up|select_|do_select|core_sys_select|ktime_|read_tsc|hrtimer|__x64_sys|x64_sys|ep_|do_epoll|pv_native|native_|rcu|__rcu|_raw_spin|__pv_queued|ttwu|psi_|sched_|wake_|__wake|autoremove|vfs_|fdget|__fdget|__fget)`)},
}

// dpProfiled is one profiled run: CPU ms per GB by group.
type dpProfiled struct {
	gbps    float64
	msPerGB map[string]float64
	total   float64
}

// dpBreakdown profiles the across-nodes IPv4 row (paths[1]: aliasip,
// bridge, host↔host) and prints the table, plus the offload settings of
// every link on aliasip's path. It is skipped with a note when perf is
// missing or may not sample the whole system.
func dpBreakdown(ctx context.Context, dir string, row []*dpPath) error {
	if _, err := exec.LookPath("perf"); err != nil {
		fmt.Printf("Breakdown skipped: perf not installed (Debian's linux-perf; make deps installs it): %v\n\n", err)
		return nil
	}
	if out, err := exec.Command("perf", "record", "-a", "-F", fmt.Sprint(dpPerfFreq), "-o", filepath.Join(dir, "perf-probe.data"), "--", "true").CombinedOutput(); err != nil {
		fmt.Printf("Breakdown skipped: perf record -a fails here: %v: %s\n\n", err, bytes.TrimSpace(out))
		return nil
	}
	runs := make([][]dpProfiled, len(row))
	for r := range dpPerfRounds {
		for k := range row {
			i := k
			if r%2 == 1 {
				i = len(row) - 1 - k
			}
			p := row[i]
			prof, err := dpProfile(ctx, filepath.Join(dir, fmt.Sprintf("perf-%d-%d.data", i, r)), p.src, p.dstAddr())
			if err != nil {
				return fmt.Errorf("%s, %s: %w", p.cni, p.name, err)
			}
			runs[i] = append(runs[i], prof)
		}
	}
	med := make([]dpProfiled, len(row))
	for i := range row {
		med[i] = dpProfiled{msPerGB: map[string]float64{}}
		var g, t []float64
		for _, pr := range runs[i] {
			g, t = append(g, pr.gbps), append(t, pr.total)
		}
		med[i].gbps, med[i].total = dpMedian(g), dpMedian(t)
		for _, name := range dpGroupNames() {
			var xs []float64
			for _, pr := range runs[i] {
				xs = append(xs, pr.msPerGB[name])
			}
			med[i].msPerGB[name] = dpMedian(xs)
		}
	}
	a, br, h := med[0], med[1], med[2]
	fmt.Printf("Where the time goes, %s (IPv4): CPU ms per GB received, perf cpu-clock at %d Hz over the iperf3 and ksoftirqd threads, %d s runs, median of %d interleaved rounds\n\n",
		row[0].name, dpPerfFreq, dpPerfSecs, dpPerfRounds)
	fmt.Printf("| group | %s | %s | %s | aliasip − host |\n| --- | ---: | ---: | ---: | ---: |\n", row[2].cni, row[0].cni, row[1].cni)
	for _, name := range dpGroupNames() {
		fmt.Printf("| %s | %.0f | %.0f | %.0f | %+.0f |\n", name, h.msPerGB[name], a.msPerGB[name], br.msPerGB[name], a.msPerGB[name]-h.msPerGB[name])
	}
	fmt.Printf("| **total** | **%.0f** | **%.0f** | **%.0f** | **%+.0f (%+.0f %%)** |\n", h.total, a.total, br.total, a.total-h.total, 100*(a.total-h.total)/h.total)
	fmt.Printf("| Gbit/s while profiled | %.2f | %.2f | %.2f | |\n\n", h.gbps, a.gbps, br.gbps)

	// GRO/GSO and queues on every link of aliasip's path: the pod's eth0
	// and its host veth, the node's eth0, on both ends.
	var b strings.Builder
	for _, end := range []struct {
		what string
		pod  *framework.Pod
		node *framework.Node
	}{{"sender", row[0].src, row[0].c.nodes[0]}, {"receiver", row[0].dst, row[0].c.nodes[1]}} {
		pod, err := dpOffloads(end.pod.NS, func(l netlink.Link) bool { return l.Attrs().Name == "eth0" })
		if err != nil {
			return err
		}
		host, err := dpOffloads(end.node.NS, func(l netlink.Link) bool { return l.Attrs().Alias == end.pod.ContainerID })
		if err != nil {
			return err
		}
		eth0, err := dpOffloads(end.node.NS, func(l netlink.Link) bool { return l.Attrs().Name == "eth0" })
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "%s: pod eth0 %s; host veth %s; node eth0 %s\n", end.what, pod, host, eth0)
	}
	fmt.Printf("Offloads on aliasip's path (gso_max_size/gro_max_size bytes, tx/rx queues):\n%s\n", b.String())
	return nil
}

func dpGroupNames() []string {
	names := make([]string, 0, len(dpGroups)+2)
	for _, g := range dpGroups {
		names = append(names, g.name)
	}
	return append(names, "user space (iperf3)", "other kernel")
}

// dpGroupOf names the group of a perf symbol column ("[k] name" or
// "[.] name").
func dpGroupOf(sym string) string {
	kernel := strings.HasPrefix(sym, "[k] ")
	name := strings.TrimSpace(strings.TrimPrefix(strings.TrimPrefix(sym, "[k] "), "[.] "))
	if !kernel {
		return "user space (iperf3)"
	}
	for _, g := range dpGroups {
		if g.re.MatchString(name) {
			return g.name
		}
	}
	return "other kernel"
}

// dpProfile runs one iperf3 client from the pod to dst under perf record
// and returns its throughput and CPU per GB by group.
func dpProfile(ctx context.Context, data string, src *framework.Pod, dst netip.Addr) (dpProfiled, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Duration(dpPerfSecs+60)*time.Second)
	defer cancel()
	args := []string{"record", "-a", "-F", fmt.Sprint(dpPerfFreq), "-o", data, "--",
		"nsenter", "--net=" + src.NS.Path(), "iperf3", "-c", dst.String(), "-t", fmt.Sprint(dpPerfSecs), "-J"}
	cmd := exec.CommandContext(ctx, "perf", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return dpProfiled{}, fmt.Errorf("perf record iperf3: %w: %s", err, bytes.TrimSpace(stderr.Bytes()))
	}
	var rep struct {
		Error string `json:"error"`
		End   struct {
			SumReceived struct {
				Bytes         float64 `json:"bytes"`
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &rep); err != nil || rep.Error != "" || rep.End.SumReceived.Bytes == 0 {
		return dpProfiled{}, fmt.Errorf("iperf3 under perf: %v %s (%d bytes of output)", err, rep.Error, len(out))
	}
	comms := []string{"iperf3"}
	for c := range runtime.NumCPU() {
		comms = append(comms, fmt.Sprintf("ksoftirqd/%d", c))
	}
	rcmd := exec.CommandContext(ctx, "perf", "report", "-i", data, "--comms", strings.Join(comms, ","), "--sort", "sym", "--stdio", "-n")
	rout, err := rcmd.Output()
	if err != nil {
		return dpProfiled{}, fmt.Errorf("perf report: %w", err)
	}
	os.Remove(data)
	samples, err := dpParseReport(rout)
	if err != nil {
		return dpProfiled{}, err
	}
	gb := rep.End.SumReceived.Bytes / 1e9
	p := dpProfiled{gbps: rep.End.SumReceived.BitsPerSecond / 1e9, msPerGB: map[string]float64{}}
	for sym, n := range samples {
		ms := float64(n) * 1000 / dpPerfFreq / gb
		p.msPerGB[dpGroupOf(sym)] += ms
		p.total += ms
	}
	return p, nil
}

// dpPerfLine is a `perf report -n --sort sym --stdio` row: overhead,
// samples, then the symbol with its "[k]" or "[.]" mark.
var dpPerfLine = regexp.MustCompile(`^\s*[0-9.]+%\s+([0-9]+)\s+(\[[k.]\] .+?)\s*$`)

// dpParseReport returns the samples per symbol of a perf report.
func dpParseReport(out []byte) (map[string]int, error) {
	samples := map[string]int{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		m := dpPerfLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		n, err := strconv.Atoi(m[1])
		if err != nil {
			return nil, err
		}
		samples[m[2]] += n
	}
	if len(samples) == 0 {
		return nil, fmt.Errorf("perf report: no samples of iperf3 or ksoftirqd in %d bytes of output", len(out))
	}
	return samples, sc.Err()
}

// dpOffloads describes the first link of the namespace that match selects.
func dpOffloads(n ns.NetNS, match func(netlink.Link) bool) (string, error) {
	var s string
	err := n.Do(func(ns.NetNS) error {
		links, err := netlink.LinkList()
		if err != nil {
			return err
		}
		for _, l := range links {
			if !match(l) {
				continue
			}
			a := l.Attrs()
			s = fmt.Sprintf("%s: gso %d/gro %d, queues %d/%d, mtu %d", a.Name, a.GSOMaxSize, a.GROMaxSize, a.NumTxQueues, a.NumRxQueues, a.MTU)
			return nil
		}
		return fmt.Errorf("no such link")
	})
	return s, err
}
