package logchan

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// Wire format of the log channel between the primary's and the backup's
// daemons: a stream of frames, each
//
//	byte   type (FrameType)
//	dword  payload length in bytes, big-endian, at most MaxFrameSize
//	bytes  payload
//
// A frame of unknown type, a length above MaxFrameSize or a malformed
// payload is a protocol error: the receiver drops the connection, never the
// VM. Nothing reconnects a log channel: its loss is the peer's loss to the
// failover core. The messages above the framing are in messages.go;
// docs/protocol.md gives every layout.

// ProtocolVersion is the version of the log-channel protocol spoken by this
// package; the handshake refuses a peer speaking another one (so a mixed
// pair is refused at start, never mistaken for a failed peer). Version 2:
// Heartbeat carries Released (version 1 peers drop such a heartbeat as
// malformed). Version 3: a log channel's Hello names its pairing epoch (a
// channel of another epoch is refused) and may resume a pairing after a
// planned restart (Hello.Resume, Bye "clean:restarting").
const ProtocolVersion = 3

// MaxFrameSize is the largest payload of any frame, in bytes (a Log
// frame's); each type has its own bound, MaxPayload.
const MaxFrameSize = 4 << 20

// MaxLogData is the most event bytes one Log frame carries (MaxFrameSize
// less the 8-byte offset).
const MaxLogData = MaxFrameSize - 8

// frameHeaderSize is the size of a frame header in bytes.
const frameHeaderSize = 5

// FrameType is the first byte of a frame.
type FrameType uint8

// Frame types. 0 is not a type, so that a zeroed stream is an error.
const (
	// FrameHello opens a connection (client to server); payload: Hello
	// as JSON.
	FrameHello FrameType = 1
	// FrameHelloReply answers a Hello; payload: HelloReply as JSON.
	FrameHelloReply FrameType = 2
	// FrameLog carries whole replay events (primary to backup); payload:
	// qword stream offset of the first byte, then the event bytes.
	FrameLog FrameType = 3
	// FrameAck reports the backup's progress (backup to primary); payload:
	// four qwords (32 bytes), see Ack; 24 bytes (no Received) are still
	// decoded.
	FrameAck FrameType = 4
	// FrameHeartbeat flows both ways, also when the guest is idle;
	// payload: two qwords, then up to MaxHeartbeatNICs qwords (16 + 8×n
	// bytes), see Heartbeat and EncodeHeartbeat.
	FrameHeartbeat FrameType = 5
	// FrameBye announces an orderly close; payload: Bye's text encoding
	// ("clean:"/"unclean:", the reason, and a ByeLive's detail).
	FrameBye FrameType = 6
	// FrameControl carries a JSON request or answer between the daemons.
	FrameControl FrameType = 7
	// FrameData carries raw bytes (disk seeding).
	FrameData FrameType = 8
	// FrameDigests (primary to backup, right after each Heartbeat, only
	// to a backup whose HelloReply lists FeatureFrameDigests) carries the
	// output gates' running frame digests; payload: two qwords per
	// network interface (16 × n bytes, n <= MaxHeartbeatNICs), see
	// FrameDigest.
	FrameDigests FrameType = 9

	maxFrameType = FrameDigests
)

// FeatureFrameDigests (Hello.Features): the sender's backups compare the
// primary's frame digests (FrameDigests) with their replayed guest's, to
// detect a backup that diverged (docs/replay.md §10). The name says which
// digest: "frame-digests-2" is CRC-32C and CRC-32 (plugin/gate
// NextDigest, session 49); daemons until session 48 listed
// "frame-digests", CRC-64/ECMA. A pair that does not share the name sends
// and compares no digests, rather than compare two different checksums
// (docs/protocol.md §9).
const FeatureFrameDigests = "frame-digests-2"

// HasFeature reports whether h lists feature f.
func (h Hello) HasFeature(f string) bool {
	for _, x := range h.Features {
		if x == f {
			return true
		}
	}
	return false
}

// String returns the frame type's name.
func (t FrameType) String() string {
	switch t {
	case FrameHello:
		return "Hello"
	case FrameHelloReply:
		return "HelloReply"
	case FrameLog:
		return "Log"
	case FrameAck:
		return "Ack"
	case FrameHeartbeat:
		return "Heartbeat"
	case FrameBye:
		return "Bye"
	case FrameControl:
		return "Control"
	case FrameData:
		return "Data"
	case FrameDigests:
		return "Digests"
	}
	return fmt.Sprintf("FrameType(%d)", uint8(t))
}

