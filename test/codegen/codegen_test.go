// Package codegen checks that the code and CRD generated from the PodRange
// API types (hack/update-codegen.sh) are up to date.
package codegen

import (
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/aliasip/aliasip/test/framework"
)

// TestGeneratedCodeUpToDate runs hack/verify-codegen.sh: it regenerates
// into a copy and fails, printing the diff, when the committed deepcopy
// functions, clientset, listers, informers or CRD differ.
func TestGeneratedCodeUpToDate(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping in -short mode: builds the generators")
	}
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("skipping: no go command")
	}
	cmd := exec.Command(filepath.Join(framework.RepoRoot(), "hack", "verify-codegen.sh"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("hack/verify-codegen.sh: %v\n%s", err, out)
	}
}
