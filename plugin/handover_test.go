package plugin

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
	"libvirt.org/go/libvirtxml"

	"github.com/libvirt-ft/libvirt-ft/failover"
	"github.com/libvirt-ft/libvirt-ft/logchan"
	"github.com/libvirt-ft/libvirt-ft/plugin/ctl"
	xmlpkg "github.com/libvirt-ft/libvirt-ft/xml"
)

// primaryRestarts makes host a's primary behave as its daemon does when it
// stops for a planned restart (handOver): its failover core stops and it
// says ByeRestarting on the log channel, then closes it. It returns the
// pairing epoch and the log bytes sent.
func primaryRestarts(t *testing.T, fp *fakePair) (epoch string, sent uint64) {
	t.Helper()
	p, ok := fp.a.d.lookup(runUUID).current().(*primaryRun)
	if !ok {
		t.Fatal("no primary run on host a")
	}
	p.mu.Lock()
	drv, link := p.drv, p.link
	epoch, sent = p.epoch, p.sentBytes
	p.link = nil
	p.mu.Unlock()
	drv.Stop()
	link.bye(logchan.Bye{Clean: true, Reason: failover.ByeRestarting})
	link.closeWrite()
	return epoch, sent
}

// dialResume dials host b's log channel from host a as a restarted
// primary daemon does, and returns the backup's first answer.
func dialResume(t *testing.T, fp *fakePair, epoch string, resume bool, offset uint64) (*peerConn, logchan.Message) {
	t.Helper()
	logVer, _ := logchan.LogVersionForQEMU("7.2.22")
	pc, err := dialLog(fp.a.d.env(), "10.0.0.2:7480", runUUID, "7.2.22", logVer, epoch, resume, offset, nil)
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	m, err := pc.c.Recv()
	if err != nil {
		t.Fatalf("the backup's answer: %v", err)
	}
	return pc, m
}

// A planned restart of the primary's daemon: the backup neither goes live
// nor gives up while the restart grace (5 s by default) lasts; it refuses a channel of another pairing epoch, a resume at an
// offset it did not reach and a plain second channel, and accepts the
// resumed channel at the offset it received; replication goes on.
func TestBackupResumesAfterPrimaryRestart(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fp, _ := replicating(t)
		epoch, sent := primaryRestarts(t, fp)
		time.Sleep(500 * time.Millisecond)
		synctest.Wait()
		if s := fp.b.status(t, "web"); s.State != ctl.StateReplicating || !strings.Contains(s.Detail, "restarts") {
			t.Fatalf("host b while the primary restarts: %s %q", s.State, s.Detail)
		}
		for _, c := range []struct {
			epoch  string
			resume bool
			offset uint64
			want   string
		}{
			{"other", true, sent, "armed for pairing epoch"},
			{epoch, true, sent + 1, "cannot resume the log at offset"},
			{epoch, false, 0, "waits for a log channel"},
		} {
			pc, m := dialResume(t, fp, c.epoch, c.resume, c.offset)
			if m.Kind != logchan.MsgBye || !strings.Contains(m.Bye.Reason, c.want) {
				t.Fatalf("resume %+v: got %+v, want a bye saying %q", c, m, c.want)
			}
			pc.Close()
		}
		pc, m := dialResume(t, fp, epoch, true, sent)
		if m.Kind != logchan.MsgAck || m.Ack.Received != sent {
			t.Fatalf("resume at %d: got %+v, want an ack of it", sent, m)
		}
		pc.startWriter()
		defer pc.Close()
		// Heartbeats on the resumed channel keep the backup replicating
		// well past the grace.
		for range 30 {
			pc.queueHeartbeat()
			time.Sleep(100 * time.Millisecond)
		}
		synctest.Wait()
		if s := fp.b.status(t, "web"); s.State != ctl.StateReplicating || s.Failover != "replicating" {
			t.Fatalf("host b after the resume: %s %q (failover %s)", s.State, s.Detail, s.Failover)
		}
		// A second resume while this one is up is refused.
		pc2, m := dialResume(t, fp, epoch, true, sent)
		defer pc2.Close()
		if m.Kind != logchan.MsgBye {
			t.Fatalf("a second resume: got %+v, want a bye", m)
		}
	})
}

// A primary daemon that says ByeRestarting and never comes back is lost
// once the restart grace ends: the backup goes live.
func TestBackupGoesLiveWhenRestartDoesNotComeBack(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fp, _ := replicating(t)
		primaryRestarts(t, fp)
		time.Sleep(4900 * time.Millisecond)
		synctest.Wait()
		if s := fp.b.status(t, "web"); s.State != ctl.StateReplicating {
			t.Fatalf("host b within the grace: %s %q", s.State, s.Detail)
		}
		time.Sleep(3 * time.Second)
		synctest.Wait()
		if s := fp.b.status(t, "web"); s.State == ctl.StateReplicating {
			t.Fatalf("host b 3 s after the grace: still %s %q", s.State, s.Detail)
		}
	})
}

// The restart grace: the larger of the heartbeat timeout and 5 s unless
// restart-grace-ms says otherwise (0 must not become the 1-tick minimum of
// failover.Ticks).
func TestRestartGrace(t *testing.T) {
	cfg := xmlpkg.DefaultConfig()
	cfg.HeartbeatTimeout = 1500 * time.Millisecond
	if fc := nodeConfig(failover.RoleBackup, cfg, Config{StatusIntervalMS: 50}); fc.RestartGrace != 500 {
		t.Fatalf("RestartGrace %d ticks without restart-grace-ms, want 500 (5 s)", fc.RestartGrace)
	}
	cfg.HeartbeatTimeout = 8 * time.Second
	if g := restartGrace(cfg, Config{}); g != 8*time.Second {
		t.Fatalf("restartGrace %v, want the heartbeat timeout (8 s)", g)
	}
	cfg.HeartbeatTimeout = 1500 * time.Millisecond
	fc := nodeConfig(failover.RoleBackup, cfg, Config{StatusIntervalMS: 50, RestartGraceMS: 3000})
	if fc.RestartGrace != 300 {
		t.Fatalf("RestartGrace %d ticks for 3000 ms, want 300", fc.RestartGrace)
	}
}

// storeFile speaks sd_notify(3): FDSTORE=1 with the name and the
// descriptor attached (SCM_RIGHTS), to NOTIFY_SOCKET.
func TestStoreFileNotifies(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify")
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: sock}); err != nil {
		t.Fatal(err)
	}
	t.Setenv("NOTIFY_SOCKET", sock)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	if err := storeFile("u.fifo", r); err != nil {
		t.Fatal(err)
	}
	buf, oob := make([]byte, 256), make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := unix.Recvmsg(fd, buf, oob, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := string(buf[:n]); got != "FDSTORE=1\nFDPOLL=0\nFDNAME=u.fifo" {
		t.Fatalf("message %q", got)
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		t.Fatalf("control messages %v, %v", msgs, err)
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		t.Fatalf("rights %v, %v", fds, err)
	}
	got := os.NewFile(uintptr(fds[0]), "stored")
	defer got.Close()
	if _, err := w.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	if _, err := got.Read(b); err != nil || b[0] != 'x' {
		t.Fatalf("the stored descriptor is not the pipe: %q, %v", b, err)
	}
	t.Setenv("NOTIFY_SOCKET", "")
	if fdStoreAvailable() || storeFile("u.fifo", r) == nil {
		t.Fatal("without NOTIFY_SOCKET a descriptor was stored")
	}
}

