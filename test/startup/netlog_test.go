package startup

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// netTimes is how long one pod's network took, from three places:
//   - cni: the runtime's CNI ADD of the sandbox, from the cnitimer
//     wrapper's start line to the modification time of libcni's result
//     cache file (written after the list's last plugin);
//   - inside: aliasip-cni's own total from its log ("[total=…]" on its
//     ADD line: plugin main to result; aliasip only);
//   - sandbox: containerd's RunPodSandbox, from its "RunPodSandbox for"
//     line to its "returns sandbox id" line (containerd 1.6 logs both at
//     info: pkg/cri/server/instrumented_service.go), which holds the
//     network namespace, the CNI ADD and the pause container's start.
type netTimes struct {
	cni, inside, sandbox time.Duration
	// phases is aliasip-cni's whole breakdown of the ADD (setup,
	// allocate, ipam, netns, veth, …), keyed as in its log.
	phases map[string]time.Duration
	// From containerd's log: RunPodSandbox called and returned, and the
	// pod's container started (StartContainer … returns successfully).
	sbStart, sbEnd, started time.Time
}

// logOffsets are the sizes of a node's logs when a run starts: only what
// is appended after is read.
type logOffsets struct{ timer, plugin, containerd int64 }

func timerLog(node string) string  { return nodeFS(node, "/var/log/"+cniTimerLog) }
func pluginLog(node string) string { return nodeFS(node, "/var/log/aliasip-cni.log") } // the chart's --cni-log-file
func containerdLog(node string) string {
	return filepath.Join(clusterDir, "logs", "containerd-"+node+".log") // hack/cluster.sh start()
}

func size(path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return st.Size()
}

func readOffsets(node string) logOffsets {
	return logOffsets{size(timerLog(node)), size(pluginLog(node)), size(containerdLog(node))}
}

// linesFrom calls fn with each line of path after offset.
func linesFrom(path string, offset int64, fn func(string)) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return err
	}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		fn(sc.Text())
	}
	return sc.Err()
}

var (
	// containerd's logrus text format: time="…" level=info msg="…".
	ctrdTime    = regexp.MustCompile(`^time="([^"]+)"`)
	ctrdSandbox = regexp.MustCompile(`RunPodSandbox for &PodSandboxMetadata\{Name:([^,]+),Uid:[^,]*,Namespace:` + benchNS + `,`)
	// aliasip-cni: "ADD <id> <ns>/<name>: … [total=<µs> …]".
	ctrdSandboxID = regexp.MustCompile(`returns sandbox id \\"([0-9a-f]+)\\"`)
	ctrdCreated   = regexp.MustCompile(`CreateContainer within sandbox \\"([0-9a-f]+)\\" for &ContainerMetadata\{[^}]*\} returns container id \\"([0-9a-f]+)\\"`)
	ctrdStarted   = regexp.MustCompile(`StartContainer for \\"([0-9a-f]+)\\" returns successfully`)
	pluginAdd     = regexp.MustCompile(`ADD \S+ ` + benchNS + `/(\S+): .*\[(total=\d+ [^\]]*)\]`)
	// phaseOrder is the order of the phases in aliasip-cni's log line.
	phaseOrder []string
)

