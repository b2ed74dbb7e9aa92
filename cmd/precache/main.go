// Command precache keeps a node's Calico images in containerd — pulled, verified, unpacked
// and pinned — so a node whose DNS depends on the cluster can bring its network back.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() { os.Exit(run()) }

func run() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cmd := newRootCommand()
	err := cmd.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.msg != "" {
			fmt.Fprintln(os.Stderr, "precache:", ee.msg)
		}
		return ee.code
	}
	fmt.Fprintln(os.Stderr, "precache:", err)
	var ue *usageError
	if errors.As(err, &ue) {
		return 2
	}
	return 1
}

// exitError ends the process with code after printing msg (if any): for commands whose
// result, not a failure, decides the exit code (status with images not right).
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

// usageError is a bad flag or argument: exit code 2, like cobra's own flag errors.
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }
