// The pod sandbox ("pause") program of the testbed's real node: the image containerd's CRI plugin
// starts first in every pod, holding its namespaces. The usual one cannot be pulled here, so the
// testbed builds this one (like the kubelet's own pause.c: wait for a signal, reap children when
// it is PID 1) and loads it from an OCI archive.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "-v" {
		os.Stdout.WriteString("pause (sluice testbed)\n")
		return
	}
	signals := make(chan os.Signal, 4)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		// Reap every child that has exited (orphans re-parented to us when we are PID 1).
		for {
			var status syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