// readNetTimes reads the network's part of every pod of the run from the
// nodes' logs.
func readNetTimes(nodes []string, off map[string]logOffsets) (map[string]netTimes, error) {
	out := map[string]netTimes{}
	for _, node := range nodes {
		o := off[node]
		// The wrapper: ADD lines with the pod's name in CNI_ARGS.
		type start struct {
			id string
			at time.Time
		}
		starts := map[string]start{}
		err := linesFrom(timerLog(node), o.timer, func(l string) {
			f := strings.Fields(l)
			if len(f) < 5 || f[0] != "ADD" {
				return
			}
			ns, err := strconv.ParseInt(f[3], 10, 64)
			if err != nil {
				return
			}
			name := ""
			for _, kv := range strings.Split(f[4], ";") {
				if v, ok := strings.CutPrefix(kv, "K8S_POD_NAME="); ok {
					name = v
				}
			}
			if name != "" {
				starts[name] = start{f[1], time.Unix(0, ns)}
			}
		})
		if err != nil {
			return nil, fmt.Errorf("%s: %w", node, err)
		}
		for name, s := range starts {
			// libcni's result cache (containerd's CNI config has no
			// cacheDir: libcni's default /var/lib/cni, the host's, as the
			// nodes do not have their own): results/<net>-<id>-<ifname>.
			m, _ := filepath.Glob(filepath.Join("/var/lib/cni/results", "*-"+s.id+"-eth0"))
			if len(m) != 1 {
				continue
			}
			st, err := os.Stat(m[0])
			if err != nil {
				continue
			}
			nt := out[name]
			nt.cni = st.ModTime().Sub(s.at)
			out[name] = nt
		}
		err = linesFrom(pluginLog(node), o.plugin, func(l string) {
			if m := pluginAdd.FindStringSubmatch(l); m != nil {
				nt := out[m[1]]
				nt.phases = map[string]time.Duration{}
				for _, kv := range strings.Fields(m[2]) {
					k, v, _ := strings.Cut(kv, "=")
					us, err := strconv.ParseInt(v, 10, 64)
					if err != nil {
						continue
					}
					nt.phases[k] = time.Duration(us) * time.Microsecond
					if !slices.Contains(phaseOrder, k) {
						phaseOrder = append(phaseOrder, k)
					}
				}
				nt.inside = nt.phases["total"]
				out[m[1]] = nt
			}
		})
		if err != nil && !os.IsNotExist(err) {
			return nil, fmt.Errorf("%s: %w", node, err)
		}
		sbStart := map[string]time.Time{}
		podOfSandbox, podOfContainer := map[string]string{}, map[string]string{}
		err = linesFrom(containerdLog(node), o.containerd, func(l string) {
			tm := ctrdTime.FindStringSubmatch(l)
			if tm == nil {
				return
			}
			at, err := time.Parse(time.RFC3339Nano, tm[1])
			if err != nil {
				return
			}
			if m := ctrdCreated.FindStringSubmatch(l); m != nil {
				if pod, ok := podOfSandbox[m[1]]; ok {
					podOfContainer[m[2]] = pod
				}
				return
			}
			if m := ctrdStarted.FindStringSubmatch(l); m != nil {
				if pod, ok := podOfContainer[m[1]]; ok {
					nt := out[pod]
					nt.started = at
					out[pod] = nt
				}
				return
			}
			m := ctrdSandbox.FindStringSubmatch(l)
			if m == nil {
				return
			}
			id := ctrdSandboxID.FindStringSubmatch(l)
			if id == nil {
				sbStart[m[1]] = at
				return
			}
			podOfSandbox[id[1]] = m[1]
			if s, ok := sbStart[m[1]]; ok {
				nt := out[m[1]]
				nt.sandbox, nt.sbStart, nt.sbEnd = at.Sub(s), s, at
				out[m[1]] = nt
			}
		})
		if err != nil {
			return nil, fmt.Errorf("%s: %w", node, err)
		}
	}
	return out, nil
}

