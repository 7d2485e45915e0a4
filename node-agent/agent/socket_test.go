package agent

import (
	"bufio"
	"bytes"
	"context"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The unix socket server drops a client that stalls in its headers, and
// refuses a body over the limit without reading it all.
func TestSocketServerLimits(t *testing.T) {
	old := socketHeaderTimeout
	socketHeaderTimeout = 200 * time.Millisecond
	t.Cleanup(func() { socketHeaderTimeout = old })
	sock := filepath.Join(t.TempDir(), "s.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := newSocketServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var v map[string]any
		if !decode(w, r, &v) {
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
	go srv.Serve(ln)
	defer srv.Close()

	// A stalled client: half a request line, then nothing.
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("POST /v1/allocate HTTP/1.1\r\nHost: x\r\n"))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	start := time.Now()
	if _, err := bufio.NewReader(c).ReadString('\n'); err == nil && time.Since(start) > 4*time.Second {
		t.Error("stalled client kept open")
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("stalled client dropped after %v, want about the header timeout", d)
	}

	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	big := `{"k":"` + strings.Repeat("x", maxRequestBody) + `"}`
	resp, err := hc.Post("http://agent/v1/allocate", "application/json", bytes.NewBufferString(big))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("a body over %d bytes: %d, want 400", maxRequestBody, resp.StatusCode)
	}
	resp, err = hc.Post("http://agent/v1/allocate", "application/json", bytes.NewBufferString(`{"k":"v"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("a small body: %d", resp.StatusCode)
	}
}
