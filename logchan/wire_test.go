package logchan

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"reflect"
	"strings"
	"sync"
	"testing"
)

func TestFrameRoundTrip(t *testing.T) {
	all, _, _ := allEvents()
	var buf bytes.Buffer
	hb := Heartbeat{Seq: 7, SentUnixMs: 1_700_000_000_123, Released: []uint64{12, 1 << 33}}
	ack := Ack{Offset: 1 << 40, Executed: 123456789, Fed: 987654321, Received: 1<<40 + 77}
	if err := WriteLogFrame(&buf, 4242, all); err != nil {
		t.Fatal(err)
	}
	must(t, WriteFrame(&buf, FrameAck, EncodeAck(ack)))
	must(t, WriteFrame(&buf, FrameHeartbeat, EncodeHeartbeat(hb)))
	must(t, WriteFrame(&buf, FrameBye, []byte("going live")))
	must(t, WriteFrame(&buf, FrameData, nil))
	must(t, WriteLogFrame(&buf, 0, nil))
	must(t, WriteFrame(&buf, FrameLog, EncodeLog(99, all[:5])))

	f, err := ReadFrame(&buf)
	must(t, err)
	off, data, err := DecodeLog(f.Payload)
	if f.Type != FrameLog || err != nil || off != 4242 || !bytes.Equal(data, all) {
		t.Fatalf("log frame: %v %d %v", f.Type, off, err)
	}
	f, _ = ReadFrame(&buf)
	if a, err := DecodeAck(f.Payload); f.Type != FrameAck || err != nil || a != ack {
		t.Fatalf("ack: %+v %v", a, err)
	}
	f, _ = ReadFrame(&buf)
	if h, err := DecodeHeartbeat(f.Payload); f.Type != FrameHeartbeat || err != nil || !reflect.DeepEqual(h, hb) {
		t.Fatalf("heartbeat: %+v %v", h, err)
	}
	f, _ = ReadFrame(&buf)
	if f.Type != FrameBye || string(f.Payload) != "going live" {
		t.Fatalf("bye: %v %q", f.Type, f.Payload)
	}
	f, _ = ReadFrame(&buf)
	if f.Type != FrameData || len(f.Payload) != 0 {
		t.Fatalf("data: %v %q", f.Type, f.Payload)
	}
	f, _ = ReadFrame(&buf)
	if off, data, err := DecodeLog(f.Payload); off != 0 || len(data) != 0 || err != nil {
		t.Fatal("empty log frame")
	}
	f, _ = ReadFrame(&buf)
	if off, data, err := DecodeLog(f.Payload); off != 99 || !bytes.Equal(data, all[:5]) || err != nil {
		t.Fatal("EncodeLog frame")
	}
	if _, err := ReadFrame(&buf); err != io.EOF {
		t.Fatalf("end of stream: %v", err)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestFrameMalformed(t *testing.T) {
	hdr := func(typ byte, n uint32) []byte { return AppendFrameHeader(nil, FrameType(typ), int(n)) }
	cases := []struct {
		name string
		in   []byte
		want error
	}{
		{"oversize", hdr(byte(FrameLog), MaxFrameSize+1), ErrFrameTooLarge},
		{"huge", hdr(byte(FrameData), 0xffffffff), ErrFrameTooLarge},
		{"type 0", hdr(0, 0), ErrUnknownFrame},
		{"type 10", hdr(10, 4), ErrUnknownFrame},
		{"type 255", hdr(255, 0), ErrUnknownFrame},
		{"truncated header", []byte{byte(FrameAck), 0, 0}, io.ErrUnexpectedEOF},
		{"truncated payload", append(hdr(byte(FrameAck), 24), 1, 2, 3), io.ErrUnexpectedEOF},
		{"missing payload", hdr(byte(FrameAck), 24), io.ErrUnexpectedEOF},
	}
	for _, tc := range cases {
		_, err := ReadFrame(bytes.NewReader(tc.in))
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: err %v, want %v", tc.name, err, tc.want)
		}
	}
	// exactly MaxFrameSize is fine for a Log frame
	big := make([]byte, MaxFrameSize)
	var buf bytes.Buffer
	must(t, WriteFrame(&buf, FrameLog, big))
	if f, err := ReadFrame(&buf); err != nil || len(f.Payload) != MaxFrameSize {
		t.Fatalf("max frame: %v", err)
	}
	// each type has its own bound
	for _, ft := range []FrameType{FrameHello, FrameHelloReply, FrameAck, FrameHeartbeat, FrameBye, FrameControl, FrameData, FrameDigests} {
		if _, err := ReadFrame(bytes.NewReader(hdr(byte(ft), uint32(MaxPayload(ft)+1)))); !errors.Is(err, ErrFrameTooLarge) {
			t.Errorf("%s frame of %d bytes: %v, want ErrFrameTooLarge", ft, MaxPayload(ft)+1, err)
		}
	}
	// the writer refuses what the reader would refuse, writing nothing
	buf.Reset()
	if err := WriteFrame(&buf, FrameData, make([]byte, SeedChunk+1)); !errors.Is(err, ErrFrameTooLarge) || buf.Len() != 0 {
		t.Fatalf("oversize write: %v, wrote %d", err, buf.Len())
	}
	if err := WriteLogFrame(&buf, 0, make([]byte, MaxLogData+1)); !errors.Is(err, ErrFrameTooLarge) || buf.Len() != 0 {
		t.Fatalf("oversize log write: %v", err)
	}
	if err := WriteFrame(&buf, 0, nil); !errors.Is(err, ErrUnknownFrame) {
		t.Fatalf("type 0 write: %v", err)
	}

	// payload shapes
	if a, err := DecodeAck(EncodeAck(Ack{Offset: 5, Executed: 6, Fed: 7})[:24]); err != nil || a.Received != 5 {
		t.Errorf("24-byte Ack: %+v, %v (Received must default to Offset)", a, err)
	}
	if _, err := DecodeAck(make([]byte, 23)); !errors.Is(err, ErrBadFrame) {
		t.Error("short ack")
	}
	if _, err := DecodeAck(make([]byte, 25)); !errors.Is(err, ErrBadFrame) {
		t.Error("long ack")
	}
	for _, n := range []int{8, 17, 16 * (MaxHeartbeatNICs + 1)} {
		if _, err := DecodeDigests(make([]byte, n)); !errors.Is(err, ErrBadFrame) {
			t.Errorf("Digests payload of %d bytes: %v, want ErrBadFrame", n, err)
		}
	}
	if _, err := DecodeHeartbeat(make([]byte, 8)); !errors.Is(err, ErrBadFrame) {
		t.Error("short heartbeat")
	}
	if _, err := DecodeHeartbeat(make([]byte, 20)); !errors.Is(err, ErrBadFrame) {
		t.Error("heartbeat with a partial Released entry")
	}
	if _, err := DecodeHeartbeat(make([]byte, 16+8*(MaxHeartbeatNICs+1))); !errors.Is(err, ErrBadFrame) {
		t.Error("heartbeat with too many Released entries")
	}
	if h, err := DecodeHeartbeat(make([]byte, 16)); err != nil || h.Released != nil {
		t.Errorf("heartbeat without Released: %+v, %v", h, err)
	}
	if _, _, err := DecodeLog(make([]byte, 7)); !errors.Is(err, ErrBadFrame) {
		t.Error("short log")
	}
	if _, err := DecodeHello([]byte("{")); !errors.Is(err, ErrBadFrame) {
		t.Error("bad hello")
	}
	if _, err := DecodeHelloReply([]byte("[]")); !errors.Is(err, ErrBadFrame) {
		t.Error("bad hello reply")
	}
	var v map[string]any
	if err := DecodeControl([]byte("nope"), &v); !errors.Is(err, ErrBadFrame) {
		t.Error("bad control")
	}
}

func TestFrameTypeString(t *testing.T) {
	if FrameLog.String() != "Log" || FrameType(99).String() != "FrameType(99)" {
		t.Fatal(FrameLog.String(), FrameType(99).String())
	}
}

// TestConnConcurrentWriters has many goroutines write frames at once; the
// reader must see every frame whole.
func TestConnConcurrentWriters(t *testing.T) {
	a, b := net.Pipe()
	ca, cb := NewConn(a), NewConn(b)
	defer ca.Close()
	defer cb.Close()
	const writers, each = 8, 200
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				var err error
				switch i % 3 {
				case 0:
					err = ca.WriteHeartbeat(Heartbeat{Seq: uint64(w<<32 | i)})
				case 1:
					err = ca.WriteLog(uint64(w<<32|i), bytes.Repeat([]byte{KindCheckpoint}, i))
				case 2:
					err = ca.WriteControl(map[string]int{"w": w, "i": i})
				}
				if err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	seen := map[string]bool{}
	for range writers * each {
		f, err := cb.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		var key string
		switch f.Type {
		case FrameHeartbeat:
			h, err := DecodeHeartbeat(f.Payload)
			must(t, err)
			key = fmt.Sprintf("%d/%d", h.Seq>>32, h.Seq&0xffffffff)
		case FrameLog:
			off, data, err := DecodeLog(f.Payload)
			must(t, err)
			if int(off&0xffffffff) != len(data) {
				t.Fatalf("log frame of %d bytes for i=%d", len(data), off&0xffffffff)
			}
			key = fmt.Sprintf("%d/%d", off>>32, off&0xffffffff)
		case FrameControl:
			var v map[string]int
			must(t, DecodeControl(f.Payload, &v))
			key = fmt.Sprintf("%d/%d", v["w"], v["i"])
		default:
			t.Fatalf("unexpected %v", f.Type)
		}
		if seen[key] {
			t.Fatalf("frame %s twice", key)
		}
		seen[key] = true
	}
	wg.Wait()
	if len(seen) != writers*each {
		t.Fatalf("saw %d frames", len(seen))
	}
}

func TestConnBuffered(t *testing.T) {
	a, b := net.Pipe()
	ca, cb := NewConn(a), NewConn(b)
	defer ca.Close()
	defer cb.Close()
	ca.SetAutoFlush(false)
	// net.Pipe is unbuffered: had the writes gone out, they would block
	// here without a reader.
	must(t, ca.WriteHeartbeat(Heartbeat{Seq: 1}))
	must(t, ca.WriteBye(Bye{Reason: "x"}))
	done := make(chan error, 1)
	go func() { done <- ca.Flush() }()
	for _, want := range []FrameType{FrameHeartbeat, FrameBye} {
		f, err := cb.ReadFrame()
		if err != nil || f.Type != want {
			t.Fatalf("got %v %v, want %v", f.Type, err, want)
		}
	}
	must(t, <-done)
}

func TestConnSendChunkSplits(t *testing.T) {
	a, b := net.Pipe()
	ca, cb := NewConn(a), NewConn(b)
	defer ca.Close()
	defer cb.Close()
	// 3 NET events of 2 MiB each: 6 MiB, more than one frame holds.
	var data []byte
	for i := range 3 {
		data = append(data, evNet(0, 0, bytes.Repeat([]byte{byte(i)}, 2<<20))...)
	}
	data = append(data, evInstruction(5)...)
	done := make(chan error, 1)
	go func() { done <- ca.SendChunk(Chunk{Offset: 100, Data: data}) }()
	var got []byte
	for len(got) < len(data) {
		f, err := cb.ReadFrame()
		must(t, err)
		off, p, err := DecodeLog(f.Payload)
		must(t, err)
		if off != 100+uint64(len(got)) {
			t.Fatalf("frame offset %d, want %d", off, 100+len(got))
		}
		if _, err := ScanEvents(p); err != nil {
			t.Fatalf("frame at %d: %v", off, err)
		}
		got = append(got, p...)
	}
	must(t, <-done)
	if !bytes.Equal(got, data) {
		t.Fatal("data differs")
	}
	if err := ca.SendChunk(Chunk{}); err != nil {
		t.Fatal(err)
	}
}

func hello(role Role) Hello {
	return Hello{
		Protocol:    ProtocolVersion,
		DomainUUID:  "7d0f2a8e-58c4-4bb5-9b52-8b3e1c6a0f11",
		QEMUVersion: "7.2.22",
		LogVersion:  LogVersionQEMU72,
		Role:        role,
	}
}

// handshake runs both sides over a pipe.
func handshake(client, server Hello, accept func(Hello) error) (HelloReply, error, Hello, error) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	type res struct {
		h   Hello
		err error
	}
	ch := make(chan res, 1)
	go func() {
		h, err := ServerHandshake(NewConn(b), server, accept)
		ch <- res{h, err}
	}()
	rep, cerr := ClientHandshake(NewConn(a), client)
	if cerr != nil {
		// the server may be waiting for nothing more; unblock it
		a.Close()
	}
	r := <-ch
	return rep, cerr, r.h, r.err
}

