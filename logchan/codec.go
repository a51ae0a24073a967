package logchan

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// LogVersionQEMU72 is REPLAY_VERSION of QEMU 7.2 (replay/replay.c), the
// big-endian dword at the start of a finished log file. The same value is
// used by QEMU 7.1 up to 10.x, but the event encoding under it changed
// without a bump (8.1 added the multi-touch INPUT event kind), so the QEMU
// version, not this dword, decides which table applies: see
// LogVersionForQEMU.
const LogVersionQEMU72 uint32 = 0xe0200c

// HeaderSize is the size of the header of a replay log file in bytes:
// the version dword and 8 bytes that QEMU never writes (HEADER_SIZE in
// replay/replay.c). A recording QEMU seeks past it at start and writes the
// version only at a clean exit, so a growing log starts with 12 zero bytes.
const HeaderSize = 12

// MaxArrayLen caps the length, in bytes, of any variable-length part of one
// event (a CHAR_READ, NET, CHAR_READ_ALL or RANDOM array, or the samples of
// an AUDIO_IN event). QEMU 7.2 itself has no cap, but no real event comes
// near it (a NET event holds one packet of at most 64 KiB); a larger value
// means a corrupt or misaligned stream.
const MaxArrayLen = 64 << 20

var (
	// ErrUnsupportedQEMU is wrapped by LogVersionForQEMU for any QEMU
	// version other than 7.2.x.
	ErrUnsupportedQEMU = errors.New("logchan: unsupported QEMU version")
	// ErrUnsupportedLogVersion is wrapped by the file decoder when the
	// log header carries a version other than LogVersionQEMU72 (or 0, a
	// log still being written).
	ErrUnsupportedLogVersion = errors.New("logchan: unsupported replay log version")
	// ErrCorruptLog is wrapped by every *DecodeError: an unknown event
	// kind, an impossible length or an unknown sub-kind.
	ErrCorruptLog = errors.New("logchan: corrupt replay log")
	// ErrPartialEvent is returned where whole events are required (the
	// Feeder, SplitChunk) and the bytes end inside an event.
	ErrPartialEvent = errors.New("logchan: data does not end on an event boundary")
)

// LogVersionForQEMU returns the replay log version that the given QEMU
// version writes, or an error wrapping ErrUnsupportedQEMU. It accepts
// "MAJOR.MINOR" or "MAJOR.MINOR.MICRO", optionally followed by a
// distribution suffix after a space, '+', '-' or '~' (as in
// "7.2.22 (Debian 1:7.2+dfsg-7+deb12u18)"). Only major.minor 7.2 is
// supported: the event table of this package is QEMU 7.2's.
func LogVersionForQEMU(qemuVersion string) (uint32, error) {
	v := strings.TrimSpace(qemuVersion)
	if i := strings.IndexAny(v, " +-~("); i >= 0 {
		v = v[:i]
	}
	parts := strings.Split(v, ".")
	if len(parts) < 2 || len(parts) > 3 {
		return 0, unsupportedQEMU(qemuVersion)
	}
	nums := make([]int, len(parts))
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 {
			return 0, unsupportedQEMU(qemuVersion)
		}
		nums[i] = n
	}
	if nums[0] != 7 || nums[1] != 2 {
		return 0, unsupportedQEMU(qemuVersion)
	}
	return LogVersionQEMU72, nil
}

func unsupportedQEMU(v string) error {
	return fmt.Errorf("%w: QEMU %q: only QEMU 7.2's replay log format (%#x) is supported",
		ErrUnsupportedQEMU, v, LogVersionQEMU72)
}

