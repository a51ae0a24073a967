package logchan

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
)

func TestLogVersionForQEMU(t *testing.T) {
	for _, v := range []string{"7.2", "7.2.0", "7.2.22", " 7.2.1 ", "7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)", "7.2.0-rc0", "7.2+dfsg"} {
		got, err := LogVersionForQEMU(v)
		if err != nil || got != LogVersionQEMU72 {
			t.Errorf("LogVersionForQEMU(%q) = %#x, %v; want %#x", v, got, err, LogVersionQEMU72)
		}
	}
	for _, v := range []string{"", "7", "7.1", "7.1.0", "7.20", "7.20.1", "8.2.2", "6.2.0", "17.2", "7.2.", "7.2.x", "v7.2", "7.2.0.1", "7..2", "x"} {
		_, err := LogVersionForQEMU(v)
		if !errors.Is(err, ErrUnsupportedQEMU) {
			t.Errorf("LogVersionForQEMU(%q): err = %v, want ErrUnsupportedQEMU", v, err)
			continue
		}
		msg := err.Error()
		if !strings.Contains(msg, "0xe0200c") || !strings.Contains(msg, "only QEMU 7.2") || !strings.Contains(msg, `"`+v+`"`) {
			t.Errorf("LogVersionForQEMU(%q): unclear message %q", v, msg)
		}
	}
}

func TestKindName(t *testing.T) {
	for k, want := range map[byte]string{
		0: "INSTRUCTION", 1: "INTERRUPT", 2: "EXCEPTION", 3: "ASYNC_BH", 4: "ASYNC_BH_ONESHOT",
		5: "ASYNC_INPUT", 6: "ASYNC_INPUT_SYNC", 7: "ASYNC_CHAR_READ", 8: "ASYNC_BLOCK", 9: "ASYNC_NET",
		10: "SHUTDOWN_NONE", 12: "SHUTDOWN_HOST_QMP_QUIT", 14: "SHUTDOWN_HOST_SIGNAL",
		20: "SHUTDOWN_SNAPSHOT_LOAD", 21: "SHUTDOWN__MAX",
		22: "CHAR_WRITE", 23: "CHAR_READ_ALL", 24: "CHAR_READ_ALL_ERROR", 25: "AUDIO_OUT",
		26: "AUDIO_IN", 27: "RANDOM", 28: "CLOCK_HOST", 29: "CLOCK_VIRTUAL_RT",
		30: "CHECKPOINT_CLOCK_WARP_START", 31: "CHECKPOINT_CLOCK_WARP_ACCOUNT",
		34: "CHECKPOINT_CLOCK_VIRTUAL", 37: "CHECKPOINT_INIT", 38: "CHECKPOINT_RESET",
		39: "END", 40: "UNKNOWN(40)", 255: "UNKNOWN(255)",
	} {
		if got := KindName(k); got != want {
			t.Errorf("KindName(%d) = %q, want %q", k, got, want)
		}
	}
}

// TestDecoderEachKind feeds every kind of event alone, whole and cut at
// every byte, and checks its length against the hand-computed QEMU 7.2
// layout.
func TestDecoderEachKind(t *testing.T) {
	for _, e := range sampleEvents() {
		if len(e.data) != e.size {
			t.Fatalf("%s: builder made %d bytes, layout says %d", e.name, len(e.data), e.size)
		}
		d := NewStreamDecoder()
		c, err := d.Feed(e.data)
		if err != nil {
			t.Fatalf("%s: %v", e.name, err)
		}
		if c.Events != 1 || !bytes.Equal(c.Data, e.data) || c.Instructions != e.instr || c.Offset != 0 {
			t.Fatalf("%s: chunk %+v", e.name, c)
		}
		if d.Pending() != 0 || d.Offset() != uint64(e.size) {
			t.Fatalf("%s: pending %d offset %d", e.name, d.Pending(), d.Offset())
		}
		for cut := 1; cut < len(e.data); cut++ {
			d := NewStreamDecoder()
			c1, err := d.Feed(e.data[:cut])
			if err != nil || c1.Events != 0 || c1.Data != nil {
				t.Fatalf("%s cut %d: first part gave %+v, %v", e.name, cut, c1, err)
			}
			if d.Pending() != cut {
				t.Fatalf("%s cut %d: pending %d", e.name, cut, d.Pending())
			}
			c2, err := d.Feed(e.data[cut:])
			if err != nil || c2.Events != 1 || !bytes.Equal(c2.Data, e.data) || c2.Offset != 0 {
				t.Fatalf("%s cut %d: second part gave %+v, %v", e.name, cut, c2, err)
			}
		}
	}
}