var (
	// ErrFrameTooLarge is wrapped when a frame's length exceeds
	// MaxFrameSize.
	ErrFrameTooLarge = errors.New("logchan: frame too large")
	// ErrUnknownFrame is wrapped when a frame's type is unknown.
	ErrUnknownFrame = errors.New("logchan: unknown frame type")
	// ErrBadFrame is wrapped when a payload does not have its type's
	// shape.
	ErrBadFrame = errors.New("logchan: malformed frame")
	// ErrHandshake is wrapped by the handshake helpers when either side
	// refuses the other.
	ErrHandshake = errors.New("logchan: handshake refused")
)

// Frame is one message read from the wire.
type Frame struct {
	// Type is the frame's type.
	Type FrameType
	// Payload is owned by the caller.
	Payload []byte
}

// AppendFrameHeader appends the 5-byte header of a frame with payload
// length n to dst.
func AppendFrameHeader(dst []byte, t FrameType, n int) []byte {
	dst = append(dst, byte(t))
	return binary.BigEndian.AppendUint32(dst, uint32(n))
}

// MaxPayload is the largest payload a frame of type t may carry, in bytes:
// what its content needs, so that a peer cannot make the receiver hold more
// than that (docs/protocol.md §2). 0 for an unknown type.
func MaxPayload(t FrameType) int {
	switch t {
	case FrameHello, FrameHelloReply:
		return maxHelloBytes
	case FrameLog:
		return MaxFrameSize
	case FrameAck:
		return ackBytes
	case FrameHeartbeat:
		return 16 + 8*MaxHeartbeatNICs
	case FrameBye:
		return MaxByeBytes
	case FrameControl:
		return MaxControlBytes
	case FrameData:
		return SeedChunk
	case FrameDigests:
		return 16 * MaxHeartbeatNICs
	}
	return 0
}

const (
	// maxHelloBytes bounds a Hello or HelloReply (JSON, bytes).
	maxHelloBytes = 4 << 10
	// ackBytes is the size of an Ack payload.
	ackBytes = 32
	// MaxControlBytes bounds a control request or reply (JSON, bytes): a
	// domain's XML in a prepare-backup.
	MaxControlBytes = 1 << 20
)

func checkFrame(t FrameType, n int) error {
	if t == 0 || t > maxFrameType {
		return fmt.Errorf("%w %d", ErrUnknownFrame, uint8(t))
	}
	if max := MaxPayload(t); n < 0 || n > max {
		return fmt.Errorf("%w: %s frame of %d bytes exceeds %d", ErrFrameTooLarge, t, n, max)
	}
	return nil
}

// readChunk is how much of a payload ReadFrame reads before it grows its
// buffer again: a peer that announces a large frame and stalls holds no
// more memory than it has sent, plus this.
const readChunk = 64 << 10

// WriteFrame writes one frame to w. It refuses (before writing anything) an
// unknown type or a payload over MaxFrameSize.
func WriteFrame(w io.Writer, t FrameType, payload []byte) error {
	return writeFrameParts(w, t, payload)
}

func writeFrameParts(w io.Writer, t FrameType, parts ...[]byte) error {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	if err := checkFrame(t, n); err != nil {
		return err
	}
	var hdr [frameHeaderSize]byte
	if _, err := w.Write(AppendFrameHeader(hdr[:0], t, n)); err != nil {
		return err
	}
	for _, p := range parts {
		if len(p) == 0 {
			continue
		}
		if _, err := w.Write(p); err != nil {
			return err
		}
	}
	return nil
}

// WriteLogFrame writes a Log frame carrying data, whose first byte is at
// stream offset offset, without copying data. data must hold whole events
// and at most MaxLogData bytes (see SplitChunk).
func WriteLogFrame(w io.Writer, offset uint64, data []byte) error {
	var off [8]byte
	binary.BigEndian.PutUint64(off[:], offset)
	return writeFrameParts(w, FrameLog, off[:], data)
}