// Event kinds of QEMU 7.2: the first byte of every event (enum ReplayEvents
// in replay/replay-internal.h). Ranges are written as the first kind of the
// range plus an offset.
const (
	// KindInstruction is followed by a dword: the number of guest
	// instructions executed since the previous INSTRUCTION event
	// (replay_advance_current_icount, replay/replay-internal.c).
	KindInstruction byte = 0
	// KindInterrupt has no payload (replay_interrupt, replay/replay.c).
	KindInterrupt byte = 1
	// KindException has no payload (replay_exception, replay/replay.c).
	KindException byte = 2
	// KindAsyncBH is followed by a qword: the icount at which the bottom
	// half was scheduled (replay_save_event, replay/replay-events.c).
	KindAsyncBH byte = 3
	// KindAsyncBHOneshot is followed by a qword icount, like KindAsyncBH.
	KindAsyncBHOneshot byte = 4
	// KindAsyncInput is followed by an input event (see the package's
	// INPUT layout below; replay_save_input_event, replay/replay-input.c).
	KindAsyncInput byte = 5
	// KindAsyncInputSync has no payload.
	KindAsyncInputSync byte = 6
	// KindAsyncCharRead is followed by a byte (char driver index) and an
	// array (replay_event_char_read_save, replay/replay-char.c).
	KindAsyncCharRead byte = 7
	// KindAsyncBlock is followed by a qword: the block request id.
	KindAsyncBlock byte = 8
	// KindAsyncNet is followed by a byte (filter-replay index), a dword
	// (flags) and an array (the packet) (replay_event_net_save,
	// replay/replay-net.c).
	KindAsyncNet byte = 9
	// KindShutdown is the first of 12 SHUTDOWN kinds: KindShutdown +
	// ShutdownCause (qapi/run-state.json, 11 causes, plus
	// SHUTDOWN_CAUSE__MAX which the enum reserves). The cause lives in the
	// kind byte; there is no payload (replay_shutdown_request,
	// replay/replay.c).
	KindShutdown byte = 10
	// KindShutdownLast is the last SHUTDOWN kind (KindShutdown + 11).
	KindShutdownLast byte = 21
	// KindCharWrite is followed by two dwords: result and offset
	// (replay_char_write_event_save, replay/replay-char.c).
	KindCharWrite byte = 22
	// KindCharReadAll is followed by an array.
	KindCharReadAll byte = 23
	// KindCharReadAllError is followed by a dword (a negative errno).
	KindCharReadAllError byte = 24
	// KindAudioOut is followed by a qword: samples played
	// (replay_audio_out, replay/replay-audio.c).
	KindAudioOut byte = 25
	// KindAudioIn is followed by a qword n (samples recorded), a qword
	// (ring write position) and n samples of two qwords each (left,
	// right) (replay_audio_in, replay/replay-audio.c).
	KindAudioIn byte = 26
	// KindRandom is followed by a dword (return value) and an array
	// (replay_save_random, replay/replay-random.c).
	KindRandom byte = 27
	// KindClockHost is followed by a qword: the host clock in ns
	// (replay_save_clock, replay/replay-time.c).
	KindClockHost byte = 28
	// KindClockVirtualRT is followed by a qword: the virtual_rt clock in
	// ns.
	KindClockVirtualRT byte = 29
	// KindCheckpoint is the first of 9 CHECKPOINT kinds (enum
	// ReplayCheckpoint, include/sysemu/replay.h); no payload
	// (replay_checkpoint, replay/replay.c).
	KindCheckpoint byte = 30
	// KindCheckpointLast is the last CHECKPOINT kind.
	KindCheckpointLast byte = 38
	// KindEnd has no payload and ends the log (replay_finish,
	// replay/replay.c). Written alone into a replay FIFO it is the clean
	// stop point of a backup.
	KindEnd byte = 39

	// kindCount is EVENT_COUNT: any kind byte >= kindCount is invalid.
	kindCount = 40
)

// INPUT event payload (KindAsyncInput) in QEMU 7.2, all integers
// big-endian (replay_save_input_event, replay/replay-input.c; enums from
// qapi/ui.json):
//
//	dword InputEventKind: 0 key, 1 btn, 2 rel, 3 abs
//	key: dword KeyValueKind: 0 number -> qword number, byte down
//	                         1 qcode  -> dword qcode,  byte down
//	btn: dword button, byte down
//	rel, abs: dword axis, qword value
//
// QEMU 8.1 added kind 4 (mtt) without bumping the log version; it is not
// valid in a 7.2 log and is reported as corruption.
const (
	inputKindKey = 0
	inputKindBtn = 1
	inputKindRel = 2
	inputKindAbs = 3

	keyValueNumber = 0
	keyValueQcode  = 1
)