// The backup's own planned restart while its replay lags: the primary
// sends no heartbeat while it quiesces, and the backup's failover core must
// not take that for a loss: it never goes live, and its QEMU still replays.
// (The fakes' FIFO B has no descriptor, so handOver ends in an error when
// it comes to store it.)
func TestBackupOwnHandoverNeverGoesLive(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fp, primary := replicating(t, func(fp *fakePair) { fp.a.d.cfg.RestartGraceMS = 5000 })
		backupQEMU := fp.b.hv.running(runUUID)
		b := fp.b.d.lookup(runUUID).current().(*backupRun)
		backupQEMU.stall() // the replay lags
		for range 2 {
			primary.emit(t, instructions(100, 10))
			time.Sleep(200 * time.Millisecond)
			synctest.Wait()
		}
		done := make(chan error, 1)
		go func() {
			_, _, err := b.handOver(handoverTimeout)
			done <- err
		}()
		go func() {
			time.Sleep(1500 * time.Millisecond)
			backupQEMU.mu.Lock()
			backupQEMU.stalled = false
			backupQEMU.cond.Broadcast()
			backupQEMU.mu.Unlock()
		}()
		for range 20 {
			time.Sleep(100 * time.Millisecond)
			synctest.Wait()
			b.mu.Lock()
			gl := b.goingLive
			b.mu.Unlock()
			if gl {
				t.Fatal("the backup started going live during its own handover")
			}
		}
		if err := <-done; err == nil {
			t.Fatal("handOver succeeded with a FIFO B that has no descriptor")
		}
		if mode, _ := backupQEMU.state(); mode != "play" {
			t.Fatalf("the backup's QEMU is in mode %q, want play", mode)
		}
	})
}

// The lag ceiling: 25 s with the default stall bound and lag bound, none
// with the lag bound off (max-lag-ms -1 is stored as 0), four times a
// long lag bound.
func TestLagCeilingConfig(t *testing.T) {
	cfg := xmlpkg.DefaultConfig()
	for _, c := range []struct {
		maxLagMS int
		want     int
	}{
		{DefaultMaxLagMS, 2500},
		{0, 0},
		{10000, 4000},
	} {
		if fc := nodeConfig(failover.RoleBackup, cfg, Config{StatusIntervalMS: 50, MaxLagMS: c.maxLagMS}); fc.LagCeiling != c.want {
			t.Errorf("max-lag-ms %d: LagCeiling %d ticks, want %d", c.maxLagMS, fc.LagCeiling, c.want)
		}
	}
}

// A daemon that begins to stop for a planned restart before it adopted
// what the previous one handed over adopts nothing afterwards: the record
// stays in the store for the next daemon (handOverAll waits for an
// adoption under way and then forbids new ones).
func TestStoppingDaemonLeavesHandoversToNext(t *testing.T) {
	fp := newFakePair(t)
	d := fp.a.d
	d.handovers = handoverStore{dir: filepath.Join(t.TempDir(), "handover")}
	rec := handoverRecord{UUID: runUUID, Name: "web", Role: xmlpkg.RolePrimary, Epoch: "e1", DomainID: 1}
	if err := d.handovers.save(rec); err != nil {
		t.Fatal(err)
	}
	d.handOverAll()
	d.resolveOrphans()
	got := d.handovers.takeAll()
	if len(got) != 1 || got[0].UUID != runUUID {
		t.Fatalf("after a stop begun before the adoption: records %+v, want the one handed over kept", got)
	}
}

