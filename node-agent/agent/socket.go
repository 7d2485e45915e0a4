package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	"github.com/aliasip/aliasip/internal/sockrpc"
	"github.com/aliasip/aliasip/node-agent/api"
	"github.com/aliasip/aliasip/node-agent/ipam"
)

// serveSocket listens on the root-only unix socket.
func (a *Agent) serveSocket(ctx context.Context) (*sockrpc.Server, error) {
	if err := os.MkdirAll(filepath.Dir(a.cfg.Socket), 0o700); err != nil {
		return nil, err
	}
	os.Remove(a.cfg.Socket) // a previous agent's socket
	ln, err := net.Listen("unix", a.cfg.Socket)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", a.cfg.Socket, err)
	}
	if err := os.Chmod(a.cfg.Socket, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	srv := newSocketServer(a.handler(ctx))
	srv.OnPanic = func(err error) { klog.FromContext(ctx).Error(err, "CNI call panicked; answered as an internal error") }
	go srv.Serve(ctx, ln)
	return srv, nil
}

// Socket server limits. The socket is root-only, but a stuck or broken
// plugin process must not hold a connection (and a goroutine) forever; the
// request size is bounded by sockrpc.MaxMessage.
var (
	socketReadTimeout  = 10 * time.Second
	socketWriteTimeout = 30 * time.Second
)

func newSocketServer(h sockrpc.Handler) *sockrpc.Server {
	return &sockrpc.Server{Handler: h, ReadTimeout: socketReadTimeout, WriteTimeout: socketWriteTimeout}
}

// callError is a failed call's answer and its metric label.
type callError struct {
	err    *sockrpc.Error
	result string
}

func fail(result, code, msg string) *callError {
	return &callError{err: &sockrpc.Error{Code: code, Message: msg}, result: result}
}

func (e *callError) Error() string { return e.err.Error() }
func (e *callError) Unwrap() error { return e.err }

func decode(body json.RawMessage, v any) error {
	if err := json.Unmarshal(body, v); err != nil {
		return fail("invalid", sockrpc.CodeInvalid, "bad request: "+err.Error())
	}
	return nil
}

// verbs label the metrics by the CNI verb each call serves.
var verbs = map[sockrpc.Op]string{api.OpAllocate: "ADD", api.OpRelease: "DEL", api.OpGet: "CHECK", api.OpGC: "GC", api.OpStatus: "STATUS"}

func (a *Agent) handler(ctx context.Context) sockrpc.Handler {
	return func(ctx context.Context, op sockrpc.Op, body json.RawMessage) (any, error) {
		if isAdmin(op) {
			return a.admin(ctx, op, body)
		}
		verb, ok := verbs[op]
		if !ok {
			return nil, &sockrpc.Error{Code: sockrpc.CodeInvalid, Message: fmt.Sprintf("unknown call %q", op)}
		}
		start := time.Now()
		out, err := a.call(ctx, op, body)
		result := "ok"
		var ce *callError
		switch {
		case errors.As(err, &ce):
			result = ce.result
		case err != nil:
			result = "error"
		}
		a.metrics.CNIRequests.WithLabelValues(verb, result).Inc()
		a.metrics.CNILatency.WithLabelValues(verb).Observe(time.Since(start).Seconds())
		return out, err
	}
}

