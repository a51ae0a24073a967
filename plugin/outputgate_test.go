package plugin

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sirupsen/logrus"
	"libvirt.org/go/libvirtxml"

	"github.com/libvirt-ft/libvirt-ft/logchan"
	"github.com/libvirt-ft/libvirt-ft/plugin/gate"
	ftxml "github.com/libvirt-ft/libvirt-ft/xml"
)

const testUUID = "4c0e0a4e-7a51-4a53-9a5c-2b1f6e2f0a11"

// testEnv: a quiet host environment and a domain configuration with a
// peer and a state directory of its own.
func testEnv(t *testing.T) (env, ftxml.Config) {
	t.Helper()
	log := logrus.New()
	log.SetOutput(io.Discard)
	e := env{cfg: Config{}, qemuUID: -1, qemuGID: -1, log: log}
	cfg := ftxml.DefaultConfig()
	cfg.PeerAddress = "10.0.0.2"
	cfg.StateDir = shortTempDir(t)
	return e, cfg
}

// gateFixture: a primary's output gates on n interfaces of a domain, over
// a record FIFO that no QEMU writes (Produced stays 0).
func gateFixture(t *testing.T, n int) (env, *outputGates, *logchan.RecordReader, ftxml.Config) {
	t.Helper()
	e, cfg := testEnv(t)
	fifo := ftxml.RecordFIFOPath(cfg, testUUID)
	if err := logchan.CreateFIFO(fifo, -1, -1, 0o600); err != nil {
		t.Fatal(err)
	}
	rr, err := logchan.OpenRecordReader(fifo)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rr.Close() })
	dom := &libvirtxml.Domain{Devices: &libvirtxml.DomainDeviceList{Interfaces: make([]libvirtxml.DomainInterface, n)}}
	og, err := openGates(e, testUUID, cfg, dom, rr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(og.close)
	return e, og, rr, cfg
}

