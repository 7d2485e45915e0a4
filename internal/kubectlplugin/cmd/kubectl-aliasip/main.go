// kubectl-aliasip is the kubectl plugin for aliasip (kubectl finds a
// binary named kubectl-NAME on PATH and runs it as "kubectl NAME":
// https://kubernetes.io/docs/tasks/extend-kubectl/kubectl-plugins/).
//
//	kubectl aliasip status
//	kubectl aliasip check [-o json] [--report FILE]
//	kubectl aliasip release --from-report FILE [--dry-run]
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/aliasip/aliasip/internal/kubectlplugin"
)

var version = "dev"

const usage = `kubectl aliasip: inspect and repair aliasip's address management.

Commands:
  status                         ranges, their utilization, and the nodes of each
  check [-o json] [--report F]   cross-check Nodes' podCIDRs, the cloud's aliases and the
                                 agents' allocations; exit 1 listing duplicates, leaks and
                                 mismatches, 3 when some view could not be read
  release --from-report F        release the leaks report F lists that are still leaked
          [--dry-run]

It runs "aliasip-controller admin" and "aliasip-agent admin" in their pods
through kubectl exec: you need pods/exec in the release's namespace.

Flags:
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := pflag.NewFlagSet("kubectl-aliasip", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	kubeconfig := fs.String("kubeconfig", "", "Path to the kubeconfig (default: $KUBECONFIG, then ~/.kube/config).")
	kubeContext := fs.String("context", "", "The kubeconfig context to use.")
	namespace := fs.StringP("namespace", "n", "kube-system", "The namespace aliasip is installed in.")
	release := fs.String("release", "aliasip", "The Helm release name aliasip is installed as.")
	timeout := fs.Duration("timeout", 2*time.Minute, "How long each call to a controller or agent may take.")
	parallel := fs.Int("parallel", 16, "How many agents are read at once.")
	output := fs.StringP("output", "o", "text", "check: text or json.")
	report := fs.String("report", "", "check: also write the report (JSON) to this file, for release --from-report.")
	minAge := fs.Duration("min-age", 2*time.Minute, "check: an allocation, or a pod's address, younger than this is not judged (its ADD, or the API's view of it, may be in flight).")
	fromReport := fs.String("from-report", "", "release: the report check wrote.")
	dryRun := fs.Bool("dry-run", false, "release: only say what would be released.")
	showVersion := fs.Bool("version", false, "Print the version.")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			fmt.Fprint(stdout, usage)
			fs.SetOutput(stdout)
			fs.PrintDefaults()
			return 0
		}
		fmt.Fprintf(stderr, "kubectl-aliasip: %v\n", err)
		return kubectlplugin.ExitUsage
	}
	if *showVersion {
		fmt.Fprintln(stdout, version)
		return 0
	}
	rest := fs.Args()
	if len(rest) != 1 {
		fmt.Fprintf(stderr, "kubectl-aliasip: want one command (status, check or release); see --help\n")
		return kubectlplugin.ExitUsage
	}
	cmd := rest[0]
	switch {
	case cmd != "status" && cmd != "check" && cmd != "release":
		fmt.Fprintf(stderr, "kubectl-aliasip: unknown command %q (want status, check or release)\n", cmd)
		return kubectlplugin.ExitUsage
	case *output != "text" && *output != "json":
		fmt.Fprintf(stderr, "kubectl-aliasip: -o %q: want text or json\n", *output)
		return kubectlplugin.ExitUsage
	case cmd == "release" && *fromReport == "":
		fmt.Fprintf(stderr, "kubectl-aliasip: release needs --from-report FILE (written by check --report FILE)\n")
		return kubectlplugin.ExitUsage
	case *parallel < 1 || *timeout <= 0 || *minAge < 0:
		fmt.Fprintf(stderr, "kubectl-aliasip: --parallel must be at least 1, --timeout positive, --min-age not negative\n")
		return kubectlplugin.ExitUsage
	}
	// A report is read before anything is contacted: a bad file changes nothing.
	var rep kubectlplugin.Report
	if cmd == "release" {
		b, err := os.ReadFile(*fromReport)
		if err == nil {
			err = json.Unmarshal(b, &rep)
		}
		if err != nil {
			fmt.Fprintf(stderr, "kubectl-aliasip: report %s: %v\n", *fromReport, err)
			return kubectlplugin.ExitUsage
		}
	}

	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = *kubeconfig
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: *kubeContext}).ClientConfig()
	if err != nil {
		fmt.Fprintf(stderr, "kubectl-aliasip: kubeconfig: %v\n", err)
		return kubectlplugin.ExitUsage
	}
	cfg.UserAgent = "kubectl-aliasip/" + version
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		fmt.Fprintf(stderr, "kubectl-aliasip: %v\n", err)
		return kubectlplugin.ExitUsage
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		fmt.Fprintf(stderr, "kubectl-aliasip: %v\n", err)
		return kubectlplugin.ExitUsage
	}
	src := kubectlplugin.Source{Client: client, Dynamic: dyn, Exec: kubectlplugin.PodExec{Config: cfg, Client: client},
		Namespace: *namespace, Release: *release, Parallel: *parallel, Timeout: *timeout}

	code := 0
	switch cmd {
	case "status":
		err = kubectlplugin.Status(ctx, src, stdout)
		if err != nil {
			code = kubectlplugin.ExitIncomplete
		}
	case "check":
		code, err = kubectlplugin.RunCheck(ctx, src, *minAge, *output, *report, stdout)
	case "release":
		code, err = kubectlplugin.Release(ctx, src, rep, *minAge, *dryRun, stdout)
	}
	if err != nil {
		fmt.Fprintf(stderr, "kubectl-aliasip %s: %v\n", cmd, err)
	}
	return code
}
