package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/pflag"

	"github.com/aliasip/aliasip/internal/sockrpc"
)

// Admin is a daemon's "admin" subcommand: one call on the daemon's own
// administrative socket, its answer printed as JSON on stdout. kubectl
// aliasip runs it in the daemon's pod through kubectl exec:
//
//	aliasip-agent admin --socket /run/aliasip/agent.sock list
//	aliasip-agent admin --socket ... release-leak '{"containerID":"…","ifName":"eth0","ip":"10.4.1.7"}'
//
// A failed call prints one line on stderr and exits 1; bad usage exits 2.
func Admin(name string, args []string, defaultSocket string) int {
	return admin(name, args, defaultSocket, os.Stdout, os.Stderr)
}

func admin(name string, args []string, defaultSocket string, stdout, stderr io.Writer) int {
	fs := pflag.NewFlagSet(name+" admin", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	socket := fs.String("socket", defaultSocket, "The daemon's administrative socket.")
	timeout := fs.Duration("timeout", 30*time.Second, "How long the call may take.")
	if err := fs.Parse(args); err != nil {
		fmt.Fprintf(stderr, "%s admin: %v\n", name, err)
		return ExitUsage
	}
	rest := fs.Args()
	if len(rest) < 1 || len(rest) > 2 || *socket == "" {
		fmt.Fprintf(stderr, "%s admin: usage: %s admin --socket PATH CALL [JSON-BODY]\n", name, name)
		return ExitUsage
	}
	var in any
	if len(rest) == 2 {
		if !json.Valid([]byte(rest[1])) {
			fmt.Fprintf(stderr, "%s admin: the body %q is not JSON\n", name, rest[1])
			return ExitUsage
		}
		in = json.RawMessage(rest[1])
	}
	c := sockrpc.NewClient(*socket, *timeout)
	c.MaxResponse = 256 << 20 // a cloud's or a node's full listing
	var out json.RawMessage
	if err := c.Call(context.Background(), sockrpc.Op(rest[0]), in, &out); err != nil {
		fmt.Fprintf(stderr, "%s admin %s: %v\n", name, rest[0], err)
		return ExitFailed
	}
	fmt.Fprintln(stdout, string(out))
	return ExitOK
}