// shortTempDir is a state dir short enough for the gate sockets (t.TempDir
// embeds the test's name, which can exceed sun_path).
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "og")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// connectQEMU connects to gate j's sockets as QEMU does: OUT, then IN.
func connectQEMU(t *testing.T, cfg ftxml.Config, j int) (out, in net.Conn) {
	t.Helper()
	outPath, inPath := ftxml.GateSocketPaths(cfg, testUUID, j)
	out, err := net.Dial("unix", outPath)
	if err != nil {
		t.Fatal(err)
	}
	in, err = net.Dial("unix", inPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { out.Close(); in.Close() })
	return out, in
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A stock QEMU (no <emulator> carrying the flush marker) gets 4 KiB of
// slack: a frame produced at log position 0 leaves only once the backup
// acknowledged 4096 bytes.
func TestOutputGateSlackAndAck(t *testing.T) {
	_, og, _, cfg := gateFixture(t, 1)
	out, in := connectQEMU(t, cfg, 0)
	if err := gate.WriteFrame(out, []byte("frame-1")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the frame to be held", func() bool { return og.gates[0].Stats().HeldFrames == 1 })
	og.ack(stdioSlackBytes - 1)
	if st := og.gates[0].Stats(); st.HeldFrames != 1 {
		t.Fatalf("released on an ack below position+slack: %+v", st)
	}
	og.ack(stdioSlackBytes)
	_ = in.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := gate.ReadFrame(in)
	if err != nil || string(got) != "frame-1" {
		t.Fatalf("released frame: %q, %v", got, err)
	}
	// The heartbeat tells the backup that frame 1 is done.
	waitFor(t, "released() to report frame 1 done", func() bool { r := og.released(); return len(r) == 1 && r[0] == 1 })
}

// When the log position cannot be read (FIFO A closed), a frame must not be
// tagged with an undercount: it stays held whatever the acks, until
// Unprotect.
func TestOutputGateHoldsWhenPositionUnknown(t *testing.T) {
	_, og, rr, cfg := gateFixture(t, 1)
	out, in := connectQEMU(t, cfg, 0)
	rr.Close()
	if err := gate.WriteFrame(out, []byte("frame-1")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the frame to be held", func() bool { return og.gates[0].Stats().HeldFrames == 1 })
	og.ack(1 << 40)
	if st := og.gates[0].Stats(); st.HeldFrames != 1 {
		t.Fatalf("a frame of unknown position was released by an ack: %+v", st)
	}
	og.unprotect()
	_ = in.SetReadDeadline(time.Now().Add(5 * time.Second))
	if got, err := gate.ReadFrame(in); err != nil || string(got) != "frame-1" {
		t.Fatalf("after unprotect: %q, %v", got, err)
	}
}

// close removes every socket file and ends every serving goroutine, whether
// QEMU connected to both sockets, to one, or to none.
func TestOutputGatesCloseLeavesNothing(t *testing.T) {
	_, og, _, cfg := gateFixture(t, 3)
	connectQEMU(t, cfg, 0)
	outPath, _ := ftxml.GateSocketPaths(cfg, testUUID, 1)
	half, err := net.Dial("unix", outPath)
	if err != nil {
		t.Fatal(err)
	}
	defer half.Close()
	waitFor(t, "gate 0 serving", func() bool { return og.gates[0].Stats().Serving })
	og.close()
	waitFor(t, "gate 0 to stop serving", func() bool { return !og.gates[0].Stats().Serving })
	// The half-connected gate's OUT is closed by the daemon (EOF, or a
	// reset if it was still in the listener's backlog): a read ends.
	_ = half.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := half.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("OUT of a half-connected gate after close: %v, want it closed", err)
	}
	m, _ := filepath.Glob(filepath.Join(filepath.Dir(outPath), "*.sock"))
	if len(m) != 0 {
		t.Errorf("socket files left behind: %v", m)
	}
	og.close() // idempotent
}

// openGates failing part way (a directory where gate 1's IN socket goes)
// leaves no listener or socket file behind.
func TestOpenGatesFailureLeavesNothing(t *testing.T) {
	e, cfg := testEnv(t)
	_, in1 := ftxml.GateSocketPaths(cfg, testUUID, 1)
	if err := os.MkdirAll(in1, 0o755); err != nil {
		t.Fatal(err)
	}
	dom := &libvirtxml.Domain{Devices: &libvirtxml.DomainDeviceList{Interfaces: make([]libvirtxml.DomainInterface, 2)}}
	if _, err := openGates(e, testUUID, cfg, dom, nil); err == nil {
		t.Fatal("openGates over a directory: no error")
	}
	m, _ := filepath.Glob(filepath.Join(filepath.Dir(in1), "*.sock"))
	if len(m) != 1 || m[0] != in1 {
		t.Errorf("left behind: %v (only the pre-existing directory %s may remain)", m, in1)
	}
}

// Received is acknowledged on receipt: frames queued before FeedEnd must all
// be fed before END; frames after it are refused (and so never acked).
func TestFrameQueueFeedsEverythingQueuedBeforeEnd(t *testing.T) {
	q := &frameQueue{}
	q.cond = sync.NewCond(&q.mu)
	if !q.push(logchan.Message{Offset: 0}) || !q.push(logchan.Message{Offset: 10}) {
		t.Fatal("push refused before END")
	}
	q.set(true, false)
	if q.push(logchan.Message{Offset: 20}) {
		t.Fatal("a frame after FeedEnd was accepted: it would be acknowledged and never fed")
	}
	for _, want := range []uint64{0, 10} {
		m, ok, _ := q.pop()
		if !ok || m.Offset != want {
			t.Fatalf("pop: %v %v, want offset %d", m.Offset, ok, want)
		}
	}
	if _, ok, end := q.pop(); ok || !end {
		t.Fatalf("after the queued frames: ok %v end %v, want END", ok, end)
	}
}

// A closed queue wakes a waiting pop (the feeding goroutine must not outlive
// the controller).
func TestFrameQueueCloseWakesPop(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		q := &frameQueue{}
		q.cond = sync.NewCond(&q.mu)
		var ok, end, returned bool
		go func() {
			_, ok, end = q.pop()
			returned = true
		}()
		synctest.Wait() // pop is waiting on the empty queue
		if returned {
			t.Fatal("pop returned from an empty, open queue")
		}
		q.set(false, true)
		synctest.Wait()
		if !returned {
			t.Fatal("pop still waiting after close")
		}
		if ok || end {
			t.Errorf("close made pop return a frame (%v) or END (%v)", ok, end)
		}
	})
}

