package logchan

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"

	"github.com/libvirt-ft/libvirt-ft/failover"
)

// This file holds the daemon-to-daemon protocol above the framing of
// wire.go: the typed messages of a log channel (Message, Bye), and the
// control exchange of a control connection (ControlRequest, ControlReply,
// seeding). docs/protocol.md describes the same bytes.
//
// A connection opens with the handshake (Hello, HelloReply). Its Hello.Role
// says what follows:
//   - RolePrimary: a log channel. The primary sends Log, Heartbeat, Bye
//     and (if the backup listed FeatureFrameDigests) Digests frames; the
//     backup Ack, Heartbeat and Bye frames (Conn.Recv).
//   - RoleControl: control requests from the primary's daemon, each
//     answered by one ControlReply (Conn.Request, Conn.RecvControl,
//     Conn.Reply). Seeding streams a disk as Data frames between an OpSeed
//     and an OpSeedEnd request (Conn.Seed).

// RoleControl opens a control connection (Hello.Role).
const RoleControl Role = "control"

// Bye is the payload of a Bye frame: why the sender closes, for the
// receiver's failover core (failover.PeerBye) and its operator.
//
// On the wire it is UTF-8 text: "clean:" or "unclean:", the Reason, and,
// only in a clean bye whose Reason is failover.ByeLive, ByeDetailSep and the
// Detail. A payload without either prefix (an older peer) decodes as an
// unclean bye with the whole text as Reason.
type Bye struct {
	// Clean: an orderly end the receiver must not take for a failure
	// (failover.ByeShutdown, ByeSwitchover, ByeLive).
	Clean bool
	// Reason is one of failover's Bye* constants or free text.
	Reason string
	// Detail is for the operator: the backup's go-live timings in a
	// ByeLive. Dropped on encoding in any other bye.
	Detail string
}

// ByeDetailSep separates a ByeLive's Reason from its Detail on the wire.
const ByeDetailSep = "|"

// MaxByeBytes bounds a Bye's text, in bytes (a longer one is a protocol
// error).
const MaxByeBytes = 4096

// Encode returns the Bye frame payload.
func (b Bye) Encode() []byte {
	s := "unclean:" + b.Reason
	if b.Clean {
		s = "clean:" + b.Reason
		if b.Reason == failover.ByeLive && b.Detail != "" {
			s += ByeDetailSep + b.Detail
		}
	}
	return []byte(s)
}

// DecodeBye parses a Bye payload (see Bye). It never fails: a bye is the
// peer's last word and is taken as text.
func DecodeBye(p []byte) Bye {
	s := string(p)
	if r, ok := strings.CutPrefix(s, "clean:"); ok {
		b := Bye{Clean: true, Reason: r}
		if reason, detail, ok := strings.Cut(r, ByeDetailSep); ok && reason == failover.ByeLive {
			b.Reason, b.Detail = reason, detail
		}
		return b
	}
	if r, ok := strings.CutPrefix(s, "unclean:"); ok {
		return Bye{Reason: r}
	}
	return Bye{Reason: s}
}

// WriteBye writes b as a Bye frame.
func (c *Conn) WriteBye(b Bye) error { return c.WriteFrame(FrameBye, b.Encode()) }

// MessageKind says which field of a Message is set.
type MessageKind int

// Log-channel message kinds.
const (
	MsgLog MessageKind = iota + 1
	MsgAck
	MsgHeartbeat
	MsgBye
	MsgDigests
)

// Message is one frame of a log channel after the handshake.
type Message struct {
	Kind MessageKind
	// Offset and Data: a Log frame (stream offset of Data's first byte;
	// whole replay events).
	Offset uint64
	Data   []byte
	// Ack: an Ack frame (backup to primary).
	Ack Ack
	// Heartbeat: a Heartbeat frame.
	Heartbeat Heartbeat
	// Bye: a Bye frame.
	Bye Bye
	// Digests: a Digests frame (primary to backup).
	Digests []FrameDigest
}

// ErrUnexpectedFrame is wrapped when a well-formed frame of a type that
// does not belong on the connection arrives (a Control frame on a log
// channel).
var ErrUnexpectedFrame = errors.New("logchan: unexpected frame")

