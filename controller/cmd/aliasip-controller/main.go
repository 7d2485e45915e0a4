// Command aliasip-controller gives every Node a block of the pod range as an
// alias IP range on its VM and writes the node's podCIDR.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/pflag"
	"k8s.io/klog/v2"

	"github.com/aliasip/aliasip/controller/app"
)

// version is set by the build (-ldflags -X main.version=...).
var version = "dev"

func main() {
	os.Exit(run())
}

func run() int {
	fs := pflag.NewFlagSet("aliasip-controller", pflag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are reported below, in one line
	opts := app.NewOptions()
	opts.AddFlags(fs)
	verbosity := fs.IntP("v", "v", 0, "Log verbosity.")
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			fmt.Println("Usage of aliasip-controller:")
			fs.SetOutput(os.Stdout)
			fs.PrintDefaults()
			return 0
		}
		fmt.Fprintf(os.Stderr, "aliasip-controller: %v\n", err)
		return 2
	}
	if err := opts.Validate(); err != nil {
		fmt.Fprintf(os.Stderr, "aliasip-controller: %v\n", err)
		return 2
	}
	var klogFlags flagSet
	klog.InitFlags(&klogFlags.FlagSet)
	klogFlags.Set("v", fmt.Sprint(*verbosity))

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	logger := klog.Background()
	ctx = klog.NewContext(ctx, logger)
	var flags []any
	fs.VisitAll(func(f *pflag.Flag) { flags = append(flags, f.Name, f.Value.String()) })
	logger.Info("Starting aliasip-controller", append([]any{"version", version}, flags...)...)
	if err := app.Run(ctx, opts); err != nil {
		logger.Error(err, "aliasip-controller stopped")
		klog.Flush()
		return 1
	}
	klog.Flush()
	return 0
}