// A queue closed after FeedEnd still yields its frames, then END: they were
// acknowledged as received, and a QEMU left in replay mode would be
// destroyed by the next daemon (restart.go), losing the VM if its primary
// is gone; out of replay mode it waits for the next daemon's claim.
func TestFrameQueueClosedAfterFeedEndFeedsThenEnds(t *testing.T) {
	q := &frameQueue{}
	q.cond = sync.NewCond(&q.mu)
	q.push(logchan.Message{Offset: 0})
	q.set(true, false)
	q.set(false, true)
	if m, ok, _ := q.pop(); !ok || m.Offset != 0 {
		t.Fatalf("closed queue after FeedEnd: frame %v ok %v, want the queued frame", m.Offset, ok)
	}
	if _, ok, end := q.pop(); ok || !end {
		t.Fatalf("closed queue after FeedEnd, drained: ok %v end %v, want END", ok, end)
	}
}

// oneBackupGate opens the backup's gates of a domain with one interface.
func oneBackupGate(t *testing.T) (*outputGates, ftxml.Config) {
	t.Helper()
	e, cfg := testEnv(t)
	outPath, _ := ftxml.GateSocketPaths(cfg, testUUID, 0)
	if err := os.MkdirAll(filepath.Dir(outPath), 0o700); err != nil { // prepareBackup's FIFO B makes it
		t.Fatal(err)
	}
	dom := &libvirtxml.Domain{Devices: &libvirtxml.DomainDeviceList{Interfaces: make([]libvirtxml.DomainInterface, 1)}}
	og, err := openBackupGates(e, testUUID, cfg, dom)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(og.close)
	return og, cfg
}

// The backup's gates hold the replayed frames, forget those the primary's
// heartbeats report sent, and at go-live send the rest, in order, then pass
// frames through.
func TestBackupGatesForgetAndGoLive(t *testing.T) {
	og, cfg := oneBackupGate(t)
	out, in := connectQEMU(t, cfg, 0)
	for _, f := range []string{"f1", "f2", "f3", "f4", "f5"} {
		if err := gate.WriteFrame(out, []byte(f)); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "5 frames held", func() bool { return og.gates[0].Stats().HeldFrames == 5 })
	og.forget([]uint64{3})
	if st := og.gates[0].Stats(); st.HeldFrames != 2 || st.ForgotFrames != 3 || st.Released != 0 {
		t.Fatalf("after forget(3): %+v", st)
	}
	if n := og.unprotect(); n != 2 {
		t.Fatalf("go-live sent %d frames, want 2", n)
	}
	// QEMU has not read IN yet: go-live must not turn the filter off.
	if og.waitSent(20 * time.Millisecond) {
		t.Fatal("waitSent reported the frames read before QEMU read IN")
	}
	if err := gate.WriteFrame(out, []byte("f6")); err != nil {
		t.Fatal(err)
	}
	_ = in.SetReadDeadline(time.Now().Add(5 * time.Second))
	for _, want := range []string{"f4", "f5", "f6"} {
		got, err := gate.ReadFrame(in)
		if err != nil || string(got) != want {
			t.Fatalf("sent %q (%v), want %q", got, err, want)
		}
	}
	if !og.waitSent(5 * time.Second) {
		t.Fatal("waitSent: QEMU read everything, yet it timed out")
	}
}

// With the gate off the backup has no gates (its guest's frames go into a
// null chardev) and its heartbeats carry no counts.
func TestBackupGatesOff(t *testing.T) {
	e, cfg := testEnv(t)
	cfg.OutputGate = false
	dom := &libvirtxml.Domain{Devices: &libvirtxml.DomainDeviceList{Interfaces: make([]libvirtxml.DomainInterface, 1)}}
	og, err := openBackupGates(e, testUUID, cfg, dom)
	if err != nil {
		t.Fatal(err)
	}
	if len(og.gates) != 0 || og.released() != nil || og.unprotect() != 0 {
		t.Fatalf("gate off: %d gates", len(og.gates))
	}
}