// ReadFrame reads one frame from r. At a clean end of stream before a frame
// starts it returns io.EOF; a stream that ends inside a frame gives
// io.ErrUnexpectedEOF. An unknown type or an oversize length is reported
// before the payload is read.
func ReadFrame(r io.Reader) (Frame, error) {
	var hdr [frameHeaderSize]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return Frame{}, err
	}
	t := FrameType(hdr[0])
	n := binary.BigEndian.Uint32(hdr[1:])
	if err := checkFrame(t, int(n)); err != nil {
		return Frame{}, err
	}
	p := make([]byte, 0, min(int(n), readChunk))
	for len(p) < int(n) {
		k := min(int(n)-len(p), readChunk)
		p = append(p, make([]byte, k)...)
		if _, err := io.ReadFull(r, p[len(p)-k:]); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return Frame{}, fmt.Errorf("logchan: reading %s frame payload: %w", t, err)
		}
	}
	return Frame{Type: t, Payload: p}, nil
}

// Role is a daemon's part in the pair.
type Role string

// Roles.
const (
	RolePrimary Role = "primary"
	RoleBackup  Role = "backup"
	// RoleStream opens a re-protection stream (docs/protocol.md §11):
	// after the handshake the connection carries the raw bytes of one
	// QEMU stream (Hello.Stream) between the primary's QEMU and the new
	// backup's, both ways, until either side closes.
	RoleStream Role = "stream"
)

// Re-protection stream kinds (Hello.Stream).
const (
	// StreamMigration is the VM's live migration to the new backup's
	// QEMU (its migrate-incoming socket); one per re-protection.
	StreamMigration = "migration"
	// StreamNBD is one NBD connection of a disk copy to the new
	// backup's NBD server (one per disk mirror).
	StreamNBD = "nbd"
)

// FeatureReprotect (Hello.Features): the server takes RoleStream
// connections for a backup armed to receive a running VM.
const FeatureReprotect = "reprotect"

// FeatureConvert (Hello.Features): the server takes a prepare-incoming
// with Convert and answers OpGoLiveIncoming (protecting a VM started
// without the ft element).
const FeatureConvert = "convert"

// Hello opens a connection: who is speaking and what it records or
// replays.
type Hello struct {
	// Protocol is the sender's ProtocolVersion.
	Protocol int `json:"protocol"`
	// DomainUUID is the protected domain's UUID (both VMs share it).
	DomainUUID string `json:"domain_uuid"`
	// QEMUVersion is the sender's QEMU version, "7.2.22" for example.
	QEMUVersion string `json:"qemu_version"`
	// LogVersion is the replay log version the sender's QEMU writes or
	// reads (LogVersionQEMU72).
	LogVersion uint32 `json:"log_version"`
	// Role is the sender's role: the client says RolePrimary (a log
	// channel) or RoleControl (control requests); the server answers
	// RoleBackup.
	Role Role `json:"role"`
	// Epoch (a log channel) is the pairing epoch of the prepare-backup
	// that armed the backup: a channel of any other pairing is refused.
	Epoch string `json:"epoch,omitempty"`
	// Resume (a log channel) asks for the channel of a pairing whose
	// previous channel ended with a ByeRestarting (a planned restart of
	// either daemon) to go on at Offset, the stream offset (bytes) of the
	// next log byte the primary sends; the backup refuses unless it has
	// received exactly Offset bytes.
	Resume bool   `json:"resume,omitempty"`
	Offset uint64 `json:"offset,omitempty"`
	// Features lists the optional messages the sender understands
	// (FeatureFrameDigests). A peer sends such a message only if the
	// other side listed it; a peer that lists none (an older one) is
	// still spoken to, without them. Unknown names are ignored.
	Features []string `json:"features,omitempty"`
	// Stream (RoleStream) is the kind of stream: StreamMigration or
	// StreamNBD.
	Stream string `json:"stream,omitempty"`
}

// HelloReply answers a Hello with the server's own identity.
type HelloReply struct {
	// Accepted reports whether the server accepts the connection.
	Accepted bool `json:"accepted"`
	// Error says why it does not, for humans.
	Error string `json:"error,omitempty"`
	Hello
}

