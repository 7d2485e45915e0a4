// Command pause is the pod sandbox ("infra") container of the local
// real-node cluster (make cluster): it holds the pod's namespaces open,
// reaps zombies (it is PID 1 of a pod that shares its PID namespace) and
// exits on SIGINT/SIGTERM, like kubernetes' build/pause/linux/pause.c.
// It is built here because no image can be pulled on the machines this
// project is tested on.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range sigs {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var ws syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
