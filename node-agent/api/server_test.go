package api

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

// Every call reaches the handler with its op and body, and results and
// errors come back as the client's types.
func TestRoundTrip(t *testing.T) {
	_, sock := serve(t, func(ctx context.Context, op Op, body json.RawMessage) (any, error) {
		switch op {
		case OpAllocate:
			var r AllocateRequest
			if err := json.Unmarshal(body, &r); err != nil {
				return nil, err
			}
			if r.Pod == "full" {
				return nil, &Error{Code: CodeExhausted, Message: "no free address in 10.0.0.0/30"}
			}
			return AllocateResponse{IP: "10.0.0.2", PodCIDR: "10.0.0.0/24", MTU: 1460, IPAMMicros: 7}, nil
		case OpRelease:
			return nil, errors.New("disk full")
		case OpStatus:
			return Status{Ready: true, PodCIDR: "10.0.0.0/24"}, nil
		}
		return nil, &Error{Code: CodeInvalid, Message: "unknown"}
	}, time.Second)
	c := NewClient(sock, 5*time.Second)
	ctx := context.Background()

	got, err := c.Allocate(ctx, AllocateRequest{Attachment: Attachment{ContainerID: "c1", IfName: "eth0"}, Pod: "p"})
	if err != nil || *got != (AllocateResponse{IP: "10.0.0.2", PodCIDR: "10.0.0.0/24", MTU: 1460, IPAMMicros: 7}) {
		t.Errorf("Allocate = %+v, %v", got, err)
	}
	_, err = c.Allocate(ctx, AllocateRequest{Pod: "full"})
	var ae *Error
	if !errors.As(err, &ae) || ae.Code != CodeExhausted || !strings.Contains(ae.Message, "10.0.0.0/30") {
		t.Errorf("exhausted: %v", err)
	}
	_, err = c.Release(ctx, Attachment{ContainerID: "c1"})
	if !errors.As(err, &ae) || ae.Code != CodeInternal || ae.Message != "disk full" {
		t.Errorf("a plain handler error: %v, want CodeInternal \"disk full\"", err)
	}
	if st, err := c.Status(ctx); err != nil || !st.Ready || st.PodCIDR != "10.0.0.0/24" {
		t.Errorf("Status = %+v, %v", st, err)
	}
	if errors.Is(err, ErrUnreachable) {
		t.Error("an answered call is not ErrUnreachable")
	}
}

// No agent: ErrUnreachable, at once.
func TestUnreachable(t *testing.T) {
	c := NewClient(filepath.Join(t.TempDir(), "none.sock"), 5*time.Second)
	start := time.Now()
	_, err := c.Status(context.Background())
	if !errors.Is(err, ErrUnreachable) {
		t.Errorf("err = %v, want ErrUnreachable", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("took %v", d)
	}
}

// An agent that accepts but never answers: the client gives up after its
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
	_, err = NewClient(sock, 300*time.Millisecond).Status(context.Background())
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
		return Status{Ready: true}, nil
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
	if st, err := NewClient(sock, time.Second).Status(context.Background()); err != nil || !st.Ready {
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
		return Status{Ready: true}, nil
	}, time.Second)
	got := make(chan error, 1)
	go func() {
		_, err := NewClient(sock, 5*time.Second).Status(context.Background())
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
