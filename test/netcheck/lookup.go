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
	var failed []string
	for _, name := range names {
		var addrs []string
		var err error
		for try := 0; try <= retries; try++ {
			if try > 0 {
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(time.Second):
				}
			}
			lctx, cancel := context.WithTimeout(ctx, timeout)
			addrs, err = r.LookupHost(lctx, name)
			cancel()
			if err == nil {
				break
			}
		}
		if err != nil {
			fmt.Fprintf(out, "FAIL %s: %v\n", name, err)
			failed = append(failed, name)
			continue
		}
		fmt.Fprintf(out, "OK %s -> %s\n", name, strings.Join(addrs, " "))
	}
	if len(failed) > 0 {
		return fmt.Errorf("%d of %d names did not resolve: %s", len(failed), len(names), strings.Join(failed, " "))
	}
	return nil
}