// Ack is the backup's progress report.
type Ack struct {
	// Offset is the stream offset (exclusive end, bytes) of the log
	// written into FIFO B so far.
	Offset uint64
	// Executed is a lower bound of the backup's executed icount, in
	// guest instructions: its query-replay samples and what its reading
	// of FIFO B proves (Feeder.ExecutedAtLeast).
	Executed uint64
	// Fed is the sum of the INSTRUCTION counts written into FIFO B: the
	// icount the backup reaches once it has drained the FIFO.
	Fed uint64
	// Received is the stream offset (exclusive end, bytes) of the log the
	// backup has received, checked (contiguous, whole events) and queued
	// for FIFO B: it writes all of it before any END, so the primary's
	// output gate may release output produced up to here (the output
	// rule, Scales et al. 2010, section 2.2: received, not yet replayed).
	// Received >= Offset in the sender's state (the writer sends the
	// field-wise maximum of what was queued). A 24-byte Ack from an older peer has none: it
	// decodes as Received = Offset.
	Received uint64
}

// Heartbeat is a liveness message.
type Heartbeat struct {
	// Seq counts the sender's heartbeats on this connection.
	Seq uint64
	// SentUnixMs is the sender's wall clock at sending, in ms since the
	// Unix epoch (for diagnostics only; never compare clocks of two hosts
	// to decide anything).
	SentUnixMs int64
	// Released is sent by the primary: for each network interface (in
	// domain order), the number of frames its output gate has sent to the
	// network or discarded over its cap, counted from the guest's first
	// frame (frames 1..n are done). The backup forgets the replayed
	// copies of those and, at go-live, sends the rest (plugin/gate,
	// Queue.Forget). At most MaxHeartbeatNICs entries; empty from the
	// backup, with the gate off, and from an older peer.
	Released []uint64
}

// MaxHeartbeatNICs is the most Heartbeat.Released entries a heartbeat
// carries (its payload is 16 + 8 × n bytes).
const MaxHeartbeatNICs = 64

// EncodeAck returns the payload of an Ack frame.
func EncodeAck(a Ack) []byte {
	b := make([]byte, 0, 32)
	b = binary.BigEndian.AppendUint64(b, a.Offset)
	b = binary.BigEndian.AppendUint64(b, a.Executed)
	b = binary.BigEndian.AppendUint64(b, a.Fed)
	return binary.BigEndian.AppendUint64(b, a.Received)
}

// DecodeAck parses the payload of an Ack frame (32 bytes, or 24 without
// Received). Other sizes give an error wrapping ErrBadFrame.
func DecodeAck(p []byte) (Ack, error) {
	if len(p) != 24 && len(p) != 32 {
		return Ack{}, fmt.Errorf("%w: Ack payload of %d bytes, want 32 (or 24)", ErrBadFrame, len(p))
	}
	a := Ack{
		Offset:   binary.BigEndian.Uint64(p),
		Executed: binary.BigEndian.Uint64(p[8:]),
		Fed:      binary.BigEndian.Uint64(p[16:]),
	}
	a.Received = a.Offset
	if len(p) == 32 {
		a.Received = binary.BigEndian.Uint64(p[24:])
	}
	return a, nil
}

// EncodeHeartbeat returns the payload of a Heartbeat frame: Seq and
// SentUnixMs (8 bytes each, big-endian), then each Released count (8
// bytes). Entries beyond MaxHeartbeatNICs are left out.
func EncodeHeartbeat(h Heartbeat) []byte {
	rel := h.Released[:min(len(h.Released), MaxHeartbeatNICs)]
	b := make([]byte, 0, 16+8*len(rel))
	b = binary.BigEndian.AppendUint64(b, h.Seq)
	b = binary.BigEndian.AppendUint64(b, uint64(h.SentUnixMs))
	for _, r := range rel {
		b = binary.BigEndian.AppendUint64(b, r)
	}
	return b
}

// DecodeHeartbeat parses the payload of a Heartbeat frame: 16 bytes plus 8
// per Released entry, at most MaxHeartbeatNICs of them. Other sizes give an
// error wrapping ErrBadFrame.
func DecodeHeartbeat(p []byte) (Heartbeat, error) {
	if len(p) < 16 || (len(p)-16)%8 != 0 || (len(p)-16)/8 > MaxHeartbeatNICs {
		return Heartbeat{}, fmt.Errorf("%w: Heartbeat payload of %d bytes, want 16 + 8 × n (n <= %d)", ErrBadFrame, len(p), MaxHeartbeatNICs)
	}
	h := Heartbeat{Seq: binary.BigEndian.Uint64(p), SentUnixMs: int64(binary.BigEndian.Uint64(p[8:]))}
	for i := 16; i < len(p); i += 8 {
		h.Released = append(h.Released, binary.BigEndian.Uint64(p[i:]))
	}
	return h, nil
}

