package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"k8s.io/apimachinery/pkg/util/wait"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestOutsideRecordsSources: datagrams sent by netcheck udp are recorded by
// token and source address, each source once in order of arrival, and GET
// /seen answers them; GET / answers with the peer the server saw.
func TestOutsideRecordsSources(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	seen := newSources()
	go receive(pc, seen)
	srv := httptest.NewServer(outsideHandler(seen))
	defer srv.Close()

	ctx := context.Background()
	if err := sendUDP(ctx, io.Discard, pc.LocalAddr().String(), "tok-a", 3, time.Millisecond); err != nil {
		t.Fatal(err)
	}
	seenBy := func(token string) []string {
		resp, err := http.Get(srv.URL + "/seen?token=" + token)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var s Seen
		if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
			t.Fatal(err)
		}
		return s.Sources
	}
	wait.PollUntilContextTimeout(context.Background(), 10*time.Millisecond, 5*time.Second, true, func(context.Context) (bool, error) {
		return len(seenBy("tok-a")) > 0, nil
	})
	if diff := cmp.Diff([]string{"127.0.0.1"}, seenBy("tok-a")); diff != "" {
		t.Errorf("sources of tok-a (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{}, seenBy("tok-b")); diff != "" {
		t.Errorf("sources of a token never sent (-want +got):\n%s", diff)
	}

	resp, err := http.Get(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var a Answer
	if err := json.NewDecoder(resp.Body).Decode(&a); err != nil {
		t.Fatal(err)
	}
	if host, _, err := net.SplitHostPort(a.Peer); err != nil || host != "127.0.0.1" {
		t.Errorf("GET / peer %q, want 127.0.0.1:PORT", a.Peer)
	}
}

// TestSourcesDistinctInOrderAndBounded: each source once per token, in
// arrival order; past maxTokens the oldest token is forgotten.
func TestSourcesDistinctInOrderAndBounded(t *testing.T) {
	s := newSources()
	for _, ip := range []string{"10.244.1.5", "192.168.90.11", "10.244.1.5", "10.64.0.2"} {
		s.add("t", ip)
	}
	if diff := cmp.Diff([]string{"10.244.1.5", "192.168.90.11", "10.64.0.2"}, s.get("t")); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	for i := range maxTokens {
		s.add(fmt.Sprint("x", i), "10.0.0.1")
	}
	if got := s.get("t"); len(got) != 0 {
		t.Errorf("oldest token still remembered after %d newer ones: %v", maxTokens, got)
	}
	if got := s.get(fmt.Sprint("x", maxTokens-1)); len(got) != 1 {
		t.Errorf("newest token forgotten: %v", got)
	}
}
