// Package daemon is the start-up both aliasip daemons share: parse the flags,
// validate them, set up logging and signals, run, and map the outcome to an
// exit code. The controller's and the node agent's mains use it; it imports
// neither.
//
// The shape follows sample-controller's main (flags, then a signal context,
// then the controller's Run), with the options → validation → run split of
// kube-controller-manager's app layer.
package daemon

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/pflag"
	"k8s.io/klog/v2"
)

// Exit codes.
const (
	ExitOK     = 0
	ExitFailed = 1 // Run returned an error
	ExitUsage  = 2 // bad flags or options
)

// Options is what a daemon's app layer offers its main.
type Options interface {
	AddFlags(*pflag.FlagSet)
	Validate() error
}

// Main parses args into opts, validates them and calls run with a context
// cancelled on SIGINT or SIGTERM. Usage errors are one line on stderr and
// exit 2; a Run error is logged and exits 1. Every flag's value is logged
// once at start, so a log alone shows how the daemon was configured.
func Main(name, version string, args []string, opts Options, run func(context.Context) error) int {
	return main(name, version, args, opts, run, os.Stdout, os.Stderr, true)
}

func main(name, version string, args []string, opts Options, run func(context.Context) error, stdout, stderr io.Writer, signals bool) int {
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are reported below, in one line
	opts.AddFlags(fs)
	verbosity := fs.IntP("v", "v", 0, "Log verbosity.")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			fmt.Fprintf(stdout, "Usage of %s:\n", name)
			fs.SetOutput(stdout)
			fs.PrintDefaults()
			return ExitOK
		}
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return ExitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "%s: unexpected arguments %q (all settings are flags)\n", name, fs.Args())
		return ExitUsage
	}
	if err := opts.Validate(); err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return ExitUsage
	}
	// klog's own flags stay off the command line: -v is the one setting.
	var klogFlags flag.FlagSet
	klog.InitFlags(&klogFlags)
	if err := klogFlags.Set("v", fmt.Sprint(*verbosity)); err != nil {
		fmt.Fprintf(stderr, "%s: -v: %v\n", name, err)
		return ExitUsage
	}
	defer klog.Flush()

	ctx := context.Background()
	if signals {
		var stop context.CancelFunc
		ctx, stop = signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
		defer stop()
	}
	logger := klog.Background()
	ctx = klog.NewContext(ctx, logger)
	kv := []any{"version", version}
	fs.VisitAll(func(f *pflag.Flag) { kv = append(kv, f.Name, f.Value.String()) })
	logger.Info("Starting "+name, kv...)
	if err := run(ctx); err != nil {
		logger.Error(err, name+" stopped")
		return ExitFailed
	}
	return ExitOK
}
