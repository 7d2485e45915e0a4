package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	"github.com/aliasip/aliasip/node-agent/api"
	"github.com/aliasip/aliasip/node-agent/ipam"
)

// serveSocket listens on the root-only unix socket.
func (a *Agent) serveSocket(ctx context.Context) (*http.Server, error) {
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
	go srv.Serve(ln)
	return srv, nil
}

// Socket server limits. The socket is root-only, but a stuck or broken
// plugin process must not hold a connection (and a goroutine) forever, nor
// make the agent read an unbounded body.
var (
	socketHeaderTimeout = 5 * time.Second
	socketReadTimeout   = 10 * time.Second
	socketWriteTimeout  = 30 * time.Second
	socketIdleTimeout   = 30 * time.Second
)

const (
	maxRequestBody   = 1 << 20
	maxRequestHeader = 16 << 10
)

func newSocketServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			r.Body = http.MaxBytesReader(w, r.Body, maxRequestBody)
			h.ServeHTTP(w, r)
		}),
		ReadHeaderTimeout: socketHeaderTimeout,
		ReadTimeout:       socketReadTimeout,
		WriteTimeout:      socketWriteTimeout,
		IdleTimeout:       socketIdleTimeout,
		MaxHeaderBytes:    maxRequestHeader,
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

func writeErr(w http.ResponseWriter, code int, c, msg string) {
	writeJSON(w, code, api.ErrorBody{Code: c, Message: msg})
}

func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	if err := json.NewDecoder(r.Body).Decode(v); err != nil { // bounded by newSocketServer
		writeErr(w, http.StatusBadRequest, api.CodeInvalid, "bad request: "+err.Error())
		return false
	}
	return true
}

func (a *Agent) handler(ctx context.Context) http.Handler {
	logger := klog.FromContext(ctx)
	mux := http.NewServeMux()
	timed := func(verb string, h func(w http.ResponseWriter, r *http.Request) string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			start := time.Now()
			result := h(w, r)
			a.metrics.CNIRequests.WithLabelValues(verb, result).Inc()
			a.metrics.CNILatency.WithLabelValues(verb).Observe(time.Since(start).Seconds())
		}
	}
	mux.HandleFunc("POST /v1/allocate", timed("ADD", func(w http.ResponseWriter, r *http.Request) string {
		var req api.AllocateRequest
		if !decode(w, r, &req) {
			return "invalid"
		}
		st := a.Status()
		if !st.Ready {
			writeErr(w, http.StatusServiceUnavailable, api.CodeNotReady, st.Reason)
			return "not_ready"
		}
		a.mu.Lock()
		store, mtu, podCIDR := a.store, a.mtu, a.podCIDR
		a.mu.Unlock()
		al, err := store.Allocate(ipam.Request{Key: ipam.Key{ContainerID: req.ContainerID, IfName: req.IfName},
			Namespace: req.Namespace, Pod: req.Pod, PodUID: req.PodUID, HostVeth: req.HostVeth})
		switch {
		case errors.Is(err, ipam.ErrExhausted):
			logger.Info("Pod IP range exhausted", "pod", req.Namespace+"/"+req.Pod)
			a.event(corev1.EventTypeWarning, EventPodIPsExhausted, "No free address in %v for pod %s/%s", podCIDR, req.Namespace, req.Pod)
			writeErr(w, http.StatusConflict, api.CodeExhausted, err.Error())
			return "exhausted"
		case err != nil:
			writeErr(w, http.StatusBadRequest, api.CodeInvalid, err.Error())
			return "error"
		}
		logger.V(2).Info("Allocated", "pod", req.Namespace+"/"+req.Pod, "container", req.ContainerID, "ip", al.IP)
		writeJSON(w, http.StatusOK, api.AllocateResponse{IP: al.IP.String(), PodCIDR: podCIDR.String(), MTU: mtu})
		return "ok"
	}))
	mux.HandleFunc("POST /v1/release", timed("DEL", func(w http.ResponseWriter, r *http.Request) string {
		var att api.Attachment
		if !decode(w, r, &att) {
			return "invalid"
		}
		store, ok := a.openStore(w)
		if !ok {
			return "not_ready"
		}
		al, found, err := store.Release(ipam.Key{ContainerID: att.ContainerID, IfName: att.IfName})
		if err != nil {
			writeErr(w, http.StatusInternalServerError, api.CodeInternal, err.Error())
			return "error"
		}
		a.signal(a.kick)
		writeJSON(w, http.StatusOK, info(al, found))
		return "ok"
	}))
	mux.HandleFunc("POST /v1/get", timed("CHECK", func(w http.ResponseWriter, r *http.Request) string {
		var att api.Attachment
		if !decode(w, r, &att) {
			return "invalid"
		}
		store, ok := a.openStore(w)
		if !ok {
			return "not_ready"
		}
		al, found := store.Get(ipam.Key{ContainerID: att.ContainerID, IfName: att.IfName})
		writeJSON(w, http.StatusOK, info(al, found))
		return "ok"
	}))
	mux.HandleFunc("POST /v1/gc", timed("GC", func(w http.ResponseWriter, r *http.Request) string {
		var req api.GCRequest
		if !decode(w, r, &req) {
			return "invalid"
		}
		store, ok := a.openStore(w)
		if !ok {
			return "not_ready"
		}
		valid := map[ipam.Key]bool{}
		for _, v := range req.Valid {
			valid[ipam.Key{ContainerID: v.ContainerID, IfName: v.IfName}] = true
		}
		gone, err := store.Retain(func(al ipam.Allocation) bool { return valid[al.Key] })
		if err != nil {
			writeErr(w, http.StatusInternalServerError, api.CodeInternal, err.Error())
			return "error"
		}
		resp := api.GCResponse{Released: []api.AllocationInfo{}}
		for _, al := range gone {
			resp.Released = append(resp.Released, info(al, true))
			logger.Info("CNI GC released", "pod", al.Namespace+"/"+al.Pod, "container", al.ContainerID, "ip", al.IP)
		}
		a.metrics.GCReleased.WithLabelValues("cni_gc").Add(float64(len(gone)))
		a.signal(a.kick)
		writeJSON(w, http.StatusOK, resp)
		return "ok"
	}))
	mux.HandleFunc("GET /v1/status", timed("STATUS", func(w http.ResponseWriter, r *http.Request) string {
		writeJSON(w, http.StatusOK, a.Status())
		return "ok"
	}))
	return mux
}

// openStore returns the IPAM store, or answers "not ready" when it is not
// open yet (the agent is still waiting for its podCIDR).
func (a *Agent) openStore(w http.ResponseWriter) (*ipam.Store, bool) {
	store := a.storeOrNil()
	if store == nil {
		writeErr(w, http.StatusServiceUnavailable, api.CodeNotReady, "IPAM not open yet")
		return nil, false
	}
	return store, true
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
	return api.AllocationInfo{Found: true, ContainerID: al.ContainerID, IP: al.IP.String(), HostVeth: al.HostVeth}
}
