package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"
)

// lookup resolves every name with Go's own resolver, which reads the
// pod's /etc/resolv.conf (nameserver, search, ndots) as the kubelet wrote
// it, and prints "OK NAME -> ADDR ..." or "FAIL NAME: ERR" for each. It
// fails if any name did not resolve. A server (HOST:PORT) replaces the
// nameservers of resolv.conf (its search list and options still apply).
//
// With showConf it first prints each line of /etc/resolv.conf as
// "resolv.conf: LINE", what the kubelet gave the pod.
func lookup(ctx context.Context, out io.Writer, names []string, server string, showConf bool, timeout time.Duration, retries int) error {
	if showConf {
		b, err := os.ReadFile("/etc/resolv.conf")
		if err != nil {
			return err
		}
		for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			fmt.Fprintf(out, "resolv.conf: %s\n", l)
		}
	}
	r := &net.Resolver{PreferGo: true}
	if server != "" {
		r.Dial = func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, server)
		}
	}
	return checkEach(ctx, out, names, retries, "names did not resolve", func(name string) (string, error) {
		lctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		addrs, err := r.LookupHost(lctx, name)
		return strings.Join(addrs, " "), err
	})
}
