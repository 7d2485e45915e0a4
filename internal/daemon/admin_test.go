package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aliasip/aliasip/internal/sockrpc"
)

func TestAdminCallsTheSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "a.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var gotOp sockrpc.Op
	var gotBody string
	srv := &sockrpc.Server{Handler: func(ctx context.Context, op sockrpc.Op, body json.RawMessage) (any, error) {
		gotOp, gotBody = op, string(body)
		if op == "fail" {
			return nil, &sockrpc.Error{Code: sockrpc.CodeInvalid, Message: "refused on purpose"}
		}
		return map[string]int{"n": 7}, nil
	}}
	go srv.Serve(context.Background(), ln)
	t.Cleanup(func() { srv.Close() })

	for _, tc := range []struct {
		name     string
		args     []string
		code     int
		out, err string
	}{
		{"call with a body", []string{"--socket", sock, "list", `{"a":1}`}, ExitOK, `{"n":7}`, ""},
		{"call without a body", []string{"--socket", sock, "cloud"}, ExitOK, `{"n":7}`, ""},
		{"refused call", []string{"--socket", sock, "fail"}, ExitFailed, "", "refused on purpose"},
		{"no call", []string{"--socket", sock}, ExitUsage, "", "usage"},
		{"body not JSON", []string{"--socket", sock, "list", "{oops"}, ExitUsage, "", "not JSON"},
		{"no socket", []string{"list"}, ExitUsage, "", "usage"},
		{"unknown flag", []string{"--sock", sock, "list"}, ExitUsage, "", "unknown flag"},
		{"nobody listening", []string{"--socket", filepath.Join(t.TempDir(), "none.sock"), "list"}, ExitFailed, "", "unreachable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			gotOp, gotBody = "", ""
			var out, errb bytes.Buffer
			code := admin("aliasip-agent", tc.args, "", &out, &errb)
			if code != tc.code || strings.TrimSpace(out.String()) != tc.out || !strings.Contains(errb.String(), tc.err) {
				t.Fatalf("exit %d, stdout %q, stderr %q; want %d, %q, %q", code, out.String(), errb.String(), tc.code, tc.out, tc.err)
			}
			if tc.code == ExitUsage && gotOp != "" {
				t.Errorf("a usage error still called %q", gotOp)
			}
		})
	}
	admin("aliasip-agent", []string{"--socket", sock, "release-leak", `{"ip":"10.0.0.1"}`}, "", &bytes.Buffer{}, &bytes.Buffer{})
	if gotOp != "release-leak" || gotBody != `{"ip":"10.0.0.1"}` {
		t.Errorf("server got %q %q", gotOp, gotBody)
	}
}
