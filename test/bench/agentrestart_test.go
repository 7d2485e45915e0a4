package bench

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"k8s.io/client-go/kubernetes"

	"github.com/aliasip/aliasip/test/framework"
)

const (
	// agentRestartPods is the pod count on one node. 250 pods need
	// more than a /24 (GKE gives nodes with up to 256 pods a /23).
	agentRestartPods = 250
	podCIDR250       = "10.230.0.0/23"
	podCIDR0         = "10.230.2.0/23"
	// probeInterval is how often each pod is pinged: it is the resolution
	// of the longest gap.
	probeInterval = 10 * time.Millisecond
	// settleAfterReady is how long the gap window stays open after the new
	// agent is ready: its first reconcile pass and fabric sync run then.
	settleAfterReady = 5 * time.Second
	// agentIdleDefault is the idle window; ALIASIP_BENCH_IDLE (a
	// Go duration) shortens it for quick runs.
	agentIdleDefault = 60 * time.Second
	// userHZ is the unit of utime and stime in /proc/PID/stat: USER_HZ,
	// fixed at 100 in Linux's user ABI whatever the kernel's HZ.
	userHZ = 100
)

// agentNode is one emulated node with its agent, restarted by the benchmark.
type agentNode struct {
	*framework.Node
	pods      int
	kubeconf  string
	agentBin  string
	pluginBin string
	started   time.Time
	logFrom   int64 // size of the agent log when the current agent started
}

// restartResult is one restart of one agent.
type restartResult struct {
	node, signal string
	pods         int
	stop         time.Duration // signal → old process gone
	ready        time.Duration // new process started → /readyz 200
	firstAdd     time.Duration // new process started → a new pod's CNI ADD done
	gap          gapResult     // only with pods
	repaired     string        // the new agent's repair counters after settling
	phases       []time.Duration
}

