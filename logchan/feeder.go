//go:build linux

package logchan

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

var (
	// ErrFeederEnded is returned by Feeder.Write after WriteEnd or after
	// an END event was written.
	ErrFeederEnded = errors.New("logchan: feeder already wrote END")
	// ErrFeederBroken is returned by a Feeder after a write failed part
	// way: FIFO B may hold a partial event, so the backup cannot be fed
	// any more and must be re-seeded.
	ErrFeederBroken = errors.New("logchan: feeder broken by an earlier write error")
)

// Feeder writes a replay log into FIFO B, the FIFO a replaying QEMU reads.
// It opens the FIFO read-write, which never blocks (no reader needed) and
// keeps a writer on the pipe for as long as the Feeder is open, so that
// QEMU never reads EOF (in QEMU 7.2 a short read of the log makes replay
// exit). Its methods are safe for concurrent use; the counters can be
// read while a Write is blocked.
type Feeder struct {
	mu  sync.Mutex // serializes writes
	f   *os.File
	rc  syscall.RawConn
	err error // under mu

	// Counters are atomic so that they can be read while a Write blocks.
	off    atomic.Uint64
	instr  atomic.Uint64
	events atomic.Uint64
	ended  atomic.Bool

	// marksMu guards marks and floor (ExecutedAtLeast). Write updates the
	// counters and appends its mark together under it, after its write.
	marksMu sync.Mutex
	marks   []readMark // one per Write not yet behind QEMU's parse point, in offset order
	floor   uint64     // INSTRUCTION sum of the last mark found behind it
	// endByte: WriteEnd wrote its END, a byte in the pipe that Offset
	// does not count (an END inside Write's data is counted).
	endByte atomic.Bool
}

// readMark is a point in the stream: the INSTRUCTION sum of the events
// before stream offset end (bytes).
type readMark struct{ end, instr uint64 }

// maxReadMarks bounds Feeder.marks (16 bytes each): past it, the newest
// mark is moved forward instead of a new one appended, which only makes
// ExecutedAtLeast coarser, never wrong.
const maxReadMarks = 4096

// QEMUReadAhead is the most log a replaying QEMU holds read from FIFO B but
// not yet parsed (bytes): its stdio buffer. replay_configure opens the log
// with fopen (replay/replay.c, play mode sets no buffer of its own) and
// glibc's buffer is the file's st_blksize capped at BUFSIZ, 8192
// (libio/filedoalloc.c, _IO_file_doallocate, as in Debian 12's glibc
// 2.36; a pipe's st_blksize is 4096). A read of an event's data larger
// than the buffer goes straight into the event (libio/fileops.c,
// _IO_file_xsgetn) and is not read ahead. Another C library could buffer
// more: the backup checks each query-replay sample against the bound
// taken before it and stops using the bound if it ever ran ahead
// (plugin/backup.go, readBoundBroken).
const QEMUReadAhead = 8192

// NewFeeder opens the FIFO at path and writes the 4-byte big-endian version
// that a replaying QEMU checks first (replay_enable, replay/replay.c). No
// further header is written: QEMU's seek past the rest of the header fails
// on a pipe and it simply reads on. The version sits in the pipe until
// QEMU starts.
func NewFeeder(path string, version uint32) (*Feeder, error) {
	fd, err := openFIFO(path, unix.O_RDWR)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), path) // non-blocking: waits in the poller
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("logchan: %s: %w", path, err)
	}
	var v [4]byte
	binary.BigEndian.PutUint32(v[:], version)
	if _, err := f.Write(v[:]); err != nil {
		f.Close()
		return nil, fmt.Errorf("logchan: writing the log version to %s: %w", path, err)
	}
	return &Feeder{f: f, rc: rc}, nil
}

