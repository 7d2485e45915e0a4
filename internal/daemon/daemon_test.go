package daemon

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

type opts struct {
	port    int
	invalid bool
}

func (o *opts) AddFlags(fs *pflag.FlagSet) { fs.IntVar(&o.port, "port", 1, "A port.") }
func (o *opts) Validate() error {
	if o.port <= 0 {
		return errors.New("--port must be positive")
	}
	return nil
}

func TestMain_(t *testing.T) {
	boom := errors.New("boom")
	for _, tc := range []struct {
		name     string
		args     []string
		runErr   error
		code     int
		ran      bool
		stdout   string
		stderr   string
		wantPort int
	}{
		{name: "ok", args: []string{"--port=7", "-v=3"}, code: ExitOK, ran: true, wantPort: 7},
		{name: "help", args: []string{"--help"}, code: ExitOK, stdout: "Usage of d:"},
		{name: "unknown flag", args: []string{"--nope"}, code: ExitUsage, stderr: "d: unknown flag: --nope\n"},
		{name: "bad value", args: []string{"--port=x"}, code: ExitUsage, stderr: `invalid argument "x"`},
		{name: "invalid", args: []string{"--port=0"}, code: ExitUsage, stderr: "d: --port must be positive\n"},
		{name: "stray argument", args: []string{"extra"}, code: ExitUsage, stderr: `unexpected arguments ["extra"]`},
		{name: "bad verbosity", args: []string{"-v=x"}, code: ExitUsage, stderr: "d: invalid argument"},
		{name: "run fails", args: nil, runErr: boom, code: ExitFailed, ran: true, wantPort: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var o opts
			var stdout, stderr bytes.Buffer
			ran := false
			code := main("d", "v0", tc.args, &o, func(ctx context.Context) error {
				ran = true
				if ctx.Err() != nil {
					t.Error("run got a cancelled context")
				}
				return tc.runErr
			}, &stdout, &stderr, false)
			if code != tc.code {
				t.Errorf("exit %d, want %d (stderr %q)", code, tc.code, stderr.String())
			}
			if ran != tc.ran {
				t.Errorf("run called = %v, want %v", ran, tc.ran)
			}
			if tc.ran && o.port != tc.wantPort {
				t.Errorf("port %d, want %d", o.port, tc.wantPort)
			}
			if !strings.Contains(stdout.String(), tc.stdout) {
				t.Errorf("stdout %q, want it to contain %q", stdout.String(), tc.stdout)
			}
			if !strings.Contains(stderr.String(), tc.stderr) || (tc.stderr == "" && stderr.Len() > 0) {
				t.Errorf("stderr %q, want %q", stderr.String(), tc.stderr)
			}
			if tc.code == ExitUsage && strings.Count(stderr.String(), "\n") != 1 {
				t.Errorf("usage error is not one line: %q", stderr.String())
			}
		})
	}
}