// BenchmarkAgentRestart: aliasip-agent restarted (SIGTERM, then SIGKILL) on
// a node with 250 running pods, all pinged every 10 ms from the VPC side
// (the fabric) throughout. Measured:
//
//   - time from the new process's start until it is ready. Ready is the
//     agent's /readyz answering 200: it is the DaemonSet pod's readiness
//     probe (what `kubectl rollout status` and users see) and flips with the
//     same flag that gates CNI ADD, so it is also when the kubelet's next
//     sandbox retry can succeed; the table adds when an ADD sent at that
//     moment completed. The Node's NetworkUnavailable condition is no
//     signal here: the agent never sets it True, so it stays False across
//     a restart;
//   - the longest time any pod went without answering, from the signal
//     until 5 s after ready (goal: no more than the quiet baseline — a
//     restart must not touch live pods' routes or veths);
//   - idle CPU over 60 s (ALIASIP_BENCH_IDLE) of the agent with 250 pods
//     next to one with 0 pods on an identical node, measured in the same
//     window, so the difference is the per-pod cost.
//
// The agents run with their default periods (30 s resync, pod GC every
// minute), so the idle window holds two reconcile passes and one pod GC.
// The agent's repair counters are printed after the 250 ADDs and after each
// restart: a reconciler that races the plugin or a restart that finds the
// host changed shows there (and a gap in the pings shows what it cost).
func BenchmarkAgentRestart(b *testing.B) {
	if reason := framework.RequireRoot(); reason != "" {
		b.Skip(reason)
	}
	idle := agentIdleDefault
	if v := os.Getenv("ALIASIP_BENCH_IDLE"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < time.Second {
			b.Fatalf("ALIASIP_BENCH_IDLE=%q: want a Go duration of at least 1s", v)
		}
		idle = d
	}
	dir, agentBin, pluginBin, cp, fabric := nodeBench(b)
	ctx := context.Background()
	client := cp.Client(0)

	// Two identical nodes: one gets the pods, the other stays empty.
	var nodes []*agentNode
	for _, n := range []struct {
		name, podCIDR string
		pods          int
	}{{"restart-250", podCIDR250, agentRestartPods}, {"restart-0", podCIDR0, 0}} {
		fn, err := fabric.AddNode(n.name, filepath.Join(dir, n.name))
		if err != nil {
			b.Fatal(err)
		}
		defer fn.Close()
		if err := fn.RegisterNode(ctx, client, n.podCIDR); err != nil {
			b.Fatal(err)
		}
		an := &agentNode{Node: fn, pods: n.pods, kubeconf: cp.Kubeconfig, agentBin: agentBin, pluginBin: pluginBin}
		if err := an.start(); err != nil {
			b.Fatal(err)
		}
		if _, err := an.waitReady(ctx, time.Minute); err != nil {
			b.Fatal(err)
		}
		nodes = append(nodes, an)
	}
	busy := nodes[0]

	setupStart := time.Now()
	pods, err := addPods(ctx, client, busy.Node, agentRestartPods)
	defer func() {
		for _, p := range pods {
			p.Close()
		}
	}()
	if err != nil {
		b.Fatal(err)
	}
	setup := time.Since(setupStart)
	// The agent's reconciler ran through those ADDs: it should have had
	// nothing to repair or remove (each pass that coalesced their netlink
	// events is done within a second). A sleep: the agent shows no count
	// of its passes to wait for.
	time.Sleep(time.Second)
	fmt.Printf("\nsetup: %d pods (Pod objects and CNI ADD, 8 at a time) on %s in %.1f s; its agent meanwhile: %s\n",
		len(pods), busy.Name, setup.Seconds(), busy.repairCounters())

	// The VPC routes the node's alias range to it; so does the fabric here.
	if err := fabric.NS.Do(func(ns.NetNS) error {
		dst, _ := netlink.ParseIPNet(podCIDR250)
		return netlink.RouteAdd(&netlink.Route{Dst: dst, Gw: busy.IP.AsSlice()})
	}); err != nil {
		b.Fatal(err)
	}
	targets := make([]netip.Addr, len(pods))
	for i, p := range pods {
		targets[i] = p.IP
	}
	pr, err := startProber(fabric.NS, targets, probeInterval)
	if err != nil {
		b.Fatal(err)
	}
	defer pr.Close()
	pr.Reset()
	// A window of whole rounds in which every pod answered.
	if err := framework.Eventually(ctx, 30*time.Second, func() (bool, error) {
		g := pr.Result()
		pr.Reset()
		return g.rounds > 0 && g.lostPods == 0, fmt.Errorf("%d of %d pods missed a reply in %d rounds", g.lostPods, g.pods, g.rounds)
	}); err != nil {
		b.Fatalf("not every pod answers pings from the fabric: %v", err)
	}

	// The noise floor: the same window with no restart.
	pr.Reset()
	time.Sleep(settleAfterReady) // the window measured
	baseline := pr.Result()

	var results []restartResult
	probes := 0
	for _, n := range nodes {
		for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
			probes++
			probe, err := framework.NewPod("default", fmt.Sprintf("ready-probe-%d", probes))
			if err != nil {
				b.Fatal(err)
			}
			if n.pods > 0 {
				pr.Reset()
			}
			r, err := n.restart(ctx, sig, probe)
			probe.Close()
			if err != nil {
				b.Fatalf("%s, %v: %v (agent log %s)", n.Name, sig, err, n.Agent.Log)
			}
			time.Sleep(settleAfterReady) // the window measured: until this long after ready
			if n.pods > 0 {
				r.gap = pr.Result()
			}
			r.repaired = n.repairCounters()
			results = append(results, r)
		}
	}

	// Idle: both agents side by side in one window; the prober keeps
	// running, so the window also shows any gap a periodic pass causes.
	for _, n := range nodes {
		// The window starts 10 s after an agent's start at the earliest,
		// by definition: no start-up work in the idle figure.
		if wait := 10*time.Second - time.Since(n.started); wait > 0 {
			time.Sleep(wait)
		}
	}
	pids := []int{busy.Agent.Cmd.Process.Pid, nodes[1].Agent.Cmd.Process.Pid, os.Getpid()}
	before := make([]time.Duration, len(pids))
	for i, pid := range pids {
		if before[i], err = procCPU(pid); err != nil {
			b.Fatal(err)
		}
	}
	// A slower pinger here: at every 10 ms it takes most of a core, which
	// would crowd the agents being measured; every 100 ms per pod still
	// catches any route a periodic pass takes away.
	pr.SetInterval(10 * probeInterval)
	pr.Reset()
	idleStart := time.Now()
	time.Sleep(idle) // the window measured
	idleGap := pr.Result()
	window := time.Since(idleStart)
	cpu := make([]time.Duration, len(pids))
	mem := make([]memory, len(pids))
	for i, pid := range pids {
		after, err := procCPU(pid)
		if err != nil {
			b.Fatal(err)
		}
		cpu[i] = after - before[i]
		if mem[i], err = procMemory(pid); err != nil {
			b.Fatal(err)
		}
	}
	for _, n := range nodes {
		if n.Agent.Exited() {
			b.Fatalf("agent of %s exited: %v (see %s)", n.Name, n.Agent.Wait(), n.Agent.Log)
		}
	}

	fmt.Printf("\naliasip-agent restart with %d pods on the node, each pinged every %v from the fabric (ICMP, round-robin)\n\n", agentRestartPods, probeInterval)
	fmt.Println("| node | signal | old agent gone | start → ready (/readyz 200) | start → first CNI ADD done | longest pod gap | pods that missed a reply | new agent repaired |")
	fmt.Println("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |")
	fmt.Printf("| %d pods | none (%v quiet baseline) | | | | %s | %d of %d | |\n", agentRestartPods, settleAfterReady, ms(baseline.longest), baseline.lostPods, baseline.pods)
	for _, r := range results {
		gap, lost := "(no pods)", ""
		if r.pods > 0 {
			gap, lost = ms(r.gap.longest), fmt.Sprintf("%d of %d", r.gap.lostPods, r.gap.pods)
		}
		fmt.Printf("| %d pods | %s | %s | %s | %s | %s | %s | %s |\n", r.pods, r.signal, ms(r.stop), ms(r.ready), ms(r.firstAdd), gap, lost, r.repaired)
	}
	fmt.Printf("\nlongest pod gap: from the signal until %v after ready; a gap of ~%v is no loss. Pods that missed a reply: of the echoes sent in the window.\n", settleAfterReady, probeInterval)
	fmt.Println("repaired: the new agent's counters after the window; a route \"removed\" may be the probe pod's own (its DEL releases the address before it removes the veth, and a pass in between removes the route)")

	fmt.Println("\nWhere the time to ready goes (from the new agent's log; after the process was started)")
	fmt.Println("\n| node | signal | flags logged (process up) | podCIDR logged (informers synced) | Ready logged | /readyz 200 |")
	fmt.Println("| --- | --- | ---: | ---: | ---: | ---: |")
	for _, r := range results {
		fmt.Printf("| %d pods | %s | %s | %s | %s | %s |\n", r.pods, r.signal, ms(r.phases[0]), ms(r.phases[1]), ms(r.phases[2]), ms(r.ready))
	}

	perMin := func(d time.Duration) float64 { return d.Seconds() * float64(time.Minute) / float64(window) }
	fmt.Printf("\nIdle CPU over %.0f s (utime+stime from /proc/PID/stat, %d ms resolution), both agents in the same window; pods pinged every %v\n\n", window.Seconds(), 1000/userHZ, 10*probeInterval)
	fmt.Println("| process | CPU-seconds per minute | % of one core | RSS |")
	fmt.Println("| --- | ---: | ---: | ---: |")
	for i, name := range []string{fmt.Sprintf("aliasip-agent, %d pods", agentRestartPods), "aliasip-agent, 0 pods", "the benchmark (its pinger, for scale)"} {
		fmt.Printf("| %s | %.3f | %.2f %% | %.0f MB |\n", name, perMin(cpu[i]), 100*perMin(cpu[i])/60, mem[i].rss/1e6)
	}
	perPod := (perMin(cpu[0]) - perMin(cpu[1])) / agentRestartPods
	fmt.Printf("| per pod (difference / %d) | %.5f | %.4f %% | |\n", agentRestartPods, perPod, 100*perPod/60)
	fmt.Printf("\nlongest pod gap during the idle window: %s, pods that missed a reply: %d of %d\n\n", ms(idleGap.longest), idleGap.lostPods, idleGap.pods)

	for _, r := range results {
		if r.pods == 0 {
			continue
		}
		s := strings.ToLower(r.signal)
		b.ReportMetric(float64(r.ready.Microseconds())/1000, "ready-ms-"+s)
		b.ReportMetric(float64(r.gap.longest.Microseconds())/1000, "max-gap-ms-"+s)
	}
	b.ReportMetric(float64(baseline.longest.Microseconds())/1000, "max-gap-ms-baseline")
	b.ReportMetric(100*perMin(cpu[0])/60, "idle-cpu-pct-250pods")
	b.ReportMetric(100*perMin(cpu[1])/60, "idle-cpu-pct-0pods")
}