// FrameDigest is one output gate's running digest (plugin/gate
// NextDigest): Digest covers the frames 1..Frames the guest transmitted on
// that interface, numbered from its first.
type FrameDigest struct {
	Frames, Digest uint64
}

// EncodeDigests returns the payload of a Digests frame: Frames and Digest
// (8 bytes each, big-endian) per interface, in domain order. Entries
// beyond MaxHeartbeatNICs are left out.
func EncodeDigests(d []FrameDigest) []byte {
	d = d[:min(len(d), MaxHeartbeatNICs)]
	b := make([]byte, 0, 16*len(d))
	for _, x := range d {
		b = binary.BigEndian.AppendUint64(b, x.Frames)
		b = binary.BigEndian.AppendUint64(b, x.Digest)
	}
	return b
}

// DecodeDigests parses the payload of a Digests frame: 16 bytes per
// interface, at most MaxHeartbeatNICs of them. Other sizes give an error
// wrapping ErrBadFrame.
func DecodeDigests(p []byte) ([]FrameDigest, error) {
	if len(p)%16 != 0 || len(p)/16 > MaxHeartbeatNICs {
		return nil, fmt.Errorf("%w: Digests payload of %d bytes, want 16 × n (n <= %d)", ErrBadFrame, len(p), MaxHeartbeatNICs)
	}
	out := make([]FrameDigest, 0, len(p)/16)
	for i := 0; i < len(p); i += 16 {
		out = append(out, FrameDigest{Frames: binary.BigEndian.Uint64(p[i:]), Digest: binary.BigEndian.Uint64(p[i+8:])})
	}
	return out, nil
}

// EncodeLog returns the payload of a Log frame: the stream offset of the
// first event byte, then data (whole events). WriteLogFrame avoids the copy.
func EncodeLog(offset uint64, data []byte) []byte {
	b := make([]byte, 8, 8+len(data))
	binary.BigEndian.PutUint64(b, offset)
	return append(b, data...)
}

// DecodeLog parses the payload of a Log frame into the stream offset of the
// first event byte and the event bytes (which alias p).
func DecodeLog(p []byte) (offset uint64, data []byte, err error) {
	if len(p) < 8 {
		return 0, nil, fmt.Errorf("%w: Log payload of %d bytes, want at least 8", ErrBadFrame, len(p))
	}
	return binary.BigEndian.Uint64(p), p[8:], nil
}

// DecodeHello parses the payload of a Hello frame.
func DecodeHello(p []byte) (Hello, error) {
	var h Hello
	if err := json.Unmarshal(p, &h); err != nil {
		return Hello{}, fmt.Errorf("%w: Hello: %v", ErrBadFrame, err)
	}
	return h, nil
}

// DecodeHelloReply parses the payload of a HelloReply frame.
func DecodeHelloReply(p []byte) (HelloReply, error) {
	var h HelloReply
	if err := json.Unmarshal(p, &h); err != nil {
		return HelloReply{}, fmt.Errorf("%w: HelloReply: %v", ErrBadFrame, err)
	}
	return h, nil
}

// DecodeControl unmarshals the JSON payload of a Control frame into v.
func DecodeControl(p []byte, v any) error {
	if err := json.Unmarshal(p, v); err != nil {
		return fmt.Errorf("%w: Control: %v", ErrBadFrame, err)
	}
	return nil
}

// Conn is a framed log-channel connection. Reads must come from one
// goroutine at a time; writes may come from any number of goroutines (each
// frame is written whole under a mutex). By default every frame is flushed
// when written; with SetAutoFlush(false) frames collect in the buffer until
// Flush.
type Conn struct {
	nc net.Conn
	r  *bufio.Reader

	wmu       sync.Mutex
	w         *bufio.Writer
	autoFlush bool
}

// connBufSize is the size of a Conn's read and write buffers in bytes.
const connBufSize = 64 << 10

// NewConn wraps nc.
func NewConn(nc net.Conn) *Conn {
	return &Conn{
		nc:        nc,
		r:         bufio.NewReaderSize(nc, connBufSize),
		w:         bufio.NewWriterSize(nc, connBufSize),
		autoFlush: true,
	}
}

// NetConn returns the wrapped connection.
func (c *Conn) NetConn() net.Conn { return c.nc }