// Recv reads the next log-channel message. A malformed payload (wrapping
// ErrBadFrame), a frame type that has no place on a log channel (wrapping
// ErrUnexpectedFrame) and any read error are returned: the caller drops
// the connection, never the VM.
func (c *Conn) Recv() (Message, error) {
	f, err := c.ReadFrame()
	if err != nil {
		return Message{}, err
	}
	switch f.Type {
	case FrameLog:
		off, data, err := DecodeLog(f.Payload)
		if err != nil {
			return Message{}, err
		}
		return Message{Kind: MsgLog, Offset: off, Data: data}, nil
	case FrameAck:
		a, err := DecodeAck(f.Payload)
		if err != nil {
			return Message{}, err
		}
		return Message{Kind: MsgAck, Ack: a}, nil
	case FrameHeartbeat:
		h, err := DecodeHeartbeat(f.Payload)
		if err != nil {
			return Message{}, err
		}
		return Message{Kind: MsgHeartbeat, Heartbeat: h}, nil
	case FrameBye:
		return Message{Kind: MsgBye, Bye: DecodeBye(f.Payload)}, nil
	case FrameDigests:
		d, err := DecodeDigests(f.Payload)
		if err != nil {
			return Message{}, err
		}
		return Message{Kind: MsgDigests, Digests: d}, nil
	default:
		return Message{}, fmt.Errorf("%w: %s frame on a log channel", ErrUnexpectedFrame, f.Type)
	}
}

// ControlOp names a control request.
type ControlOp string

// Control operations (primary's daemon to backup's daemon).
const (
	// OpHash asks for Path's FileDigest (ControlReply.Data).
	OpHash ControlOp = "hash"
	// OpInStep asks whether the backup host's copy of Path, a disk of
	// UUID, ended pairing Epoch in step with the primary's and is
	// unchanged since (ControlReply.Data: InStepReply). Only to a backup
	// host that listed FeatureDisksInStep (an older one closes the
	// connection on an unknown op).
	OpInStep ControlOp = "in-step"
	// OpSeed starts a disk copy of Path: Data frames with its bytes
	// follow, then OpSeedEnd. Seed is the digest the copy must have. No
	// reply until OpSeedEnd, unless refused. With Blocks set (a delta
	// seed, FeatureBlockSeed) the server replies once it is ready for
	// the blocks: Blocks is the BlockList the copy must have, and only
	// the blocks that differ follow, each as an OpSeedBlock and its Data
	// frames or an OpSeedZero (blocks.go, Conn.SeedBlocks).
	OpSeed ControlOp = "seed"
	// OpSeedEnd ends the copy: the backup host checks its digest and
	// moves it into place, then replies.
	OpSeedEnd ControlOp = "seed-end"
	// OpBlocks asks for Path's BlockList in blocks of Blocks.BlockSize
	// bytes (ControlReply.Data: BlockList) if its size is Blocks.Size;
	// a file of another size is not read, and the answer has no hashes.
	// Only to a server that listed FeatureBlockSeed.
	OpBlocks ControlOp = "blocks"
	// OpSeedBlock: the Data frames that follow, one block's bytes in
	// all, are the block at Offset of the delta seed under way (an
	// OpSeed with Blocks).
	OpSeedBlock ControlOp = "seed-block"
	// OpSeedZero: the block at Offset of the delta seed under way is all
	// zeros (the backup host leaves a hole there). No Data follows.
	OpSeedZero ControlOp = "seed-zero"
	// OpPrepareBackup arms a backup of UUID from the primary's domain XML
	// (XML; QEMUVersion and LogVersion must match the backup host's) for
	// the pairing Epoch.
	OpPrepareBackup ControlOp = "prepare-backup"
	// OpPrepareIncoming arms a backup of UUID, with prepare-backup's
	// fields and checks, that receives a running VM instead of booting
	// (re-protection, docs/protocol.md §11): the backup host starts its
	// QEMU at once, waiting for the migrated state (ftxml.Incoming), and
	// takes the pairing's re-protection streams (RoleStream) from the
	// host that armed it. Its log channel follows the switchover. Only
	// to a server that listed FeatureReprotect.
	OpPrepareIncoming ControlOp = "prepare-incoming"
	// OpGoLiveIncoming (protecting a VM started without the ft element,
	// docs/protocol.md §12): the running VM's migration into the backup
	// armed by an OpPrepareIncoming with Convert set has completed, and
	// its source is paused. The backup host claims the pairing Epoch on
	// the arbiter; won, its QEMU reads END at once and runs on live
	// (packaging/qemu 0001, 0022), and the reply is ok: the VM runs
	// there, and the asker must never run its own copy again. Any error
	// means the backup host does not run it (the claim lost, or could not
	// be made): the asker claims the epoch itself to learn which copy
	// runs. Only from the host that armed the backup, with its epoch, once
	// the state has loaded; only to a server that listed FeatureConvert.
	OpGoLiveIncoming ControlOp = "go-live-incoming"
	// OpCancelBackup discards the backup armed for UUID while it has not
	// started (for a prepare-incoming backup: while its log channel has
	// not come; its waiting QEMU is stopped).
	OpCancelBackup ControlOp = "cancel-backup"
	// OpCheckBackup runs prepare-backup's checks for UUID with the same
	// fields and arms nothing: the answer is ok or prepare-backup's
	// refusal (a primary's virt-ft check). A backup host of an older
	// libvirt-ft answers "unknown control op".
	OpCheckBackup ControlOp = "check-backup"
	// OpStatus asks for the server's view of UUID (ControlReply.Data:
	// PeerStatus), for virt-ft status on the other host. Either daemon
	// of a pairing may ask the other; the server answers only a peer
	// whose address is the one its run of UUID is paired with, and only
	// with what virt-ft status shows there. Only to a server that listed
	// FeatureStatus.
	OpStatus ControlOp = "status"
)

// FeatureStatus (Hello.Features): the server answers OpStatus.
const FeatureStatus = "status"

// PeerStatus answers OpStatus: one domain as its run on the server stands
// (plugin/ctl.DomainStatus's fields of the same names).
type PeerStatus struct {
	// Role is "primary" or "backup"; State the run's lifecycle
	// (replicating, live, unprotected, ...); Failover the failover core's
	// state; Detail why, in the daemon's words.
	Role     string `json:"role"`
	State    string `json:"state"`
	Failover string `json:"failover,omitempty"`
	Detail   string `json:"detail,omitempty"`
	// HeartbeatAgeMS: ms since the server last heard this host; -1 never.
	HeartbeatAgeMS int64 `json:"heartbeat_age_ms"`
	// LagMS, LagBytes: the backup's lag as the server measures it: the
	// primary's figures when the server runs the primary; when it runs
	// the backup, LagMS is the backup's own (the age of the oldest log
	// it received and has not executed) and LagBytes 0.
	LagMS    int64  `json:"lag_ms"`
	LagBytes uint64 `json:"lag_bytes"`
	// BackupIcount: the backup QEMU's executed icount (guest
	// instructions) as the server last saw it.
	BackupIcount uint64 `json:"backup_icount"`
}

// FileDigest describes a file for seeding: whether it exists, its size in
// bytes and its SHA-256 (lower-case hex).
type FileDigest struct {
	Exists bool   `json:"exists"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// ControlRequest is the JSON payload of a Control frame from the primary's
// daemon. Which fields are set depends on Op (see the ControlOp constants).
type ControlRequest struct {
	Op          ControlOp  `json:"op"`
	UUID        string     `json:"uuid,omitempty"`
	Name        string     `json:"name,omitempty"`
	Path        string     `json:"path,omitempty"`
	XML         string     `json:"xml,omitempty"`
	QEMUVersion string     `json:"qemu_version,omitempty"`
	LogVersion  uint32     `json:"log_version,omitempty"`
	Seed        FileDigest `json:"seed,omitempty"`
	// Blocks: OpBlocks' block size (only BlockSize set); a delta
	// seed's target (OpSeed).
	Blocks *BlockList `json:"blocks,omitempty"`
	// Offset of an OpSeedBlock or OpSeedZero, in bytes from the file's
	// start: a multiple of the seed's block size.
	Offset int64 `json:"offset,omitempty"`
	// EmulatorBuild (prepare-backup) identifies the primary's QEMU
	// binary: its --version line and SHA-256 (plugin's
	// Hypervisor.EmulatorBuild). The backup host refuses a different
	// build, or none: the packaging/qemu patches change what the log
	// holds and how a replay reads it, and --version does not name them.
	EmulatorBuild string `json:"emulator_build,omitempty"`
	// Epoch names the pairing: the split-brain lock of this run.
	Epoch string `json:"epoch,omitempty"`
	// DiskSizes (prepare-incoming): the virtual size in bytes of each
	// disk image of XML, by path. A disk the backup host does not have is
	// created there empty at that size (in the format the XML's driver
	// names) for the disk copy to fill; one it has is used as it is.
	DiskSizes map[string]int64 `json:"disk_sizes,omitempty"`
	// Convert (prepare-incoming, FeatureConvert): the running VM was
	// started without the ft element and runs without icount or a record
	// log; its state goes live on the backup host once the migration
	// has completed (OpGoLiveIncoming), instead of replaying a log.
	Convert bool `json:"convert,omitempty"`
	// Arbiter names the split-brain arbiter the primary's daemon claims
	// on (prepare-backup): "etcd <endpoints> <prefix>", "dir <path>" or
	// "none". The backup host must claim on the same one, or both could
	// win.
	Arbiter string `json:"arbiter,omitempty"`
}

// Bounds of a ControlRequest's short text fields (bytes): MaxPathBytes
// for a disk path (Path, DiskSizes' keys; Linux's PATH_MAX), MaxFieldBytes
// for the others but XML.
const (
	MaxPathBytes  = 4096
	MaxFieldBytes = 1024
)

// Check refuses a request whose short text fields (op, uuid, name, path,
// qemu_version, emulator_build, epoch, arbiter, disk_sizes' paths) are
// longer than their bound (MaxPathBytes, MaxFieldBytes), not valid UTF-8,
// or hold a character CleanText would replace (control, format, line or
// paragraph separator): none is in a name, a path or a version a daemon
// sends, and such text would reach this host's logs and the errors it
// replies. The error wraps ErrBadFrame and names the field: the receiver
// drops the connection (RecvControl). XML is left to the XML parser.
func (r ControlRequest) Check() error {
	type field struct {
		name, v string
		max     int
	}
	fields := []field{
		{"op", string(r.Op), MaxFieldBytes}, {"uuid", r.UUID, MaxFieldBytes}, {"name", r.Name, MaxFieldBytes},
		{"path", r.Path, MaxPathBytes}, {"qemu_version", r.QEMUVersion, MaxFieldBytes},
		{"emulator_build", r.EmulatorBuild, MaxFieldBytes}, {"epoch", r.Epoch, MaxFieldBytes},
		{"arbiter", r.Arbiter, MaxFieldBytes},
	}
	for path := range r.DiskSizes {
		fields = append(fields, field{"disk_sizes path", path, MaxPathBytes})
	}
	for _, f := range fields {
		switch {
		case len(f.v) > f.max:
			return fmt.Errorf("%w: Control %s of %d bytes (at most %d)", ErrBadFrame, f.name, len(f.v), f.max)
		case CleanText(f.v, f.max) != f.v:
			return fmt.Errorf("%w: Control %s %q holds a control or format character, or is not UTF-8", ErrBadFrame, f.name, CleanText(f.v, 256))
		}
	}
	return nil
}

// FeatureDisksInStep (Hello.Features): the server answers OpInStep.
const FeatureDisksInStep = "disks-in-step"

// InStepReply answers OpInStep.
type InStepReply struct {
	InStep bool `json:"in_step"`
}

// ControlReply is the JSON payload of the Control frame that answers a
// ControlRequest. Error, when OK is false, is a complete message for the
// primary's operator.
type ControlReply struct {
	OK    bool            `json:"ok"`
	Error string          `json:"error,omitempty"`
	Data  json.RawMessage `json:"data,omitempty"`
}

// Request sends req and waits for its reply, decoding the reply's Data into
// out (if not nil). A refusal is returned as an error carrying the peer's
// message.
func (c *Conn) Request(req ControlRequest, out any) error {
	if err := c.WriteControl(req); err != nil {
		return err
	}
	return c.readReply(out)
}

func (c *Conn) readReply(out any) error {
	f, err := c.ReadFrame()
	if err != nil {
		return err
	}
	if f.Type != FrameControl {
		return fmt.Errorf("%w: expected a control reply, got a %s frame", ErrUnexpectedFrame, f.Type)
	}
	var r ControlReply
	if err := DecodeControl(f.Payload, &r); err != nil {
		return err
	}
	if !r.OK {
		// The peer's words: cleaned and bounded before any log line or
		// virt-ft output shows them.
		return errors.New(CleanText(r.Error, MaxPeerErrorBytes))
	}
	if out != nil && len(r.Data) > 0 {
		return json.Unmarshal(r.Data, out)
	}
	return nil
}

// SeedChunk is the most file bytes one Data frame of a seed carries.
const SeedChunk = 1 << 20

// Seed copies r (the file at path, whose digest is want) to the peer:
// OpSeed, Data frames of at most SeedChunk bytes, OpSeedEnd, and waits for
// the reply to OpSeedEnd. progress (may be nil) is called with the bytes
// sent so far.
func (c *Conn) Seed(path string, want FileDigest, r io.Reader, progress func(done int64)) error {
	if err := c.WriteControl(ControlRequest{Op: OpSeed, Path: path, Seed: want}); err != nil {
		return err
	}
	buf := make([]byte, SeedChunk)
	var done int64
	for {
		n, rerr := r.Read(buf)
		if n > 0 {
			if err := c.WriteData(buf[:n]); err != nil {
				return c.refusalOr(err)
			}
			done += int64(n)
			if progress != nil {
				progress(done)
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return rerr
		}
	}
	if err := c.WriteControl(ControlRequest{Op: OpSeedEnd, Path: path}); err != nil {
		return c.refusalOr(err)
	}
	return c.readReply(nil)
}

// refusalOr is the error of a write that failed because the peer refused
// the request and closed the connection: its reply, already sent, says
// why; writeErr if there is none.
func (c *Conn) refusalOr(writeErr error) error {
	if !isConnReset(writeErr) {
		return writeErr // not closed by the peer: a read could wait
	}
	err := c.readReply(nil)
	var ne net.Error
	if err == nil || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		isConnReset(err) || (errors.As(err, &ne) && ne.Timeout()) {
		return writeErr // no whole reply: the write's error says it
	}
	return err
}

// isConnReset: the peer reset the connection (ECONNRESET, EPIPE).
func isConnReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// RecvControl reads the next frame of a control connection: a request
// (data nil) or, during a seed, a Data frame's bytes (req zero). Other
// frame types wrap ErrUnexpectedFrame; a malformed request wraps
// ErrBadFrame.
func (c *Conn) RecvControl() (req ControlRequest, data []byte, err error) {
	f, err := c.ReadFrame()
	if err != nil {
		return ControlRequest{}, nil, err
	}
	switch f.Type {
	case FrameData:
		return ControlRequest{}, f.Payload, nil
	case FrameControl:
		if err := DecodeControl(f.Payload, &req); err != nil {
			return req, nil, err
		}
		if err := req.Check(); err != nil {
			return ControlRequest{}, nil, err
		}
		return req, nil, nil
	default:
		return ControlRequest{}, nil, fmt.Errorf("%w: %s frame on a control connection", ErrUnexpectedFrame, f.Type)
	}
}

// Reply answers the current request: data (may be nil) as the reply's
// Data when err is nil, else err's text.
func (c *Conn) Reply(data any, err error) error {
	r := ControlReply{OK: err == nil}
	if err != nil {
		r.Error = err.Error()
	} else if data != nil {
		b, merr := json.Marshal(data)
		if merr != nil {
			return fmt.Errorf("logchan: encoding a control reply: %w", merr)
		}
		r.Data = b
	}
	return c.WriteControl(r)
}

// ValidUUID reports whether s is a domain UUID in libvirt's canonical
// form: 36 characters, lower-case hex in groups of 8-4-4-4-12. A peer's
// UUID names FIFOs and sockets on the receiving host, so nothing else is
// accepted (no "../", no upper case, no braces).
func ValidUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
				return false
			}
		}
	}
	return true
}
