package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"os"
	"time"
)

// hold GETs url over one kept-alive connection every interval until stdin
// closes (the caller's signal to stop, e.g. the end of a kubectl exec -i),
// then reports how many requests were answered and over how many
// connections. It fails if any request failed or the connection had to be
// made again: an established connection did not survive what happened
// meanwhile (say, an agent rollout).
func hold(ctx context.Context, out io.Writer, url string, interval, timeout time.Duration) error {
	stop := make(chan struct{})
	go func() {
		io.Copy(io.Discard, bufio.NewReader(os.Stdin))
		close(stop)
	}()
	tr := &http.Transport{MaxConnsPerHost: 1, MaxIdleConnsPerHost: 1, IdleConnTimeout: time.Hour}
	hc := &http.Client{Transport: tr, Timeout: timeout}
	var requests, failures, conns int
	var firstErr error
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		trace := &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) {
			if !i.Reused {
				conns++
			}
		}}
		req, err := http.NewRequestWithContext(httptrace.WithClientTrace(ctx, trace), http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		requests++
		resp, err := hc.Do(req)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				err = fmt.Errorf("status %s", resp.Status)
			}
		}
		if err != nil {
			failures++
			if firstErr == nil {
				firstErr = fmt.Errorf("request %d at %s: %w", requests, time.Now().Format(time.RFC3339Nano), err)
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-stop:
			fmt.Fprintf(out, "hold %s: %d requests, %d failed, %d connections\n", url, requests, failures, conns)
			if failures > 0 || conns != 1 {
				return fmt.Errorf("the connection did not hold: %d failed (first: %v), %d connections", failures, firstErr, conns)
			}
			return nil
		case <-t.C:
		}
	}
}