var shutdownCauseNames = [...]string{
	"NONE", "HOST_ERROR", "HOST_QMP_QUIT", "HOST_QMP_SYSTEM_RESET",
	"HOST_SIGNAL", "HOST_UI", "GUEST_SHUTDOWN", "GUEST_RESET",
	"GUEST_PANIC", "SUBSYSTEM_RESET", "SNAPSHOT_LOAD", "_MAX",
}

var checkpointNames = [...]string{
	"CLOCK_WARP_START", "CLOCK_WARP_ACCOUNT", "RESET_REQUESTED",
	"SUSPEND_REQUESTED", "CLOCK_VIRTUAL", "CLOCK_HOST",
	"CLOCK_VIRTUAL_RT", "INIT", "RESET",
}

var simpleKindNames = map[byte]string{
	KindInstruction:      "INSTRUCTION",
	KindInterrupt:        "INTERRUPT",
	KindException:        "EXCEPTION",
	KindAsyncBH:          "ASYNC_BH",
	KindAsyncBHOneshot:   "ASYNC_BH_ONESHOT",
	KindAsyncInput:       "ASYNC_INPUT",
	KindAsyncInputSync:   "ASYNC_INPUT_SYNC",
	KindAsyncCharRead:    "ASYNC_CHAR_READ",
	KindAsyncBlock:       "ASYNC_BLOCK",
	KindAsyncNet:         "ASYNC_NET",
	KindCharWrite:        "CHAR_WRITE",
	KindCharReadAll:      "CHAR_READ_ALL",
	KindCharReadAllError: "CHAR_READ_ALL_ERROR",
	KindAudioOut:         "AUDIO_OUT",
	KindAudioIn:          "AUDIO_IN",
	KindRandom:           "RANDOM",
	KindClockHost:        "CLOCK_HOST",
	KindClockVirtualRT:   "CLOCK_VIRTUAL_RT",
	KindEnd:              "END",
}

// KindName returns a diagnostic name for an event kind byte, following
// replay_event_name in QEMU's replay/replay.c: "INSTRUCTION",
// "ASYNC_NET", "SHUTDOWN_HOST_QMP_QUIT", "CHECKPOINT_CLOCK_WARP_ACCOUNT",
// "END"; "UNKNOWN(41)" for a byte that is no QEMU 7.2 kind.
func KindName(kind byte) string {
	switch {
	case kind >= KindShutdown && kind <= KindShutdownLast:
		return "SHUTDOWN_" + shutdownCauseNames[kind-KindShutdown]
	case kind >= KindCheckpoint && kind <= KindCheckpointLast:
		return "CHECKPOINT_" + checkpointNames[kind-KindCheckpoint]
	}
	if n, ok := simpleKindNames[kind]; ok {
		return n
	}
	return fmt.Sprintf("UNKNOWN(%d)", kind)
}

// DecodeError reports an event that cannot be part of a QEMU 7.2 log. It
// wraps ErrCorruptLog.
type DecodeError struct {
	// Offset is the stream offset, in bytes, of the first byte of the
	// offending event (header excluded).
	Offset uint64
	// Kind is the event's kind byte.
	Kind byte
	// Reason says what is wrong.
	Reason string
}

func (e *DecodeError) Error() string {
	return fmt.Sprintf("logchan: replay log offset %d: event %s (kind %d): %s",
		e.Offset, KindName(e.Kind), e.Kind, e.Reason)
}

// Unwrap returns ErrCorruptLog.
func (e *DecodeError) Unwrap() error { return ErrCorruptLog }

// Chunk is the result of one Decoder.Feed: the events that became complete.
type Chunk struct {
	// Offset is the stream offset of Data[0] in bytes, counted from the
	// first event byte (a file header is excluded). Chunks returned by one
	// Decoder are contiguous: each Offset is the previous Offset plus the
	// previous len(Data).
	Offset uint64
	// Data holds whole events only. It is a copy that the caller owns.
	// It is nil when no event became complete.
	Data []byte
	// Events is the number of events in Data.
	Events int
	// Instructions is the sum of the counts of the INSTRUCTION events in
	// Data: the guest instructions a replaying QEMU executes for them.
	Instructions uint64
	// End reports that Data ends with the END event.
	End bool
	// Shutdown reports that Data contains a SHUTDOWN event.
	Shutdown bool
	// LastClock is the value of the last CLOCK_HOST event in Data (host
	// realtime clock, ns), or 0 when Data has none.
	LastClock int64
}

// Decoder splits a QEMU 7.2 replay log into whole events, incrementally.
// It keeps its parse state between Feed calls, so no byte is parsed twice
// and an event of any size split over many calls costs time linear in its
// size; it holds no more than the bytes of the one incomplete event (plus a
// few bytes of header and trailer). A Decoder is not safe for concurrent
// use.
type Decoder struct {
	// header (file mode)
	hdr     [HeaderSize]byte
	hdrHave int
	hdrWant int
	version uint32

	err   error
	ended bool
	// trailer holds up to maxTrailer bytes seen after END.
	trailer    []byte
	trailerLen uint64

	off    uint64 // bytes of whole events returned so far
	events uint64
	instr  uint64
	pend   []byte // bytes of the incomplete event

	// parse state of the incomplete event
	inEvent bool
	kind    byte
	evStart uint64
	next    uint8 // what to do when the current need is met
	fieldN  int   // bytes of the field being collected (0: none)
	fldHave int   // bytes of the field collected so far
	fld     [8]byte
	skip    uint64 // payload bytes still to pass over
	evInstr uint64 // INSTRUCTION count of the current event
	evClock int64  // CLOCK_HOST value of the current event

	cur Chunk // statistics of the chunk being built
}

const maxTrailer = 64

// what to do once the current field or skip is complete
const (
	nxDone          uint8 = iota // event complete
	nxInstr                      // field: INSTRUCTION count
	nxClock                      // field: CLOCK value
	nxArrayLenField              // skip done: collect the array length dword
	nxArrayLen                   // field: array length; skip the array
	nxInputKind                  // field: InputEventKind
	nxKeyKind                    // field: KeyValueKind
	nxAudioIn                    // field: samples recorded
)

// NewStreamDecoder returns a decoder for the byte stream that QEMU writes
// into a FIFO: no header, the first byte is the first event (QEMU's seek
// past the header fails on a pipe, replay_enable in replay/replay.c).
func NewStreamDecoder() *Decoder { return &Decoder{} }

// ResumeStreamDecoder returns a stream decoder that goes on where another
// one (in a process before a planned restart) stopped: off, events and
// instr are its Offset, Events and Instructions, pending the bytes of its
// incomplete event (PendingBytes). Every count goes on from there; Feed
// returns pending's bytes with the rest of their event.
func ResumeStreamDecoder(off, events, instr uint64, pending []byte) (*Decoder, error) {
	d := &Decoder{off: off, events: events, instr: instr}
	if len(pending) > 0 {
		c, err := d.Feed(pending)
		if err != nil {
			return nil, err
		}
		if len(c.Data) > 0 {
			return nil, fmt.Errorf("logchan: resuming a decoder: its %d pending bytes hold a whole event", len(pending))
		}
	}
	return d, nil
}

// PendingBytes returns a copy of the bytes of the incomplete event (see
// ResumeStreamDecoder).
func (d *Decoder) PendingBytes() []byte { return append([]byte(nil), d.pend...) }

// NewFileDecoder returns a decoder for a log file: a 12-byte header (the
// big-endian version dword and 8 unused bytes), then events. A finished
// log carries LogVersionQEMU72; a log still being written carries 0 and is
// accepted too. Any other version makes Feed fail with an error wrapping
// ErrUnsupportedLogVersion.
func NewFileDecoder() *Decoder { return &Decoder{hdrWant: HeaderSize} }

// Offset returns the number of event bytes returned in chunks so far: the
// stream offset just after the last whole event.
func (d *Decoder) Offset() uint64 { return d.off }

// Pending returns the number of bytes of the incomplete event held back
// (header bytes are not counted).
func (d *Decoder) Pending() int { return len(d.pend) }

// Instructions returns the sum of the INSTRUCTION counts of all events
// returned so far: the icount a replaying QEMU reaches when it has
// executed them.
func (d *Decoder) Instructions() uint64 { return d.instr }

// Events returns the number of events returned so far.
func (d *Decoder) Events() uint64 { return d.events }

// Ended reports whether the END event has been returned.
func (d *Decoder) Ended() bool { return d.ended }

// Trailer returns the first bytes (at most 64) that followed the END
// event, and their total count. They are not events: a recording QEMU that
// exits while writing into a pipe appends the 4-byte version there, since
// its seek back to the header fails (replay_finish, replay/replay.c).
func (d *Decoder) Trailer() ([]byte, uint64) {
	return append([]byte(nil), d.trailer...), d.trailerLen
}

// Version returns the version found in a file header: LogVersionQEMU72,
// or 0 for a growing log, a stream decoder, or a header not yet complete.
func (d *Decoder) Version() uint32 { return d.version }

// Err returns the error that stopped the decoder, or nil.
func (d *Decoder) Err() error { return d.err }

// Feed appends p to the stream and returns the events that became complete.
// p is not retained. After END, further bytes are recorded as trailer
// (see Trailer) and never returned as events. On a decode error Feed
// returns the whole events before the bad one (which are valid) together
// with the error; from then on the decoder stays failed and every Feed
// returns the same error.
func (d *Decoder) Feed(p []byte) (Chunk, error) {
	if d.err != nil {
		return Chunk{Offset: d.off}, d.err
	}
	if d.ended {
		d.addTrailer(p)
		return Chunk{Offset: d.off}, nil
	}
	if d.hdrHave < d.hdrWant {
		n := copy(d.hdr[d.hdrHave:d.hdrWant], p)
		d.hdrHave += n
		p = p[n:]
		if d.hdrHave < d.hdrWant {
			return Chunk{Offset: d.off}, nil
		}
		v := binary.BigEndian.Uint32(d.hdr[:4])
		if v != LogVersionQEMU72 && v != 0 {
			d.err = fmt.Errorf("%w: log header has version %#x, only QEMU 7.2's %#x is supported",
				ErrUnsupportedLogVersion, v, LogVersionQEMU72)
			return Chunk{Offset: d.off}, d.err
		}
		d.version = v
	}

	d.cur = Chunk{Offset: d.off}
	base := d.off + uint64(len(d.pend))
	b, err := d.scan(p, base)
	c := d.cur
	if b >= 0 {
		// d.pend's bytes belong to the first completed event: hand the
		// buffer to the caller instead of copying it again.
		c.Data = append(d.pend, p[:b]...)
		d.pend = nil
		d.off += uint64(len(c.Data))
		d.events += uint64(c.Events)
		d.instr += c.Instructions
		p = p[b:]
	}
	if err != nil {
		d.err = err
		d.pend = nil
		return c, err
	}
	if d.ended {
		d.addTrailer(p)
	} else if len(p) > 0 {
		d.pend = append(d.pend, p...)
	}
	return c, nil
}

func (d *Decoder) addTrailer(p []byte) {
	d.trailerLen += uint64(len(p))
	if room := maxTrailer - len(d.trailer); room > 0 {
		if len(p) > room {
			p = p[:room]
		}
		d.trailer = append(d.trailer, p...)
	}
}

