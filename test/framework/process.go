package framework

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Pdeathsig fires when the *thread* that forked the child exits, and Go
// ends threads (for example ones a goroutine locked while switching network
// namespaces). So every child is started from one goroutine locked to a
// thread that lives as long as the test process.
var (
	spawnOnce sync.Once
	spawnCh   chan spawnReq
)

type spawnReq struct {
	cmd  *exec.Cmd
	done chan error
}

func startOnSpawner(cmd *exec.Cmd) error {
	spawnOnce.Do(func() {
		spawnCh = make(chan spawnReq)
		go func() {
			runtime.LockOSThread() // never unlocked: this thread stays
			for r := range spawnCh {
				r.done <- r.cmd.Start()
			}
		}()
	})
	done := make(chan error, 1)
	spawnCh <- spawnReq{cmd: cmd, done: done}
	return <-done
}

// Process is a child process whose output goes to a log file. It dies with
// the test process (Pdeathsig), so a failed test leaves no stray servers.
type Process struct {
	Cmd  *exec.Cmd
	Log  string
	done chan struct{}
	err  error
}

// StartProcess starts bin with args and extra environment, appending its
// stdout and stderr to logPath.
func StartProcess(logPath string, env []string, bin string, args ...string) (*Process, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := startOnSpawner(cmd); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	p := &Process{Cmd: cmd, Log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	return p, nil
}

// Exited reports whether the process has ended.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Kill sends SIGKILL and waits for the process to end.
func (p *Process) Kill() {
	p.Cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// Stop sends SIGTERM, waits up to 10 s, then kills.
func (p *Process) Stop() {
	if p.Exited() {
		return
	}
	p.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.Kill()
	}
}

// Wait waits for the process to end and returns its exit error.
func (p *Process) Wait() error {
	<-p.done
	return p.err
}

// WaitLog waits until the process's log holds line (a substring), the
// fact that it got that far; it fails at once if the process exits first.
func (p *Process) WaitLog(ctx context.Context, timeout time.Duration, line string) error {
	return Eventually(ctx, timeout, func() (bool, error) {
		b, err := os.ReadFile(p.Log)
		if err != nil {
			return false, err
		}
		if strings.Contains(string(b), line) {
			return true, nil
		}
		if p.Exited() {
			return false, Stop(fmt.Errorf("exited before logging %q: %v", line, p.Wait()))
		}
		return false, nil
	})
}
