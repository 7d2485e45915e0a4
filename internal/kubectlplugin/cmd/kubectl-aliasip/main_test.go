package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Bad usage exits 2 with one clear line, before any cluster is contacted
// (the kubeconfig points nowhere: contacting it would fail otherwise).
func TestUsageErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.json")
	os.WriteFile(bad, []byte("{not json"), 0o644)
	kc := []string{"--kubeconfig", filepath.Join(dir, "missing-kubeconfig")}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "want one command"},
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"check", "status"}, "want one command"},
		{[]string{"check", "-o", "yaml"}, `-o "yaml"`},
		{[]string{"release"}, "release needs --from-report"},
		{[]string{"release", "--from-report", bad}, "report " + bad},
		{[]string{"release", "--from-report", filepath.Join(dir, "none.json")}, "no such file"},
		{[]string{"check", "--parallel", "0"}, "--parallel"},
		{[]string{"check", "--bogus"}, "unknown flag"},
		{[]string{"status"}, "kubeconfig"},
	} {
		var out, errb bytes.Buffer
		code := run(context.Background(), append(kc, tc.args...), &out, &errb)
		if code != 2 || !strings.Contains(errb.String(), tc.want) || strings.Count(errb.String(), "\n") != 1 {
			t.Errorf("%v: exit %d, stderr %q; want 2 and one line with %q", tc.args, code, errb.String(), tc.want)
		}
	}
}
