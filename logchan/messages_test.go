package logchan

import (
	"bytes"
	"errors"
	"net"
	"strings"
	"testing"

	"github.com/libvirt-ft/libvirt-ft/failover"
)

func TestByeEncoding(t *testing.T) {
	cases := []struct {
		bye  Bye
		wire string
		back Bye
	}{
		{Bye{Clean: true, Reason: failover.ByeShutdown}, "clean:shutdown", Bye{Clean: true, Reason: failover.ByeShutdown}},
		{Bye{Reason: "backup replay stalled at icount 5"}, "unclean:backup replay stalled at icount 5", Bye{Reason: "backup replay stalled at icount 5"}},
		{Bye{Clean: true, Reason: failover.ByeLive, Detail: "cause: switchover; total 90 ms"}, "clean:live|cause: switchover; total 90 ms",
			Bye{Clean: true, Reason: failover.ByeLive, Detail: "cause: switchover; total 90 ms"}},
		{Bye{Clean: true, Reason: failover.ByeLive, Detail: "a|b"}, "clean:live|a|b", Bye{Clean: true, Reason: failover.ByeLive, Detail: "a|b"}},
		// Only a clean ByeLive carries a detail.
		{Bye{Reason: failover.ByeLive, Detail: "x"}, "unclean:live", Bye{Reason: failover.ByeLive}},
		{Bye{Clean: true, Reason: failover.ByeShutdown, Detail: "x"}, "clean:shutdown", Bye{Clean: true, Reason: failover.ByeShutdown}},
	}
	for _, c := range cases {
		if got := string(c.bye.Encode()); got != c.wire {
			t.Errorf("%+v.Encode() = %q, want %q", c.bye, got, c.wire)
		}
		if got := DecodeBye([]byte(c.wire)); got != c.back {
			t.Errorf("DecodeBye(%q) = %+v, want %+v", c.wire, got, c.back)
		}
	}
	// Received text is taken whole where it is not a ByeLive.
	for wire, want := range map[string]Bye{
		"unclean:live|x":   {Reason: "live|x"},
		"clean:shutdown|x": {Clean: true, Reason: "shutdown|x"},
		"legacy text":      {Reason: "legacy text"},
	} {
		if got := DecodeBye([]byte(wire)); got != want {
			t.Errorf("DecodeBye(%q) = %+v, want %+v", wire, got, want)
		}
	}
}

func TestRecvMessages(t *testing.T) {
	a, b := net.Pipe()
	ca, cb := NewConn(a), NewConn(b)
	defer ca.Close()
	defer cb.Close()
	ev := []byte(evInstruction(7))
	go func() {
		_ = ca.WriteLog(10, ev)
		_ = ca.WriteAck(Ack{Offset: 1, Executed: 2, Fed: 3, Received: 4})
		_ = ca.WriteHeartbeat(Heartbeat{Seq: 9, Released: []uint64{5}})
		_ = ca.WriteBye(Bye{Clean: true, Reason: failover.ByeLive, Detail: "d"})
		if err := ca.WriteBye(Bye{Reason: strings.Repeat("x", MaxByeBytes+10)}); !errors.Is(err, ErrFrameTooLarge) {
			panic("a bye over MaxByeBytes was written")
		}
		_ = ca.WriteControl(ControlRequest{Op: OpHash})
	}()
	m, err := cb.Recv()
	if err != nil || m.Kind != MsgLog || m.Offset != 10 || !bytes.Equal(m.Data, ev) {
		t.Fatalf("log: %+v %v", m, err)
	}
	if m, err = cb.Recv(); err != nil || m.Kind != MsgAck || m.Ack != (Ack{1, 2, 3, 4}) {
		t.Fatalf("ack: %+v %v", m, err)
	}
	if m, err = cb.Recv(); err != nil || m.Kind != MsgHeartbeat || m.Heartbeat.Seq != 9 || len(m.Heartbeat.Released) != 1 {
		t.Fatalf("heartbeat: %+v %v", m, err)
	}
	if m, err = cb.Recv(); err != nil || m.Kind != MsgBye || m.Bye != (Bye{Clean: true, Reason: failover.ByeLive, Detail: "d"}) {
		t.Fatalf("bye: %+v %v", m, err)
	}
	if _, err = cb.Recv(); !errors.Is(err, ErrUnexpectedFrame) {
		t.Fatalf("control frame on a log channel: %v, want ErrUnexpectedFrame", err)
	}
}

