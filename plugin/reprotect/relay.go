package reprotect

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
)

// halfCloser is a connection whose write side closes alone (TCP, unix,
// TLS, logchan.Conn.Detach).
type halfCloser interface {
	CloseWrite() error
}

// Pipe copies bytes both ways between a and b until both directions have
// ended. When one side's reads end cleanly (EOF), the other side's write
// side is closed (CloseWrite, else Close), so a stream that ends with a
// half-close (QEMU's migration: the source stops writing and waits for the
// destination's end) finishes as it would on one socket; an error in
// either direction closes both connections. Both are closed on return.
// Returns the bytes copied from a to b and from b to a, and the first error
// other than a clean end.
func Pipe(a, b net.Conn) (aToB, bToA int64, err error) {
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	fail := func(e error) {
		once.Do(func() { first = e })
		a.Close()
		b.Close()
	}
	copyHalf := func(dst, src net.Conn, n *int64) {
		defer wg.Done()
		c, e := io.Copy(dst, src)
		*n = c
		if e != nil && !errors.Is(e, net.ErrClosed) {
			fail(e)
			return
		}
		if hc, ok := dst.(halfCloser); ok {
			if e := hc.CloseWrite(); e != nil && !errors.Is(e, net.ErrClosed) {
				fail(e)
			}
			return
		}
		dst.Close()
	}
	wg.Add(2)
	go copyHalf(b, a, &aToB)
	go copyHalf(a, b, &bToA)
	wg.Wait()
	a.Close()
	b.Close()
	return aToB, bToA, first
}

// Listener is the primary host's end of one kind of re-protection stream
// (docs/protocol.md §11): QEMU connects to a unix socket at Path (its
// migration URI, or its NBD client's server path), and each connection it
// makes is piped (Pipe) to a new connection from Dial, which reaches the
// new backup's QEMU through the peer daemon. At most Max connections are
// served in all (0: 1); more are closed at once, as are connections after
// the context ends.
type Listener struct {
	// Path is the unix socket's path; it must not exist.
	Path string
	// Dial opens a stream to the peer (its handshake done).
	Dial func(ctx context.Context) (net.Conn, error)
	// Max bounds the connections served (0: 1).
	Max int
	// Bytes counts the bytes of the streams that have ended, both ways
	// (safe to read at any time).
	Bytes atomic.Int64
	// UID and GID own the socket (mode 0600): QEMU's user under libvirt,
	// so that it may connect. Both 0 leaves the daemon's own.
	UID, GID int
	// Admit, when set, checks each connection before it is served (and
	// counted against Max): an error closes it at once and counts it in
	// Refused. libvirt-ftd admits only the domain's own QEMU (every QEMU
	// on the host runs as the same user).
	Admit   func(c net.Conn) error
	Refused atomic.Int64

	ln net.Listener
}

// Listen creates the socket, mode 0600 and owned by UID:GID. Serve calls
// it when it was not called.
func (l *Listener) Listen() error {
	ln, err := net.Listen("unix", l.Path)
	if err != nil {
		return fmt.Errorf("reprotect: stream socket: %w", err)
	}
	uid, gid := l.UID, l.GID
	if uid == 0 && gid == 0 {
		uid, gid = -1, -1
	}
	err = os.Chmod(l.Path, 0o600)
	if err == nil {
		err = os.Lchown(l.Path, uid, gid)
	}
	if err != nil {
		ln.Close()
		return fmt.Errorf("reprotect: stream socket: %w", err)
	}
	l.ln = ln
	return nil
}

// Serve pipes connections until ctx ends (returning nil) or the listener
// fails; the socket is removed on return, and the streams still open are
// closed. Errors of single streams end them only.
func (l *Listener) Serve(ctx context.Context) error {
	if l.ln == nil {
		if err := l.Listen(); err != nil {
			return err
		}
	}
	ln := l.ln
	max := l.Max
	if max <= 0 {
		max = 1
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	open := map[net.Conn]struct{}{}
	stop := context.AfterFunc(ctx, func() {
		ln.Close()
		mu.Lock()
		for c := range open {
			c.Close()
		}
		mu.Unlock()
	})
	defer stop()
	served := 0
	var serveErr error
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() == nil {
				serveErr = fmt.Errorf("reprotect: stream socket: %w", err)
			}
			break
		}
		if l.Admit != nil {
			if err := l.Admit(c); err != nil {
				l.Refused.Add(1)
				c.Close()
				continue
			}
		}
		if served >= max {
			c.Close()
			continue
		}
		served++
		wg.Add(1)
		go func() {
			defer wg.Done()
			peer, err := l.Dial(ctx)
			if err != nil {
				c.Close()
				return
			}
			mu.Lock()
			if ctx.Err() != nil {
				mu.Unlock()
				c.Close()
				peer.Close()
				return
			}
			open[c], open[peer] = struct{}{}, struct{}{}
			mu.Unlock()
			ab, ba, _ := Pipe(c, peer)
			l.Bytes.Add(ab + ba)
			mu.Lock()
			delete(open, c)
			delete(open, peer)
			mu.Unlock()
		}()
	}
	ln.Close() // unlinks the socket (net.UnixListener)
	mu.Lock()
	for c := range open {
		c.Close()
	}
	mu.Unlock()
	wg.Wait()
	return serveErr
}