// A daemon that began to stop for a planned restart resolves nothing
// when it connects to libvirtd then (whichever of the connection and
// handOverAll comes first): a recording QEMU with no
// run here is left as it is (no claim, no cont: never ungated), for the
// daemon after it.
func TestStoppingDaemonResolvesNothing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fp, primary := replicating(t)
		fp.unreachable("10.0.0.2", true) // host b does not go live meanwhile
		fp.crash(fp.a)
		time.Sleep(time.Second)
		synctest.Wait()
		old := fp.a.d
		d := newDaemon(old.cfg, old.log, fp.a.hv, old.arb)
		d.pipes, d.pairings = old.pipes, old.pairings
		d.dial = fp.net.dialer(fp.a.ip)
		fp.a.hv.mu.Lock()
		fp.a.hv.hook, fp.a.hv.event = d.handleHook, d.onLifecycle
		fp.a.hv.mu.Unlock()
		fp.net.mu.Lock()
		fp.a.d = d
		fp.net.mu.Unlock()
		// The stop begins (Run closes stopping, then hands over) before
		// libvirtd is reached; the first connection comes meanwhile.
		d.beginStop()
		d.rescan()
		d.handOverAll()
		time.Sleep(3 * time.Second)
		synctest.Wait()
		if fp.a.hv.running(runUUID) != primary {
			t.Fatal("host a: the primary's QEMU is gone")
		}
		primary.mu.Lock()
		mode, log := primary.mode, slices.Clone(primary.qmpLog)
		primary.mu.Unlock()
		if mode != "record" || slices.Contains(log, "cont") {
			t.Fatalf("host a: mode %s qmp %v; want it left recording and paused", mode, log)
		}
		fp.arb.mu.Lock()
		claims := len(fp.arb.claims)
		fp.arb.mu.Unlock()
		if claims != 0 {
			t.Fatalf("host a: %d claims made by a stopping daemon", claims)
		}
		fp.unreachable("10.0.0.2", false)
		fp.shutdown()
	})
}

// queueAckSoon's yield applies only while every pending ack came by it:
// an ack queued by queueAck goes out without it.
func TestQueueAckSoonBookkeeping(t *testing.T) {
	p := &peerConn{}
	p.cond = sync.NewCond(&p.mu)
	p.queueAckSoon(logchan.Ack{Received: 1})
	if !p.ackSoon || !p.hasAck {
		t.Fatalf("a receipt alone: ackSoon %v hasAck %v, want both", p.ackSoon, p.hasAck)
	}
	p.queueAck(logchan.Ack{Offset: 1})
	if p.ackSoon {
		t.Fatal("after a plain ack: ackSoon still set")
	}
	p.queueAckSoon(logchan.Ack{Received: 2})
	if p.ackSoon || p.ack.Received != 2 || p.ack.Offset != 1 {
		t.Fatalf("a receipt after a plain ack: ackSoon %v ack %+v", p.ackSoon, p.ack)
	}
}

// endAdoptResume stops the adoption's resume from trying again and waits
// for a cont in flight, up to its bound; a run not adopted has none.
func TestEndAdoptResume(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := &primaryRun{}
		if !p.endAdoptResume(time.Second) {
			t.Fatal("a run not adopted: a resume is said to be under way")
		}
		resumed, cancel := make(chan struct{}), make(chan struct{})
		p.adoptResumed, p.adoptCancel = resumed, cancel
		go func() { // the resume: a cont in flight for 200 ms, then no retry once cancelled
			time.Sleep(200 * time.Millisecond)
			<-cancel
			close(resumed)
		}()
		start := time.Now()
		if !p.endAdoptResume(time.Second) || time.Since(start) != 200*time.Millisecond {
			t.Fatalf("waited %v for the resume in flight, want 200ms and true", time.Since(start))
		}
		p2 := &primaryRun{adoptResumed: make(chan struct{}), adoptCancel: make(chan struct{})}
		if p2.endAdoptResume(time.Second) {
			t.Fatal("a resume that never returns: reported ended")
		}
		p2.endAdoptResume(0) // a second call does not close adoptCancel again
	})
}

// A held resume that a pause cancelled before it began sends no cont: it
// releases its waiters.
func TestHeldResumeCancelledBeforeItBegins(t *testing.T) {
	p := &primaryRun{stop: make(chan struct{})}
	resumed, cancel := make(chan struct{}), make(chan struct{})
	close(cancel)
	if p.runHeldResume(resumed, cancel) {
		t.Fatal("a cancelled resume reported the VM running")
	}
	select {
	case <-resumed:
	default:
		t.Fatal("resumed not closed")
	}
}

