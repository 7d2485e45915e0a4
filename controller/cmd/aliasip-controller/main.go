// Command aliasip-controller gives every Node a block of the pod range as an
// alias IP range on its VM and writes the node's podCIDR.
package main

import (
	"context"
	"os"

	"github.com/aliasip/aliasip/controller/app"
	"github.com/aliasip/aliasip/internal/daemon"
)

// version is set by the build (-ldflags -X main.version=...).
var version = "dev"

func main() {
	opts := app.NewOptions()
	if len(os.Args) > 1 && os.Args[1] == "admin" {
		os.Exit(daemon.Admin("aliasip-controller", os.Args[2:], opts.AdminSocket))
	}
	os.Exit(daemon.Main("aliasip-controller", version, os.Args[1:], opts,
		func(ctx context.Context) error { return app.Run(ctx, opts) }))
}
