// Package sockrpc is the request/answer protocol both aliasip daemons serve
// on their root-only unix sockets: one JSON request and one JSON answer per
// connection. The node agent serves the CNI plugin's calls and its own
// administration on it (node-agent/api holds those calls' types), the
// controller its administration (controller/adminapi); kubectl aliasip and
// each daemon's "admin" subcommand (internal/daemon) are clients.
//
// It is not HTTP on purpose: the CNI plugin is a new process for every CNI
// call, and net/http brings TLS, HTTP/2 and x509 into its start-up (their
// package initialisation alone was a large part of ADD's time outside the
// plugin's own work; see the ADD breakdown in test/bench/cni_test.go).
package sockrpc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// Error codes every server may answer; a server's own calls may add more
// (node-agent/api's CodeExhausted, for one).
const (
	CodeNotReady = "not_ready"
	CodeInvalid  = "invalid"
	CodeInternal = "internal"
)

// ErrorBody is a failed call's answer.
type ErrorBody struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Error is an error answered by the server.
type Error struct {
	Code    string
	Message string
}

func (e *Error) Error() string { return e.Message }

// ErrUnreachable wraps failures to reach the server at all.
var ErrUnreachable = errors.New("node agent unreachable")

// Op names a call.
type Op string

// Request is what a client sends: the call and its argument.
type Request struct {
	Op   Op              `json:"op"`
	Body json.RawMessage `json:"body,omitempty"`
}

// Response is what the server answers: an error, or the call's result.
type Response struct {
	Error *ErrorBody      `json:"error,omitempty"`
	Body  json.RawMessage `json:"body,omitempty"`
}

// MaxMessage bounds a request or a response on the wire.
const MaxMessage = 1 << 20

// Client talks to a server's socket.
type Client struct {
	socket  string
	timeout time.Duration
	// MaxResponse bounds an answer (0: MaxMessage). Administrative
	// listings of a large node or cloud may need more.
	MaxResponse int64
}

// NewClient returns a client for the socket at path; each call takes at
// most timeout.
func NewClient(socket string, timeout time.Duration) *Client {
	return &Client{socket: socket, timeout: timeout}
}

// Call makes a call: in is sent as the body (nil: none), the answer's body
// is decoded into out (nil: ignored). Each server's package names its
// calls and their types.
func (c *Client) Call(ctx context.Context, op Op, in, out any) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.socket)
	if err != nil {
		return fmt.Errorf("%w at %s: %v", ErrUnreachable, c.socket, err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	req := Request{Op: op}
	if in != nil {
		if req.Body, err = json.Marshal(in); err != nil {
			return err
		}
	}
	if err := json.NewEncoder(conn).Encode(req); err != nil {
		return fmt.Errorf("%w at %s: send: %v", ErrUnreachable, c.socket, err)
	}
	limit := c.MaxResponse
	if limit <= 0 {
		limit = MaxMessage
	}
	var resp Response
	if err := json.NewDecoder(io.LimitReader(conn, limit)).Decode(&resp); err != nil {
		return fmt.Errorf("%w at %s: no answer: %v", ErrUnreachable, c.socket, err)
	}
	if resp.Error != nil {
		code := resp.Error.Code
		if code == "" {
			code = CodeInternal
		}
		return &Error{Code: code, Message: resp.Error.Message}
	}
	if out != nil {
		if err := json.Unmarshal(resp.Body, out); err != nil {
			return fmt.Errorf("agent answered %s with %q: %w", op, resp.Body, err)
		}
	}
	return nil
}