// lateAdoptResume is an adopted primary whose VM the stopping daemon
// paused, with the adoption's resume (runHeldResume) in flight: its cont
// is held in the fake QEMU until gate is closed. Call inside a synctest
// bubble.
func lateAdoptResume(t *testing.T) (*fakeHV, *fakeQEMU, chan struct{}, *primaryRun) {
	t.Helper()
	hv := &fakeHV{pipes: &memPipes{}}
	if err := hv.createPlain(libvirtxml.Domain{UUID: runUUID, Name: "web"}, "<domain/>"); err != nil {
		t.Fatal(err)
	}
	q := hv.running(runUUID)
	gate := make(chan struct{})
	q.mu.Lock()
	q.paused, q.contGate = true, gate // paused by the stopping daemon
	q.mu.Unlock()
	log := logrus.New()
	log.SetOutput(io.Discard)
	p := newPrimaryRun(env{log: log, hv: hv}, runUUID, "web", xmlpkg.Config{PeerAddress: "10.0.0.2", PeerPort: 7480})
	resumed, cancel := make(chan struct{}), make(chan struct{})
	p.adoptResumed, p.adoptCancel = resumed, cancel
	go p.runHeldResume(resumed, cancel)
	synctest.Wait() // its cont is in flight
	return hv, q, gate, p
}

// pauseMarks reads a primary run's pause marks under its lock.
func pauseMarks(p *primaryRun) (claim, restart, doubt bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.claimPaused, p.restartPaused, p.pauseDoubt
}

// winClaim acts as the failover core does when the split-brain claim is
// won (ReportUnprotected), and waits for what that starts (synctest).
func winClaim(p *primaryRun) {
	p.act(failover.ReportUnprotected{Reason: "claim won"}, nil, &outputGates{}, func() {})
	synctest.Wait()
}

// When the adoption's late cont fails too, the VM stays paused after the
// failed second pause: the planned restart's mark stays and the run is in
// doubt, so a claim attempt whose pause fails does not mark it again, and
// a decided claim (ReportUnprotected) resumes the VM rather than leave it
// paused for good (helper-145).
func TestFailedPauseAfterFailedLateResumeResumes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		hv, q, gate, p := lateAdoptResume(t)
		if !p.pauseForRestart("the backup host's libvirt-ftd restarts (planned)") {
			t.Fatal("pauseForRestart failed")
		}
		q.mu.Lock()
		q.gone = true // the late cont fails, and so does the second pause
		q.mu.Unlock()
		close(gate)
		synctest.Wait()
		if !q.isPaused() {
			t.Fatal("the failed cont resumed the fake VM")
		}
		claim, restart, doubt := pauseMarks(p)
		if claim || !restart || !doubt {
			t.Fatalf("after the failed second pause: claim %v restart %v doubt %v, want false true true", claim, restart, doubt)
		}
		hv.setDown(true)
		p.pauseForClaim(errors.New("etcd: context deadline exceeded")) // fails: libvirtd is down
		claim, _, _ = pauseMarks(p)
		if claim {
			t.Fatal("a claim attempt whose pause failed marked the run paused again")
		}
		hv.setDown(false)
		q.mu.Lock()
		q.gone = false
		q.mu.Unlock()
		winClaim(p)
		if q.isPaused() {
			t.Fatal("ReportUnprotected left the VM paused whose state was in doubt")
		}
		close(p.stop)
	})
}

