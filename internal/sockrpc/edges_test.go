package sockrpc

// The server's edges, found by an adversarial review of the protocol
// (each failed before its fix).

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// A Server built with only a Handler answers: zero timeouts mean no limit,
// as in net/http (a deadline of now+0 failed every request).
func TestZeroTimeoutsMeanNoLimit(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &Server{Handler: func(ctx context.Context, op Op, body json.RawMessage) (any, error) {
		return status{Ready: true}, nil
	}}
	go srv.Serve(context.Background(), ln)
	defer srv.Close()
	st, err := callStatus(context.Background(), NewClient(sock, 2*time.Second))
	if err != nil || !st.Ready {
		t.Errorf("Status through a Server with zero timeouts: %+v, %v", st, err)
	}
}

// gatedListener hands out a connection the kernel has accepted only when
// the test says so: the Serve goroutine preempted between ln.Accept
// returning and s.wg.Add(1), which is when Close runs.
type gatedListener struct {
	net.Listener
	accepted chan struct{}
	gate     chan struct{}
}

func (g *gatedListener) Accept() (net.Conn, error) {
	c, err := g.Listener.Accept()
	if err == nil {
		g.accepted <- struct{}{}
		<-g.gate
	}
	return c, err
}

// Close stops accepting and waits for the calls in progress, including one
// accepted just as Close runs: it is counted under the same lock that Close
// takes, or dropped unserved (it once ran after Close had returned).
func TestCloseCountsAcceptedCall(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s.sock")
	inner, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ln := &gatedListener{Listener: inner, accepted: make(chan struct{}, 1), gate: make(chan struct{})}
	var closeReturned, ranAfterClose atomic.Bool
	handled := make(chan struct{}, 1)
	srv := &Server{ReadTimeout: time.Second, WriteTimeout: time.Second,
		Handler: func(ctx context.Context, op Op, body json.RawMessage) (any, error) {
			ranAfterClose.Store(closeReturned.Load())
			handled <- struct{}{}
			return status{Ready: true}, nil
		}}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(context.Background(), ln) }()

	go callStatus(context.Background(), NewClient(sock, 3*time.Second))
	select {
	case <-ln.accepted:
	case <-time.After(3 * time.Second):
		t.Fatal("no connection")
	}
	closed := make(chan struct{})
	go func() { srv.Close(); closeReturned.Store(true); close(closed) }()
	select {
	case <-closed:
	case <-time.After(500 * time.Millisecond): // Close waits for it: fine
	}
	close(ln.gate)
	<-closed
	select {
	case <-handled:
		if ranAfterClose.Load() {
			t.Error("the handler ran after Close had returned")
		}
	case <-time.After(time.Second):
	}
	<-served
}

// A panicking handler is that call's CodeInternal error, as net/http
// recovered one, not the end of the server's daemon (a kubelet retrying the same ADD
// would keep it crash-looping). Run in a child process, since an
// unrecovered panic would kill the test binary.
func TestHandlerPanicIsAnError(t *testing.T) {
	if os.Getenv("REVIEW_API_PANIC_CHILD") == "1" {
		sock := filepath.Join(t.TempDir(), "s.sock")
		ln, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		srv := &Server{ReadTimeout: time.Second, WriteTimeout: time.Second,
			Handler: func(ctx context.Context, op Op, body json.RawMessage) (any, error) {
				if op == "boom" {
					var m map[string]int
					m["boom"]++ // a handler bug
				}
				return status{Ready: true}, nil
			}}
		go srv.Serve(context.Background(), ln)
		c := NewClient(sock, 2*time.Second)
		err = c.Call(context.Background(), "boom", nil, nil)
		var ae *Error
		if !errors.As(err, &ae) || ae.Code != CodeInternal {
			t.Errorf("panicking call answered %v, want CodeInternal", err)
		}
		if st, err := callStatus(context.Background(), c); err != nil || !st.Ready {
			t.Fatalf("server gone after a panicking call: %v", err)
		}
		os.Stdout.WriteString("SERVER-SURVIVED\n")
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestHandlerPanicIsAnError$", "-test.v")
	cmd.Env = append(os.Environ(), "REVIEW_API_PANIC_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "SERVER-SURVIVED") {
		lines := strings.Split(string(out), "\n")
		if len(lines) > 8 {
			lines = lines[:8]
		}
		t.Errorf("a panicking handler took the server's process down (%v):\n%s", err, strings.Join(lines, "\n"))
	}
}
