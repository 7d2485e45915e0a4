package framework

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
)

// BuildBinary returns the path of one of the project's commands: from
// $ALIASIP_BIN_DIR (set by the Makefile after `make build`) when it is there,
// otherwise built with `go build` into dir.
func BuildBinary(dir, name, pkg string) (string, error) {
	if d := os.Getenv("ALIASIP_BIN_DIR"); d != "" {
		if p := filepath.Join(d, name); isExec(p) {
			return p, nil
		}
	}
	out := filepath.Join(dir, name)
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = RepoRoot()
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %v\n%s", pkg, err, b)
	}
	return out, nil
}

// RepoRoot is the repository's top directory.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}