func TestHandshake(t *testing.T) {
	rep, cerr, peer, serr := handshake(hello(RolePrimary), hello(RoleBackup), func(h Hello) error {
		if h.Role != RolePrimary {
			return errors.New("want a primary")
		}
		return nil
	})
	if cerr != nil || serr != nil || !rep.Accepted || rep.Role != RoleBackup || !reflect.DeepEqual(peer, hello(RolePrimary)) {
		t.Fatalf("accept: %+v %v %+v %v", rep, cerr, peer, serr)
	}

	modify := func(f func(*Hello)) Hello { h := hello(RolePrimary); f(&h); return h }
	cases := []struct {
		name   string
		client Hello
		accept func(Hello) error
		want   string
	}{
		{"protocol", modify(func(h *Hello) { h.Protocol = ProtocolVersion + 1 }), nil, fmt.Sprintf("client speaks log-channel protocol %d, server speaks %d", ProtocolVersion+1, ProtocolVersion)},
		{"log version", modify(func(h *Hello) { h.LogVersion = 0xe0200d }), nil, "replay log version 0xe0200d"},
		{"qemu version", modify(func(h *Hello) { h.QEMUVersion = "8.2.2" }), nil, `QEMU "8.2.2"`},
		{"uuid", modify(func(h *Hello) { h.DomainUUID = "other" }), nil, `client protects domain "other"`},
		{"role", hello(RoleBackup), nil, "both backup"},
		{"accept", hello(RolePrimary), func(Hello) error { return errors.New("backup busy") }, "backup busy"},
	}
	for _, tc := range cases {
		rep, cerr, _, serr := handshake(tc.client, hello(RoleBackup), tc.accept)
		if !errors.Is(serr, ErrHandshake) || !strings.Contains(serr.Error(), tc.want) {
			t.Errorf("%s: server error %v", tc.name, serr)
		}
		if !errors.Is(cerr, ErrHandshake) || !strings.Contains(cerr.Error(), tc.want) || rep.Accepted {
			t.Errorf("%s: client error %v (accepted %v)", tc.name, cerr, rep.Accepted)
		}
	}

	// The client checks the server too.
	srv := hello(RoleBackup)
	srv.Protocol = 9
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	go func() {
		c := NewConn(b)
		if _, err := c.ReadFrame(); err != nil {
			return
		}
		c.WriteHelloReply(HelloReply{Accepted: true, Hello: srv})
	}()
	_, err := ClientHandshake(NewConn(a), hello(RolePrimary))
	if !errors.Is(err, ErrHandshake) || !strings.Contains(err.Error(), fmt.Sprintf("server speaks log-channel protocol 9, client speaks %d", ProtocolVersion)) {
		t.Fatalf("client check: %v", err)
	}
}

