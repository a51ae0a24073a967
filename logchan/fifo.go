//go:build linux

package logchan

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// CreateFIFO makes a named pipe at path with permissions mode (the umask
// does not apply) owned by uid:gid, so that a QEMU running as another user
// (libvirt-qemu under libvirt) can open it. A stale regular file or FIFO at
// path is replaced (a process that still has the old one open keeps it);
// anything else there is an error. Missing parent directories are created
// with mode 0750 and given to uid:gid too; existing ones are left as they
// are, so the caller must make sure QEMU can traverse them. A uid or gid of
// -1 leaves that id unchanged (the creator's).
func CreateFIFO(path string, uid, gid int, mode os.FileMode) error {
	if err := mkdirAllOwned(filepath.Dir(path), uid, gid); err != nil {
		return err
	}
	fi, err := os.Lstat(path)
	switch {
	case err == nil:
		if !fi.Mode().IsRegular() && fi.Mode().Type() != os.ModeNamedPipe {
			return fmt.Errorf("logchan: %s exists and is a %v, not a FIFO", path, fi.Mode().Type())
		}
		if err := os.Remove(path); err != nil {
			return fmt.Errorf("logchan: replacing %s: %w", path, err)
		}
	case !errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("logchan: %w", err)
	}
	if err := unix.Mkfifo(path, uint32(mode.Perm())); err != nil {
		return fmt.Errorf("logchan: mkfifo %s: %w", path, err)
	}
	if err := os.Chmod(path, mode.Perm()); err != nil {
		return fmt.Errorf("logchan: %w", err)
	}
	if uid != -1 || gid != -1 {
		if err := os.Lchown(path, uid, gid); err != nil {
			return fmt.Errorf("logchan: %w", err)
		}
	}
	return nil
}

// MkdirAllOwned creates dir and its missing parents with mode 0750, owned
// by uid:gid (uid, gid -1: unchanged); an existing directory is left as it
// is. Errors: dir exists and is not a directory, or cannot be made.
func MkdirAllOwned(dir string, uid, gid int) error { return mkdirAllOwned(dir, uid, gid) }

// mkdirAllOwned creates dir and its missing parents with mode 0750, owned
// by uid:gid.
func mkdirAllOwned(dir string, uid, gid int) error {
	fi, err := os.Stat(dir)
	if err == nil {
		if !fi.IsDir() {
			return fmt.Errorf("logchan: %s is not a directory", dir)
		}
		return nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("logchan: %w", err)
	}
	if parent := filepath.Dir(dir); parent != dir {
		if err := mkdirAllOwned(parent, uid, gid); err != nil {
			return err
		}
	}
	if err := os.Mkdir(dir, 0o750); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("logchan: %w", err)
	}
	if err := os.Chmod(dir, 0o750); err != nil {
		return fmt.Errorf("logchan: %w", err)
	}
	if uid != -1 || gid != -1 {
		if err := os.Lchown(dir, uid, gid); err != nil {
			return fmt.Errorf("logchan: %w", err)
		}
	}
	return nil
}