func TestControlExchange(t *testing.T) {
	a, b := net.Pipe()
	client, server := NewConn(a), NewConn(b)
	defer client.Close()
	defer server.Close()
	disk := bytes.Repeat([]byte("d"), SeedChunk+5)
	srv := make(chan error, 1)
	go func() {
		srv <- func() error {
			req, _, err := server.RecvControl()
			if err != nil || req.Op != OpHash || req.Path != "/d" {
				return errors.New("want hash /d")
			}
			if err := server.Reply(FileDigest{Exists: true, Size: 3, SHA256: "ab"}, nil); err != nil {
				return err
			}
			req, _, err = server.RecvControl()
			if err != nil || req.Op != OpSeed || req.Seed.Size != int64(len(disk)) {
				return errors.New("want seed")
			}
			var got []byte
			for {
				req, data, err := server.RecvControl()
				if err != nil {
					return err
				}
				if data != nil {
					got = append(got, data...)
					continue
				}
				if req.Op != OpSeedEnd || !bytes.Equal(got, disk) {
					return errors.New("want seed-end after the whole disk")
				}
				break
			}
			if err := server.Reply(nil, nil); err != nil {
				return err
			}
			if _, _, err = server.RecvControl(); err != nil {
				return err
			}
			return server.Reply(nil, errors.New("domain \"x\" runs here as a primary"))
		}()
	}()
	var d FileDigest
	if err := client.Request(ControlRequest{Op: OpHash, Path: "/d"}, &d); err != nil || d.SHA256 != "ab" || !d.Exists {
		t.Fatalf("hash: %+v %v", d, err)
	}
	var calls int
	if err := client.Seed("/d", FileDigest{Exists: true, Size: int64(len(disk))}, bytes.NewReader(disk), func(int64) { calls++ }); err != nil || calls != 2 {
		t.Fatalf("seed: %v (%d progress calls)", err, calls)
	}
	err := client.Request(ControlRequest{Op: OpPrepareBackup, UUID: "u"}, nil)
	if err == nil || !strings.Contains(err.Error(), "runs here as a primary") {
		t.Fatalf("refusal: %v", err)
	}
	if err := <-srv; err != nil {
		t.Fatal(err)
	}
}

func TestValidUUID(t *testing.T) {
	for s, want := range map[string]bool{
		"5c0e7d1a-2b3c-4d5e-8f60-718293a4b5c6":   true,
		"5C0E7D1A-2B3C-4D5E-8F60-718293A4B5C6":   false,
		"../../../root/.ssh":                     false,
		"5c0e7d1a2b3c4d5e8f60718293a4b5c6":       false,
		"{5c0e7d1a-2b3c-4d5e-8f60-718293a4b5c6}": false,
		"5c0e7d1a-2b3c-4d5e-8f60-718293a4b5c/":   false,
		"":                                       false,
	} {
		if got := ValidUUID(s); got != want {
			t.Errorf("ValidUUID(%q) = %v, want %v", s, got, want)
		}
	}
}

// A request's short text fields are checked where the request is read: a
// peer's path or version with a control or format character, or too long,
// is a malformed frame that names the field, never text for the logs.
func TestControlRequestCheck(t *testing.T) {
	ok := ControlRequest{Op: OpPrepareBackup, UUID: "u", Name: "web 1", Path: "/var/lib/libvirt/images/d é.qcow2",
		QEMUVersion: "7.2.0", EmulatorBuild: "QEMU emulator version 7.2.0 (libvirt-ft), sha256 0011", Epoch: "e1",
		Arbiter: "etcd http://10.0.0.9:2379 /ft", DiskSizes: map[string]int64{"/d": 1}}
	if err := ok.Check(); err != nil {
		t.Fatalf("a plain request: %v", err)
	}
	cases := []struct {
		field string
		edit  func(r *ControlRequest)
	}{
		{"path", func(r *ControlRequest) { r.Path = "/d\n[ERROR] forged" }},
		{"path", func(r *ControlRequest) { r.Path = "/" + strings.Repeat("a", MaxPathBytes) }},
		{"qemu_version", func(r *ControlRequest) { r.QEMUVersion = "7.2\x1b[2J" }},
		{"qemu_version", func(r *ControlRequest) { r.QEMUVersion = "7.2\u202e0" }},
		{"name", func(r *ControlRequest) { r.Name = "bad\xffutf8" }},
		{"emulator_build", func(r *ControlRequest) { r.EmulatorBuild = strings.Repeat("x", MaxFieldBytes+1) }},
		{"disk_sizes path", func(r *ControlRequest) { r.DiskSizes = map[string]int64{"/d\u2028x": 1} }},
	}
	for _, c := range cases {
		r := ok
		c.edit(&r)
		err := r.Check()
		if !errors.Is(err, ErrBadFrame) || !strings.Contains(err.Error(), "Control "+c.field+" ") {
			t.Errorf("%s: %v, want ErrBadFrame naming the field", c.field, err)
			continue
		}
		if CleanText(err.Error(), len(err.Error())) != err.Error() {
			t.Errorf("%s: the error carries the raw text: %q", c.field, err)
		}
	}
	// Through the wire: RecvControl refuses it.
	a, b := net.Pipe()
	client, server := NewConn(a), NewConn(b)
	defer client.Close()
	defer server.Close()
	go func() { _ = client.WriteControl(ControlRequest{Op: OpHash, Path: "/d\r\nx"}) }()
	if _, _, err := server.RecvControl(); !errors.Is(err, ErrBadFrame) {
		t.Fatalf("RecvControl of a path with CR LF: %v, want ErrBadFrame", err)
	}
}