// scan parses p, whose first byte is at stream offset base, continuing the
// parse state. It returns the index in p just after the last event that
// became complete, or -1, and records statistics in d.cur. It stops after
// END. On error, the index returned is still that of the last complete
// event.
func (d *Decoder) scan(p []byte, base uint64) (int, error) {
	return d.scanN(p, base, false)
}

// scanN is scan, stopping after the first complete event if one is set.
func (d *Decoder) scanN(p []byte, base uint64, one bool) (int, error) {
	last := -1
	i := 0
	for i < len(p) {
		if !d.inEvent {
			// Fast path for the small fixed-size events that make up
			// nearly all of a log, when they are whole in p.
			if n := d.fastEvent(p[i:]); n > 0 {
				i += n
				last = i
				if one {
					return last, nil
				}
				continue
			}
		}
		switch {
		case !d.inEvent:
			k := p[i]
			if k >= kindCount {
				return last, &DecodeError{Offset: base + uint64(i), Kind: k, Reason: "unknown event kind"}
			}
			d.inEvent = true
			d.kind = k
			d.evStart = base + uint64(i)
			i++
			if err := d.begin(k); err != nil {
				return last, err
			}
		case d.skip > 0:
			n := uint64(len(p) - i)
			if n > d.skip {
				n = d.skip
			}
			i += int(n)
			d.skip -= n
			if d.skip > 0 {
				return last, nil // i == len(p)
			}
			if err := d.then(0); err != nil {
				return last, err
			}
		default: // d.fieldN > 0
			var v uint64
			if d.fldHave == 0 && len(p)-i >= d.fieldN {
				v = beUint(p[i : i+d.fieldN])
				i += d.fieldN
			} else {
				n := copy(d.fld[d.fldHave:d.fieldN], p[i:])
				i += n
				d.fldHave += n
				if d.fldHave < d.fieldN {
					return last, nil // i == len(p)
				}
				v = beUint(d.fld[:d.fieldN])
				d.fldHave = 0
			}
			d.fieldN = 0
			if err := d.then(v); err != nil {
				return last, err
			}
		}
		if d.inEvent && d.fieldN == 0 && d.skip == 0 && d.next == nxDone {
			d.complete()
			last = i
			if d.ended || one {
				return last, nil
			}
		}
	}
	return last, nil
}

// fastEvent accounts for the event at the start of p and returns its
// length if it is one of the common fixed-size kinds and is whole in p;
// otherwise it returns 0 and the state machine takes over.
func (d *Decoder) fastEvent(p []byte) int {
	k := p[0]
	switch {
	case k >= KindCheckpoint && k <= KindCheckpointLast,
		k == KindInterrupt, k == KindException, k == KindAsyncInputSync:
		d.cur.Events++
		return 1
	case k == KindInstruction:
		if len(p) < 5 {
			return 0
		}
		d.cur.Instructions += uint64(binary.BigEndian.Uint32(p[1:]))
		d.cur.Events++
		return 5
	case k == KindClockHost:
		if len(p) < 9 {
			return 0
		}
		d.cur.LastClock = int64(binary.BigEndian.Uint64(p[1:]))
		d.cur.Events++
		return 9
	case k == KindClockVirtualRT, k == KindCharWrite, k == KindAsyncBH,
		k == KindAsyncBHOneshot, k == KindAsyncBlock, k == KindAudioOut:
		if len(p) < 9 {
			return 0
		}
		d.cur.Events++
		return 9
	}
	return 0
}

func beUint(b []byte) uint64 {
	switch len(b) {
	case 4:
		return uint64(binary.BigEndian.Uint32(b))
	case 8:
		return binary.BigEndian.Uint64(b)
	}
	panic("logchan: bad field size")
}

// begin sets up the parse of the payload of an event of kind k; the
// layouts are those of QEMU 7.2 (see the Kind constants).
func (d *Decoder) begin(k byte) error {
	d.next = nxDone
	d.fieldN = 0
	d.skip = 0
	d.evInstr = 0
	switch {
	case k == KindInstruction:
		d.field(4, nxInstr)
	case k == KindInterrupt, k == KindException, k == KindAsyncInputSync, k == KindEnd,
		k >= KindShutdown && k <= KindShutdownLast,
		k >= KindCheckpoint && k <= KindCheckpointLast:
		// no payload
	case k == KindAsyncBH, k == KindAsyncBHOneshot, k == KindAsyncBlock,
		k == KindCharWrite, k == KindAudioOut:
		d.skipThen(8, nxDone)
	case k == KindCharReadAllError:
		d.skipThen(4, nxDone)
	case k == KindClockHost, k == KindClockVirtualRT:
		d.field(8, nxClock)
	case k == KindAsyncInput:
		d.field(4, nxInputKind)
	case k == KindAsyncCharRead:
		d.skipThen(1, nxArrayLenField)
	case k == KindAsyncNet:
		d.skipThen(1+4, nxArrayLenField)
	case k == KindCharReadAll:
		d.field(4, nxArrayLen)
	case k == KindRandom:
		d.skipThen(4, nxArrayLenField)
	case k == KindAudioIn:
		d.field(8, nxAudioIn)
	default:
		return d.fail("unknown event kind")
	}
	return nil
}

func (d *Decoder) field(n int, next uint8) {
	d.fieldN = n
	d.fldHave = 0
	d.next = next
}

func (d *Decoder) skipThen(n uint64, next uint8) {
	d.skip = n
	d.next = next
}

func (d *Decoder) fail(reason string) error {
	return &DecodeError{Offset: d.evStart, Kind: d.kind, Reason: reason}
}

// then is called when the current field (with its value v) or skip is
// complete.
func (d *Decoder) then(v uint64) error {
	switch d.next {
	case nxDone:
	case nxInstr:
		d.evInstr = v
		d.next = nxDone
	case nxClock:
		if d.kind == KindClockHost {
			d.evClock = int64(v)
		}
		d.next = nxDone
	case nxArrayLenField:
		d.field(4, nxArrayLen)
	case nxArrayLen:
		if v > MaxArrayLen {
			return d.fail(fmt.Sprintf("array length %d exceeds %d", v, MaxArrayLen))
		}
		d.skipThen(v, nxDone)
	case nxInputKind:
		switch v {
		case inputKindKey:
			d.field(4, nxKeyKind)
		case inputKindBtn:
			d.skipThen(4+1, nxDone)
		case inputKindRel, inputKindAbs:
			d.skipThen(4+8, nxDone)
		default:
			return d.fail(fmt.Sprintf("unknown input event kind %d (QEMU 7.2 has key, btn, rel, abs)", v))
		}
	case nxKeyKind:
		switch v {
		case keyValueNumber:
			d.skipThen(8+1, nxDone)
		case keyValueQcode:
			d.skipThen(4+1, nxDone)
		default:
			return d.fail(fmt.Sprintf("unknown key value kind %d", v))
		}
	case nxAudioIn:
		// QEMU writes the ring positions (wpos - recorded) mod size up to
		// wpos: recorded samples for 0 < recorded < size, which is all
		// a decoder can know (size is not in the log).
		if v > MaxArrayLen/16 {
			return d.fail(fmt.Sprintf("%d audio samples exceed %d bytes", v, MaxArrayLen))
		}
		d.skipThen(8+16*v, nxDone)
	}
	return nil
}

// complete accounts for the event that just ended.
func (d *Decoder) complete() {
	d.inEvent = false
	d.cur.Events++
	switch k := d.kind; {
	case k == KindInstruction:
		d.cur.Instructions += d.evInstr
	case k == KindClockHost:
		d.cur.LastClock = d.evClock
	case k >= KindShutdown && k <= KindShutdownLast:
		d.cur.Shutdown = true
	case k == KindEnd:
		d.cur.End = true
		d.ended = true
	}
}