// A second pause after the adoption's late cont that fails while a planned
// restart's pause succeeds leaves that pause's marks as they are
// (helper-145's should-fix: the pause generation, pauseGen), lifted since
// or not, and marks the run in doubt: the failed stop may have landed
// after a resume, and doubt only adds resumes (helper-146, 147).
func TestStaleFailedPauseKeepsNewerPauseMarks(t *testing.T) {
	for _, lifted := range []bool{false, true} {
		synctest.Test(t, func(t *testing.T) {
			_, q, gate, p := lateAdoptResume(t)
			p.pauseForClaim(errors.New("etcd: context deadline exceeded"))
			if !q.isPaused() {
				t.Fatal("the claim's pause did not pause the VM")
			}
			hold := q.holdStop(true)
			close(gate) // the adoption's cont lands after the pause
			synctest.Wait()
			taken := q.stopsHeldPending() == 0
			if q.isPaused() || !taken {
				t.Fatalf("after the late cont: paused %v, second stop in flight %v; want false, true", q.isPaused(), taken)
			}
			// The second pause is in flight; a planned restart's pause
			// succeeds meanwhile.
			if !p.pauseForRestart("the backup host's libvirt-ftd restarts (planned)") {
				t.Fatal("pauseForRestart failed")
			}
			if lifted {
				p.mu.Lock()
				p.restartPaused, p.claimPaused = false, false // the link resumed
				p.mu.Unlock()
			}
			close(hold) // the second pause fails
			synctest.Wait()
			claim, restart, doubt := pauseMarks(p)
			if claim != !lifted || restart != !lifted || !doubt {
				t.Fatalf("lifted %v: after the stale second pause failed: claim %v restart %v doubt %v, want %v %v true", lifted, claim, restart, doubt, !lifted, !lifted)
			}
			close(p.stop)
		})
	}
}

// A stale second pause that fails while a claim's pause is under way
// (after the planned restart's pause it followed was lifted) must not
// leave the claim's successful pause unmarked: the claim won, its
// ReportUnprotected resumes the VM (helper-147's must-fix).
func TestStaleFailedPauseDuringClaimPause(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		_, q, gate, p := lateAdoptResume(t)
		if !p.pauseForRestart("the backup host's libvirt-ftd restarts (planned)") {
			t.Fatal("pauseForRestart failed")
		}
		stale := q.holdStop(true)
		close(gate) // the adoption's cont lands: the follow-up pause starts
		synctest.Wait()
		if q.stopsHeldPending() != 0 {
			t.Fatal("the follow-up pause did not reach its stop")
		}
		p.mu.Lock()
		p.restartPaused, p.claimPaused = false, false // the link resumed
		p.mu.Unlock()
		claim := q.holdStop(false)
		done := make(chan struct{})
		go func() {
			defer close(done)
			p.pauseForClaim(errors.New("etcd: context deadline exceeded"))
		}()
		synctest.Wait()
		close(stale) // the stale stop fails first
		synctest.Wait()
		close(claim) // then the claim's stop pauses the VM
		<-done
		synctest.Wait()
		if !q.isPaused() {
			t.Fatal("the claim's pause did not pause the VM")
		}
		marked, _, _ := pauseMarks(p)
		if !marked {
			t.Fatal("the claim's successful pause left the run unmarked")
		}
		winClaim(p)
		if q.isPaused() {
			t.Fatal("the claim was won and the VM stays paused")
		}
		close(p.stop)
	})
}

