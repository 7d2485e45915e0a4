// Command aliasip-agent is aliasip's node agent (a DaemonSet).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/spf13/pflag"
	"k8s.io/klog/v2"

	"github.com/aliasip/aliasip/node-agent/app"
)

// version is set by the build.
var version = "dev"

func main() { os.Exit(run()) }

func run() int {
	exe, _ := os.Executable()
	opts := app.NewOptions(os.Getenv("NODE_NAME"), filepath.Dir(exe))
	fs := pflag.NewFlagSet("aliasip-agent", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	opts.AddFlags(fs)
	verbosity := fs.IntP("v", "v", 0, "Log verbosity.")
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			fmt.Println("Usage of aliasip-agent:")
			fs.SetOutput(os.Stdout)
			fs.PrintDefaults()
			return 0
		}
		fmt.Fprintf(os.Stderr, "aliasip-agent: %v\n", err)
		return 2
	}
	if err := opts.Validate(); err != nil {
		fmt.Fprintf(os.Stderr, "aliasip-agent: %v\n", err)
		return 2
	}
	var klogFlags flag.FlagSet
	klog.InitFlags(&klogFlags)
	klogFlags.Set("v", fmt.Sprint(*verbosity))

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	logger := klog.Background()
	ctx = klog.NewContext(ctx, logger)
	var flags []any
	fs.VisitAll(func(f *pflag.Flag) { flags = append(flags, f.Name, f.Value.String()) })
	logger.Info("Starting aliasip-agent", append([]any{"version", version}, flags...)...)
	if err := app.Run(ctx, opts); err != nil {
		logger.Error(err, "aliasip-agent stopped")
		klog.Flush()
		return 1
	}
	return 0
}