// ScanEvents checks that data holds whole QEMU 7.2 events only (no header,
// nothing after an END event) and returns their statistics in a Chunk with
// Offset 0 and Data set to data. It returns an error wrapping
// ErrPartialEvent if data ends inside an event or bytes follow END, and a
// *DecodeError for corrupt data.
func ScanEvents(data []byte) (Chunk, error) {
	var d Decoder
	b, err := d.scan(data, 0)
	if err != nil {
		return Chunk{}, err
	}
	if d.inEvent {
		return Chunk{}, fmt.Errorf("%w: %d bytes at the end are an incomplete %s event",
			ErrPartialEvent, len(data)-max(b, 0), KindName(d.kind))
	}
	if b >= 0 && b != len(data) {
		return Chunk{}, fmt.Errorf("%w: %d bytes follow the END event", ErrPartialEvent, len(data)-b)
	}
	c := d.cur
	c.Data = data
	return c, nil
}

// SplitChunk splits c into chunks whose Data holds at most maxLen bytes,
// cutting only between events, each with its Offset and statistics set.
// The parts share c.Data's memory. It fails if one event is larger than
// maxLen or c.Data is not whole events. A Chunk that fits is returned as
// is, without parsing.
func SplitChunk(c Chunk, maxLen int) ([]Chunk, error) {
	if len(c.Data) <= maxLen {
		return []Chunk{c}, nil
	}
	if maxLen <= 0 {
		return nil, fmt.Errorf("logchan: cannot split into parts of %d bytes", maxLen)
	}
	var d Decoder
	var parts []Chunk
	cur := Chunk{Offset: c.Offset}
	start := 0 // index in c.Data of cur's first byte
	i := 0
	for i < len(c.Data) {
		if d.ended {
			return nil, fmt.Errorf("%w: %d bytes follow the END event", ErrPartialEvent, len(c.Data)-i)
		}
		d.cur = Chunk{}
		n, err := d.scanOne(c.Data[i:], c.Offset+uint64(i))
		if err != nil {
			return nil, err
		}
		if n < 0 {
			return nil, fmt.Errorf("%w: %d bytes at the end are an incomplete %s event",
				ErrPartialEvent, len(c.Data)-i, KindName(c.Data[i]))
		}
		if n > maxLen {
			return nil, fmt.Errorf("logchan: event %s at offset %d has %d bytes, more than %d",
				KindName(c.Data[i]), c.Offset+uint64(i), n, maxLen)
		}
		if i+n-start > maxLen {
			cur.Data = c.Data[start:i:i]
			parts = append(parts, cur)
			cur = Chunk{Offset: c.Offset + uint64(i)}
			start = i
		}
		cur.Events += d.cur.Events
		cur.Instructions += d.cur.Instructions
		cur.Shutdown = cur.Shutdown || d.cur.Shutdown
		cur.End = d.cur.End
		if d.cur.LastClock != 0 {
			cur.LastClock = d.cur.LastClock
		}
		i += n
	}
	cur.Data = c.Data[start:]
	parts = append(parts, cur)
	return parts, nil
}

// scanOne parses one event from the start of p (the decoder must be
// between events), accounts for it in d.cur and returns its length, or -1
// if p ends inside it.
func (d *Decoder) scanOne(p []byte, base uint64) (int, error) {
	return d.scanN(p, base, true)
}

// WalkEvents calls fn for each whole event at the start of data, in order,
// with its stream offset (base + index), its bytes (sharing data's memory)
// and its instruction count (the INSTRUCTION event's count, else 0). It
// stops early when fn returns false. It returns the number of bytes walked
// and an error for corrupt data; an incomplete event at the end is not
// walked and is no error. For diagnostics (test/tools/rrdump).
func WalkEvents(data []byte, base uint64, fn func(off uint64, ev []byte, instr uint64) bool) (int, error) {
	var d Decoder
	i := 0
	for i < len(data) && !d.ended {
		d.cur = Chunk{}
		n, err := d.scanOne(data[i:], base+uint64(i))
		if err != nil {
			return i, err
		}
		if n < 0 {
			return i, nil
		}
		if !fn(base+uint64(i), data[i:i+n], d.cur.Instructions) {
			return i + n, nil
		}
		i += n
	}
	return i, nil
}
