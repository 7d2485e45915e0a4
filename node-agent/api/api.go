// Package api is what the node agent answers on its socket: the calls and
// types of the CNI plugin's IPAM (ADD asks for an address, DEL hands it
// back, CNI CHECK, GC and STATUS are forwarded) and of the agent's
// administration. The wire is internal/sockrpc's: one JSON request and one
// JSON answer per connection on a root-only unix socket.
package api

import (
	"context"
	"time"

	"github.com/aliasip/aliasip/internal/sockrpc"
)

// Error codes the agent returns besides sockrpc's (CodeNotReady,
// CodeInvalid, CodeInternal); the plugin maps them to CNI error codes.
const (
	CodeExhausted = "exhausted"
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
	// IPv6 is the pod's IPv6 address, of the node's IPv6 block, when the
	// node is dual-stack ("" when single-stack).
	IPv6 string `json:"ipv6,omitempty"`
	MTU  int    `json:"mtu"` // of the host interface
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
	// IPv6 is the allocation's IPv6 address on a dual-stack node.
	IPv6     string `json:"ipv6,omitempty"`
	HostVeth string `json:"hostVeth,omitempty"`
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
	// PodCIDRIPv6 is the node's IPv6 block when it is dual-stack.
	PodCIDRIPv6 string `json:"podCIDRIPv6,omitempty"`
}

// The calls.
const (
	OpAllocate sockrpc.Op = "allocate" // AllocateRequest → AllocateResponse
	OpRelease  sockrpc.Op = "release"  // Attachment → AllocationInfo
	OpGet      sockrpc.Op = "get"      // Attachment → AllocationInfo
	OpGC       sockrpc.Op = "gc"       // GCRequest → GCResponse
	OpStatus   sockrpc.Op = "status"   // nothing → Status

	// Administration (kubectl aliasip, run in the agent's pod by kubectl
	// exec; see node-agent/agent/admin.go). The socket is root-only, like
	// the CNI calls, which can already release any address.
	OpList        sockrpc.Op = "list"         // nothing → Allocations
	OpReleaseLeak sockrpc.Op = "release-leak" // LeakRequest → LeakResult
)

// Allocations is the agent's view of its node: every address it has handed
// out.
type Allocations struct {
	Node    string `json:"node"`
	PodCIDR string `json:"podCIDR,omitempty"`
	// PodCIDRIPv6 is the node's IPv6 block when it is dual-stack.
	PodCIDRIPv6 string            `json:"podCIDRIPv6,omitempty"`
	Ready       bool              `json:"ready"`
	Allocations []AllocationEntry `json:"allocations"`
}

// AllocationEntry is one allocation as the agent persisted it.
type AllocationEntry struct {
	IP string `json:"ip"`
	// IPv6 is the allocation's IPv6 address on a dual-stack node.
	IPv6        string    `json:"ipv6,omitempty"`
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

// Client is the agent's client: sockrpc's, with the CNI calls typed.
type Client struct {
	*sockrpc.Client
}

// NewClient returns a client for the agent's socket at path; each call
// takes at most timeout.
func NewClient(socket string, timeout time.Duration) *Client {
	return &Client{sockrpc.NewClient(socket, timeout)}
}

// Allocate asks for an address.
func (c *Client) Allocate(ctx context.Context, r AllocateRequest) (*AllocateResponse, error) {
	var out AllocateResponse
	return &out, c.Call(ctx, OpAllocate, r, &out)
}

// Release frees an attachment's address; unknown attachments are not an error.
func (c *Client) Release(ctx context.Context, a Attachment) (*AllocationInfo, error) {
	var out AllocationInfo
	return &out, c.Call(ctx, OpRelease, a, &out)
}

// Get returns the attachment's allocation (Found false: none).
func (c *Client) Get(ctx context.Context, a Attachment) (*AllocationInfo, error) {
	var out AllocationInfo
	return &out, c.Call(ctx, OpGet, a, &out)
}

// GC releases every attachment not in valid.
func (c *Client) GC(ctx context.Context, valid []Attachment) (*GCResponse, error) {
	var out GCResponse
	return &out, c.Call(ctx, OpGC, GCRequest{Valid: valid}, &out)
}

// Status asks whether the agent can serve ADD.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	var out Status
	return &out, c.Call(ctx, OpStatus, nil, &out)
}
