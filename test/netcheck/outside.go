package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"
)

// Seen is what GET /seen?token=T answers: the distinct source addresses
// the UDP listener saw datagrams carrying T from, in order of arrival.
type Seen struct {
	Sources []string `json:"sources"`
}

// maxTokens bounds what the outside host remembers: a long-lived cluster's
// test runs cannot grow it without limit. The oldest token is forgotten
// first.
const maxTokens = 4096

// sources records, for each token, the distinct source IPs that sent it.
// It is safe for concurrent use.
type sources struct {
	mu    sync.Mutex
	seen  map[string][]string
	order []string // tokens, oldest first
}

func newSources() *sources { return &sources{seen: map[string][]string{}} }

// add records that ip sent token.
func (s *sources) add(token, ip string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ips, known := s.seen[token]
	if !known {
		if len(s.order) == maxTokens {
			delete(s.seen, s.order[0])
			s.order = s.order[1:]
		}
		s.order = append(s.order, token)
	}
	for _, x := range ips {
		if x == ip {
			return
		}
	}
	s.seen[token] = append(ips, ip)
}

// get returns a copy of the sources of token (empty, not nil, if none).
func (s *sources) get(token string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string{}, s.seen[token]...)
}

// outside is the outside host of hack/cluster.sh (a namespace beyond the
// VPC's router, as the internet is): an HTTP server whose GET / answers
// with the client address it saw, and a UDP listener that records the
// source address of every datagram by its payload (a token), read back
// with GET /seen?token=T. UDP shows what TCP cannot: a datagram arrives
// even when no reply could ever get back to its source.
func outside(ctx context.Context, httpAddr, udpAddr string) error {
	pc, err := net.ListenPacket("udp", udpAddr)
	if err != nil {
		return err
	}
	defer pc.Close()
	seen := newSources()
	go func() {
		<-ctx.Done()
		pc.Close()
	}()
	go receive(pc, seen)
	srv := &http.Server{Addr: httpAddr, Handler: outsideHandler(seen), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	fmt.Printf("netcheck: outside host serving HTTP on %s, recording UDP on %s\n", httpAddr, udpAddr)
	if err := srv.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// receive records every datagram on pc until pc is closed.
func receive(pc net.PacketConn, seen *sources) {
	buf := make([]byte, 512)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		token := strings.TrimSpace(string(buf[:n]))
		ua, ok := from.(*net.UDPAddr)
		if token == "" || !ok {
			continue
		}
		seen.add(token, ua.IP.String())
	}
}

func outsideHandler(seen *sources) http.Handler {
	host, _ := os.Hostname()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(Answer{PodIP: podIP(), Node: "outside", Hostname: host, Peer: r.RemoteAddr})
	})
	mux.HandleFunc("GET /seen", func(w http.ResponseWriter, r *http.Request) {
		token := r.URL.Query().Get("token")
		if token == "" {
			http.Error(w, "token missing", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(Seen{Sources: seen.get(token)})
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	return mux
}

// sendUDP sends token to addr count times, interval apart, from one
// unconnected socket: it cannot know whether anything arrived (the
// receiver answers nothing), and an ICMP error coming back is not its
// business either.
func sendUDP(ctx context.Context, out io.Writer, addr, token string, count int, interval time.Duration) error {
	to, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return err
	}
	pc, err := net.ListenPacket("udp", ":0")
	if err != nil {
		return err
	}
	defer pc.Close()
	for i := range count {
		if i > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(interval):
			}
		}
		if _, err := pc.WriteTo([]byte(token), to); err != nil {
			return fmt.Errorf("send %d to %s: %w", i+1, to, err)
		}
	}
	fmt.Fprintf(out, "SENT %d x %q to %s from %s (%s)\n", count, token, to, podIP(), pc.LocalAddr())
	return nil
}