func TestDecoderByteByByte(t *testing.T) {
	all, n, instr := allEvents()
	all = append(all, evEnd()...)
	n++
	d := NewStreamDecoder()
	var got []byte
	events := 0
	for i := range all {
		c, err := d.Feed(all[i : i+1])
		if err != nil {
			t.Fatal(err)
		}
		if c.Offset != uint64(len(got)) {
			t.Fatalf("byte %d: chunk offset %d, want %d", i, c.Offset, len(got))
		}
		got = append(got, c.Data...)
		events += c.Events
	}
	if !bytes.Equal(got, all) || events != n || d.Instructions() != instr || !d.Ended() {
		t.Fatalf("got %d bytes %d events %d instructions ended=%v; want %d %d %d",
			len(got), events, d.Instructions(), d.Ended(), len(all), n, instr)
	}
	if d.Events() != uint64(n) {
		t.Fatalf("Events() = %d", d.Events())
	}
}

func TestDecoderChunkStats(t *testing.T) {
	var b []byte
	b = append(b, evInstruction(10)...)
	b = append(b, evClockHost(111)...)
	b = append(b, evInstruction(20)...)
	b = append(b, evClockHost(222)...)
	b = append(b, evClockVirtualRT(999)...)
	b = append(b, evShutdown(2)...)
	b = append(b, evInstruction(5)...)
	b = append(b, evEnd()...)
	b = append(b, 0x00, 0xe0, 0x20, 0x0c) // version appended on a pipe
	d := NewStreamDecoder()
	c, err := d.Feed(b)
	if err != nil {
		t.Fatal(err)
	}
	if c.Events != 8 || c.Instructions != 35 || c.LastClock != 222 || !c.Shutdown || !c.End {
		t.Fatalf("stats %+v", c)
	}
	if !bytes.Equal(c.Data, b[:len(b)-4]) {
		t.Fatal("chunk includes the trailer")
	}
	tr, n := d.Trailer()
	if !bytes.Equal(tr, []byte{0x00, 0xe0, 0x20, 0x0c}) || n != 4 {
		t.Fatalf("trailer %x %d", tr, n)
	}
	c, err = d.Feed([]byte{1, 2, 3})
	if err != nil || c.Data != nil || c.Events != 0 || c.Offset != uint64(len(b)-4) {
		t.Fatalf("feed after END: %+v %v", c, err)
	}
	if _, n := d.Trailer(); n != 7 {
		t.Fatalf("trailer length %d", n)
	}
	if d.Offset() != uint64(len(b)-4) || d.Pending() != 0 {
		t.Fatalf("offset %d pending %d", d.Offset(), d.Pending())
	}

	// a chunk without END, shutdown or clock
	d = NewStreamDecoder()
	c, _ = d.Feed(append(evCheckpoint(1), evInstruction(3)...))
	if c.End || c.Shutdown || c.LastClock != 0 || c.Instructions != 3 {
		t.Fatalf("stats %+v", c)
	}
}

func TestDecoderTrailerBounded(t *testing.T) {
	d := NewStreamDecoder()
	d.Feed(evEnd())
	for range 100 {
		d.Feed(make([]byte, 1000))
	}
	tr, n := d.Trailer()
	if len(tr) != 64 || n != 100000 {
		t.Fatalf("trailer kept %d bytes, counted %d", len(tr), n)
	}
}

