// Package api is the protocol between aliasip-cni and the node agent: one
// JSON request and one JSON response per connection on a root-only unix
// socket. The agent owns pod IPAM; the plugin asks it for an address on ADD,
// hands it back on DEL, and forwards CNI CHECK, GC and STATUS.
//
// It is not HTTP on purpose: the plugin is a new process for every CNI
// call, and net/http brings TLS, HTTP/2 and x509 into its start-up (their
// package initialisation alone was a large part of ADD's time outside the
// plugin's own work; see the ADD breakdown in test/bench/cni_test.go).
package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// Error codes the agent returns; the plugin maps them to CNI error codes.
const (
	CodeExhausted = "exhausted"
	CodeNotReady  = "not_ready"
	CodeInvalid   = "invalid"
	CodeInternal  = "internal"
	// CodeHostVethHeld: the pod's host veth name is held by the running
	// sandbox of another pod of the same namespace/name; ADD may succeed
	// once that sandbox is torn down.
	CodeHostVethHeld = "host_veth_held"
)

// Attachment names one pod interface.
type Attachment struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
}

// AllocateRequest asks for the attachment's address.
type AllocateRequest struct {
	Attachment
	Namespace string `json:"namespace,omitempty"`
	Pod       string `json:"pod,omitempty"`
	// PodUID is K8S_POD_UID: pod GC releases an address only once the pod
	// with this UID is gone, not when a same-named pod replaced it.
	PodUID   string `json:"podUID,omitempty"`
	HostVeth string `json:"hostVeth"`
}

// AllocateResponse is the attachment's address and the node's settings.
type AllocateResponse struct {
	IP      string `json:"ip"`      // the pod address, e.g. 10.4.1.7
	PodCIDR string `json:"podCIDR"` // the node's block
	MTU     int    `json:"mtu"`     // of the host interface
	// IPAMMicros is the agent's time in IPAM for this call (lock, pick,
	// durable save): the plugin logs it in its ADD breakdown.
	IPAMMicros int64 `json:"ipamMicros,omitempty"`
}

// AllocationInfo describes one allocation: the one released, or looked up.
// Found is false when the attachment had none.
type AllocationInfo struct {
	Found       bool   `json:"found"`
	ContainerID string `json:"containerID,omitempty"`
	IP          string `json:"ip,omitempty"`
	HostVeth    string `json:"hostVeth,omitempty"`
}

// GCRequest lists the attachments that are still valid.
type GCRequest struct {
	Valid []Attachment `json:"valid"`
}

// GCResponse lists what was released.
type GCResponse struct {
	Released []AllocationInfo `json:"released"`
}

// Status says whether the agent can serve ADD.
type Status struct {
	Ready   bool   `json:"ready"`
	Reason  string `json:"reason,omitempty"`
	PodCIDR string `json:"podCIDR,omitempty"`
}

// ErrorBody is a failed call's answer.
type ErrorBody struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Error is an error answered by the agent.
type Error struct {
	Code    string
	Message string
}

func (e *Error) Error() string { return e.Message }

// ErrUnreachable wraps failures to reach the agent at all.
var ErrUnreachable = errors.New("node agent unreachable")

// Op names a call.
type Op string

// The calls.
const (
	OpAllocate Op = "allocate" // AllocateRequest → AllocateResponse
	OpRelease  Op = "release"  // Attachment → AllocationInfo
	OpGet      Op = "get"      // Attachment → AllocationInfo
	OpGC       Op = "gc"       // GCRequest → GCResponse
	OpStatus   Op = "status"   // nothing → Status

	// Administration (kubectl aliasip, run in the agent's pod by kubectl
	// exec; see node-agent/agent/admin.go). The socket is root-only, like
	// the CNI calls, which can already release any address.
	OpList        Op = "list"         // nothing → Allocations
	OpReleaseLeak Op = "release-leak" // LeakRequest → LeakResult
)

// Allocations is the agent's view of its node: every address it has handed
// out.
type Allocations struct {
	Node        string            `json:"node"`
	PodCIDR     string            `json:"podCIDR,omitempty"`
	Ready       bool              `json:"ready"`
	Allocations []AllocationEntry `json:"allocations"`
}

// AllocationEntry is one allocation as the agent persisted it.
type AllocationEntry struct {
	IP          string    `json:"ip"`
	ContainerID string    `json:"containerID"`
	IfName      string    `json:"ifName"`
	Namespace   string    `json:"namespace,omitempty"`
	Pod         string    `json:"pod,omitempty"`
	PodUID      string    `json:"podUID,omitempty"`
	HostVeth    string    `json:"hostVeth,omitempty"`
	Created     time.Time `json:"created"`
}

// LeakRequest asks the agent to release one allocation that a check found
// leaked. The agent releases it only if it still holds exactly this
// allocation and confirms, by a live read of the API, that its pod is gone.
type LeakRequest struct {
	Attachment
	IP string `json:"ip"`
}

// LeakResult says whether the allocation was released, and why (not).
type LeakResult struct {
	Released bool   `json:"released"`
	Reason   string `json:"reason"`
}

// Request is what the plugin sends: the call and its argument.
type Request struct {
	Op   Op              `json:"op"`
	Body json.RawMessage `json:"body,omitempty"`
}

// Response is what the agent answers: an error, or the call's result.
type Response struct {
	Error *ErrorBody      `json:"error,omitempty"`
	Body  json.RawMessage `json:"body,omitempty"`
}

// MaxMessage bounds a request or a response on the wire.
const MaxMessage = 1 << 20

// Client talks to the agent's socket.
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

func (c *Client) do(ctx context.Context, op Op, in, out any) error {
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

// Allocate asks for an address.
func (c *Client) Allocate(ctx context.Context, r AllocateRequest) (*AllocateResponse, error) {
	var out AllocateResponse
	return &out, c.do(ctx, OpAllocate, r, &out)
}

// Release frees an attachment's address; unknown attachments are not an error.
func (c *Client) Release(ctx context.Context, a Attachment) (*AllocationInfo, error) {
	var out AllocationInfo
	return &out, c.do(ctx, OpRelease, a, &out)
}

// Get returns the attachment's allocation (Found false: none).
func (c *Client) Get(ctx context.Context, a Attachment) (*AllocationInfo, error) {
	var out AllocationInfo
	return &out, c.do(ctx, OpGet, a, &out)
}

// GC releases every attachment not in valid.
func (c *Client) GC(ctx context.Context, valid []Attachment) (*GCResponse, error) {
	var out GCResponse
	return &out, c.do(ctx, OpGC, GCRequest{Valid: valid}, &out)
}

// Status asks whether the agent can serve ADD.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	var out Status
	return &out, c.do(ctx, OpStatus, nil, &out)
}

// Call makes any call: in is sent as the body (nil: none), the answer's
// body is decoded into out (nil: ignored). It serves the administrative
// calls, whose types belong to each server.
func (c *Client) Call(ctx context.Context, op Op, in, out any) error {
	return c.do(ctx, op, in, out)
}