// openFIFO opens path with flags, refusing anything but a FIFO.
func openFIFO(path string, flags int) (int, error) {
	fd, err := unix.Open(path, flags|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return -1, fmt.Errorf("logchan: open %s: %w", path, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("logchan: stat %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFIFO {
		unix.Close(fd)
		return -1, fmt.Errorf("logchan: %s is not a FIFO", path)
	}
	return fd, nil
}

// OpenRecordFIFO opens FIFO A, the one a recording QEMU writes its log
// into, for reading, in a way that makes QEMU's later open for writing not
// block: it opens with O_RDONLY|O_NONBLOCK (which never waits for a writer)
// and then clears O_NONBLOCK, so that reads block while a writer is
// connected and the pipe is empty.
//
// Until QEMU has opened the FIFO, a read on this file returns 0 bytes
// (io.EOF from *os.File) at once: Linux reports end-of-file on a FIFO that
// has no writer, whether or not one ever connected. Holding a writer of our
// own would hide that, but also QEMU's exit, so use RecordReader instead,
// which tells the two apart with poll(2): POLLHUP is reported only once a
// writer that connected after our open has closed (checked on Linux 6.x:
// no writer yet: revents 0, read 0 bytes; writer connected, pipe empty:
// read EAGAIN; writer closed: POLLHUP).
func OpenRecordFIFO(path string) (*os.File, error) {
	fd, err := openFIFO(path, unix.O_RDONLY)
	if err != nil {
		return nil, err
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("logchan: %s: %w", path, err)
	}
	return os.NewFile(uintptr(fd), path), nil
}

// RecordReader reads the log a recording QEMU writes into FIFO A. Opening
// it never blocks and lets QEMU's open for writing proceed. Read blocks
// until QEMU has connected and written, and returns io.EOF only once QEMU,
// having connected, has closed its end (exited): never before QEMU starts.
// Read may be called from one goroutine at a time; Close and the deadline
// methods may be called concurrently with it and unblock it.
type RecordReader struct {
	f         *os.File
	rc        syscall.RawConn
	connected atomic.Bool
	eof       bool

	// mu makes a read(2) and the count of bytes read one step for
	// Produced.
	mu   sync.Mutex
	read uint64
}

// OpenRecordReader opens FIFO A for reading (see RecordReader). The file
// stays in non-blocking mode and waits in Go's poller, so that Close and
// SetReadDeadline work.
func OpenRecordReader(path string) (*RecordReader, error) {
	fd, err := openFIFO(path, unix.O_RDONLY)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), path) // non-blocking: uses the poller
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("logchan: %s: %w", path, err)
	}
	return &RecordReader{f: f, rc: rc}, nil
}

// AdoptRecordReader makes a RecordReader of f, FIFO A's read end handed
// over by a process before a planned restart (systemd's file descriptor
// store) whose reader had read read bytes; QEMU is connected. f is put in
// non-blocking mode.
func AdoptRecordReader(f *os.File, read uint64) (*RecordReader, error) {
	nf, err := pollable(f)
	if err != nil {
		return nil, err
	}
	rc, err := nf.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("logchan: %s: %w", f.Name(), err)
	}
	r := &RecordReader{f: nf, rc: rc, read: read}
	r.connected.Store(true)
	return r, nil
}

// File returns the FIFO's file (for a handover: systemd's file
// descriptor store).
func (r *RecordReader) File() *os.File { return r.f }

// Read returns the number of bytes read so far.
func (r *RecordReader) ReadBytes() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.read
}

// Connected reports whether a writer (QEMU) has been seen on the FIFO.
func (r *RecordReader) Connected() bool { return r.connected.Load() }

// Read reads log bytes (not necessarily whole events; feed them to a
// stream Decoder). It blocks while QEMU has not connected yet and while
// the pipe is empty.
func (r *RecordReader) Read(p []byte) (int, error) {
	if r.eof {
		return 0, io.EOF
	}
	if len(p) == 0 {
		return 0, nil
	}
	var n int
	var rerr error
	err := r.rc.Read(func(fd uintptr) bool {
		r.mu.Lock()
		for {
			n, rerr = unix.Read(int(fd), p)
			if rerr != unix.EINTR {
				break
			}
		}
		if n > 0 {
			r.read += uint64(n)
		}
		r.mu.Unlock()
		switch {
		case rerr == unix.EAGAIN:
			// Only a FIFO with a writer says "try again".
			r.connected.Store(true)
			return false
		case rerr != nil:
			return true
		case n > 0:
			r.connected.Store(true)
			return true
		}
		// 0 bytes: no writer at the moment. Either QEMU has not opened
		// the FIFO yet (wait), or it has and has closed it (EOF).
		if r.connected.Load() || writerHungUp(int(fd)) {
			r.connected.Store(true)
			rerr = io.EOF
			return true
		}
		return false
	})
	if err != nil {
		return 0, fmt.Errorf("logchan: reading %s: %w", r.f.Name(), err)
	}
	if rerr == io.EOF {
		r.eof = true
		return 0, io.EOF
	}
	if rerr != nil {
		return 0, fmt.Errorf("logchan: reading %s: %w", r.f.Name(), rerr)
	}
	return n, nil
}