func TestDecoderErrors(t *testing.T) {
	good := append(evInstruction(7), evCheckpoint(0)...)
	cases := []struct {
		name string
		bad  []byte
		kind byte
		msg  string
	}{
		{"unknown kind 40", []byte{40, 0, 0}, 40, "unknown event kind"},
		{"unknown kind 255", []byte{255}, 255, "unknown event kind"},
		{"net array too long", ev(KindAsyncNet).u8(0).u32(0).u32(MaxArrayLen + 1), KindAsyncNet, "array length"},
		{"char read array too long", ev(KindAsyncCharRead).u8(0).u32(0xffffffff), KindAsyncCharRead, "array length"},
		{"read all too long", ev(KindCharReadAll).u32(0x80000000), KindCharReadAll, "array length"},
		{"random too long", ev(KindRandom).u32(0).u32(0xffffffff), KindRandom, "array length"},
		{"audio in too many", ev(KindAudioIn).u64(1 << 40), KindAudioIn, "audio samples"},
		{"audio in overflow", ev(KindAudioIn).u64(1 << 62), KindAudioIn, "audio samples"},
		{"input mtt (QEMU 8.1+)", ev(KindAsyncInput).u32(4), KindAsyncInput, "unknown input event kind 4"},
		{"key value kind", ev(KindAsyncInput).u32(0).u32(2), KindAsyncInput, "unknown key value kind 2"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			stream := append(append([]byte{}, good...), tc.bad...)
			stream = append(stream, evEnd()...)
			for _, piece := range []int{1, 3, len(stream)} {
				d := NewStreamDecoder()
				var got []byte
				var err error
				for i := 0; i < len(stream) && err == nil; i += piece {
					var c Chunk
					c, err = d.Feed(stream[i:min(i+piece, len(stream))])
					got = append(got, c.Data...)
				}
				if !errors.Is(err, ErrCorruptLog) {
					t.Fatalf("piece %d: err %v", piece, err)
				}
				var de *DecodeError
				if !errors.As(err, &de) || de.Offset != uint64(len(good)) || de.Kind != tc.kind || !strings.Contains(de.Reason, tc.msg) {
					t.Fatalf("piece %d: error %#v", piece, err)
				}
				if !strings.Contains(err.Error(), "offset 6") || !strings.Contains(err.Error(), KindName(tc.kind)) {
					t.Fatalf("message %q lacks offset or kind", err)
				}
				if !bytes.Equal(got, good) {
					t.Fatalf("piece %d: valid prefix %x, want %x", piece, got, good)
				}
				// the decoder stays failed
				c, err2 := d.Feed(evCheckpoint(0))
				if err2 != err || c.Data != nil || d.Err() != err {
					t.Fatalf("decoder recovered: %v %+v", err2, c)
				}
			}
		})
	}
}

func TestFileDecoder(t *testing.T) {
	events, n, instr := allEvents()
	events = append(events, evEnd()...)
	for _, version := range []uint32{LogVersionQEMU72, 0} {
		file := binary.BigEndian.AppendUint32(nil, version)
		file = append(file, make([]byte, 8)...)
		file = append(file, events...)
		for _, piece := range []int{1, 5, 12, 13, 4096} {
			d := NewFileDecoder()
			var got []byte
			evs := 0
			for i := 0; i < len(file); i += piece {
				c, err := d.Feed(file[i:min(i+piece, len(file))])
				if err != nil {
					t.Fatal(err)
				}
				if c.Offset != uint64(len(got)) {
					t.Fatalf("offset %d, want %d", c.Offset, len(got))
				}
				got = append(got, c.Data...)
				evs += c.Events
			}
			if !bytes.Equal(got, events) || evs != n+1 || d.Instructions() != instr || d.Version() != version {
				t.Fatalf("version %#x piece %d: %d bytes %d events version %#x", version, piece, len(got), evs, d.Version())
			}
		}
	}
	d := NewFileDecoder()
	_, err := d.Feed([]byte{0, 0xe0, 0x20, 0x0b, 0, 0, 0, 0, 0, 0, 0})
	if err != nil {
		t.Fatal("error before the header is complete")
	}
	_, err = d.Feed([]byte{0, 0})
	if !errors.Is(err, ErrUnsupportedLogVersion) || !strings.Contains(err.Error(), "0xe0200b") {
		t.Fatalf("err %v", err)
	}
	if _, err2 := d.Feed(evEnd()); err2 != err {
		t.Fatal("decoder recovered after a bad header")
	}
}

