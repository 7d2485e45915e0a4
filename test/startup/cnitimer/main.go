// Command cnitimer notes when the container runtime started a CNI plugin,
// then becomes that plugin. Installed on a node as "timed-<plugin>" next to
// <plugin> in the CNI bin dir, and named "timed-<plugin>" as the first
// plugin's type in a conflist, it appends one line to /var/log/cni-timer.log
// ("<CNI_COMMAND> <CNI_CONTAINERID> <plugin> <unix nanoseconds>
// <CNI_ARGS>") and execs <plugin> with the same arguments, environment,
// stdin and stdout, so the runtime sees the plugin's own result.
//
// The end of the ADD is the modification time of libcni's result cache file
// for the sandbox, written once every plugin of the list has run (libcni
// AddNetworkList: cacheAdd after the last plugin); test/startup reads both.
//
// Both CNIs test/startup compares go through it, so both pay its one
// execve and Go runtime start per ADD.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// LogFile is where the start lines go, inside the node's mount namespace
// (each node of hack/cluster.sh has a private /var/log).
const LogFile = "/var/log/cni-timer.log"

func main() {
	start := time.Now()
	// libcni runs a plugin with its full path as argv[0] (pkg/invoke
	// RawExec: exec.CommandContext(ctx, pluginPath)).
	self := os.Args[0]
	plugin, ok := strings.CutPrefix(filepath.Base(self), "timed-")
	if !ok || plugin == "" {
		fmt.Fprintf(os.Stderr, "cnitimer: installed as %q, want timed-<plugin>\n", self)
		os.Exit(1)
	}
	real := filepath.Join(filepath.Dir(self), plugin)
	if f, err := os.OpenFile(LogFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644); err == nil {
		// One write of less than PIPE_BUF with O_APPEND: concurrent
		// plugins' lines do not interleave.
		fmt.Fprintf(f, "%s %s %s %d %s\n", os.Getenv("CNI_COMMAND"), os.Getenv("CNI_CONTAINERID"), plugin, start.UnixNano(), os.Getenv("CNI_ARGS"))
		f.Close()
	}
	err := syscall.Exec(real, append([]string{real}, os.Args[1:]...), os.Environ())
	fmt.Fprintf(os.Stderr, "cnitimer: exec %s: %v\n", real, err)
	os.Exit(1)
}