// AdoptFeeder makes a Feeder of f, FIFO B's write end handed over by a
// process before a planned restart, whose Feeder had written off bytes of
// instr instructions in events events (its version dword already
// written). f is put in non-blocking mode.
func AdoptFeeder(f *os.File, off, instr, events uint64) (*Feeder, error) {
	nf, err := pollable(f)
	if err != nil {
		return nil, err
	}
	rc, err := nf.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("logchan: %s: %w", f.Name(), err)
	}
	fd := &Feeder{f: nf, rc: rc}
	fd.off.Store(off)
	fd.instr.Store(instr)
	fd.events.Store(events)
	// The sum before off is known; before that, nothing (floor 0).
	fd.marks = append(fd.marks, readMark{end: off, instr: instr})
	return fd, nil
}

// File returns FIFO B's file (for a handover).
func (fd *Feeder) File() *os.File { return fd.f }

// Write writes data, which must be whole events (a Chunk.Data, or a Log
// frame's events): it is checked first and refused, with nothing written,
// if it ends inside an event or is corrupt. Write blocks while FIFO B is
// full (the backup replays slower than the primary records); if the
// backup's QEMU has died it blocks for good, since the Feeder itself keeps
// the pipe open: watch QEMU and Close the Feeder (or set a deadline), which
// unblocks Write. A write that fails part way breaks the Feeder.
func (fd *Feeder) Write(data []byte) error {
	c, err := ScanEvents(data)
	if err != nil {
		return err
	}
	fd.mu.Lock()
	defer fd.mu.Unlock()
	if err := fd.usable(); err != nil {
		return err
	}
	if len(data) == 0 {
		return nil
	}
	if err := fd.write(data); err != nil {
		return err
	}
	fd.marksMu.Lock()
	m := readMark{end: fd.off.Add(uint64(len(data))), instr: fd.instr.Add(c.Instructions)}
	if len(fd.marks) < maxReadMarks {
		fd.marks = append(fd.marks, m)
	} else {
		fd.marks[len(fd.marks)-1] = m
	}
	fd.marksMu.Unlock()
	fd.events.Add(uint64(c.Events))
	if c.End {
		fd.ended.Store(true)
	}
	return nil
}

// ExecutedAtLeast returns a lower bound of the replaying QEMU's executed
// icount (guest instructions), from how much of FIFO B it has read
// (FIONREAD, Unread) and the INSTRUCTION sums at the ends of this
// Feeder's writes: no QEMU monitor, one ioctl. The bound is the sum
// before the end of the last write that ends more than QEMUReadAhead
// bytes before QEMU's read position. Why that is executed: QEMU has
// parsed all it read but at most QEMUReadAhead bytes (its stdio buffer),
// and every event that ends before its parse point is finished, an
// INSTRUCTION event only once its instructions have run
// (replay_advance_current_icount, replay/replay-internal.c); the current
// event, the last one parsed, ends at or after that point. So it lags the
// replay's real icount by up to QEMUReadAhead bytes of log and one write,
// and never runs ahead of it. query-replay gives the exact figure, but
// through the monitor and libvirtd (milliseconds each, docs/replay.md §3);
// this can be sampled every few ms. 0 when QEMU has not read that far
// (or only the log before an adopted Feeder's start). unread is Unread's
// figure it used (bytes). Errors: FIONREAD's.
func (fd *Feeder) ExecutedAtLeast() (icount uint64, unread int, err error) {
	fd.marksMu.Lock()
	defer fd.marksMu.Unlock()
	// The counters before FIONREAD: a Write meanwhile puts bytes in the
	// pipe that Offset does not count yet, which can only make the read
	// position look earlier (conservative).
	off := fd.off.Load()
	end := uint64(0)
	if fd.endByte.Load() {
		end = 1 // WriteEnd's END byte is in the pipe, not in Offset
	}
	unread, err = fd.Unread()
	if err != nil {
		return 0, 0, err
	}
	// The 4-byte version is in the pipe before the events: QEMU has
	// read off+end-unread bytes of events.
	read := off + end - min(uint64(unread), off+end)
	if read <= QEMUReadAhead {
		return fd.floor, unread, nil
	}
	parsed := read - QEMUReadAhead // QEMU has parsed at least this far
	i := 0
	for i < len(fd.marks) && fd.marks[i].end < parsed {
		fd.floor = fd.marks[i].instr
		i++
	}
	fd.marks = fd.marks[i:]
	return fd.floor, unread, nil
}

