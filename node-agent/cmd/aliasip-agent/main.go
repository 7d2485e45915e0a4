// Command aliasip-agent is aliasip's node agent (a DaemonSet).
package main

import (
	"context"
	"os"
	"path/filepath"

	"github.com/aliasip/aliasip/internal/daemon"
	"github.com/aliasip/aliasip/node-agent/app"
)

// version is set by the build (-ldflags -X main.version=...).
var version = "dev"

func main() {
	exe, _ := os.Executable()
	opts := app.NewOptions(os.Getenv("NODE_NAME"), filepath.Dir(exe))
	if len(os.Args) > 1 && os.Args[1] == "admin" {
		os.Exit(daemon.Admin("aliasip-agent", os.Args[2:], opts.Socket))
	}
	if len(os.Args) > 1 && os.Args[1] == "cleanup" {
		os.Exit(app.Cleanup(os.Args[2:], os.Stdout, os.Stderr))
	}
	os.Exit(daemon.Main("aliasip-agent", version, os.Args[1:], opts,
		func(ctx context.Context) error { return app.Run(ctx, opts) }))
}