// Produced returns the number of log bytes QEMU had written into FIFO A
// when it was called: the bytes read so far plus those still in the pipe
// (FIONREAD). Anything QEMU wrote before the call is counted; this is the
// log position an output gate tags a frame with once the frame was received
// (bytes, in the stream Decoder's offsets: FIFO A has no header). QEMU's
// own stdio buffer (up to 4 KiB, docs/replay.md §4, §7) is not counted: a
// QEMU that does not flush its log before a frame leaves needs that much
// slack on top.
func (r *RecordReader) Produced() (uint64, error) {
	var unread int
	var ierr error
	r.mu.Lock()
	defer r.mu.Unlock()
	err := r.rc.Control(func(fd uintptr) {
		unread, ierr = unix.IoctlGetInt(int(fd), unix.TIOCINQ) // FIONREAD
	})
	if err == nil {
		err = ierr
	}
	if err != nil {
		return r.read, fmt.Errorf("logchan: FIONREAD on %s: %w", r.f.Name(), err)
	}
	return r.read + uint64(unread), nil
}

// writerHungUp reports whether a writer has connected to the FIFO and
// closed it since fd was opened.
func writerHungUp(fd int) bool {
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		_, err := unix.Poll(pfd, 0)
		if err != unix.EINTR {
			return err == nil && pfd[0].Revents&unix.POLLHUP != 0
		}
	}
}

// SetReadDeadline sets a deadline for Read; a Read that times out returns
// an error wrapping os.ErrDeadlineExceeded.
func (r *RecordReader) SetReadDeadline(t time.Time) error { return r.f.SetReadDeadline(t) }

// SetPipeSize asks the kernel for a pipe buffer of size bytes (F_SETPIPE_SZ)
// and returns the size granted. A bigger FIFO A lets the primary run
// further ahead of the reader before its vCPU stalls.
func (r *RecordReader) SetPipeSize(size int) (int, error) { return setPipeSize(r.rc, size) }

// Close closes the FIFO. A recording QEMU gets an error on its next write
// ("replay write error") and records no more.
func (r *RecordReader) Close() error { return r.f.Close() }

func setPipeSize(rc syscall.RawConn, size int) (int, error) {
	return pipeFcntl(rc, unix.F_SETPIPE_SZ, size)
}

func pipeSize(rc syscall.RawConn) (int, error) { return pipeFcntl(rc, unix.F_GETPIPE_SZ, 0) }

// pipeFcntl runs fcntl(cmd, arg) on rc's descriptor: F_SETPIPE_SZ (the
// size asked, bytes) or F_GETPIPE_SZ; it returns the pipe's size (bytes).
func pipeFcntl(rc syscall.RawConn, cmd, arg int) (int, error) {
	var got int
	var serr error
	err := rc.Control(func(fd uintptr) {
		got, serr = unix.FcntlInt(fd, cmd, arg)
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		name := "F_GETPIPE_SZ"
		if cmd == unix.F_SETPIPE_SZ {
			name = fmt.Sprintf("F_SETPIPE_SZ %d", arg)
		}
		return 0, fmt.Errorf("logchan: %s: %w", name, err)
	}
	return got, nil
}

// pollable returns a non-blocking *os.File (one that waits in Go's poller,
// so deadlines work) for the descriptor of f, which it closes: f may be
// blocking, as the files of a systemd descriptor handover are.
func pollable(f *os.File) (*os.File, error) {
	raw, err := f.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("logchan: %s: %w", f.Name(), err)
	}
	nfd := -1
	var derr error
	_ = raw.Control(func(fd uintptr) { nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) })
	if derr != nil {
		return nil, fmt.Errorf("logchan: %s: dup: %w", f.Name(), derr)
	}
	f.Close()
	if err := unix.SetNonblock(nfd, true); err != nil {
		unix.Close(nfd)
		return nil, fmt.Errorf("logchan: %s: %w", f.Name(), err)
	}
	return os.NewFile(uintptr(nfd), f.Name()), nil
}