// The backup's gates compare the replayed frames with the primary's
// digests (issue 13, divergence) and report the first mismatch, with its
// interface, once; the digests a primary's gates send match a backup whose
// guest sent the same frames.
func TestBackupGatesVerify(t *testing.T) {
	og, cfg := oneBackupGate(t)
	var mu sync.Mutex
	var got []string
	og.setOnMismatch(func(j int, m gate.Mismatch) {
		mu.Lock()
		got = append(got, fmt.Sprintf("%d:%d:%d", j, m.Frame, m.After))
		mu.Unlock()
	})
	var d uint64
	primary := func(frames ...string) []logchan.FrameDigest {
		for _, f := range frames {
			d = gate.NextDigest(d, []byte(f))
		}
		return []logchan.FrameDigest{{Frames: uint64(len(frames)), Digest: d}}
	}
	out, _ := connectQEMU(t, cfg, 0)
	for _, f := range []string{"f1", "f2", "f3", "X4"} {
		if err := gate.WriteFrame(out, []byte(f)); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "4 frames read", func() bool { return og.gates[0].Stats().ReadFrames == 4 })
	og.verify(primary("f1", "f2", "f3"))
	p4 := primary("f4")
	p4[0].Frames = 4
	og.verify(p4)
	og.verify(p4)
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 1 || got[0] != "0:4:3" {
		t.Fatalf("mismatches %v, want [0:4:3]", got)
	}
	if st := og.stats(); len(st) != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// A planned restart between two daemons of this version keeps the frame
// digests: the record written by detach (key "digest2") and read back
// gives adoptGates the running digest, and the adopted backup gate goes on
// comparing the primary's digests from there.
func TestAdoptedGatesKeepDigests(t *testing.T) {
	og, cfg := oneBackupGate(t)
	e, _ := testEnv(t)
	out, _ := connectQEMU(t, cfg, 0)
	for _, f := range []string{"f1", "f2"} {
		if err := gate.WriteFrame(out, []byte(f)); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "2 frames read", func() bool { return og.gates[0].Stats().ReadFrames == 2 })
	og.forget([]uint64{2}) // the primary reported them sent: nothing held
	conns, hs, err := og.detach(2 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	og.handOff()
	b, err := json.Marshal(hs)
	if err != nil {
		t.Fatal(err)
	}
	var read []gateHandover
	if err := json.Unmarshal(b, &read); err != nil || len(read) != 1 || read[0].Digest == nil {
		t.Fatalf("record %s read as %+v (%v)", b, read, err)
	}
	for _, c := range conns {
		_ = c[0].SetDeadline(time.Time{})
		_ = c[1].SetDeadline(time.Time{})
	}
	nog := &outputGates{backup: true}
	if err := adoptGates(e, nog, conns, read, func(int) func() uint64 { return func() uint64 { return 0 } }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nog.close)
	og.close()
	if nog.noDigests || nog.stats()[0].DigestsOff {
		t.Fatal("adopted from a daemon of this version, the gates dropped their digests")
	}
	var mismatches []gate.Mismatch
	var mu sync.Mutex
	nog.setOnMismatch(func(_ int, m gate.Mismatch) { mu.Lock(); mismatches = append(mismatches, m); mu.Unlock() })
	if err := gate.WriteFrame(out, []byte("f3")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "frame 3 read by the adopted gate", func() bool { return nog.gates[0].Stats().ReadFrames == 3 })
	var d uint64
	for _, f := range []string{"f1", "f2", "f3"} {
		d = gate.NextDigest(d, []byte(f))
	}
	nog.verify([]logchan.FrameDigest{{Frames: 3, Digest: d}})
	mu.Lock()
	defer mu.Unlock()
	if st := nog.gates[0].Stats(); len(mismatches) != 0 || st.VerifyChecked != 1 {
		t.Fatalf("after the adoption: %d mismatches, %d digests compared, want 0 and 1", len(mismatches), st.VerifyChecked)
	}
}

// A gate adopted from a daemon that kept no digests neither sends nor
// compares any: its chain cannot match the peer's.
func TestAdoptedGatesWithoutDigest(t *testing.T) {
	var og outputGates
	og.gates = []*gate.Gate{mustGate(t, gate.Config{FramesBefore: 7})}
	if og.digests() == nil {
		t.Fatal("no digests from a fresh gate")
	}
	og.noDigests = true
	if og.digests() != nil {
		t.Fatal("digests sent from a gate whose chain is unknown")
	}
	if st := og.stats(); len(st) != 1 || !st[0].DigestsOff {
		t.Fatalf("status does not say the digests are off: %+v", st)
	}
	h := gateHandover{Frames: 7}
	b, err := json.Marshal(h)
	if err != nil || strings.Contains(string(b), "digest") {
		t.Fatalf("handover %s, %v", b, err)
	}
	// A record of a daemon of session 48 or before holds a CRC-64 digest
	// under "digest": another checksum, so it reads as no digest (none
	// sent or compared); this daemon's goes under "digest2", which such
	// a daemon does not read.
	var old gateHandover
	if err := json.Unmarshal([]byte(`{"frames":7,"digest":12345}`), &old); err != nil || old.Frames != 7 || old.Digest != nil {
		t.Fatalf("a CRC-64 record read as %+v (%v)", old, err)
	}
	d := gate.NextDigest(0, []byte("x"))
	b, err = json.Marshal(gateHandover{Frames: 1, Digest: &d})
	if err != nil || !strings.Contains(string(b), `"digest2":`) || strings.Contains(string(b), `"digest":`) {
		t.Fatalf("handover %s, %v", b, err)
	}
}

func mustGate(t *testing.T, cfg gate.Config) *gate.Gate {
	t.Helper()
	g, err := gate.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// The primary's heartbeat is followed by a Digests frame only for a backup
// that listed logchan.FeatureFrameDigests (an older one would drop the
// channel on the unknown frame).
func TestHeartbeatDigests(t *testing.T) {
	for _, listed := range []bool{true, false} {
		a, b := net.Pipe()
		pc := newPeerConn(a)
		pc.digests = func() []logchan.FrameDigest { return []logchan.FrameDigest{{Frames: 9, Digest: 42}} }
		if listed {
			pc.peer.Features = []string{"other", logchan.FeatureFrameDigests}
		}
		done := make(chan error, 1)
		go func() {
			err := pc.writeHeartbeat()
			if err == nil {
				err = pc.c.WriteHeartbeat(logchan.Heartbeat{Seq: 99}) // a marker
			}
			done <- err
		}()
		rc := logchan.NewConn(b)
		var kinds []logchan.MessageKind
		for {
			m, err := rc.Recv()
			if err != nil {
				t.Fatal(err)
			}
			kinds = append(kinds, m.Kind)
			if m.Kind == logchan.MsgDigests && (len(m.Digests) != 1 || m.Digests[0] != (logchan.FrameDigest{Frames: 9, Digest: 42})) {
				t.Fatalf("digests %+v", m.Digests)
			}
			if m.Kind == logchan.MsgHeartbeat && m.Heartbeat.Seq == 99 {
				break
			}
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		want := 2
		if listed {
			want = 3
		}
		if len(kinds) != want || (listed && kinds[1] != logchan.MsgDigests) {
			t.Fatalf("listed=%v: messages %v", listed, kinds)
		}
		a.Close()
		b.Close()
	}
}

// A VM that went live here is re-protected (protect.go): its backup gates,
// passing frames since go-live, become a primary's on the same QEMU
// connections. Frames are numbered and digested from 1 again, held until
// the new backup acknowledges their log position, and the connections
// carry on (Detach's deadline in the past must not reach the new gates).
func TestReprotectedGates(t *testing.T) {
	og, cfg := oneBackupGate(t)
	e, _ := testEnv(t)
	out, in := connectQEMU(t, cfg, 0)
	_ = in.SetReadDeadline(time.Now().Add(5 * time.Second))
	if err := gate.WriteFrame(out, []byte("live-1")); err != nil {
		t.Fatal(err)
	}
	og.unprotect() // go-live
	if got, err := gate.ReadFrame(in); err != nil || string(got) != "live-1" {
		t.Fatalf("live frame: %q, %v", got, err)
	}
	waitFor(t, "the live frame written", func() bool { return og.waitSent(0) })
	pos := &fakePosition{}
	nog, err := og.reprotected(e, pos, true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nog.close)
	og.close() // the old gates' close must leave the connections open
	pos.set(100)
	if err := gate.WriteFrame(out, []byte("protected-1")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the frame held", func() bool { return nog.gates[0].Stats().HeldFrames == 1 })
	nog.ack(99)
	if st := nog.gates[0].Stats(); st.HeldFrames != 1 {
		t.Fatalf("released before its log was acknowledged: %+v", st)
	}
	nog.ack(100)
	if got, err := gate.ReadFrame(in); err != nil || string(got) != "protected-1" {
		t.Fatalf("released frame: %q, %v", got, err)
	}
	st := nog.gates[0].Stats()
	if st.ReadFrames != 1 || st.Digest != gate.NextDigest(0, []byte("protected-1")) {
		t.Fatalf("the new pairing's frames must count from 1: %+v", st)
	}
	if d := nog.digests(); len(d) != 1 {
		t.Fatalf("digests for the heartbeat: %+v", d)
	}
}

type fakePosition struct {
	mu sync.Mutex
	n  uint64
}

func (f *fakePosition) set(n uint64) { f.mu.Lock(); f.n = n; f.mu.Unlock() }

func (f *fakePosition) Produced() (uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.n, nil
}
