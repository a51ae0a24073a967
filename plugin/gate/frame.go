package gate

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// MaxFrameLen is the largest frame QEMU's filter-redirector sends or
// accepts: NET_BUFSIZE = 4096 + 65536 = 69632 bytes (include/net/net.h; the
// receiver's buffer in net/net.c net_fill_rstate has that size). A length
// prefix above it is a malformed frame.
const MaxFrameLen = 4096 + 65536

// FrameHeaderLen is the size of the length prefix: 4 bytes, big-endian.
const FrameHeaderLen = 4

// ErrMalformed is wrapped by the framing functions when a length prefix is
// 0 or above MaxFrameLen (QEMU's net/filter-mirror.c filter_send never
// sends an empty frame), and by WriteFrame when asked to write such a
// frame. A stream that has carried a malformed frame cannot be resynced:
// drop the connection.
var ErrMalformed = errors.New("gate: malformed frame")

// ReadFrame reads one frame in QEMU's socket framing (net/filter-mirror.c
// filter_send, net/net.c net_fill_rstate, vnet_hdr_support=off): a 4-byte
// big-endian length n, then n bytes of Ethernet frame, returned in a new
// slice of length n.
//
// Errors: io.EOF, unwrapped, at a clean end before a frame starts; an error
// wrapping ErrMalformed for n == 0 or n > MaxFrameLen (it names n and the
// limit, and nothing past the prefix has been read); one wrapping
// io.ErrUnexpectedEOF when the stream ends inside a frame (it says how many
// bytes came); any other read error wrapped as "gate: reading frame: ...".
func ReadFrame(r io.Reader) ([]byte, error) {
	var hdr [FrameHeaderLen]byte
	return readFrame(r, hdr[:])
}

func readFrame(r io.Reader, hdr []byte) ([]byte, error) {
	if m, err := io.ReadFull(r, hdr); err != nil {
		switch err {
		case io.EOF:
			return nil, io.EOF
		case io.ErrUnexpectedEOF:
			return nil, fmt.Errorf("gate: truncated frame: stream ended after %d of the %d bytes of a length prefix: %w", m, FrameHeaderLen, err)
		}
		return nil, fmt.Errorf("gate: reading frame: %w", err)
	}
	n := binary.BigEndian.Uint32(hdr)
	if err := checkLen(uint64(n)); err != nil {
		return nil, err
	}
	data := make([]byte, n)
	if m, err := io.ReadFull(r, data); err != nil {
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return nil, fmt.Errorf("gate: truncated frame: stream ended after %d of its %d bytes: %w", m, n, io.ErrUnexpectedEOF)
		}
		return nil, fmt.Errorf("gate: reading frame: %w", err)
	}
	return data, nil
}

func checkLen(n uint64) error {
	if n == 0 {
		return fmt.Errorf("%w: length 0 (QEMU never sends an empty frame)", ErrMalformed)
	}
	if n > MaxFrameLen {
		return fmt.Errorf("%w: length %d bytes exceeds the limit of %d bytes (QEMU's NET_BUFSIZE)", ErrMalformed, n, MaxFrameLen)
	}
	return nil
}

// WriteFrame writes frame to w in QEMU's socket framing (see ReadFrame), as
// one Write call of FrameHeaderLen+len(frame) bytes. It refuses, before
// writing anything, an empty frame or one over MaxFrameLen (error wrapping
// ErrMalformed); otherwise it returns w's error, or io.ErrShortWrite.
func WriteFrame(w io.Writer, frame []byte) error {
	if err := checkLen(uint64(len(frame))); err != nil {
		return err
	}
	buf := appendFrame(make([]byte, 0, FrameHeaderLen+len(frame)), frame)
	n, err := w.Write(buf)
	if err == nil && n < len(buf) {
		err = io.ErrShortWrite
	}
	return err
}

// appendFrame appends frame with its length prefix to dst; the length is
// not checked.
func appendFrame(dst, frame []byte) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(frame)))
	return append(dst, frame...)
}