// TestDecoderHugeArray checks that a big event fed in small pieces is
// parsed in linear time and memory: its bytes wait in Pending, and nothing
// is returned until it is complete.
func TestDecoderHugeArray(t *testing.T) {
	pkt := make([]byte, 32<<20)
	e := evNet(0, 0, pkt)
	e = append(e, evInstruction(9)...)
	d := NewStreamDecoder()
	const piece = 4096
	for i := 0; i < len(e); i += piece {
		c, err := d.Feed(e[i:min(i+piece, len(e))])
		if err != nil {
			t.Fatal(err)
		}
		end := min(i+piece, len(e))
		if end < len(pkt)+10 {
			if c.Events != 0 || d.Pending() != end {
				t.Fatalf("at %d: events %d pending %d", end, c.Events, d.Pending())
			}
		} else if c.Events > 0 {
			if c.Events != 2 || len(c.Data) != len(e) {
				t.Fatalf("at %d: %d events, %d bytes", end, c.Events, len(c.Data))
			}
		}
	}
	if d.Offset() != uint64(len(e)) || d.Instructions() != 9 || d.Pending() != 0 {
		t.Fatalf("offset %d instructions %d pending %d", d.Offset(), d.Instructions(), d.Pending())
	}
}

func TestChunkDataIsACopy(t *testing.T) {
	in := append(evInstruction(1), evInstruction(2)...)
	d := NewStreamDecoder()
	c, _ := d.Feed(in)
	in[0] = 0xff
	if c.Data[0] != KindInstruction {
		t.Fatal("chunk aliases the input")
	}
	// pending bytes are copied too
	in2 := evInstruction(3)
	d.Feed(in2[:2])
	in2[1] = 0xff
	c, _ = d.Feed(in2[2:])
	if c.Data[1] != 0 {
		t.Fatal("pending bytes alias the input")
	}
}

func TestScanEvents(t *testing.T) {
	all, n, instr := allEvents()
	c, err := ScanEvents(all)
	if err != nil || c.Events != n || c.Instructions != instr || !bytes.Equal(c.Data, all) {
		t.Fatalf("%+v %v", c.Events, err)
	}
	if _, err := ScanEvents(append(all, evInstruction(1)[:3]...)); !errors.Is(err, ErrPartialEvent) {
		t.Fatalf("partial: %v", err)
	}
	if _, err := ScanEvents(append(evEnd(), 0)); !errors.Is(err, ErrPartialEvent) {
		t.Fatalf("after END: %v", err)
	}
	if _, err := ScanEvents([]byte{77}); !errors.Is(err, ErrCorruptLog) {
		t.Fatalf("corrupt: %v", err)
	}
	if c, err := ScanEvents(nil); err != nil || c.Events != 0 {
		t.Fatalf("empty: %+v %v", c, err)
	}
}