func TestHandshakeWrongFrame(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	go NewConn(a).WriteHeartbeat(Heartbeat{})
	_, err := ServerHandshake(NewConn(b), hello(RoleBackup), nil)
	if !errors.Is(err, ErrBadFrame) {
		t.Fatalf("server: %v", err)
	}

	c, d := net.Pipe()
	defer c.Close()
	defer d.Close()
	go func() {
		cd := NewConn(d)
		cd.ReadFrame()
		cd.WriteData([]byte{1})
	}()
	_, err = ClientHandshake(NewConn(c), hello(RolePrimary))
	if !errors.Is(err, ErrBadFrame) {
		t.Fatalf("client: %v", err)
	}
}

// A Digests frame round-trips through Recv; a Hello's features survive
// JSON, and a Hello without any (an older peer) has none.
func TestDigestsAndFeatures(t *testing.T) {
	want := []FrameDigest{{Frames: 3, Digest: 0xfeedface12345678}, {Frames: 0, Digest: 0}}
	a, b := net.Pipe()
	ca, cb := NewConn(a), NewConn(b)
	defer ca.Close()
	defer cb.Close()
	go func() { _ = ca.WriteDigests(want) }()
	m, err := cb.Recv()
	if err != nil || m.Kind != MsgDigests || !reflect.DeepEqual(m.Digests, want) {
		t.Fatalf("Recv: %+v, %v", m, err)
	}
	var h Hello
	if err := json.Unmarshal([]byte(`{"protocol":3,"role":"backup","features":["x","frame-digests-2"]}`), &h); err != nil || !h.HasFeature(FeatureFrameDigests) || h.HasFeature("y") {
		t.Fatalf("features %v, %v", h.Features, err)
	}
	if err := json.Unmarshal([]byte(`{"protocol":3,"role":"backup"}`), &h); err != nil {
		t.Fatal(err)
	}
	if h = (Hello{}); h.HasFeature(FeatureFrameDigests) {
		t.Fatal("an empty Hello lists frame-digests")
	}
	// A daemon of session 48 or before lists "frame-digests" (CRC-64):
	// not this digest, so no Digests frames go to it.
	if err := json.Unmarshal([]byte(`{"protocol":3,"role":"backup","features":["frame-digests"]}`), &h); err != nil || h.HasFeature(FeatureFrameDigests) {
		t.Fatalf("the CRC-64 digests' feature %v taken for %s (%v)", h.Features, FeatureFrameDigests, err)
	}
}
