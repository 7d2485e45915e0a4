package sockrpc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime/debug"
	"sync"
	"time"
)

// Handler answers one call with its result. An *Error goes back with its
// code; any other error as CodeInternal.
type Handler func(ctx context.Context, op Op, body json.RawMessage) (any, error)

// Server serves the protocol: one request, one answer, then the connection
// closes. A client that stalls is dropped after ReadTimeout, one that does
// not read its answer after WriteTimeout, and a request over MaxMessage is
// refused without being read further, so a stuck or broken plugin holds
// neither a goroutine nor memory for long.
type Server struct {
	Handler Handler
	// ReadTimeout bounds reading the request, WriteTimeout writing the
	// answer; zero means no limit.
	ReadTimeout  time.Duration
	WriteTimeout time.Duration
	// OnPanic, if set, is told of a handler's panic (with its stack); the
	// client gets CodeInternal.
	OnPanic func(error)

	mu     sync.Mutex
	ln     net.Listener
	closed bool
	wg     sync.WaitGroup
}

// ErrServerClosed is Serve's return after Close.
var ErrServerClosed = errors.New("sockrpc: server closed")

// Serve accepts connections on ln until Close; handlers get ctx.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.ln = ln
	s.mu.Unlock()
	var backoff time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return ErrServerClosed
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			// Out of file descriptors and the like: wait and retry, as
			// net/http's Server does, instead of spinning or giving up.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		// Counted under mu, so that Close either sees this call (and
		// waits for it) or this connection sees Close.
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			conn.Close()
			return ErrServerClosed
		}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			s.serveConn(ctx, conn)
		}()
	}
}

// Close stops accepting and waits for the calls in progress to answer.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	ln := s.ln
	s.mu.Unlock()
	var err error
	if ln != nil {
		err = ln.Close()
	}
	s.wg.Wait()
	return err
}

// deadline is now+d, or none for d <= 0 (as net/http's zero timeouts).
func deadline(d time.Duration) time.Time {
	if d <= 0 {
		return time.Time{}
	}
	return time.Now().Add(d)
}

func (s *Server) serveConn(ctx context.Context, conn net.Conn) {
	defer conn.Close()
	conn.SetReadDeadline(deadline(s.ReadTimeout))
	lr := &io.LimitedReader{R: conn, N: MaxMessage + 1}
	var req Request
	var resp Response
	if err := json.NewDecoder(lr).Decode(&req); err != nil {
		msg := "bad request: " + err.Error()
		if lr.N <= 0 {
			msg = fmt.Sprintf("bad request: larger than %d bytes", MaxMessage)
		}
		resp.Error = &ErrorBody{Code: CodeInvalid, Message: msg}
	} else {
		conn.SetReadDeadline(time.Time{})
		out, err := s.call(ctx, req)
		var ae *Error
		switch {
		case errors.As(err, &ae):
			resp.Error = &ErrorBody{Code: ae.Code, Message: ae.Message}
		case err != nil:
			resp.Error = &ErrorBody{Code: CodeInternal, Message: err.Error()}
		case out != nil:
			if resp.Body, err = json.Marshal(out); err != nil {
				resp.Error = &ErrorBody{Code: CodeInternal, Message: err.Error()}
			}
		}
	}
	conn.SetWriteDeadline(deadline(s.WriteTimeout))
	json.NewEncoder(conn).Encode(resp)
}

// call runs the handler; a panic is this call's internal error, not the
// end of the agent (net/http's Server recovers a handler's panic too).
func (s *Server) call(ctx context.Context, req Request) (out any, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic serving %s: %v\n%s", req.Op, r, debug.Stack())
			if s.OnPanic != nil {
				s.OnPanic(err)
			}
		}
	}()
	return s.Handler(ctx, req.Op, req.Body)
}