// start starts the node's agent with its default periods.
func (n *agentNode) start() error {
	args := n.AgentArgs(n.kubeconf, n.pluginBin)
	n.logFrom = 0
	if st, err := os.Stat(filepath.Join(n.Dir, "agent.log")); err == nil {
		n.logFrom = st.Size()
	}
	n.started = time.Now()
	p, err := framework.StartProcess(filepath.Join(n.Dir, "agent.log"), nil, n.agentBin, args...)
	if err != nil {
		return err
	}
	n.Agent = p
	return nil
}

// waitReady polls /readyz every 5 ms and returns the time since start.
func (n *agentNode) waitReady(ctx context.Context, timeout time.Duration) (time.Duration, error) {
	hc := &http.Client{Timeout: time.Second}
	url := "http://" + n.Metrics + "/readyz"
	var ready time.Duration
	if err := framework.Poll(ctx, 5*time.Millisecond, timeout, func() (bool, error) {
		if n.Agent.Exited() {
			return false, framework.Stop(fmt.Errorf("agent exited: %v", n.Agent.Wait()))
		}
		_, ok := httpGet(hc, url)
		ready = time.Since(n.started)
		return ok, nil
	}); err != nil {
		return 0, fmt.Errorf("agent of %s not ready (see %s): %w", n.Name, n.Agent.Log, err)
	}
	return ready, nil
}

