package logchan

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"io"
	"math/rand/v2"
	"os"
	"sync"
	"testing"
)

// The fixture is a real log: test/guest booted under QEMU 7.2.22
// (Debian 1:7.2+dfsg-7+deb12u18) with a qcow2 disk under blkreplay and a
// virtio-net NIC with filter-replay, quit through QMP. Regenerate it with
// testdata/record-fixture.sh.
const fixturePath = "testdata/boot.rrlog.gz"

var fixtureOnce = sync.OnceValues(func() ([]byte, error) {
	f, err := os.Open(fixturePath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	z, err := gzip.NewReader(f)
	if err != nil {
		return nil, err
	}
	return io.ReadAll(z)
})

// fixture returns the whole log file, header included.
func fixture(tb testing.TB) []byte {
	tb.Helper()
	b, err := fixtureOnce()
	if err != nil {
		tb.Fatalf("fixture: %v", err)
	}
	return b
}

// eachEvent calls f for every event of a stream of whole events.
func eachEvent(tb testing.TB, data []byte, f func(kind byte, ev []byte)) {
	tb.Helper()
	var d Decoder
	for i := 0; i < len(data); {
		n, err := d.scanOne(data[i:], uint64(i))
		if err != nil || n <= 0 {
			tb.Fatalf("event at %d: %d %v", i, n, err)
		}
		f(data[i], data[i:i+n])
		i += n
	}
}

func TestFixtureFileDecoder(t *testing.T) {
	file := fixture(t)
	if v := binary.BigEndian.Uint32(file); v != LogVersionQEMU72 {
		t.Fatalf("fixture header version %#x", v)
	}
	d := NewFileDecoder()
	c, err := d.Feed(file)
	if err != nil {
		t.Fatal(err)
	}
	stream := file[HeaderSize:]
	if !c.End || !bytes.Equal(c.Data, stream) || d.Pending() != 0 || d.Offset() != uint64(len(stream)) {
		t.Fatalf("end %v, %d of %d bytes, pending %d", c.End, len(c.Data), len(stream), d.Pending())
	}
	if tr, n := d.Trailer(); n != 0 {
		t.Fatalf("bytes after END: %x", tr)
	}
	if d.Version() != LogVersionQEMU72 {
		t.Fatalf("version %#x", d.Version())
	}

	counts := map[byte]int{}
	var instr uint64
	var kinds []byte
	eachEvent(t, stream, func(k byte, ev []byte) {
		counts[k]++
		kinds = append(kinds, k)
		if k == KindInstruction {
			instr += uint64(binary.BigEndian.Uint32(ev[1:]))
		}
	})
	if instr != c.Instructions || instr != d.Instructions() {
		t.Fatalf("instructions %d, chunk %d", instr, c.Instructions)
	}
	if len(kinds) != c.Events {
		t.Fatalf("%d events, chunk says %d", len(kinds), c.Events)
	}
	for _, k := range []byte{KindInstruction, KindCheckpoint + 1, KindClockHost, KindClockVirtualRT, KindAsyncBlock, KindInterrupt, KindException, KindCharWrite} {
		if counts[k] == 0 {
			t.Errorf("fixture has no %s event", KindName(k))
		}
	}
	// A QMP quit: SHUTDOWN_HOST_QMP_QUIT, then replay_finish's
	// SHUTDOWN_HOST_SIGNAL and END.
	n := len(kinds)
	if kinds[n-1] != KindEnd || kinds[n-2] != KindShutdown+4 || counts[KindShutdown+2] != 1 {
		t.Errorf("log ends with %s %s", KindName(kinds[n-2]), KindName(kinds[n-1]))
	}
	if testing.Verbose() {
		for k := range byte(kindCount) {
			if counts[k] > 0 {
				t.Logf("%-32s %7d", KindName(k), counts[k])
			}
		}
		t.Logf("%d events, %d bytes, %d instructions", len(kinds), len(stream), instr)
	}
}

// TestFixtureStreamPieces feeds the fixture without its header, as QEMU
// writes it into a FIFO, in random pieces.
func TestFixtureStreamPieces(t *testing.T) {
	stream := fixture(t)[HeaderSize:]
	r := rand.New(rand.NewPCG(7, 7))
	for round := range 3 {
		d := NewStreamDecoder()
		var got []byte
		feeds := 0
		for i := 0; i < len(stream); feeds++ {
			var n int
			switch round {
			case 0:
				n = 1 + r.IntN(16)
			case 1:
				n = 1 + r.IntN(4096)
			default:
				n = 1 + r.IntN(200000)
			}
			n = min(n, len(stream)-i)
			c, err := d.Feed(stream[i : i+n])
			if err != nil {
				t.Fatal(err)
			}
			if c.Offset != uint64(len(got)) {
				t.Fatalf("chunk offset %d, want %d", c.Offset, len(got))
			}
			got = append(got, c.Data...)
			i += n
		}
		if !bytes.Equal(got, stream) || !d.Ended() || d.Pending() != 0 {
			t.Fatalf("round %d: %d of %d bytes in %d feeds", round, len(got), len(stream), feeds)
		}
	}
}

// TestFixtureAsPipe feeds the fixture the way a QEMU that exits while
// recording into a pipe leaves it: the events, END, then the version.
func TestFixtureAsPipe(t *testing.T) {
	file := fixture(t)
	stream := append(append([]byte{}, file[HeaderSize:]...), file[:4]...)
	d := NewStreamDecoder()
	var got []byte
	for i := 0; i < len(stream); i += 65536 {
		c, err := d.Feed(stream[i:min(i+65536, len(stream))])
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, c.Data...)
	}
	if !bytes.Equal(got, file[HeaderSize:]) {
		t.Fatal("events differ")
	}
	if tr, n := d.Trailer(); n != 4 || binary.BigEndian.Uint32(tr) != LogVersionQEMU72 {
		t.Fatalf("trailer %x", tr)
	}
}

// BenchmarkCodecFraming decodes the fixture as a stream fed in 64 KiB
// reads and encodes each chunk as Log frames into a discarding writer:
// the primary daemon's path from FIFO A to the TCP connection.
func BenchmarkCodecFraming(b *testing.B) {
	stream := fixture(b)[HeaderSize:]
	b.SetBytes(int64(len(stream)))
	b.ReportAllocs()
	for b.Loop() {
		frameStream(b, stream, io.Discard)
	}
}

// frameStream decodes stream fed in 64 KiB reads and writes each chunk as
// Log frames to w: the primary daemon's path from FIFO A to the channel.
func frameStream(b *testing.B, stream []byte, w io.Writer) {
	d := NewStreamDecoder()
	for i := 0; i < len(stream); i += 64 << 10 {
		c, err := d.Feed(stream[i:min(i+64<<10, len(stream))])
		if err != nil {
			b.Fatal(err)
		}
		if len(c.Data) == 0 {
			continue
		}
		parts, err := SplitChunk(c, MaxLogData)
		if err != nil {
			b.Fatal(err)
		}
		for _, p := range parts {
			if err := WriteLogFrame(w, p.Offset, p.Data); err != nil {
				b.Fatal(err)
			}
		}
	}
	if !d.Ended() {
		b.Fatal("did not reach END")
	}
}
