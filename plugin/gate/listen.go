package gate

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
)

// Listen creates a unix stream socket listener at path for one of QEMU's
// filter-redirector chardevs (`-chardev socket,path=...` in client mode
// connects to it). An existing socket file at path is taken as stale and
// removed first, whether or not a process still listens on it: the caller
// must own path. Anything else at path (a file, a directory) is an error
// and is left alone. The socket file is made mode 0660 and, unless both uid
// and gid are -1, chowned to uid:gid (-1 keeps the current owner or
// group), so that QEMU running as libvirt-qemu can connect. Closing the
// listener removes the socket file.
//
// Errors name path and the step that failed; on error nothing is left
// listening.
func Listen(path string, uid, gid int) (net.Listener, error) {
	fi, err := os.Lstat(path)
	switch {
	case err == nil:
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("gate: %s exists and is not a socket (%s): refusing to replace it", path, fi.Mode().Type())
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("gate: removing stale socket: %w", err)
		}
	case !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("gate: %w", err)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("gate: %w", err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		l.Close()
		return nil, fmt.Errorf("gate: %w", err)
	}
	if uid != -1 || gid != -1 {
		if err := os.Chown(path, uid, gid); err != nil {
			l.Close()
			return nil, fmt.Errorf("gate: %w", err)
		}
	}
	return l, nil
}
