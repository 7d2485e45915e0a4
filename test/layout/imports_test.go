// Package layout checks the repository's parts stand apart: neither daemon
// imports the other's packages. What both share lives under internal/; the
// kubectl plugin (internal/kubectlplugin), a client of both, is neither.
package layout

import (
	"maps"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/aliasip/aliasip"

// allowed is, for each daemon's folder, the module's top-level folders its
// packages, tests included, may depend on. The controller uses the cloud
// and its fake; the agent's tests use the GCE test server (cloud/gce/gcetest)
// for the metadata server, its code neither.
var allowed = map[string][]string{
	"controller": {"controller", "internal", "cloud", "fake"},
	"node-agent": {"node-agent", "internal", "cloud", "fake"},
}

// violations returns "pkg → dep" for each dep of pkg (a package of part)
// under a top-level folder of the module that part may not depend on.
func violations(part, pkg string, deps []string) []string {
	var out []string
	for _, d := range deps {
		rest, ok := strings.CutPrefix(d, module+"/")
		if !ok {
			continue // the standard library or another module
		}
		top, _, _ := strings.Cut(rest, "/")
		ok = false
		for _, a := range allowed[part] {
			ok = ok || top == a
		}
		if !ok {
			out = append(out, pkg+" → "+d)
		}
	}
	return out
}

// TestDaemonsStandApart runs go list over controller/... and node-agent/...,
// their tests included, and fails when a package of one depends, directly
// or not, on a package of the other (or on test/ or hack/).
func TestDaemonsStandApart(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("skipping: no go command")
	}
	for part, want := range map[string]string{
		"controller": module + "/controller/app",
		"node-agent": module + "/node-agent/agent",
	} {
		t.Run(part, func(t *testing.T) {
			out, err := exec.Command("go", "list", "-test", "-f", "{{.ImportPath}} {{join .Deps \" \"}}", module+"/"+part+"/...").Output()
			if err != nil {
				var stderr string
				if ee, ok := err.(*exec.ExitError); ok {
					stderr = string(ee.Stderr)
				}
				t.Fatalf("go list: %v\n%s", err, stderr)
			}
			bad := map[string]bool{} // a package and its test variant list the same deps
			seen := false
			for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
				fields := strings.Fields(line)
				if len(fields) == 0 {
					continue
				}
				seen = seen || fields[0] == want
				for _, v := range violations(part, fields[0], fields[1:]) {
					bad[v] = true
				}
			}
			if !seen {
				t.Fatalf("go list did not list %s: the pattern is wrong, nothing was checked", want)
			}
			for _, b := range slices.Sorted(maps.Keys(bad)) {
				t.Errorf("%s depends on a package outside %v: %s", part, allowed[part], b)
			}
		})
	}
}

// The rule itself: a daemon's package depending on the other's is caught,
// directly or through a shared package's deps; the standard library, other
// modules and the allowed folders are not.
func TestViolations(t *testing.T) {
	for _, tc := range []struct {
		part, pkg string
		deps      []string
		want      int
	}{
		{"controller", module + "/controller/app", []string{"context", "k8s.io/client-go/kubernetes", module + "/internal/sockrpc", module + "/cloud/gce", module + "/fake"}, 0},
		{"controller", module + "/controller", []string{module + "/node-agent/api"}, 1},
		{"node-agent", module + "/node-agent/agent", []string{module + "/internal/daemon", module + "/controller/adminapi"}, 1},
		{"node-agent", module + "/node-agent/cni", []string{module + "/internal/kubectlplugin", module + "/controller/adminapi", module + "/test/framework"}, 2},
	} {
		if got := violations(tc.part, tc.pkg, tc.deps); len(got) != tc.want {
			t.Errorf("violations(%s, %s, %v) = %q, want %d", tc.part, tc.pkg, tc.deps, got, tc.want)
		}
	}
}
