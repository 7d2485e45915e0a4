package bench

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// pidWithArgs finds the process whose command line holds every one of
// args (NUL-separated in /proc/PID/cmdline), or 0.
func pidWithArgs(args ...string) int {
	dirs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, d := range dirs {
		data, err := os.ReadFile(d)
		if err != nil {
			continue
		}
		cmd := "\x00" + string(data)
		ok := true
		for _, a := range args {
			if !strings.Contains(cmd, "\x00"+a+"\x00") {
				ok = false
				break
			}
		}
		if ok {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(d)))
			return pid
		}
	}
	return 0
}

// controlPlanePIDs finds the kube-apiserver and etcd a framework control
// plane under dir started: the API server by its --cert-dir, etcd by the
// client URL the API server was given.
func controlPlanePIDs(dir string) (apiserver, etcd int) {
	apiserver = pidWithArgs("--cert-dir", filepath.Join(dir, "cp", "certs"))
	if apiserver == 0 {
		return 0, 0
	}
	data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", apiserver))
	args := strings.Split(string(data), "\x00")
	for i, a := range args {
		if a == "--etcd-servers" && i+1 < len(args) {
			etcd = pidWithArgs("--listen-client-urls", args[i+1])
		}
	}
	return apiserver, etcd
}

// cpuClock reads the CPU time of a set of processes (0 pids read as 0).
type cpuClock []int

func (c cpuClock) read() []float64 {
	out := make([]float64, len(c))
	for i, pid := range c {
		if pid != 0 {
			d, _ := procCPU(pid) // agentrestart_test.go
			out[i] = d.Seconds()
		}
	}
	return out
}
