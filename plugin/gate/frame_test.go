package gate

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestFrameRoundTrip(t *testing.T) {
	frames := [][]byte{
		{0x42},
		bytes.Repeat([]byte{0xab}, 60),
		bytes.Repeat([]byte{1, 2, 3}, 505), // 1515
		bytes.Repeat([]byte{7}, MaxFrameLen),
	}
	var b bytes.Buffer
	for _, f := range frames {
		if err := WriteFrame(&b, f); err != nil {
			t.Fatal(err)
		}
	}
	// The wire form is QEMU's: 4-byte big-endian length, then the frame.
	if got := b.Bytes()[:5]; !bytes.Equal(got, []byte{0, 0, 0, 1, 0x42}) {
		t.Fatalf("wire form % x", got)
	}
	for i, w := range frames {
		got, err := ReadFrame(&b)
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if !bytes.Equal(got, w) {
			t.Fatalf("frame %d: %d bytes back, want %d", i, len(got), len(w))
		}
	}
	if _, err := ReadFrame(&b); err != io.EOF {
		t.Fatalf("at the end: %v, want io.EOF", err)
	}
}

func TestReadFrameMalformed(t *testing.T) {
	hdr := func(n uint32) []byte { return binary.BigEndian.AppendUint32(nil, n) }
	for _, tc := range []struct {
		name  string
		in    []byte
		is    error
		words []string
	}{
		{"length over NET_BUFSIZE", append(hdr(MaxFrameLen+1), make([]byte, 100)...), ErrMalformed, []string{"69633", "69632"}},
		{"huge length", hdr(0xffffffff), ErrMalformed, []string{"4294967295", "69632"}},
		{"length 0", append(hdr(0), 1, 2, 3), ErrMalformed, []string{"length 0"}},
		{"truncated payload", append(hdr(100), make([]byte, 40)...), io.ErrUnexpectedEOF, []string{"40 of its 100"}},
		{"header only", hdr(100), io.ErrUnexpectedEOF, []string{"0 of its 100"}},
		{"truncated header", []byte{0, 0}, io.ErrUnexpectedEOF, []string{"2 of the 4"}},
	} {
		_, err := ReadFrame(bytes.NewReader(tc.in))
		if !errors.Is(err, tc.is) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.is)
			continue
		}
		for _, w := range tc.words {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %q does not say %q", tc.name, err, w)
			}
		}
	}
}

// A read error that is not the end of the stream is reported as such.
func TestReadFrameError(t *testing.T) {
	boom := errors.New("boom")
	_, err := ReadFrame(io.MultiReader(bytes.NewReader([]byte{0, 0, 0, 9, 1}), errReader{boom}))
	if !errors.Is(err, boom) {
		t.Fatalf("%v", err)
	}
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

func TestWriteFrameRefuses(t *testing.T) {
	var b bytes.Buffer
	for _, f := range [][]byte{nil, {}, make([]byte, MaxFrameLen+1)} {
		if err := WriteFrame(&b, f); !errors.Is(err, ErrMalformed) {
			t.Errorf("%d bytes: %v", len(f), err)
		}
	}
	if b.Len() != 0 {
		t.Fatalf("%d bytes written for refused frames", b.Len())
	}
}

type shortWriter struct{}

func (shortWriter) Write(p []byte) (int, error) { return len(p) - 1, nil }

func TestWriteFrameShort(t *testing.T) {
	if err := WriteFrame(shortWriter{}, []byte{1, 2}); err != io.ErrShortWrite {
		t.Fatalf("%v", err)
	}
}
