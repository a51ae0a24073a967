package logchan

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// BenchmarkLogZstd measures whether compressing the log channel's Log
// frames with zstd (github.com/klauspost/compress, the candidate)
// could pay: for each stream, the compression ratio and the CPU per MB of
// log to compress and to decompress it as the wire would carry it, one
// streaming encoder per channel flushed after every Log frame (16 KiB of
// log: about what the primary's pump reads from FIFO A at a time under
// load), so that the backup can decode each frame on arrival. Streams:
//   - boot: the fixture, a real log of a boot (instructions, interrupts,
//     clock events, disk and network completions);
//   - rx-pattern: a bulk receive's log as the network bench's receive
//     makes it (tcpcheck bulk -fill pattern: a repeated a-z): per received
//     segment an INSTRUCTION, the ASYNC_NET with the packet, a checkpoint;
//   - rx-random: the same with incompressible packets (-fill random, or
//     any encrypted or already-compressed traffic).
//
// Figures: MB/s of log in (b.SetBytes), ratio = log bytes / wire bytes.
// The decision and the figures are in BENCHMARKS.md (session 49).
func BenchmarkLogZstd(b *testing.B) {
	streams := []struct {
		name string
		data func(tb testing.TB) []byte
	}{
		{"boot", func(tb testing.TB) []byte { return fixture(tb)[HeaderSize:] }},
		{"rx-pattern", func(testing.TB) []byte { return rxLog(8<<20, false) }},
		{"rx-random", func(testing.TB) []byte { return rxLog(8<<20, true) }},
	}
	levels := []zstd.EncoderLevel{zstd.SpeedFastest, zstd.SpeedDefault}
	const frame = 16 << 10
	for _, s := range streams {
		data := s.data(b)
		for _, lv := range levels {
			b.Run(fmt.Sprintf("%s/%s/compress", s.name, lv), func(b *testing.B) {
				var wire bytes.Buffer
				enc := newLogEncoder(b, &wire, lv)
				b.SetBytes(int64(len(data)))
				var out int
				for b.Loop() {
					wire.Reset()
					enc.Reset(&wire)
					out = compressFrames(b, enc, &wire, data, frame)
				}
				b.ReportMetric(float64(len(data))/float64(out), "ratio")
			})
			b.Run(fmt.Sprintf("%s/%s/decompress", s.name, lv), func(b *testing.B) {
				var wire bytes.Buffer
				enc := newLogEncoder(b, &wire, lv)
				compressFrames(b, enc, &wire, data, frame)
				packed := append([]byte(nil), wire.Bytes()...)
				dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true))
				if err != nil {
					b.Fatal(err)
				}
				defer dec.Close()
				buf := make([]byte, 64<<10)
				b.SetBytes(int64(len(data)))
				for b.Loop() {
					if err := dec.Reset(bytes.NewReader(packed)); err != nil {
						b.Fatal(err)
					}
					n := 0
					for {
						m, err := dec.Read(buf)
						n += m
						if err != nil {
							break
						}
					}
					if n != len(data) {
						b.Fatalf("decompressed %d bytes of %d", n, len(data))
					}
				}
			})
		}
	}
}

// newLogEncoder is one log channel's streaming encoder at level lv, one
// goroutine, as the wire would use it.
func newLogEncoder(tb testing.TB, w io.Writer, lv zstd.EncoderLevel) *zstd.Encoder {
	enc, err := zstd.NewWriter(w, zstd.WithEncoderLevel(lv), zstd.WithEncoderConcurrency(1), zstd.WithLowerEncoderMem(true))
	if err != nil {
		tb.Fatal(err)
	}
	return enc
}

// compressFrames writes data through enc in frame-byte pieces, flushing
// after each (a Log frame the backup can decode on arrival); it returns
// the bytes on the wire.
func compressFrames(tb testing.TB, enc *zstd.Encoder, wire *bytes.Buffer, data []byte, frame int) int {
	for i := 0; i < len(data); i += frame {
		if _, err := enc.Write(data[i:min(i+frame, len(data))]); err != nil {
			tb.Fatal(err)
		}
		if err := enc.Flush(); err != nil {
			tb.Fatal(err)
		}
	}
	if err := enc.Close(); err != nil {
		tb.Fatal(err)
	}
	return wire.Len()
}

// rxLog builds about n bytes of a bulk receive's log: per received
// 1514-byte segment (the lab's tap hands the guest frames of the MTU) an
// INSTRUCTION, the ASYNC_NET event with the frame and a CLOCK_VIRTUAL
// checkpoint. Frames carry the network bench's a-z pattern, or random
// bytes.
func rxLog(n int, random bool) []byte {
	r := rand.New(rand.NewPCG(1, 2))
	pkt := make([]byte, 1514)
	var out []byte
	for i := 0; len(out) < n; i++ {
		for j := range pkt {
			if random {
				pkt[j] = byte(r.Uint32())
			} else {
				pkt[j] = byte('a' + (i*1460+j)%26)
			}
		}
		out = append(out, evInstruction(uint32(2000+r.IntN(3000)))...)
		out = append(out, evNet(0, 0, pkt)...)
		out = append(out, KindCheckpoint)
	}
	return out
}
