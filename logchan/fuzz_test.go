package logchan

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"testing"
)

func newDecoder(file bool) *Decoder {
	if file {
		return NewFileDecoder()
	}
	return NewStreamDecoder()
}

// FuzzDecoder feeds any bytes, cut into pieces at points drawn from seed,
// and checks that the decoder never panics, never returns a partial event,
// returns contiguous chunks, and returns exactly what a one-shot decode of
// the same bytes returns (data and error).
func FuzzDecoder(f *testing.F) {
	all, _, _ := allEvents()
	f.Add(all, uint64(1), false)
	f.Add(append(append(all, evEnd()...), 0x00, 0xe0, 0x20, 0x0c), uint64(2), false)
	hdr := binary.BigEndian.AppendUint32(nil, LogVersionQEMU72)
	hdr = append(hdr, make([]byte, 8)...)
	f.Add(append(append(hdr, all...), evEnd()...), uint64(3), true)
	f.Add(append(make([]byte, HeaderSize), all[:100]...), uint64(4), true)
	f.Add([]byte{0, 0xe0, 0x20, 0x0b, 0, 0, 0, 0, 0, 0, 0, 0, 1}, uint64(5), true)
	f.Add([]byte{40}, uint64(6), false)
	f.Add([]byte(ev(KindAsyncNet).u8(0).u32(0).u32(0xffffffff)), uint64(7), false)
	f.Add([]byte(ev(KindAudioIn).u64(3).u64(0)), uint64(8), false)
	f.Add([]byte(ev(KindAsyncInput).u32(0).u32(1).u32(30).u8(1)), uint64(9), false)
	for i, e := range sampleEvents() {
		f.Add(e.data, uint64(100+i), false)
	}

	f.Fuzz(func(t *testing.T, data []byte, seed uint64, file bool) {
		ref := newDecoder(file)
		refChunk, refErr := ref.Feed(data)

		r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
		d := newDecoder(file)
		var got []byte
		var events int
		var instr uint64
		var err error
		for i := 0; i <= len(data) && err == nil; {
			left := len(data) - i
			var n int
			if r.IntN(4) == 0 {
				n = r.IntN(left + 1)
			} else {
				n = r.IntN(min(left, 16) + 1)
			}
			var c Chunk
			c, err = d.Feed(data[i : i+n])
			if c.Offset != uint64(len(got)) {
				t.Fatalf("chunk offset %d, want %d", c.Offset, len(got))
			}
			if len(c.Data) > 0 {
				chk, serr := ScanEvents(c.Data)
				if serr != nil {
					t.Fatalf("chunk at %d is not whole events: %v", c.Offset, serr)
				}
				if chk.Events != c.Events || chk.Instructions != c.Instructions ||
					chk.End != c.End || chk.Shutdown != c.Shutdown || chk.LastClock != c.LastClock {
					t.Fatalf("chunk stats %+v, rescan says %+v", c, chk)
				}
			} else if c.Events != 0 {
				t.Fatalf("%d events without data", c.Events)
			}
			got = append(got, c.Data...)
			events += c.Events
			instr += c.Instructions
			if i == len(data) {
				break
			}
			i += n
		}

		if !bytes.Equal(got, refChunk.Data) {
			t.Fatalf("pieces gave %d bytes, one shot %d", len(got), len(refChunk.Data))
		}
		if (err == nil) != (refErr == nil) || err != nil && err.Error() != refErr.Error() {
			t.Fatalf("pieces: %v; one shot: %v", err, refErr)
		}
		if events != refChunk.Events || instr != refChunk.Instructions || d.Instructions() != instr {
			t.Fatalf("events %d/%d instructions %d/%d", events, refChunk.Events, instr, refChunk.Instructions)
		}
		if d.Offset() != uint64(len(got)) {
			t.Fatalf("Offset %d, returned %d", d.Offset(), len(got))
		}

		// What came out is a prefix of the stream.
		stream := data
		if file {
			stream = data[min(len(data), HeaderSize):]
		}
		if !bytes.HasPrefix(stream, got) {
			t.Fatal("returned bytes are not a prefix of the stream")
		}
		if err == nil {
			_, tl := d.Trailer()
			if uint64(len(got))+uint64(d.Pending())+tl != uint64(len(stream)) {
				t.Fatalf("returned %d + pending %d + trailer %d != %d", len(got), d.Pending(), tl, len(stream))
			}
		}

		// Re-decoding the returned bytes from scratch gives them back
		// whole.
		again := NewStreamDecoder()
		c2, err2 := again.Feed(got)
		if err2 != nil || !bytes.Equal(c2.Data, got) || c2.Events != events || again.Pending() != 0 {
			t.Fatalf("re-decode: %v, %d of %d bytes, %d of %d events", err2, len(c2.Data), len(got), c2.Events, events)
		}
	})
}

// FuzzRecv feeds any bytes to a log channel's reader and a control
// connection's reader: they never panic, never return a payload over its
// type's bound, and stop at the first malformed frame.
func FuzzRecv(f *testing.F) {
	var ok bytes.Buffer
	_ = WriteLogFrame(&ok, 0, []byte(evInstruction(5)))
	_ = WriteFrame(&ok, FrameAck, EncodeAck(Ack{1, 2, 3, 4}))
	_ = WriteFrame(&ok, FrameHeartbeat, EncodeHeartbeat(Heartbeat{Seq: 1, Released: []uint64{3}}))
	_ = WriteFrame(&ok, FrameBye, Bye{Clean: true, Reason: "live", Detail: "x"}.Encode())
	f.Add(ok.Bytes())
	f.Add(AppendFrameHeader(nil, FrameLog, MaxFrameSize))
	f.Add(AppendFrameHeader(nil, FrameAck, 31))
	f.Add(append(AppendFrameHeader(nil, FrameControl, 2), '{', '}'))
	f.Add(append(AppendFrameHeader(nil, FrameData, 3), 1, 2, 3))
	f.Add([]byte{0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		c := &Conn{r: bufio.NewReader(bytes.NewReader(data))}
		for range 64 {
			m, err := c.Recv()
			if err != nil {
				break
			}
			if len(m.Data) > MaxLogData || len(m.Heartbeat.Released) > MaxHeartbeatNICs || len(m.Bye.Reason)+len(m.Bye.Detail) > MaxByeBytes {
				t.Fatalf("a message over its bound: %+v", m)
			}
		}
		cc := &Conn{r: bufio.NewReader(bytes.NewReader(data))}
		for range 64 {
			_, d, err := cc.RecvControl()
			if err != nil {
				break
			}
			if len(d) > SeedChunk {
				t.Fatalf("a Data frame of %d bytes", len(d))
			}
		}
	})
}