// report prints the tables: start-up per scenario and CNI with ratios,
// then the network's share.
func report(results []runResult, rounds int, load0, load1 string) {
	type key struct{ sc, mode string }
	pooled := map[key]runResult{}
	var perRound = map[key][]time.Duration{}
	for _, r := range results {
		k := key{r.sc.key, r.mode.key}
		p, ok := pooled[k]
		if !ok {
			p = runResult{sc: r.sc, mode: r.mode, times: map[string]podTimes{}, net: map[string]netTimes{}}
		}
		p.pods = append(p.pods, r.pods...)
		for n, t := range r.times {
			p.times[n] = t
		}
		for n, t := range r.net {
			p.net[n] = t
		}
		pooled[k] = p
		perRound[k] = append(perRound[k], pct(phase(r, "e2e"), 99))
	}
	fmt.Printf("\nPod start-up latency on make cluster (CL2 PodStartupLatency method: watch receive times), %d round(s) per CNI, ABBA order; load average %s at start, %s at end\n\n", rounds, load0, load1)
	fmt.Println("| pods | CNI | pods measured | create→scheduled p50 / p99 | scheduled→running p50 / p99 | create→running p50 | p90 | p99 | p99 per round |")
	fmt.Println("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
	for _, sc := range scenarios {
		for _, m := range []cniMode{modeAliasip, modeBridge} {
			r, ok := pooled[key{sc.key, m.key}]
			if !ok {
				continue
			}
			var pr []string
			for _, d := range perRound[key{sc.key, m.key}] {
				pr = append(pr, fmt.Sprintf("%.2f", d.Seconds()))
			}
			s, u, e := phase(r, "sched"), phase(r, "run"), phase(r, "e2e")
			fmt.Printf("| %s | %s | %d | %s / %s | %s / %s | %s | %s | %s | %s |\n", sc.name, m.name, len(r.pods),
				msec(pct(s, 50)), msec(pct(s, 99)), secs(pct(u, 50)), secs(pct(u, 99)),
				secs(pct(e, 50)), secs(pct(e, 90)), secs(pct(e, 99)), strings.Join(pr, ", "))
		}
	}
	fmt.Println()
	for _, sc := range scenarios {
		a, okA := pooled[key{sc.key, modeAliasip.key}]
		br, okB := pooled[key{sc.key, modeBridge.key}]
		if !okA || !okB {
			continue
		}
		ea, eb := phase(a, "e2e"), phase(br, "e2e")
		r99 := float64(pct(ea, 99)) / float64(pct(eb, 99))
		fmt.Printf("%s: aliasip / bridge create→running p50 %.2f, p90 %.2f, p99 %.2f (goal p99 ≤ %.1f: %s); SLO p99 ≤ %v: aliasip %s, bridge %s\n",
			sc.name, float64(pct(ea, 50))/float64(pct(eb, 50)), float64(pct(ea, 90))/float64(pct(eb, 90)), r99,
			goalRatio, verdict(r99 <= goalRatio), sloP99, verdict(pct(ea, 99) <= sloP99), verdict(pct(eb, 99) <= sloP99))
	}

	fmt.Println("\nThe network's share (CNI ADD: the runtime starting the conflist's first plugin → libcni caching the result, bridge or aliasip-cni, then portmap;")
	fmt.Println("sandbox: containerd's RunPodSandbox, which holds the CNI ADD; aliasip-cni inside: its own log's total; share: the median over pods of CNI ADD ÷ create→running)")
	fmt.Println()
	fmt.Println("| pods | CNI | CNI ADD p50 / p99 | aliasip-cni inside p50 / p99 | sandbox p50 / p99 | share of start-up, median (p99 pod) | pods timed |")
	fmt.Println("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
	for _, sc := range scenarios {
		for _, m := range []cniMode{modeAliasip, modeBridge} {
			r, ok := pooled[key{sc.key, m.key}]
			if !ok {
				continue
			}
			var cni, inside, sb []time.Duration
			var share []float64
			var slowest struct {
				e2e   time.Duration
				share float64
			}
			for _, name := range r.pods {
				nt, t := r.net[name], r.times[name]
				e2e := t.runs.Sub(t.created)
				if nt.cni > 0 {
					cni = append(cni, nt.cni)
					share = append(share, float64(nt.cni)/float64(e2e))
				}
				if nt.inside > 0 {
					inside = append(inside, nt.inside)
				}
				if nt.sandbox > 0 {
					sb = append(sb, nt.sandbox)
				}
				if e2e > slowest.e2e && nt.cni > 0 {
					slowest.e2e, slowest.share = e2e, float64(nt.cni)/float64(e2e)
				}
			}
			slices.Sort(share)
			med := 0.0
			if len(share) > 0 {
				med = share[len(share)/2]
			}
			in := "–"
			if len(inside) > 0 {
				in = msec(pct(inside, 50)) + " / " + msec(pct(inside, 99))
			}
			fmt.Printf("| %s | %s | %s / %s | %s | %s / %s | %.0f %% (%.0f %%) | %d of %d |\n", sc.name, m.name,
				msec(pct(cni, 50)), msec(pct(cni, 99)), in, msec(pct(sb, 50)), msec(pct(sb, 99)),
				med*100, slowest.share*100, len(cni), len(r.pods))
		}
	}
	fmt.Println()

	fmt.Println("Where scheduled→running goes, p50 / p99 over the pods (containerd's log lines on the node, the watch's receive times):")
	fmt.Println()
	fmt.Println("| pods | CNI | scheduled → RunPodSandbox called | RunPodSandbox | of which CNI ADD | sandbox → container started | container started → running on the watch |")
	fmt.Println("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
	for _, sc := range scenarios {
		for _, m := range []cniMode{modeAliasip, modeBridge} {
			r, ok := pooled[key{sc.key, m.key}]
			if !ok {
				continue
			}
			var pickup, sb, cni, ctr, report []time.Duration
			for _, name := range r.pods {
				nt, t := r.net[name], r.times[name]
				if nt.sbStart.IsZero() || nt.started.IsZero() {
					continue
				}
				pickup = append(pickup, nt.sbStart.Sub(t.sched))
				sb = append(sb, nt.sandbox)
				cni = append(cni, nt.cni)
				ctr = append(ctr, nt.started.Sub(nt.sbEnd))
				report = append(report, t.runs.Sub(nt.started))
			}
			pp := func(d []time.Duration) string { return msec(pct(d, 50)) + " / " + msec(pct(d, 99)) }
			fmt.Printf("| %s | %s | %s | %s | %s | %s | %s |\n", sc.name, m.name, pp(pickup), pp(sb), pp(cni), pp(ctr), pp(report))
		}
	}
	fmt.Println()

	fmt.Println("aliasip-cni's own phases (its log's ADD lines), p50 / p99 over the pods:")
	fmt.Println()
	fmt.Print("| pods |")
	for _, k := range phaseOrder {
		fmt.Printf(" %s |", k)
	}
	fmt.Print("\n| --- |")
	for range phaseOrder {
		fmt.Print(" ---: |")
	}
	fmt.Println()
	for _, sc := range scenarios {
		r, ok := pooled[key{sc.key, modeAliasip.key}]
		if !ok {
			continue
		}
		fmt.Printf("| %s |", sc.name)
		for _, k := range phaseOrder {
			var d []time.Duration
			for _, name := range r.pods {
				if v, ok := r.net[name].phases[k]; ok {
					d = append(d, v)
				}
			}
			fmt.Printf(" %.1f / %.1f ms |", float64(pct(d, 50).Microseconds())/1000, float64(pct(d, 99).Microseconds())/1000)
		}
		fmt.Println()
	}
	fmt.Println()
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT met"
}