// Detach ends framing on c (a RoleStream connection after its handshake)
// and returns the connection for raw bytes: its reads first return what
// c had read ahead (the peer may send right after the HelloReply), its
// writes go to the connection. c must not be used afterwards.
func (c *Conn) Detach() net.Conn {
	c.wmu.Lock()
	_ = c.w.Flush()
	c.wmu.Unlock()
	return &detachedConn{Conn: c.nc, r: io.MultiReader(bytes.NewReader(c.buffered()), c.nc)}
}

func (c *Conn) buffered() []byte {
	b, _ := c.r.Peek(c.r.Buffered())
	return append([]byte(nil), b...)
}

// detachedConn is a net.Conn that reads a read-ahead first; CloseWrite is
// passed on when the connection has it (TCP, unix, TLS).
type detachedConn struct {
	net.Conn
	r io.Reader
}

func (d *detachedConn) Read(p []byte) (int, error) { return d.r.Read(p) }

// CloseWrite half-closes the connection, or closes it when it cannot.
func (d *detachedConn) CloseWrite() error {
	if cw, ok := d.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return d.Conn.Close()
}

// Close closes the connection.
func (c *Conn) Close() error { return c.nc.Close() }

// SetReadDeadline sets the deadline of ReadFrame.
func (c *Conn) SetReadDeadline(t time.Time) error { return c.nc.SetReadDeadline(t) }

// SetWriteDeadline sets the deadline of the writes.
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.nc.SetWriteDeadline(t) }

// SetAutoFlush sets whether each frame is flushed as soon as written.
func (c *Conn) SetAutoFlush(on bool) {
	c.wmu.Lock()
	c.autoFlush = on
	c.wmu.Unlock()
}

// Flush sends any buffered frames.
func (c *Conn) Flush() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.w.Flush()
}

// ReadFrame reads the next frame (see the package function ReadFrame).
func (c *Conn) ReadFrame() (Frame, error) { return ReadFrame(c.r) }

// WriteFrame writes one frame.
func (c *Conn) WriteFrame(t FrameType, payload []byte) error {
	return c.write(func(w io.Writer) error { return WriteFrame(w, t, payload) })
}

func (c *Conn) write(f func(w io.Writer) error) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := f(c.w); err != nil {
		return err
	}
	if c.autoFlush {
		return c.w.Flush()
	}
	return nil
}

// WriteLog writes one Log frame; data must be whole events, at most
// MaxLogData bytes.
func (c *Conn) WriteLog(offset uint64, data []byte) error {
	return c.write(func(w io.Writer) error { return WriteLogFrame(w, offset, data) })
}

// SendChunk writes the chunk as Log frames, split between events where it
// exceeds MaxLogData, and flushes them together.
func (c *Conn) SendChunk(ch Chunk) error {
	if len(ch.Data) == 0 {
		return nil
	}
	parts, err := SplitChunk(ch, MaxLogData)
	if err != nil {
		return err
	}
	return c.write(func(w io.Writer) error {
		for _, p := range parts {
			if err := WriteLogFrame(w, p.Offset, p.Data); err != nil {
				return err
			}
		}
		return nil
	})
}

// WriteAck writes an Ack frame.
func (c *Conn) WriteAck(a Ack) error { return c.WriteFrame(FrameAck, EncodeAck(a)) }

// WriteHeartbeat writes a Heartbeat frame.
func (c *Conn) WriteHeartbeat(h Heartbeat) error {
	return c.WriteFrame(FrameHeartbeat, EncodeHeartbeat(h))
}

// WriteDigests writes a Digests frame (only to a peer that listed
// FeatureFrameDigests).
func (c *Conn) WriteDigests(d []FrameDigest) error {
	return c.WriteFrame(FrameDigests, EncodeDigests(d))
}

// WriteData writes a Data frame.
func (c *Conn) WriteData(p []byte) error { return c.WriteFrame(FrameData, p) }

// WriteControl writes v as JSON in a Control frame.
func (c *Conn) WriteControl(v any) error { return c.writeJSON(FrameControl, v) }

// WriteHello writes a Hello frame.
func (c *Conn) WriteHello(h Hello) error { return c.writeJSON(FrameHello, h) }

// WriteHelloReply writes a HelloReply frame.
func (c *Conn) WriteHelloReply(h HelloReply) error { return c.writeJSON(FrameHelloReply, h) }

func (c *Conn) writeJSON(t FrameType, v any) error {
	p, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("logchan: encoding %s frame: %w", t, err)
	}
	return c.WriteFrame(t, p)
}