func (a *Agent) call(ctx context.Context, op sockrpc.Op, body json.RawMessage) (any, error) {
	logger := klog.FromContext(ctx)
	switch op {
	case api.OpAllocate:
		var req api.AllocateRequest
		if err := decode(body, &req); err != nil {
			return nil, err
		}
		st := a.Status()
		if !st.Ready {
			return nil, fail("not_ready", sockrpc.CodeNotReady, st.Reason)
		}
		a.mu.Lock()
		store, mtu, podCIDR := a.store, a.mtu, a.podCIDR
		a.mu.Unlock()
		if holder, held, err := a.vethHolder(store, req); err != nil {
			return nil, fail("error", sockrpc.CodeInternal, err.Error())
		} else if held {
			logger.Info("ADD refused: another pod of this name still runs here", "pod", req.Namespace+"/"+req.Pod, "uid", req.PodUID,
				"hostVeth", req.HostVeth, "holderUID", holder.PodUID, "holderContainer", holder.ContainerID)
			return nil, fail("veth_held", api.CodeHostVethHeld, fmt.Sprintf("host veth %s is held by the running sandbox %s of pod %s/%s with UID %s (this ADD is for UID %s); retry once it is torn down",
				req.HostVeth, holder.ContainerID, holder.Namespace, holder.Pod, holder.PodUID, req.PodUID))
		}
		ipamStart := time.Now()
		al, err := a.allocateOrWait(ctx, store, ipam.Request{Key: ipam.Key{ContainerID: req.ContainerID, IfName: req.IfName},
			Namespace: req.Namespace, Pod: req.Pod, PodUID: req.PodUID, HostVeth: req.HostVeth})
		switch {
		case errors.Is(err, ipam.ErrExhausted):
			logger.Info("Pod IP range exhausted", "pod", req.Namespace+"/"+req.Pod)
			a.event(corev1.EventTypeWarning, EventPodIPsExhausted, "No free address in %v for pod %s/%s", podCIDR, req.Namespace, req.Pod)
			return nil, fail("exhausted", api.CodeExhausted, err.Error())
		case err != nil:
			return nil, fail("error", sockrpc.CodeInvalid, err.Error())
		}
		logger.V(2).Info("Allocated", "pod", req.Namespace+"/"+req.Pod, "container", req.ContainerID, "ip", al.IP, "ipv6", al.IPv6)
		return api.AllocateResponse{IP: al.IP.String(), IPv6: addrString(al.IPv6), PodCIDR: podCIDR.String(), MTU: mtu,
			IPAMMicros: time.Since(ipamStart).Microseconds()}, nil

	case api.OpRelease:
		var att api.Attachment
		store, err := a.decodeForStore(body, &att)
		if err != nil {
			return nil, err
		}
		al, found, err := store.Release(keyOf(att))
		if err != nil {
			return nil, err
		}
		a.signal(a.kick)
		a.signal(a.growthCh)
		return info(al, found), nil

	case api.OpGet:
		var att api.Attachment
		store, err := a.decodeForStore(body, &att)
		if err != nil {
			return nil, err
		}
		al, found := store.Get(keyOf(att))
		return info(al, found), nil

	case api.OpGC:
		var req api.GCRequest
		store, err := a.decodeForStore(body, &req)
		if err != nil {
			return nil, err
		}
		valid := map[ipam.Key]bool{}
		for _, v := range req.Valid {
			valid[ipam.Key{ContainerID: v.ContainerID, IfName: v.IfName}] = true
		}
		gone, err := store.Retain(func(al ipam.Allocation) bool { return valid[al.Key] })
		if err != nil {
			return nil, err
		}
		resp := api.GCResponse{Released: []api.AllocationInfo{}}
		for _, al := range gone {
			resp.Released = append(resp.Released, info(al, true))
			logger.Info("CNI GC released", "pod", al.Namespace+"/"+al.Pod, "container", al.ContainerID, "ip", al.IP, "ipv6", al.IPv6)
		}
		a.metrics.GCReleased.WithLabelValues("cni_gc").Add(float64(len(gone)))
		a.signal(a.kick)
		return resp, nil

	default: // api.OpStatus
		return a.Status(), nil
	}
}

// decodeForStore decodes a request that the IPAM store answers into v,
// then returns the store (openStore).
func (a *Agent) decodeForStore(body json.RawMessage, v any) (*ipam.Store, error) {
	if err := decode(body, v); err != nil {
		return nil, err
	}
	return a.openStore()
}

// keyOf is the IPAM key of an attachment.
func keyOf(att api.Attachment) ipam.Key {
	return ipam.Key{ContainerID: att.ContainerID, IfName: att.IfName}
}

// openStore returns the IPAM store, or "not ready" when it is not open yet
// (the agent is still waiting for its podCIDR).
func (a *Agent) openStore() (*ipam.Store, error) {
	store := a.storeOrNil()
	if store == nil {
		return nil, fail("not_ready", sockrpc.CodeNotReady, "IPAM not open yet")
	}
	return store, nil
}

func (a *Agent) storeOrNil() *ipam.Store {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.store
}

func info(al ipam.Allocation, found bool) api.AllocationInfo {
	if !found {
		return api.AllocationInfo{}
	}
	return api.AllocationInfo{Found: true, ContainerID: al.ContainerID, IP: al.IP.String(), IPv6: addrString(al.IPv6), HostVeth: al.HostVeth}
}

// addrString is ip as text, "" for the zero Addr (a single-stack
// allocation's IPv6, left out of the answer).
func addrString(ip netip.Addr) string {
	if !ip.IsValid() {
		return ""
	}
	return ip.String()
}