func TestSplitChunk(t *testing.T) {
	all, n, instr := allEvents()
	all = append(all, evEnd()...)
	whole := Chunk{Offset: 1000, Data: all, Events: n + 1, Instructions: instr, End: true, Shutdown: true}
	for _, max := range []int{1600, 1700, 4000, len(all) - 1, len(all), len(all) + 1} {
		parts, err := SplitChunk(whole, max)
		if err != nil {
			t.Fatalf("max %d: %v", max, err)
		}
		off := whole.Offset
		var cat []byte
		evs, ins := 0, uint64(0)
		for i, p := range parts {
			if p.Offset != off || len(p.Data) > max || len(p.Data) == 0 {
				t.Fatalf("max %d part %d: offset %d len %d", max, i, p.Offset, len(p.Data))
			}
			chk, err := ScanEvents(p.Data)
			if err != nil || chk.Events != p.Events || chk.Instructions != p.Instructions || chk.End != p.End || chk.Shutdown != p.Shutdown {
				t.Fatalf("max %d part %d: stats %+v vs %+v (%v)", max, i, p, chk, err)
			}
			off += uint64(len(p.Data))
			cat = append(cat, p.Data...)
			evs += p.Events
			ins += p.Instructions
		}
		if !bytes.Equal(cat, all) || evs != n+1 || ins != instr || !parts[len(parts)-1].End {
			t.Fatalf("max %d: parts do not add up", max)
		}
	}
	if _, err := SplitChunk(whole, 1000); err == nil || !strings.Contains(err.Error(), "ASYNC_NET") {
		t.Fatalf("event larger than max: %v", err)
	}
	bad := Chunk{Data: append(evCheckpoint(0), evInstruction(1)[:3]...)}
	if _, err := SplitChunk(bad, 2); !errors.Is(err, ErrPartialEvent) {
		t.Fatalf("partial: %v", err)
	}
}

// TestDecoderRandomPieces feeds a long random stream of valid events in
// random pieces and checks the result against a one-shot decode.
func TestDecoderRandomPieces(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	samples := sampleEvents()
	var stream []byte
	var instr uint64
	for range 5000 {
		e := samples[r.IntN(len(samples))]
		stream = append(stream, e.data...)
		instr += e.instr
	}
	d := NewStreamDecoder()
	var got []byte
	for i := 0; i < len(stream); {
		n := min(r.IntN(3000), len(stream)-i)
		c, err := d.Feed(stream[i : i+n])
		if err != nil {
			t.Fatal(err)
		}
		if c.Offset != uint64(len(got)) {
			t.Fatal("discontiguous")
		}
		got = append(got, c.Data...)
		i += n
	}
	if !bytes.Equal(got, stream) || d.Instructions() != instr {
		t.Fatal("mismatch")
	}
}

// A decoder stopped at any byte (a planned restart of the daemon) and
// resumed from its counts and pending bytes gives the same events and
// totals as one that never stopped.
func TestResumeStreamDecoderAtEveryCut(t *testing.T) {
	all, n, instr := allEvents()
	for cut := 0; cut <= len(all); cut++ {
		d := NewStreamDecoder()
		c1, err := d.Feed(all[:cut])
		if err != nil {
			t.Fatalf("cut %d: %v", cut, err)
		}
		r, err := ResumeStreamDecoder(d.Offset(), d.Events(), d.Instructions(), d.PendingBytes())
		if err != nil {
			t.Fatalf("cut %d: resume: %v", cut, err)
		}
		c2, err := r.Feed(all[cut:])
		if err != nil {
			t.Fatalf("cut %d: after the resume: %v", cut, err)
		}
		got := append(append([]byte(nil), c1.Data...), c2.Data...)
		if !bytes.Equal(got, all) || c2.Offset != uint64(len(c1.Data)) {
			t.Fatalf("cut %d: %d bytes back (second chunk at %d), want %d", cut, len(got), c2.Offset, len(all))
		}
		if r.Events() != uint64(n) || r.Instructions() != instr || r.Offset() != uint64(len(all)) || r.Pending() != 0 {
			t.Fatalf("cut %d: events %d instr %d offset %d pending %d", cut, r.Events(), r.Instructions(), r.Offset(), r.Pending())
		}
	}
	// Pending bytes that hold a whole event are not a decoder's state.
	if _, err := ResumeStreamDecoder(0, 0, 0, all); err == nil {
		t.Fatal("resuming with whole events pending succeeded")
	}
}
