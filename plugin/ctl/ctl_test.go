package ctl

import (
	"errors"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
)

// A user who may not connect is told so, and how to get access; a daemon
// that is not there is a different error.
func TestDialErrors(t *testing.T) {
	perm := dialError("/run/libvirt-ft/ctl.sock", &net.OpError{Op: "dial", Net: "unix", Err: os.NewSyscallError("connect", syscall.EACCES)})
	if !errors.Is(perm, ErrPermission) || errors.Is(perm, ErrDaemonUnreachable) || !strings.Contains(perm.Error(), "control-group") {
		t.Fatalf("EACCES: %v", perm)
	}
	gone := dialError("/run/libvirt-ft/ctl.sock", &net.OpError{Op: "dial", Net: "unix", Err: os.NewSyscallError("connect", syscall.ENOENT)})
	if !errors.Is(gone, ErrDaemonUnreachable) || errors.Is(gone, ErrPermission) {
		t.Fatalf("ENOENT: %v", gone)
	}
}
