package sockrpc

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// status is a stand-in for a server's call and its answer.
type status struct {
	Ready bool `json:"ready"`
}

const opStatus Op = "status"

func callStatus(ctx context.Context, c *Client) (*status, error) {
	var out status
	return &out, c.Call(ctx, opStatus, nil, &out)
}

func serve(t *testing.T, h Handler, read time.Duration) (*Server, string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "s.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &Server{Handler: h, ReadTimeout: read, WriteTimeout: time.Second}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(context.Background(), ln) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-done; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	})
	return srv, sock
}

// No server: ErrUnreachable, at once.
func TestUnreachable(t *testing.T) {
	c := NewClient(filepath.Join(t.TempDir(), "none.sock"), 5*time.Second)
	start := time.Now()
	_, err := callStatus(context.Background(), c)
	if !errors.Is(err, ErrUnreachable) {
		t.Errorf("err = %v, want ErrUnreachable", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("took %v", d)
	}
}

// A server that accepts but never answers: the client gives up after its
// timeout with ErrUnreachable.
func TestClientTimeout(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	start := time.Now()
	_, err = callStatus(context.Background(), NewClient(sock, 300*time.Millisecond))
	if !errors.Is(err, ErrUnreachable) {
		t.Errorf("err = %v, want ErrUnreachable", err)
	}
	if d := time.Since(start); d < 250*time.Millisecond || d > 3*time.Second {
		t.Errorf("gave up after %v, want about 300ms", d)
	}
}

// The server drops a client that stalls in its request, refuses a request
// over MaxMessage without reading the rest, and answers garbage with
// CodeInvalid; the handler never sees any of them.
func TestServerLimits(t *testing.T) {
	var calls atomic.Int32
	_, sock := serve(t, func(ctx context.Context, op Op, body json.RawMessage) (any, error) {
		calls.Add(1)
		return status{Ready: true}, nil
	}, time.Second)

	answer := func(c net.Conn) (Response, error) {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		var r Response
		err := json.NewDecoder(c).Decode(&r)
		return r, err
	}

	// A stalled client: half a request, then nothing.
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte(`{"op":"sta`))
	start := time.Now()
	r, err := answer(c)
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("stalled client dropped after %v, want about the read timeout", d)
	}
	if err == nil && (r.Error == nil || r.Error.Code != CodeInvalid) {
		t.Errorf("stalled client answered %+v", r)
	}

	// Over the limit: refused, and the server stops reading.
	c2, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	go func() {
		io.WriteString(c2, `{"op":"status","body":"`+strings.Repeat("x", 4*MaxMessage))
	}()
	r, err = answer(c2)
	if err != nil || r.Error == nil || r.Error.Code != CodeInvalid || !strings.Contains(r.Error.Message, "larger than") {
		t.Errorf("oversized request: %+v, %v", r.Error, err)
	}

	// Garbage.
	c3, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c3.Close()
	c3.Write([]byte("POST /v1/allocate HTTP/1.1\r\n\r\n"))
	r, err = answer(c3)
	if err != nil || r.Error == nil || r.Error.Code != CodeInvalid {
		t.Errorf("garbage: %+v, %v", r.Error, err)
	}
	if n := calls.Load(); n != 0 {
		t.Errorf("handler called %d times for bad requests", n)
	}

	// And a good one still works.
	if st, err := callStatus(context.Background(), NewClient(sock, time.Second)); err != nil || !st.Ready {
		t.Errorf("Status after bad clients: %+v, %v", st, err)
	}
}

// Close waits for a call in progress to answer.
func TestCloseWaitsForCalls(t *testing.T) {
	entered := make(chan struct{})
	release := make(chan struct{})
	srv, sock := serve(t, func(ctx context.Context, op Op, body json.RawMessage) (any, error) {
		close(entered)
		<-release
		return status{Ready: true}, nil
	}, time.Second)
	got := make(chan error, 1)
	go func() {
		_, err := callStatus(context.Background(), NewClient(sock, 5*time.Second))
		got <- err
	}()
	<-entered
	closed := make(chan struct{})
	go func() { srv.Close(); close(closed) }()
	select {
	case <-closed:
		t.Fatal("Close returned with a call in progress")
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	if err := <-got; err != nil {
		t.Errorf("the call in progress failed: %v", err)
	}
	<-closed
}
