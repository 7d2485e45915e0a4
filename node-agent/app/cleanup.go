package app

import (
	"fmt"
	"io"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/spf13/pflag"

	"github.com/aliasip/aliasip/node-agent/egress"
)

// Cleanup is `aliasip-agent cleanup [--netns PATH]`: it removes what the
// agent leaves on a node on purpose when it stops — the egress masquerade
// table, kept so that egress never blips across an agent restart — for a
// node whose agent is gone for good (after `helm uninstall`). It returns
// the exit code: 0 removed or nothing to remove, 1 failed, 2 bad usage.
func Cleanup(args []string, stdout, stderr io.Writer) int {
	fs := pflag.NewFlagSet("cleanup", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	netns := fs.String("netns", "", "Network namespace to clean (default: this process's).")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "aliasip-agent cleanup: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	fd := -1
	if *netns != "" {
		h, err := ns.GetNS(*netns)
		if err != nil {
			fmt.Fprintf(stderr, "aliasip-agent cleanup: %v\n", err)
			return 1
		}
		defer h.Close()
		fd = int(h.Fd())
	}
	existed, err := egress.NewTable(fd).Delete()
	if err != nil {
		fmt.Fprintf(stderr, "aliasip-agent cleanup: %v\n", err)
		return 1
	}
	if existed {
		fmt.Fprintf(stdout, "removed nftables table ip %s\n", egress.TableName)
	} else {
		fmt.Fprintf(stdout, "no nftables table ip %s\n", egress.TableName)
	}
	return 0
}