// restart stops the agent with sig, starts a new one, waits until it is
// ready and then runs CNI ADD (and DEL) for probe.
func (n *agentNode) restart(ctx context.Context, sig syscall.Signal, probe *framework.Pod) (restartResult, error) {
	r := restartResult{node: n.Name, signal: strings.TrimPrefix(unix.SignalName(sig), "SIG"), pods: n.pods}
	old := n.Agent
	t := time.Now()
	if err := old.Cmd.Process.Signal(sig); err != nil {
		return r, err
	}
	done := make(chan error, 1)
	go func() { done <- old.Wait() }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		old.Kill()
		return r, errors.New("the old agent did not exit within 30 s of the signal")
	}
	r.stop = time.Since(t)
	if err := n.start(); err != nil {
		return r, err
	}
	var err error
	if r.ready, err = n.waitReady(ctx, time.Minute); err != nil {
		return r, err
	}
	if err := n.Add(ctx, probe); err != nil {
		return r, fmt.Errorf("ADD right after ready: %w", err)
	}
	r.firstAdd = time.Since(n.started)
	if err := n.Del(ctx, probe); err != nil {
		return r, fmt.Errorf("DEL: %w", err)
	}
	var err2 error
	r.phases, err2 = n.startupPhases()
	return r, err2
}

