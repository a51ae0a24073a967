package logchan

import "encoding/binary"

// Hand-built QEMU 7.2 events, written the way replay/replay-*.c writes them
// (replay_put_byte/dword/qword/array: big-endian, arrays as dword length
// then bytes).

type evb []byte

func ev(kind byte) evb { return evb{kind} }

func (b evb) u8(v byte) evb    { return append(b, v) }
func (b evb) u32(v uint32) evb { return binary.BigEndian.AppendUint32(b, v) }
func (b evb) u64(v uint64) evb { return binary.BigEndian.AppendUint64(b, v) }
func (b evb) arr(p []byte) evb { return append(b.u32(uint32(len(p))), p...) }

func down(d bool) byte {
	if d {
		return 1
	}
	return 0
}

func evInstruction(n uint32) []byte { return ev(KindInstruction).u32(n) }
func evInterrupt() []byte           { return ev(KindInterrupt) }
func evException() []byte           { return ev(KindException) }
func evBH(id uint64) []byte         { return ev(KindAsyncBH).u64(id) }
func evBHOneshot(id uint64) []byte  { return ev(KindAsyncBHOneshot).u64(id) }
func evInputKeyNumber(n uint64, d bool) []byte {
	return ev(KindAsyncInput).u32(inputKindKey).u32(keyValueNumber).u64(n).u8(down(d))
}
func evInputKeyQcode(q uint32, d bool) []byte {
	return ev(KindAsyncInput).u32(inputKindKey).u32(keyValueQcode).u32(q).u8(down(d))
}
func evInputBtn(btn uint32, d bool) []byte {
	return ev(KindAsyncInput).u32(inputKindBtn).u32(btn).u8(down(d))
}
func evInputRel(axis uint32, v int64) []byte {
	return ev(KindAsyncInput).u32(inputKindRel).u32(axis).u64(uint64(v))
}
func evInputAbs(axis uint32, v int64) []byte {
	return ev(KindAsyncInput).u32(inputKindAbs).u32(axis).u64(uint64(v))
}
func evInputSync() []byte { return ev(KindAsyncInputSync) }
func evCharRead(id byte, p []byte) []byte {
	return ev(KindAsyncCharRead).u8(id).arr(p)
}
func evBlock(id uint64) []byte { return ev(KindAsyncBlock).u64(id) }
func evNet(id byte, flags uint32, pkt []byte) []byte {
	return ev(KindAsyncNet).u8(id).u32(flags).arr(pkt)
}
func evShutdown(cause byte) []byte { return ev(KindShutdown + cause) }
func evCharWrite(res, off uint32) []byte {
	return ev(KindCharWrite).u32(res).u32(off)
}
func evCharReadAll(p []byte) []byte { return ev(KindCharReadAll).arr(p) }
func evCharReadAllError(res int32) []byte {
	return ev(KindCharReadAllError).u32(uint32(res))
}
func evAudioOut(played uint64) []byte { return ev(KindAudioOut).u64(played) }
func evAudioIn(wpos uint64, samples [][2]uint64) []byte {
	b := ev(KindAudioIn).u64(uint64(len(samples))).u64(wpos)
	for _, s := range samples {
		b = b.u64(s[0]).u64(s[1])
	}
	return b
}
func evRandom(ret int32, p []byte) []byte {
	return ev(KindRandom).u32(uint32(ret)).arr(p)
}
func evClockHost(ns int64) []byte      { return ev(KindClockHost).u64(uint64(ns)) }
func evClockVirtualRT(ns int64) []byte { return ev(KindClockVirtualRT).u64(uint64(ns)) }
func evCheckpoint(n byte) []byte       { return ev(KindCheckpoint + n) }
func evEnd() []byte                    { return ev(KindEnd) }

// sampleEvent is one hand-built event with its length computed by hand from
// the QEMU 7.2 sources, independently of the builder.
type sampleEvent struct {
	name  string
	data  []byte
	size  int
	instr uint64
}

func sampleEvents() []sampleEvent {
	pkt := make([]byte, 1514)
	for i := range pkt {
		pkt[i] = byte(i)
	}
	s := []sampleEvent{
		{"instruction", evInstruction(123456), 1 + 4, 123456},
		{"interrupt", evInterrupt(), 1, 0},
		{"exception", evException(), 1, 0},
		{"bh", evBH(0x1122334455667788), 1 + 8, 0},
		{"bh_oneshot", evBHOneshot(42), 1 + 8, 0},
		{"input key number", evInputKeyNumber(0x1c, true), 1 + 4 + 4 + 8 + 1, 0},
		{"input key qcode", evInputKeyQcode(17, false), 1 + 4 + 4 + 4 + 1, 0},
		{"input btn", evInputBtn(2, true), 1 + 4 + 4 + 1, 0},
		{"input rel", evInputRel(1, -5), 1 + 4 + 4 + 8, 0},
		{"input abs", evInputAbs(0, 32767), 1 + 4 + 4 + 8, 0},
		{"input sync", evInputSync(), 1, 0},
		{"char read", evCharRead(0, []byte("hello\n")), 1 + 1 + 4 + 6, 0},
		{"char read empty", evCharRead(3, nil), 1 + 1 + 4, 0},
		{"block", evBlock(7), 1 + 8, 0},
		{"net", evNet(0, 0, pkt), 1 + 1 + 4 + 4 + 1514, 0},
		{"net empty", evNet(1, 2, nil), 1 + 1 + 4 + 4, 0},
		{"char write", evCharWrite(5, 0), 1 + 4 + 4, 0},
		{"char read all", evCharReadAll([]byte("abc")), 1 + 4 + 3, 0},
		{"char read all error", evCharReadAllError(-11), 1 + 4, 0},
		{"audio out", evAudioOut(1024), 1 + 8, 0},
		{"audio in", evAudioIn(5, [][2]uint64{{1, 2}, {3, 4}, {5, 6}}), 1 + 8 + 8 + 3*16, 0},
		{"audio in empty", evAudioIn(0, nil), 1 + 8 + 8, 0},
		{"random", evRandom(0, []byte{1, 2, 3, 4, 5, 6, 7, 8}), 1 + 4 + 4 + 8, 0},
		{"clock host", evClockHost(1_700_000_000_000_000_000), 1 + 8, 0},
		{"clock virtual_rt", evClockVirtualRT(123), 1 + 8, 0},
		{"instruction max", evInstruction(0x7fffffff), 1 + 4, 0x7fffffff},
	}
	for c := byte(0); c <= KindShutdownLast-KindShutdown; c++ {
		s = append(s, sampleEvent{"shutdown " + KindName(KindShutdown+c), evShutdown(c), 1, 0})
	}
	for c := byte(0); c <= KindCheckpointLast-KindCheckpoint; c++ {
		s = append(s, sampleEvent{"checkpoint " + KindName(KindCheckpoint+c), evCheckpoint(c), 1, 0})
	}
	return s
}

// allEvents is every sample event concatenated, without END.
func allEvents() ([]byte, int, uint64) {
	var b []byte
	var n int
	var instr uint64
	for _, e := range sampleEvents() {
		b = append(b, e.data...)
		n++
		instr += e.instr
	}
	return b, n, instr
}
