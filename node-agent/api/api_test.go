package api

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aliasip/aliasip/internal/sockrpc"
)

func serve(t *testing.T, h sockrpc.Handler) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "s.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &sockrpc.Server{Handler: h, ReadTimeout: time.Second, WriteTimeout: time.Second}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(context.Background(), ln) }()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	return sock
}

// Every call reaches the handler with its op and body, and results and
// errors come back as the client's types, over a sockrpc.Server.
func TestRoundTrip(t *testing.T) {
	sock := serve(t, func(ctx context.Context, op sockrpc.Op, body json.RawMessage) (any, error) {
		switch op {
		case OpAllocate:
			var r AllocateRequest
			if err := json.Unmarshal(body, &r); err != nil {
				return nil, err
			}
			if r.Pod == "full" {
				return nil, &sockrpc.Error{Code: CodeExhausted, Message: "no free address in 10.0.0.0/30"}
			}
			return AllocateResponse{IP: "10.0.0.2", PodCIDR: "10.0.0.0/24", MTU: 1460, IPAMMicros: 7}, nil
		case OpRelease:
			return nil, errors.New("disk full")
		case OpStatus:
			return Status{Ready: true, PodCIDR: "10.0.0.0/24"}, nil
		}
		return nil, &sockrpc.Error{Code: sockrpc.CodeInvalid, Message: "unknown"}
	})
	c := NewClient(sock, 5*time.Second)
	ctx := context.Background()

	got, err := c.Allocate(ctx, AllocateRequest{Attachment: Attachment{ContainerID: "c1", IfName: "eth0"}, Pod: "p"})
	if err != nil || *got != (AllocateResponse{IP: "10.0.0.2", PodCIDR: "10.0.0.0/24", MTU: 1460, IPAMMicros: 7}) {
		t.Errorf("Allocate = %+v, %v", got, err)
	}
	_, err = c.Allocate(ctx, AllocateRequest{Pod: "full"})
	var ae *sockrpc.Error
	if !errors.As(err, &ae) || ae.Code != CodeExhausted || !strings.Contains(ae.Message, "10.0.0.0/30") {
		t.Errorf("exhausted: %v", err)
	}
	_, err = c.Release(ctx, Attachment{ContainerID: "c1"})
	if !errors.As(err, &ae) || ae.Code != sockrpc.CodeInternal || ae.Message != "disk full" {
		t.Errorf("a plain handler error: %v, want sockrpc.CodeInternal \"disk full\"", err)
	}
	if st, err := c.Status(ctx); err != nil || !st.Ready || st.PodCIDR != "10.0.0.0/24" {
		t.Errorf("Status = %+v, %v", st, err)
	}
	if errors.Is(err, sockrpc.ErrUnreachable) {
		t.Error("an answered call is not sockrpc.ErrUnreachable")
	}
}
