// Package api is the protocol between aliasip-cni and the node agent: JSON
// over HTTP on a root-only unix socket. The agent owns pod IPAM; the plugin
// asks it for an address on ADD, hands it back on DEL, and forwards CNI GC
// and STATUS.
package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// Error codes the agent returns; the plugin maps them to CNI error codes.
const (
	CodeExhausted = "exhausted"
	CodeNotReady  = "not_ready"
	CodeInvalid   = "invalid"
	CodeInternal  = "internal"
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

// ErrorBody is every non-2xx answer.
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

// Client talks to the agent's socket.
type Client struct {
	hc     *http.Client
	socket string
}

// NewClient returns a client for the socket at path.
func NewClient(socket string, timeout time.Duration) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		DisableKeepAlives: true,
	}
	return &Client{hc: &http.Client{Transport: tr, Timeout: timeout}, socket: socket}
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://aliasip"+path, body)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("%w at %s: %v", ErrUnreachable, c.socket, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("%w at %s: %v", ErrUnreachable, c.socket, err)
	}
	if resp.StatusCode/100 != 2 {
		var eb ErrorBody
		if json.Unmarshal(data, &eb) != nil || eb.Code == "" {
			eb = ErrorBody{Code: CodeInternal, Message: fmt.Sprintf("agent answered %s: %s", resp.Status, bytes.TrimSpace(data))}
		}
		return &Error{Code: eb.Code, Message: eb.Message}
	}
	if out != nil {
		return json.Unmarshal(data, out)
	}
	return nil
}

// Allocate asks for an address.
func (c *Client) Allocate(ctx context.Context, r AllocateRequest) (*AllocateResponse, error) {
	var out AllocateResponse
	return &out, c.do(ctx, http.MethodPost, "/v1/allocate", r, &out)
}

// Release frees an attachment's address; unknown attachments are not an error.
func (c *Client) Release(ctx context.Context, a Attachment) (*AllocationInfo, error) {
	var out AllocationInfo
	return &out, c.do(ctx, http.MethodPost, "/v1/release", a, &out)
}

// Get returns the attachment's allocation (Found false: none).
func (c *Client) Get(ctx context.Context, a Attachment) (*AllocationInfo, error) {
	var out AllocationInfo
	return &out, c.do(ctx, http.MethodPost, "/v1/get", a, &out)
}

// GC releases every attachment not in valid.
func (c *Client) GC(ctx context.Context, valid []Attachment) (*GCResponse, error) {
	var out GCResponse
	return &out, c.do(ctx, http.MethodPost, "/v1/gc", GCRequest{Valid: valid}, &out)
}

// Status asks whether the agent can serve ADD.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	var out Status
	err := c.do(ctx, http.MethodGet, "/v1/status", nil, &out)
	return &out, err
}