// startupMarks are the agent's log lines that end each start-up phase: its
// flags are logged once main runs, its podCIDR once the informers have
// synced (a LIST and WATCH of the Nodes and of this node's Pods), and
// "Ready" once IPAM is open, the socket listens, the pod GC pass has run
// and the plugin and conflist are installed.
var startupMarks = []string{`] "Starting aliasip-agent"`, `] "Node podCIDR"`, `] "Ready: serving CNI ADD"`}

// startupPhases returns, from the current agent's klog lines, when (after
// the process was started) it logged each of startupMarks.
func (n *agentNode) startupPhases() ([]time.Duration, error) {
	data, err := os.ReadFile(filepath.Join(n.Dir, "agent.log"))
	if err != nil {
		return nil, err
	}
	out := make([]time.Duration, len(startupMarks))
	for _, line := range strings.Split(string(data[n.logFrom:]), "\n") {
		for i, mark := range startupMarks {
			if out[i] != 0 || !strings.Contains(line, mark) || len(line) < 21 {
				continue
			}
			// klog: "I1130 20:20:01.123456 ...", local time, no year.
			t, err := time.ParseInLocation("0102 15:04:05.000000", line[1:21], time.Local)
			if err != nil {
				return nil, fmt.Errorf("agent log line %q: %w", line, err)
			}
			out[i] = t.AddDate(n.started.Year(), 0, 0).Sub(n.started)
		}
	}
	for i, d := range out {
		if d == 0 {
			return nil, fmt.Errorf("agent log %s has no %s line", n.Agent.Log, startupMarks[i])
		}
	}
	return out, nil
}

// repairCounters summarizes what the running agent had to repair or
// collect: after a restart on an untouched host, all zero.
func (n *agentNode) repairCounters() string {
	body, ok := httpGet(&http.Client{Timeout: time.Second}, "http://"+n.Metrics+"/metrics")
	if !ok {
		return "metrics unreadable"
	}
	var parts []string
	for _, m := range []struct{ name, short string }{
		{"aliasip_routes_repaired_total", "routes"}, {"aliasip_sysctls_repaired_total", "sysctls"},
		{"aliasip_routes_removed_total", "removed"}, {"aliasip_ipam_state_recovered_total", "state rebuilt"},
	} {
		v, _ := framework.ScrapeMetric(body, m.name, "")
		parts = append(parts, fmt.Sprintf("%s %.0f", m.short, v))
	}
	gc := 0.0
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, "aliasip_gc_released_total{") {
			f := strings.Fields(line)
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			gc += v
		}
	}
	return strings.Join(append(parts, fmt.Sprintf("released %.0f", gc)), ", ")
}

// addPods creates count pods on node, 8 at a time: the Pod object (bound to
// the node, so the agent's pod GC keeps the allocation) and the sandbox
// with its CNI ADD.
func addPods(ctx context.Context, client kubernetes.Interface, node *framework.Node, count int) ([]*framework.Pod, error) {
	pods := make([]*framework.Pod, count)
	var mu sync.Mutex
	var firstErr error
	work := make(chan int)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for i := range work {
				name := fmt.Sprintf("p%03d", i)
				err := func() error {
					uid, err := framework.CreatePodObjectUID(ctx, client, "default", name, node.Name)
					if err != nil {
						return err
					}
					p, err := framework.NewPod("default", name)
					if err != nil {
						return err
					}
					p.UID = uid
					mu.Lock()
					pods[i] = p
					mu.Unlock()
					return node.Add(ctx, p)
				}()
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = fmt.Errorf("pod %s: %w", name, err)
					}
					mu.Unlock()
				}
			}
		})
	}
	for i := range count {
		work <- i
	}
	close(work)
	wg.Wait()
	var out []*framework.Pod
	for _, p := range pods {
		if p != nil {
			out = append(out, p)
		}
	}
	return out, firstErr
}

// procCPU returns a process's CPU time, user plus system, all threads.
func procCPU(pid int) (time.Duration, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces; fields after it start
	// with the state (field 3), so utime (14) and stime (15) are [11], [12].
	s := string(data)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %q", pid, s)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return time.Duration(ut+st) * time.Second / userHZ, nil
}