// WriteEnd writes a lone END event after the last whole event: the clean
// stop point. The backup executes everything before it and then idles with
// its monitor responsive, ready to go live. END is not counted in Offset.
func (fd *Feeder) WriteEnd() error {
	fd.mu.Lock()
	defer fd.mu.Unlock()
	if err := fd.usable(); err != nil {
		return err
	}
	if err := fd.write([]byte{KindEnd}); err != nil {
		return err
	}
	fd.endByte.Store(true)
	fd.ended.Store(true)
	return nil
}

func (fd *Feeder) usable() error {
	if fd.err != nil {
		return fd.err
	}
	if fd.ended.Load() {
		return ErrFeederEnded
	}
	return nil
}

func (fd *Feeder) write(p []byte) error {
	n, err := fd.f.Write(p)
	if err != nil {
		if n > 0 {
			fd.err = fmt.Errorf("%w: %d of %d bytes written: %w", ErrFeederBroken, n, len(p), err)
			return fd.err
		}
		return fmt.Errorf("logchan: writing %s: %w", fd.f.Name(), err)
	}
	return nil
}

// Offset returns the number of event bytes written (the 4-byte version and
// a final END from WriteEnd excluded): the stream offset, exclusive, that
// FIFO B holds up to, for Ack.Offset.
func (fd *Feeder) Offset() uint64 { return fd.off.Load() }

// Instructions returns the sum of the INSTRUCTION counts written: the
// icount the backup reaches once it has executed everything fed, for
// Ack.Fed and to know when the backup has drained after END.
func (fd *Feeder) Instructions() uint64 { return fd.instr.Load() }

// Events returns the number of events written (END from WriteEnd
// excluded).
func (fd *Feeder) Events() uint64 { return fd.events.Load() }

// Ended reports whether END has been written.
func (fd *Feeder) Ended() bool { return fd.ended.Load() }

// SetWriteDeadline sets a deadline for blocked writes. A write that times
// out after writing part of its data breaks the Feeder.
func (fd *Feeder) SetWriteDeadline(t time.Time) error { return fd.f.SetWriteDeadline(t) }

// SetPipeSize asks the kernel for a pipe buffer of size bytes and returns
// the size granted.
func (fd *Feeder) SetPipeSize(size int) (int, error) { return setPipeSize(fd.rc, size) }

// PipeSize returns FIFO B's pipe buffer (F_GETPIPE_SZ, bytes).
func (fd *Feeder) PipeSize() (int, error) { return pipeSize(fd.rc) }

// Unread returns the number of bytes written into FIFO B that the
// replaying QEMU has not read yet (FIONREAD on the pipe). 0 means QEMU has
// taken everything fed (it executes it, or waits for more log); bytes that
// stay unread while QEMU's icount stands still mean its replay stopped.
func (fd *Feeder) Unread() (int, error) {
	var n int
	var ierr error
	err := fd.rc.Control(func(f uintptr) {
		n, ierr = unix.IoctlGetInt(int(f), unix.TIOCINQ) // FIONREAD
	})
	if err == nil {
		err = ierr
	}
	if err != nil {
		return 0, fmt.Errorf("logchan: FIONREAD on %s: %w", fd.f.Name(), err)
	}
	return n, nil
}

// Close closes the Feeder's end of FIFO B. If no other writer holds the
// FIFO, a replaying QEMU that reads on hits EOF and exits: close only after
// the backup has gone live or is being discarded.
func (fd *Feeder) Close() error { return fd.f.Close() }