// checkPeer applies the rules that both ends of a handshake enforce. me and
// them name the two sides in the message ("client", "server"), which the
// server also sends to the client.
func checkPeer(local, peer Hello, me, them string) error {
	if peer.Protocol != local.Protocol {
		return fmt.Errorf("%s speaks log-channel protocol %d, %s speaks %d",
			them, peer.Protocol, me, local.Protocol)
	}
	if peer.LogVersion != local.LogVersion {
		return fmt.Errorf("%s's QEMU %q uses replay log version %#x, %s's QEMU %q uses %#x",
			them, peer.QEMUVersion, peer.LogVersion, me, local.QEMUVersion, local.LogVersion)
	}
	if v, err := LogVersionForQEMU(peer.QEMUVersion); err != nil || v != peer.LogVersion {
		return fmt.Errorf("%s's QEMU %q with replay log version %#x is not supported: only QEMU 7.2's log format (%#x) is",
			them, peer.QEMUVersion, peer.LogVersion, LogVersionQEMU72)
	}
	if local.DomainUUID != "" && peer.DomainUUID != local.DomainUUID {
		return fmt.Errorf("%s protects domain %q, %s protects %q", them, peer.DomainUUID, me, local.DomainUUID)
	}
	if local.Role != "" && peer.Role == local.Role {
		return fmt.Errorf("%s and %s are both %s", them, me, local.Role)
	}
	return nil
}

// ClientHandshake sends hello and waits for the server's reply. It fails
// (with an error wrapping ErrHandshake) if the server refuses, or if the
// server's identity does not match: another protocol version, another log
// version, another domain UUID or the same role. Set a deadline on c first.
func ClientHandshake(c *Conn, hello Hello) (HelloReply, error) {
	if err := c.WriteHello(hello); err != nil {
		return HelloReply{}, fmt.Errorf("logchan: sending Hello: %w", err)
	}
	f, err := c.ReadFrame()
	if err != nil {
		return HelloReply{}, fmt.Errorf("logchan: waiting for HelloReply: %w", err)
	}
	if f.Type != FrameHelloReply {
		return HelloReply{}, fmt.Errorf("%w: expected HelloReply, got %s frame", ErrBadFrame, f.Type)
	}
	rep, err := DecodeHelloReply(f.Payload)
	if err != nil {
		return HelloReply{}, err
	}
	if !rep.Accepted {
		return rep, fmt.Errorf("%w by server: %s", ErrHandshake, CleanText(rep.Error, MaxPeerErrorBytes))
	}
	if err := checkPeer(hello, rep.Hello, "client", "server"); err != nil {
		return rep, fmt.Errorf("%w: %v", ErrHandshake, err)
	}
	return rep, nil
}

// ServerHandshake reads the client's Hello, checks it against local (same
// protocol version, same log version, a supported QEMU, same domain UUID
// when local has one, another role when local has one) and then with
// accept (which may be nil), and answers with a HelloReply carrying local.
// A refused client gets Accepted false and the reason; the error returned
// then wraps ErrHandshake. Set a deadline on c first.
func ServerHandshake(c *Conn, local Hello, accept func(peer Hello) error) (Hello, error) {
	f, err := c.ReadFrame()
	if err != nil {
		return Hello{}, fmt.Errorf("logchan: waiting for Hello: %w", err)
	}
	if f.Type != FrameHello {
		return Hello{}, fmt.Errorf("%w: expected Hello, got %s frame", ErrBadFrame, f.Type)
	}
	peer, err := DecodeHello(f.Payload)
	if err != nil {
		return Hello{}, err
	}
	if local.DomainUUID == "" {
		// A server that serves any domain answers for the one asked about.
		local.DomainUUID = peer.DomainUUID
	}
	refusal := checkPeer(local, peer, "server", "client")
	if refusal == nil && accept != nil {
		refusal = accept(peer)
	}
	rep := HelloReply{Accepted: refusal == nil, Hello: local}
	if refusal != nil {
		rep.Error = refusal.Error()
	}
	if err := c.WriteHelloReply(rep); err != nil {
		return peer, fmt.Errorf("logchan: sending HelloReply: %w", err)
	}
	if refusal != nil {
		return peer, fmt.Errorf("%w: %w", ErrHandshake, refusal)
	}
	return peer, nil
}