// The mirror case: the stale second pause succeeds (taking the claim's
// early mark for its own) and the claim's own stop then fails: the VM is
// paused, and a won claim resumes it (helper-148's must-fix).
func TestStalePauseSucceedsThenClaimPauseFails(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		_, q, gate, p := lateAdoptResume(t)
		if !p.pauseForRestart("the backup host's libvirt-ftd restarts (planned)") {
			t.Fatal("pauseForRestart failed")
		}
		stale := q.holdStop(false)
		close(gate) // the adoption's cont lands: the follow-up pause starts
		synctest.Wait()
		if q.stopsHeldPending() != 0 {
			t.Fatal("the follow-up pause did not reach its stop")
		}
		p.mu.Lock()
		p.restartPaused, p.claimPaused = false, false // the link resumed
		p.mu.Unlock()
		claim := q.holdStop(true)
		done := make(chan struct{})
		go func() {
			defer close(done)
			p.pauseForClaim(errors.New("etcd: context deadline exceeded"))
		}()
		synctest.Wait()
		close(stale) // the stale stop pauses the VM
		synctest.Wait()
		close(claim) // the claim's stop fails
		<-done
		synctest.Wait()
		if !q.isPaused() {
			t.Fatal("the stale pause did not pause the VM")
		}
		if _, _, doubt := pauseMarks(p); !doubt {
			t.Fatal("the paused VM is neither marked nor in doubt")
		}
		winClaim(p)
		if q.isPaused() {
			t.Fatal("the claim was won and the VM stays paused")
		}
		close(p.stop)
	})
}

// A claim's or a planned restart's pause that could not wait for the
// adoption's resume (its cont held in libvirt past the wait) pauses the VM
// again once that cont has landed, while the run is still paused; a pause
// lifted meanwhile (ReportUnprotected) is not redone.
func TestPauseAgainAfterLateAdoptResume(t *testing.T) {
	for _, c := range []struct {
		restart, lifted bool
	}{{false, false}, {false, true}, {true, false}, {true, true}} {
		restart, lifted := c.restart, c.lifted
		synctest.Test(t, func(t *testing.T) {
			_, q, gate, p := lateAdoptResume(t)
			if restart {
				if !p.pauseForRestart("the backup host's libvirt-ftd restarts (planned)") {
					t.Fatal("pauseForRestart failed")
				}
			} else {
				p.pauseForClaim(errors.New("etcd: context deadline exceeded"))
			}
			paused := q.isPaused()
			if !paused {
				t.Fatal("the claim's pause did not pause the VM")
			}
			if lifted {
				p.mu.Lock()
				p.claimPaused = false // the claim was decided (ReportUnprotected)
				p.mu.Unlock()
			}
			close(gate) // the adoption's cont lands after the pause
			synctest.Wait()
			paused = q.isPaused()
			if paused != !lifted {
				t.Fatalf("restart %v, pause lifted %v: after the late cont the VM is paused %v, want %v", restart, lifted, paused, !lifted)
			}
			close(p.stop)
		})
	}
}

// A second pause that fails after the adoption's late cont leaves the run
// unmarked for the claim (its VM runs), after a planned restart's pause
// too, so that the next claim attempt pauses it again instead of skipping
// a run it thinks paused, even after a claim attempt whose own pause
// failed too.
func TestFailedPauseAfterLateAdoptResumeUnmarks(t *testing.T) {
	for _, restart := range []bool{false, true} {
		synctest.Test(t, func(t *testing.T) {
			hv, q, gate, p := lateAdoptResume(t)
			claimErr := errors.New("etcd: context deadline exceeded")
			if restart {
				if !p.pauseForRestart("the backup host's libvirt-ftd restarts (planned)") {
					t.Fatal("pauseForRestart failed")
				}
			} else {
				p.pauseForClaim(claimErr)
			}
			hv.setDown(true) // libvirtd goes: the second pause cannot reach the VM
			close(gate)      // the late cont lands: the VM runs
			synctest.Wait()
			running := !q.isPaused()
			if !running {
				t.Fatal("the late cont did not resume the fake VM")
			}
			marked, _, _ := pauseMarks(p)
			if marked {
				t.Fatalf("restart %v: the second pause failed, yet the run is still marked paused for the claim", restart)
			}
			if restart {
				p.pauseForClaim(claimErr) // a claim attempt while libvirtd is still down
			}
			hv.setDown(false)
			p.pauseForClaim(claimErr) // the next claim attempt
			paused := q.isPaused()
			if !paused {
				t.Fatalf("restart %v: the next claim attempt did not pause the running VM", restart)
			}
			close(p.stop)
		})
	}
}
