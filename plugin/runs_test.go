package plugin

import (
	"encoding/binary"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/libvirt-ft/libvirt-ft/logchan"
	"github.com/libvirt-ft/libvirt-ft/plugin/ctl"
	ftxml "github.com/libvirt-ft/libvirt-ft/xml"
)

// The primary and backup runs together, two daemons (hosts a and b) on the
// fakes of fakes_test.go, in a synctest bubble: time is synctest's fake
// clock, so the heartbeat timeout (1000 ms) and the stall bound (5000 ms)
// pass in no real time, and every scenario ends the same way every run.

const runUUID = "5c0e7d1a-2b3c-4d5e-8f60-718293a4b5c6"

// runDomainXML is a protected domain with host b (10.0.0.2) as its peer,
// no disk to seed, the output gate off (the gates' unix sockets are
// tested in outputgate_test.go) and no automatic re-protection (its own
// test turns it on).
func runDomainXML(stateDir string) string {
	return `<domain type='qemu'>
  <name>web</name>
  <uuid>` + runUUID + `</uuid>
  <metadata>
    <ft:ft xmlns:ft="https://libvirt-ft.org/xmlns/ft/1.0" role="primary">
      <ft:peer address="10.0.0.2" port="7480"/>
      <ft:heartbeat interval-ms="100" timeout-ms="1000"/>
      <ft:state dir="` + stateDir + `"/>
      <ft:output-gate enabled="no"/>
      <ft:reprotect auto="no"/>
    </ft:ft>
  </metadata>
  <memory unit='KiB'>262144</memory>
  <vcpu placement='static'>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type>
    <kernel>/var/lib/libvirt/boot/web-vmlinuz</kernel>
    <cmdline>console=ttyS0 panic=-1</cmdline>
  </os>
  <cpu mode='custom' match='exact' check='none'>
    <model fallback='forbid'>qemu64</model>
  </cpu>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/nonexistent/qemu-system-x86_64</emulator>
    <controller type='pci' index='0' model='pci-root'/>
    <serial type='file'>
      <source path='/var/log/libvirt/qemu/web-serial.log'/>
      <target type='isa-serial' port='0'/>
    </serial>
    <memballoon model='none'/>
  </devices>
</domain>`
}

// defineWeb defines the test domain "web" on host a, lets the daemon see
// the DEFINED event (it rewrites the definition), and returns what libvirt
// then holds. Inside a synctest bubble.
func defineWeb(t *testing.T, fp *fakePair) DomainDef {
	t.Helper()
	if err := fp.a.hv.Define(runDomainXML(t.TempDir())); err != nil {
		t.Fatal(err)
	}
	synctest.Wait()
	def, _, _ := fp.a.hv.Definition("web")
	return def
}

// killPrimary kills host a's QEMU (no END in its log) and lets 5 s of
// failover pass.
func killPrimary(t *testing.T, fp *fakePair) {
	t.Helper()
	if _, err := fp.a.hv.Destroy(runUUID); err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * time.Second)
	synctest.Wait()
}

// instructions returns n INSTRUCTION events of k instructions each.
func instructions(n int, k uint32) []byte {
	var b []byte
	for range n {
		b = append(b, logchan.KindInstruction)
		b = binary.BigEndian.AppendUint32(b, k)
	}
	return b
}

// replicating defines and starts the domain on host a and records 1000
// instructions; it returns when host b replays them.
func replicating(t *testing.T, setup ...func(*fakePair)) (*fakePair, *fakeQEMU) {
	t.Helper()
	return replicatingXML(t, runDomainXML(t.TempDir()), setup...)
}

// replicatingXML is replicating with the domain domXML.
func replicatingXML(t *testing.T, domXML string, setup ...func(*fakePair)) (*fakePair, *fakeQEMU) {
	t.Helper()
	fp := newFakePair(t)
	for _, f := range setup {
		f(fp)
	}
	t.Cleanup(func() {
		fp.shutdown()
		synctest.Wait()
	})
	if err := fp.a.hv.Define(domXML); err != nil {
		t.Fatal(err)
	}
	synctest.Wait() // the DEFINED event: the daemon rewrites the definition
	if s := fp.a.status(t, "web"); s.State != ctl.StateDefined {
		t.Fatalf("after define: %s %s", s.State, s.Detail)
	}
	if err := fp.a.hv.start("web"); err != nil {
		t.Fatalf("virsh start: %v", err)
	}
	primary := fp.a.hv.running(runUUID)
	primary.emit(t, instructions(100, 10))
	time.Sleep(500 * time.Millisecond)
	synctest.Wait()
	backup := fp.b.hv.running(runUUID)
	if backup == nil {
		t.Fatal("no backup QEMU runs on host b")
	}
	if mode, icount := backup.state(); mode != "play" || icount != 1000 {
		t.Fatalf("backup: mode %s icount %d, want play 1000", mode, icount)
	}
	sa, sb := fp.a.status(t, "web"), fp.b.status(t, "web")
	if sa.State != ctl.StateReplicating || sa.Role != ctl.RolePrimary || sa.AckedBytes != 500 || sa.BackupIcount != 1000 {
		t.Fatalf("host a: %+v", sa)
	}
	if sb.State != ctl.StateReplicating || sb.Role != ctl.RoleBackup {
		t.Fatalf("host b: %+v", sb)
	}
	return fp, primary
}

func TestRunsReplicate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fp, primary := replicating(t)
		// Idle for a while: heartbeats keep both sides replicating.
		time.Sleep(10 * time.Second)
		primary.emit(t, instructions(10, 10))
		time.Sleep(time.Second)
		synctest.Wait()
		if s := fp.a.status(t, "web"); s.State != ctl.StateReplicating || s.BackupIcount != 1100 || s.Failover != "replicating" {
			t.Fatalf("host a after 10 s idle: %+v", s)
		}
	})
}

// Peer lost: the primary's QEMU dies without ending its log; the backup
// replays to the end of the log and goes live.
func TestRunsPrimaryKilledBackupGoesLive(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fp, _ := replicating(t)
		if q := fp.b.hv.running(runUUID); q == nil || !strings.Contains(q.xml, "<title>libvirt-ft backup of web (primary on ") {
			t.Fatal("the backup domain's title does not say what it is")
		}
		killPrimary(t, fp)
		live := fp.b.hv.running(runUUID)
		if live == nil {
			t.Fatal("nothing runs on host b after the primary died")
		}
		if !strings.HasPrefix(live.title, "libvirt-ft: web runs here since it went live") {
			t.Fatalf("live title %q", live.title)
		}
		if def, _, _ := fp.b.hv.Definition("web"); strings.Contains(def.XML, "libvirt-ft backup") {
			t.Fatalf("the persistent definition made at go-live keeps the backup's note:\n%s", def.XML)
		}
		if mode, icount := live.state(); mode != "none" || icount != 1000 {
			t.Fatalf("host b: mode %s icount %d, want none (left replay at END) 1000", mode, icount)
		}
		s := fp.b.status(t, "web")
		if s.Role != ctl.RolePrimary || s.State != ctl.StateLive || s.Loss == nil || s.Loss.Cause != "primary said bye: primary QEMU exited uncleanly" ||
			s.GoLive == nil || s.GoLive.Path != ctl.GoLiveContinued {
			t.Fatalf("host b: %+v", s)
		}
		if live.announced != 1 {
			t.Fatalf("announce-self sent %d times, want 1", live.announced)
		}
		def, ok, _ := fp.b.hv.Definition("web")
		if !ok || !strings.Contains(def.XML, `role="primary"`) {
			t.Fatalf("host b has no persistent primary definition after go-live: %v", ok)
		}
		if fp.a.hv.running(runUUID) != nil {
			t.Fatal("the VM still runs on host a")
		}
		if s := fp.a.status(t, "web"); s.State != ctl.StateStopped {
			t.Fatalf("host a: %+v", s)
		}
	})
}

// Peer lost on stock QEMU 7.2: its replay stays in play mode at the end
// of the log, so go-live stops it, takes a snapshot, destroys it and starts
// the domain again recording (-loadvm), its record log drained locally.
func TestRunsGoLiveStockQEMU(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fp, _ := replicating(t, func(fp *fakePair) { fp.b.hv.stock = true })
		killPrimary(t, fp)
		live := fp.b.hv.running(runUUID)
		if live == nil {
			t.Fatal("nothing runs on host b after the primary died")
		}
		if mode, _ := live.state(); mode != "record" || !strings.Contains(live.xml, "-loadvm") {
			t.Fatalf("host b runs mode %s; want the domain restarted recording with -loadvm", mode)
		}
		s := fp.b.status(t, "web")
		if s.Role != ctl.RolePrimary || s.State != ctl.StateLive || s.GoLive == nil || s.GoLive.Path != ctl.GoLiveRestarted || !s.GoLive.Recording {
			t.Fatalf("host b: %+v go-live %+v", s, s.GoLive)
		}
		// The live VM's record log is read and discarded: it never blocks.
		live.emit(t, instructions(20000, 1))
		synctest.Wait()
		// It stops: the run ends and a new start would be a fresh primary.
		if _, err := fp.b.hv.Destroy(runUUID); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		if s := fp.b.status(t, "web"); s.State != ctl.StateStopped {
			t.Fatalf("host b after the live VM stopped: %+v", s)
		}
	})
}

// Go-live when the backup's QEMU cannot be identified (query-version
// fails and the <emulator> binary does not exist): it is waited for as a
// patched one, so a patched QEMU that leaves replay mode at END goes on
// live, and a stock one still takes the restart path after the wait.
func TestRunsGoLiveUnidentifiedQEMU(t *testing.T) {
	for _, stock := range []bool{false, true} {
		t.Run("stock="+strconv.FormatBool(stock), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				fp, _ := replicating(t, func(fp *fakePair) { fp.b.hv.stock, fp.b.hv.noVersion = stock, true })
				killPrimary(t, fp)
				time.Sleep(patchedEndWait) // the wait for an unidentified QEMU
				synctest.Wait()
				live := fp.b.hv.running(runUUID)
				if live == nil {
					t.Fatal("nothing runs on host b after the primary died")
				}
				s := fp.b.status(t, "web")
				want, mode := ctl.GoLiveContinued, "none"
				if stock {
					want, mode = ctl.GoLiveRestarted, "record"
				}
				if m, _ := live.state(); m != mode || s.State != ctl.StateLive || s.GoLive == nil || s.GoLive.Path != want {
					t.Fatalf("host b: QEMU mode %s (want %s), status %+v go-live %+v (want path %s)", m, mode, s, s.GoLive, want)
				}
				if stock && s.GoLive.TotalMS < patchedEndWait.Milliseconds() {
					t.Fatalf("go-live took %d ms: an unidentified QEMU must get the patched wait (%v) before the stock path", s.GoLive.TotalMS, patchedEndWait)
				}
			})
		})
	}
}

// A hung recording QEMU (its log silent, its monitor unanswered): the
// primary's watchdog reports it after the hang probe bound (2 s here) and the
// probe timeout (5 s), the primary kills it, and the backup goes live
// where the log ended. A QEMU that only stops logging (a paused guest,
// an idle one whose log sits in QEMU's stdio buffer) is left alone.
func TestRunsPrimaryHangFailsOver(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fp, primary := replicating(t)
		// Silent but answering: never killed.
		time.Sleep(30 * time.Second)
		synctest.Wait()
		if k := fp.a.hv.killCount(); k != 0 || fp.a.hv.running(runUUID) == nil {
			t.Fatalf("a silent primary whose monitor answers was killed (%d kills)", k)
		}
		if s := fp.a.status(t, "web"); s.State != ctl.StateReplicating {
			t.Fatalf("host a after 30 s of silence: %+v", s)
		}
		primary.hang()
		// At most: the re-probe gap left from the answered probes, the
		// probe timeout, a tick.
		time.Sleep(2*hangProbeTimeout + time.Second)
		synctest.Wait()
		if k := fp.a.hv.killCount(); k != 1 {
			t.Fatalf("the hung primary QEMU was killed %d times, want 1", k)
		}
		time.Sleep(5 * time.Second)
		synctest.Wait()
		s := fp.a.status(t, "web")
		if s.State != ctl.StateStopped || !strings.Contains(s.Detail, "hung and was killed") {
			t.Fatalf("host a: %+v", s)
		}
		b := fp.b.status(t, "web")
		if b.State != ctl.StateLive || b.Loss == nil || !strings.Contains(b.Loss.Cause, "primary QEMU hung and was killed") {
			t.Fatalf("host b: %+v loss %+v", b, b.Loss)
		}
	})
}

// Backup lost: the backup's QEMU is killed; the backup's daemon says so
// (an unclean bye) and the primary goes on unprotected.
func TestRunsBackupLostPrimaryGoesOn(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fp, primary := replicating(t)
		if _, err := fp.b.hv.Destroy(runUUID); err != nil {
			t.Fatal(err)
		}
		time.Sleep(3 * time.Second)
		primary.emit(t, instructions(100, 10)) // the primary is never held
		time.Sleep(time.Second)
		synctest.Wait()
		s := fp.a.status(t, "web")
		if s.State != ctl.StateUnprotected || s.Failover != "unprotected" || !strings.Contains(s.Detail, "backup said bye: hook stopped") {
			t.Fatalf("host a: %+v", s)
		}
		if fp.a.hv.running(runUUID) == nil {
			t.Fatal("the primary's VM was stopped")
		}
		if st := fp.b.d.status("web"); len(st) != 0 {
			t.Fatalf("host b still lists the lost backup: %+v", st)
		}
	})
}

// Lost lock: a partition; both daemons claim the split-brain lock and the
// primary loses it: its VM halts and the backup goes live. Then the other
// way round: the backup loses and halts, the primary goes on.
func TestRunsPartitionLoserHalts(t *testing.T) {
	for _, winner := range []string{"10.0.0.2", "10.0.0.1"} {
		t.Run("winner "+winner, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				fp, _ := replicating(t)
				fp.arb.mu.Lock()
				fp.arb.winner = winner
				fp.arb.mu.Unlock()
				fp.net.sever("10.0.0.2")
				time.Sleep(5 * time.Second)
				synctest.Wait()
				onA, onB := fp.a.hv.running(runUUID) != nil, fp.b.hv.running(runUUID) != nil
				if onA == onB {
					t.Fatalf("VM runs on a: %v, on b: %v; want exactly one", onA, onB)
				}
				if wantA := winner == "10.0.0.1"; onA != wantA {
					t.Fatalf("VM runs on a: %v, want %v (the lock's winner)", onA, wantA)
				}
				if winner == "10.0.0.1" {
					if s := fp.a.status(t, "web"); s.State != ctl.StateUnprotected {
						t.Fatalf("host a: %+v", s)
					}
				} else if s := fp.b.status(t, "web"); s.State != ctl.StateLive {
					t.Fatalf("host b: %+v", s)
				}
			})
		})
	}
}

// Switchover: virt-ft failover on the primary's host; the backup goes live
// at the end of the log, then the primary's VM is stopped.
func TestRunsSwitchover(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fp, _ := replicating(t)
		if err := fp.a.d.switchover("web"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(3 * time.Second)
		synctest.Wait()
		if fp.a.hv.running(runUUID) != nil || fp.b.hv.running(runUUID) == nil {
			t.Fatalf("after the switchover: runs on a %v, on b %v", fp.a.hv.running(runUUID) != nil, fp.b.hv.running(runUUID) != nil)
		}
		sa, sb := fp.a.status(t, "web"), fp.b.status(t, "web")
		if !sa.SwitchedOver || sa.State != ctl.StateStopped || !strings.HasPrefix(sa.PeerReport, "cause: switchover") {
			t.Fatalf("host a: %+v", sa)
		}
		if sb.State != ctl.StateLive || sb.Loss == nil || sb.Loss.Cause != "switchover asked by the primary" || sb.Loss.TotalMS < 0 {
			t.Fatalf("host b: %+v loss %+v", sb, sb.Loss)
		}
		// A second switchover of a domain that is no longer replicated is
		// refused with the reason.
		if err := fp.b.d.switchover("web"); err == nil || !strings.Contains(err.Error(), "not replicating") {
			t.Fatalf("switchover of the live VM: %v", err)
		}
	})
}

// libvirtd restarts on the backup's host: for 5 s its monitor cannot be
// reached while the primary records on. The backup keeps reading its log,
// so it is neither taken for stalled nor lost, and it catches up.
func TestRunsBackupLibvirtdRestart(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fp, primary := replicating(t)
		fp.b.hv.setDown(true)
		for range 50 {
			primary.emit(t, instructions(10, 10))
			time.Sleep(100 * time.Millisecond)
		}
		fp.b.hv.setDown(false)
		fp.b.d.rescan()
		time.Sleep(time.Second)
		synctest.Wait()
		sa, sb := fp.a.status(t, "web"), fp.b.status(t, "web")
		if sa.State != ctl.StateReplicating || sa.BackupIcount != 1000+50*100 || sa.Stall != nil {
			t.Fatalf("host a: %+v", sa)
		}
		if sb.State != ctl.StateReplicating || sb.Failover != "replicating" {
			t.Fatalf("host b: %+v loss %+v", sb, sb.Loss)
		}
	})
}

// A stalled backup (its QEMU stops reading FIFO B) is declared lost within
// the stall bound: it tells the primary where it stopped and halts; the
// primary goes on unprotected and shows why.
func TestRunsBackupStall(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fp, primary := replicating(t)
		backup := fp.b.hv.running(runUUID)
		backup.stall()
		primary.emit(t, instructions(8000, 10)) // 40 KB: more than FIFO B holds
		// The default bound (ftxml.DefaultReplayStall, 5 s): not before it.
		time.Sleep(4 * time.Second)
		synctest.Wait()
		if sa := fp.a.status(t, "web"); sa.State != ctl.StateReplicating || sa.Stall != nil {
			t.Fatalf("host a, 4 s into the stall: %+v", sa)
		}
		time.Sleep(3 * time.Second)
		synctest.Wait()
		sa := fp.a.status(t, "web")
		if sa.State != ctl.StateUnprotected || sa.Stall == nil || !strings.HasPrefix(sa.Stall.Report, "replay stalled at icount ") ||
			!strings.Contains(sa.Stall.Report, "no progress for 5000 ms") {
			t.Fatalf("host a: %+v", sa)
		}
		// How its QEMU's threads spent the stall (a stopped QEMU: off a
		// CPU), from the scheduler's times sampled meanwhile.
		if !strings.Contains(sa.Stall.Report, "over the last 5000 ms its vCPU threads ran 0 ms and waited 0 ms for a CPU, its main loop ran 0 ms and waited 0 ms: its threads were mostly off a CPU") {
			t.Errorf("the stall report does not say how the QEMU spent it: %q", sa.Stall.Report)
		}
		if fp.b.hv.running(runUUID) != nil {
			t.Fatal("the stalled backup still runs on host b")
		}
		if fp.a.hv.running(runUUID) == nil {
			t.Fatal("the primary's VM stopped")
		}
	})
}

// FIFO B's read position reaches the primary between query-replay
// samples (watchRead): a backup whose monitor answers nothing (a long
// replayed event) but whose reading proves 1040 executed
// (replayLog.ExecutedAtLeast) is acknowledged at 1040 within a few
// readAckIntervals of its log; the bound is sampled again with no new log
// (a primary held by the lag bound sends none) while log is unread; once
// nothing is unread it is not sampled until the next log arrives.
func TestRunsBackupReadPositionAcked(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fp, primary := replicating(t)
		backup := fp.b.hv.running(runUUID)
		fifo := backup.replay
		setAtLeast := func(n uint64) {
			fifo.mu.Lock()
			fifo.atLeast = n
			fifo.mu.Unlock()
		}
		wantIcount := func(after time.Duration, want uint64, why string) {
			t.Helper()
			time.Sleep(after)
			synctest.Wait()
			if sa := fp.a.status(t, "web"); sa.State != ctl.StateReplicating || sa.BackupIcount != want {
				t.Fatalf("host a %s: state %s, backup icount %d; want replicating, %d", why, sa.State, sa.BackupIcount, want)
			}
		}
		backup.slowReplay() // reads no more, its monitor answers nothing
		defer backup.endSlow()
		setAtLeast(1040)
		wantIcount(time.Second, 1000, "before any new log (nothing unread: no sample)")
		// 5000 bytes: the fake's read already waiting takes 4096 of
		// them, the rest stays unread.
		primary.emit(t, instructions(1000, 1))
		wantIcount(3*readAckInterval, 1040, "after the log")
		setAtLeast(1060) // no new log: sampled because log is unread
		wantIcount(readAckSlowest+readAckInterval, 1060, "with log unread and none new")
		// QEMU has read everything: one more sample, then none until
		// new log.
		fifo.mu.Lock()
		fifo.buf = fifo.buf[:0]
		fifo.mu.Unlock()
		wantIcount(readAckSlowest+readAckInterval, 1060, "after QEMU read everything")
		setAtLeast(1080)
		wantIcount(time.Second, 1060, "with nothing unread")
		primary.emit(t, instructions(1, 10))
		wantIcount(3*readAckInterval, 1080, "after new log")
	})
}

// With keep-stall-log and a long state directory (gate off, so not bound
// by unix(7)'s socket paths), the stall text outgrows what the bye
// carries: the backup's own status keeps it whole, with the kept log's
// path and rrdump command; the primary's is its first maxStallText bytes,
// cut with a marker, and the bye stayed within logchan.MaxByeBytes (the
// primary did not drop it as a bad frame: it knows the stall).
func TestRunsBackupStallLongStateDir(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// About 1300 bytes whatever TMPDIR is: the report holds the
		// path twice and must fit in maxStallReport.
		dir := t.TempDir()
		for len(dir) < 1300 {
			dir = filepath.Join(dir, strings.Repeat("d", min(200, 1300-len(dir))))
		}
		var hook *logtest.Hook
		fp, primary := replicatingXML(t, runDomainXML(dir), func(fp *fakePair) {
			fp.b.d.cfg.KeepStallLog = true
			hook = logtest.NewLocal(fp.b.d.log)
		})
		fp.b.hv.running(runUUID).stall()
		primary.emit(t, instructions(8000, 10))
		time.Sleep(7 * time.Second)
		synctest.Wait()
		sa := fp.a.status(t, "web")
		if sa.Stall == nil {
			t.Fatalf("host a knows no stall: %+v", sa)
		}
		var report string
		for _, e := range hook.AllEntries() {
			// Host b's own (both hosts log to one logger here).
			if strings.HasPrefix(e.Message, "replay stalled at ") && e.Level == logrus.ErrorLevel && len(e.Message) > len(report) {
				report = e.Message
			}
		}
		// The kept log's path is in it twice: where it is, and in the
		// rrdump command.
		if n := strings.Count(report, filepath.Join(dir, "")+"/"); n != 2 || len(report) > maxStallReport || !strings.Contains(report, "its main loop ran") {
			t.Fatalf("host b's logged report (%d bytes, the path %d times) is not whole: %q", len(report), n, report)
		}
		t.Logf("host b logged %d bytes, host a keeps %d", len(report), len(sa.Stall.Report))
		if r := sa.Stall.Report; len(r) > maxStallText || !strings.HasSuffix(r, "…") || !strings.HasPrefix(report, strings.TrimSuffix(r, "…")) {
			t.Fatalf("host a's report (%d bytes) is not host b's first %d bytes, cut: %q", len(r), maxStallText, r)
		}
		if sa.State != ctl.StateUnprotected {
			t.Fatalf("host a: %+v", sa)
		}
	})
}

// A backup replaying one long log event slowly (its vCPU on a CPU, its
// monitor silent, FIFO B unread: docs/replay.md §12) for 12 s, past the
// 5 s stall bound, is not declared stalled: it goes on replicating once
// the event is done, and nothing is reported as a stall.
func TestRunsBackupSlowReplayIsNoStall(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fp, primary := replicating(t)
		backup := fp.b.hv.running(runUUID)
		backup.slowReplay()
		primary.emit(t, instructions(8000, 10)) // 40 KB: more than FIFO B holds
		time.Sleep(12 * time.Second)
		synctest.Wait()
		if sa := fp.a.status(t, "web"); sa.State != ctl.StateReplicating || sa.Stall != nil {
			t.Fatalf("host a, 12 s into the slow replay: %+v", sa)
		}
		backup.endSlow()
		time.Sleep(2 * time.Second)
		synctest.Wait()
		sa, sb := fp.a.status(t, "web"), fp.b.status(t, "web")
		if sa.State != ctl.StateReplicating || sa.Stall != nil || sa.BackupIcount != 1000+8000*10 {
			t.Fatalf("host a after the slow replay: %+v", sa)
		}
		if sb.State != ctl.StateReplicating || sb.Failover != "replicating" {
			t.Fatalf("host b after the slow replay: %+v", sb)
		}
	})
}

// The same slow replay that never ends is declared stalled at four
// bounds (20 s), not held for ever.
func TestRunsBackupSlowReplayEndless(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fp, primary := replicating(t)
		backup := fp.b.hv.running(runUUID)
		backup.slowReplay()
		primary.emit(t, instructions(8000, 10))
		time.Sleep(19 * time.Second)
		synctest.Wait()
		if sa := fp.a.status(t, "web"); sa.State != ctl.StateReplicating || sa.Stall != nil {
			t.Fatalf("host a, 19 s into the slow replay: %+v", sa)
		}
		time.Sleep(3 * time.Second)
		synctest.Wait()
		sa := fp.a.status(t, "web")
		if sa.State != ctl.StateUnprotected || sa.Stall == nil || !strings.Contains(sa.Stall.Report, "no progress for 20000 ms") {
			t.Fatalf("host a: %+v", sa)
		}
	})
}

// After a failover the VM runs on host b; stopped and started again there,
// it is protected again with host a as its backup (roles swapped).
func TestRunsRestartAfterFailover(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fp, _ := replicating(t)
		killPrimary(t, fp)
		if s := fp.b.status(t, "web"); s.State != ctl.StateLive {
			t.Fatalf("host b: %+v", s)
		}
		if _, err := fp.b.hv.Destroy(runUUID); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		if err := fp.b.hv.start("web"); err != nil {
			t.Fatalf("virsh start on host b: %v", err)
		}
		primary := fp.b.hv.running(runUUID)
		primary.emit(t, instructions(100, 10))
		time.Sleep(time.Second)
		synctest.Wait()
		sa, sb := fp.a.status(t, "web"), fp.b.status(t, "web")
		if sb.Role != ctl.RolePrimary || sb.State != ctl.StateReplicating || sb.BackupIcount != 1000 {
			t.Fatalf("host b: %+v", sb)
		}
		if sa.Role != ctl.RoleBackup || sa.State != ctl.StateReplicating {
			t.Fatalf("host a: %+v", sa)
		}
		if q := fp.a.hv.running(runUUID); q == nil || func() bool { m, _ := q.state(); return m != "play" }() {
			t.Fatal("no backup replays on host a")
		}
	})
}

// A stale armed backup on host b (its primary never connected) is replaced
// by the next prepare-backup, and the domain's record then holds the new
// backup (the replaced run's end must not forget it).
func TestRunsReplaceStaleBackup(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fp := newFakePair(t)
		defer func() { fp.shutdown(); synctest.Wait() }()
		def := defineWeb(t, fp)
		req := logchan.ControlRequest{Op: logchan.OpPrepareBackup, UUID: runUUID, Name: "web", XML: def.XML,
			QEMUVersion: "7.2.22", LogVersion: logchan.LogVersionQEMU72, Epoch: "stale", Arbiter: fp.a.d.cfg.arbiterName()}
		req.EmulatorBuild, _ = fp.b.hv.EmulatorBuild("")
		// Another QEMU build (another patch level), or none said: refused.
		for _, c := range []struct{ build, want string }{
			{"QEMU emulator version 7.2.22 (libvirt-ft), sha256 fedcba9876543210", "QEMU builds differ"},
			{"", "sent no emulator_build"},
		} {
			other := req
			other.EmulatorBuild = c.build
			if err := fp.b.d.prepareBackup(other, "10.0.0.1"); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("prepare-backup with emulator build %q: %v, want a refusal saying %q", c.build, err, c.want)
			}
		}
		// Claims on different arbiters could both win: refused.
		other := req
		other.Arbiter = "dir /srv/elsewhere"
		if err := fp.b.d.prepareBackup(other, "10.0.0.1"); err == nil || !strings.Contains(err.Error(), "same arbiter") {
			t.Fatalf("prepare-backup naming another arbiter: %v, want a refusal", err)
		}
		if err := fp.b.d.prepareBackup(req, "10.0.0.1"); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		if err := fp.a.hv.start("web"); err != nil {
			t.Fatalf("virsh start: %v", err)
		}
		fp.a.hv.running(runUUID).emit(t, instructions(100, 10))
		time.Sleep(2 * time.Second)
		synctest.Wait()
		if sa := fp.a.status(t, "web"); sa.State != ctl.StateReplicating || sa.BackupIcount != 1000 {
			t.Fatalf("host a: %+v", sa)
		}
		if sb := fp.b.status(t, "web"); sb.State != ctl.StateReplicating {
			t.Fatalf("host b: %+v", sb)
		}
	})
}

// After a go-live without a restart the live VM still runs with the
// backup's XML: its stop hooks (role backup) end the live run even when
// libvirt's STOPPED event is lost, and it can be started again at once.
func TestRunsLiveVMStopHook(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fp, _ := replicating(t)
		killPrimary(t, fp)
		fp.b.hv.mu.Lock()
		fp.b.hv.event = func(LifecycleEvent) {} // lost events
		fp.b.hv.mu.Unlock()
		if _, err := fp.b.hv.Destroy(runUUID); err != nil {
			t.Fatal(err)
		}
		if s := fp.b.status(t, "web"); s.State != ctl.StateStopped {
			t.Fatalf("host b after the live VM's stop hooks: %+v", s)
		}
		if err := fp.b.hv.start("web"); err != nil {
			t.Fatalf("virsh start on host b right after: %v", err)
		}
	})
}

// A rescan (libvirtd reconnected) while the prepare hook runs must not drop
// the run being prepared.
func TestRunsRescanDuringPrepare(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fp := newFakePair(t)
		defer func() { fp.shutdown(); synctest.Wait() }()
		defineWeb(t, fp)
		dial := fp.a.d.dial
		rescanned := false
		fp.a.d.dial = func(addr string, timeout time.Duration) (net.Conn, error) {
			if !rescanned {
				rescanned = true
				fp.a.d.rescan()
			}
			return dial(addr, timeout)
		}
		if err := fp.a.hv.start("web"); err != nil {
			t.Fatalf("virsh start: %v", err)
		}
		fp.a.hv.running(runUUID).emit(t, instructions(100, 10))
		time.Sleep(time.Second)
		synctest.Wait()
		if s := fp.a.status(t, "web"); s.State != ctl.StateReplicating || !rescanned {
			t.Fatalf("host a after a rescan during prepare: %+v", s)
		}
		if err := fp.a.d.switchover("web"); err != nil {
			t.Fatalf("switchover: %v", err)
		}
	})
}

// The backup host may take longer than a write's deadline to hash its
// stale copy of a disk; the seed that follows must still go out.
func TestSeedAfterSlowRemoteHash(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a, b := net.Pipe()
		defer a.Close()
		defer b.Close()
		path := filepath.Join(t.TempDir(), "disk.qcow2")
		if err := os.WriteFile(path, []byte("hello disk"), 0o600); err != nil {
			t.Fatal(err)
		}
		got := make(chan []byte, 1)
		go func() { // the backup's daemon
			sc := logchan.NewConn(b)
			var copy []byte
			for {
				req, data, err := sc.RecvControl()
				if err != nil {
					return
				}
				if data != nil {
					copy = append(copy, data...)
					continue
				}
				switch req.Op {
				case logchan.OpHash:
					time.Sleep(2*writeTimeout + time.Second) // the sha256 of a stale multi-GiB copy
					digest := logchan.FileDigest{Exists: true, Size: 5, SHA256: "00"}
					if copy != nil {
						digest, _ = hashFile(path)
					}
					_ = sc.Reply(digest, nil)
				case logchan.OpSeedEnd:
					got <- copy
					_ = sc.Reply(nil, nil)
				}
			}
		}()
		log := logrus.New()
		log.SetOutput(io.Discard)
		p := newPrimaryRun(env{log: log}, runUUID, "web", ftxml.Config{PeerAddress: "10.0.0.2", PeerPort: 7480})
		if err := p.ensureSeeded(newPeerConn(a), path); err != nil {
			t.Fatalf("seeding after a slow hash: %v", err)
		}
		if c := <-got; string(c) != "hello disk" {
			t.Fatalf("the backup received %q", c)
		}
	})
}

// A log channel for the protected domain from a host other than the one
// that armed its backup (here 10.0.0.3, with a valid certificate in real
// life) is refused with a bye; replication goes on.
func TestLogChannelFromAnotherHostRefused(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fp, primary := replicating(t)
		e := fp.a.d.env()
		e.dial = fp.net.dialer("10.0.0.3")
		logVer, _ := logchan.LogVersionForQEMU("7.2.22")
		pc, err := dialLog(e, "10.0.0.2:7480", runUUID, "7.2.22", logVer, "", false, 0, nil)
		if err != nil {
			t.Fatalf("handshake: %v", err)
		}
		defer pc.Close()
		m, err := pc.c.Recv()
		if err != nil || m.Kind != logchan.MsgBye || !strings.Contains(m.Bye.Reason, "armed by another host") {
			t.Fatalf("got %+v, %v; want a bye saying the backup was armed by another host", m, err)
		}
		primary.emit(t, instructions(10, 10))
		time.Sleep(time.Second)
		synctest.Wait()
		if s := fp.a.status(t, "web"); s.State != ctl.StateReplicating || s.BackupIcount != 1100 {
			t.Fatalf("host a: %+v", s)
		}
	})
}

// Partition with the arbiter unreachable from the primary's host (host a
// cut off the LAN): the primary cannot claim, so it pauses its VM instead
// of running on while the backup goes live; when the arbiter answers again
// it has lost and its VM is destroyed.
func TestRunsPartitionArbiterUnreachablePrimaryPauses(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fp, primary := replicating(t)
		fp.unreachable("10.0.0.1", true)
		fp.net.sever("10.0.0.1")
		time.Sleep(5 * time.Second)
		synctest.Wait()
		primary.mu.Lock()
		paused := primary.paused
		primary.mu.Unlock()
		if !paused {
			t.Fatal("host a: the primary runs on while its claim cannot be decided")
		}
		if s := fp.b.status(t, "web"); s.State != ctl.StateLive {
			t.Fatalf("host b: %+v", s)
		}
		fp.unreachable("10.0.0.1", false)
		time.Sleep(5 * time.Second)
		synctest.Wait()
		if fp.a.hv.running(runUUID) != nil {
			t.Fatal("host a: the primary still runs after losing the claim")
		}
	})
}

// The same with the arbiter unreachable from the backup's host only: the
// backup pauses its VM (out of replay, output held) while it cannot claim;
// the primary wins and goes on; the backup, losing, is destroyed.
func TestRunsPartitionArbiterUnreachableBackupPauses(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fp, primary := replicating(t)
		fp.unreachable("10.0.0.2", true)
		fp.net.sever("10.0.0.2")
		time.Sleep(5 * time.Second)
		synctest.Wait()
		if q := fp.b.hv.running(runUUID); q != nil {
			paused := q.isPaused()
			if !paused {
				t.Fatal("host b: the backup's VM runs while its claim cannot be decided")
			}
		}
		primary.mu.Lock()
		paused := primary.paused
		primary.mu.Unlock()
		if paused || fp.a.status(t, "web").State != ctl.StateUnprotected {
			t.Fatalf("host a: paused %v, %+v", paused, fp.a.status(t, "web"))
		}
		fp.unreachable("10.0.0.2", false)
		time.Sleep(5 * time.Second)
		synctest.Wait()
		if fp.b.hv.running(runUUID) != nil {
			t.Fatal("host b: the backup still runs after losing the claim")
		}
	})
}

// TestRunsUnprotectByRemovingTheElement: the ft element removed from a
// protected definition takes the generated record/replay wiring with it,
// so the domain starts as a plain VM (issue 13, item 5).
func TestRunsUnprotectByRemovingTheElement(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fp := newFakePair(t)
		defer func() { fp.shutdown(); synctest.Wait() }()
		def := defineWeb(t, fp)
		dom, err := ftxml.ParseDomain(def.XML)
		if err != nil || !ftxml.IsGenerated(dom) {
			t.Fatalf("the protected definition was not generated for record (%v):\n%s", err, def.XML)
		}
		i, j := strings.Index(def.XML, "<ft:ft"), strings.Index(def.XML, "</ft:ft>")
		if i < 0 || j < 0 {
			t.Fatalf("no ft element in the generated definition:\n%s", def.XML)
		}
		if err := fp.a.hv.Define(def.XML[:i] + def.XML[j+len("</ft:ft>"):]); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		def, _, _ = fp.a.hv.Definition("web")
		if dom, err := ftxml.ParseDomain(def.XML); err != nil || ftxml.IsGenerated(dom) || strings.Contains(def.XML, "rr=record") {
			t.Fatalf("the definition without the ft element keeps the record/replay wiring (%v):\n%s", err, def.XML)
		}
	})
}

// TestRunsUnprotect: virt-ft unprotect, on the primary's host and on the
// backup's: the backup's VM stops (never goes live), the primary's runs on
// alone, and nothing of the backup is left on host b.
func TestRunsUnprotect(t *testing.T) {
	for _, on := range []string{"primary", "backup"} {
		t.Run(on, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				fp, primary := replicating(t)
				h := fp.a
				if on == "backup" {
					h = fp.b
				}
				if resp := h.d.handleControl(ctl.Request{Op: ctl.OpUnprotect, Domain: "web"}); !resp.OK {
					t.Fatalf("unprotect on the %s's host: %s", on, resp.Error)
				}
				time.Sleep(3 * time.Second)
				primary.emit(t, instructions(100, 10)) // never held
				time.Sleep(time.Second)
				synctest.Wait()
				s := fp.a.status(t, "web")
				if s.State != ctl.StateUnprotected || s.Failover != "unprotected" || !strings.Contains(s.Detail, "virt-ft unprotect") {
					t.Fatalf("host a: %+v", s)
				}
				if fp.a.hv.running(runUUID) == nil {
					t.Fatal("the primary's VM was stopped")
				}
				if fp.b.hv.running(runUUID) != nil {
					t.Fatal("the backup's VM still runs")
				}
				if st := fp.b.d.status("web"); len(st) != 0 {
					t.Fatalf("host b still lists the backup: %+v", st)
				}
				if resp := fp.a.d.handleControl(ctl.Request{Op: ctl.OpUnprotect, Domain: "web"}); resp.OK || !strings.Contains(resp.Error, "not replicating") {
					t.Fatalf("a second unprotect: %+v, want a refusal saying it is not replicating", resp)
				}
			})
		})
	}
}

// TestCheck: virt-ft check lists every refusal (not the first) and the
// warnings, and reaches the backup host, without starting anything.
func TestCheck(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fp := newFakePair(t)
		defer func() { fp.shutdown(); synctest.Wait() }()
		good := runDomainXML(t.TempDir())
		if err := fp.a.hv.Define(good); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		resp := fp.a.d.handleControl(ctl.Request{Op: ctl.OpCheck, Domain: "web"})
		if !resp.OK || resp.Check == nil || len(resp.Check.Problems) != 0 {
			t.Fatalf("check of a protectable domain: %+v %+v", resp, resp.Check)
		}
		if !slices.ContainsFunc(resp.Check.Warnings, func(w string) bool { return strings.Contains(w, "/domain/devices/emulator") }) {
			t.Errorf("no warning about the stock emulator: %q", resp.Check.Warnings)
		}
		if fp.a.hv.running(runUUID) != nil || fp.b.hv.running(runUUID) != nil {
			t.Fatal("check started a domain")
		}
		bad := strings.Replace(strings.Replace(good, "<vcpu placement='static'>1</vcpu>", "<vcpu placement='static'>2</vcpu>", 1),
			"<clock offset='utc'/>", "<clock offset='localtime'/>", 1)
		bad = strings.Replace(strings.Replace(bad, "<name>web</name>", "<name>bad</name>", 1), runUUID, "6b0e2f6a-7c1d-4e3f-9a8b-1c2d3e4f5a6b", 1)
		if err := fp.a.hv.Define(bad); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		resp = fp.a.d.handleControl(ctl.Request{Op: ctl.OpCheck, Domain: "bad"})
		if !resp.OK || resp.Check == nil || len(resp.Check.Problems) != 2 ||
			!strings.Contains(strings.Join(resp.Check.Problems, "\n"), "/domain/vcpu") ||
			!strings.Contains(strings.Join(resp.Check.Problems, "\n"), "/domain/clock/@offset") {
			t.Fatalf("check of a domain with two problems: %+v %+v", resp, resp.Check)
		}
		if resp := fp.a.d.handleControl(ctl.Request{Op: ctl.OpCheck, Domain: "nosuch"}); resp.OK || !strings.Contains(resp.Error, "no persistent domain") {
			t.Fatalf("check of an unknown domain: %+v", resp)
		}
		// The backup host's own refusal (another QEMU build there).
		fp.b.hv.mu.Lock()
		fp.b.hv.build = "QEMU emulator version 7.2.22 (libvirt-ft), sha256 fedcba9876543210"
		fp.b.hv.mu.Unlock()
		resp = fp.a.d.handleControl(ctl.Request{Op: ctl.OpCheck, Domain: "web"})
		if !resp.OK || resp.Check == nil || !strings.Contains(strings.Join(resp.Check.Problems, "\n"), "QEMU builds differ") {
			t.Fatalf("check with another QEMU build on the backup host: %+v %+v", resp, resp.Check)
		}
		if st := fp.b.d.status("web"); len(st) != 0 {
			t.Fatalf("check armed a backup on host b: %+v", st)
		}
		// The backup host down: a problem naming the peer.
		fp.net.sever(fp.b.ip)
		resp = fp.a.d.handleControl(ctl.Request{Op: ctl.OpCheck, Domain: "web"})
		if !resp.OK || resp.Check == nil || !strings.Contains(strings.Join(resp.Check.Problems, "\n"), "ft:peer") {
			t.Fatalf("check with the backup host unreachable: %+v %+v", resp, resp.Check)
		}
	})
}

// virt-ft names a domain by name, UUID or libvirt ID (issue 14).
func TestStatusByNameUUIDOrID(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fp, primary := replicating(t)
		id := strconv.FormatUint(uint64(primary.id), 10)
		for _, arg := range []string{"web", runUUID, strings.ToUpper(runUUID), id} {
			if st := fp.a.d.status(arg); len(st) != 1 || st[0].Name != "web" {
				t.Errorf("status %q: %+v", arg, st)
			}
		}
		for _, arg := range []string{"web2", "0", "99999", "-1"} {
			if st := fp.a.d.status(arg); len(st) != 0 {
				t.Errorf("status %q: %+v, want none", arg, st)
			}
		}
	})
}

// virt-ft enable and disable (issue 14): a plain domain gains the ft
// element and is rewritten for record/replay; disable takes both away.
// Refusals change nothing.
func TestEnableDisable(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fp := newFakePair(t)
		defer func() { fp.shutdown(); synctest.Wait() }()
		xml := runDomainXML(t.TempDir())
		i, j := strings.Index(xml, "<metadata>"), strings.Index(xml, "</metadata>")
		plain := xml[:i] + xml[j+len("</metadata>"):]
		if err := fp.a.hv.Define(plain); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		call := func(op, dom, peer string) ctl.Response {
			return fp.a.d.handleControl(ctl.Request{Op: op, Domain: dom, Peer: peer})
		}
		for _, c := range []struct{ dom, peer, want string }{
			{"web", "", "--peer"},
			{"web", "10.0.0.2:99999", "port"},
			{"nosuch", "10.0.0.2", "no persistent domain"},
		} {
			if r := call(ctl.OpEnable, c.dom, c.peer); r.OK || !strings.Contains(r.Error, c.want) {
				t.Errorf("enable %q --peer %q: %+v, want an error with %q", c.dom, c.peer, r, c.want)
			}
		}
		if def, _, _ := fp.a.hv.Definition("web"); def.XML != plain && strings.Contains(def.XML, "ft:ft") {
			t.Fatal("a refused enable changed the definition")
		}
		if r := call(ctl.OpEnable, runUUID, "10.0.0.2"); !r.OK || !strings.Contains(r.Message, "10.0.0.2:7480") {
			t.Fatalf("enable: %+v", r)
		}
		synctest.Wait() // the DEFINED event: rewritten for record/replay
		def, _, _ := fp.a.hv.Definition("web")
		if cfg, present, err := ftxml.ParseConfig(def.XML); !present || err != nil || cfg.PeerAddress != "10.0.0.2" || !strings.Contains(def.XML, "rr=record") {
			t.Fatalf("after enable (%v):\n%s", err, def.XML)
		}
		if r := call(ctl.OpEnable, "web", "10.0.0.3"); r.OK || !strings.Contains(r.Error, "already has the ft element") {
			t.Fatalf("second enable: %+v", r)
		}
		if r := call(ctl.OpDisable, "web", ""); !r.OK || !strings.Contains(r.Message, "plain VM") {
			t.Fatalf("disable: %+v", r)
		}
		synctest.Wait()
		def, _, _ = fp.a.hv.Definition("web")
		if _, present, _ := ftxml.ParseConfig(def.XML); present || strings.Contains(def.XML, "rr=record") {
			t.Fatalf("after disable:\n%s", def.XML)
		}
		if r := call(ctl.OpDisable, "web", ""); r.OK || !strings.Contains(r.Error, "not protected") {
			t.Fatalf("second disable: %+v", r)
		}
	})
}

// virt-ft status shows both sides (issue 14): each daemon asks the other
// for its view of the pairing (logchan.OpStatus). A peer that is not the
// pairing's gets a refusal, and the connection ends.
func TestStatusPeerView(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fp, _ := replicating(t)
		for _, c := range []struct {
			h    *fakeHost
			host string
			role ctl.Role
		}{{fp.a, "10.0.0.2:7480", ctl.RoleBackup}, {fp.b, "10.0.0.1:7480", ctl.RolePrimary}} {
			resp := c.h.d.handleControl(ctl.Request{Op: ctl.OpStatus, Domain: "web", WithPeer: true})
			if !resp.OK || len(resp.Domains) != 1 || resp.Domains[0].PeerView == nil {
				t.Fatalf("status with peer: %+v", resp)
			}
			v := *resp.Domains[0].PeerView
			if v.Error != "" || v.Host != c.host || v.Role != c.role || v.State != ctl.StateReplicating || v.Failover != "replicating" {
				t.Errorf("peer view: %+v, want %s replicating at %s", v, c.role, c.host)
			}
			if resp := c.h.d.handleControl(ctl.Request{Op: ctl.OpStatus, Domain: "web"}); resp.Domains[0].PeerView != nil {
				t.Errorf("status without peer has a peer view: %+v", resp.Domains[0].PeerView)
			}
		}
		// A third host, or a domain the connection is not for.
		for _, c := range []struct{ from, uuid, want string }{
			{"10.0.0.9:40000", runUUID, "paired with 10.0.0.9"},
			{"10.0.0.1:40000", "11111111-2222-4333-8444-555555555555", "on a connection for"},
		} {
			a, b := net.Pipe()
			go fp.b.d.servePeer(addrConn{b, pipeAddr("10.0.0.2:7480"), pipeAddr(c.from)})
			conn := logchan.NewConn(a)
			if _, err := logchan.ClientHandshake(conn, logchan.Hello{Protocol: logchan.ProtocolVersion, DomainUUID: runUUID,
				QEMUVersion: "7.2.22", LogVersion: logchan.LogVersionQEMU72, Role: logchan.RoleControl}); err != nil {
				t.Fatal(err)
			}
			var ps logchan.PeerStatus
			err := conn.Request(logchan.ControlRequest{Op: logchan.OpStatus, UUID: c.uuid}, &ps)
			if err == nil || !strings.Contains(err.Error(), c.want) || ps.State != "" {
				t.Errorf("status from %s of %s: %v %+v, want a refusal (%s)", c.from, c.uuid, err, ps, c.want)
			}
			a.Close()
		}
	})
}

// The running primary's title says its protection state (issue 14: what
// virt-manager's list shows), live only: the persistent definition keeps
// the user's.
func TestRunsPrimaryTitle(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fp, _ := replicating(t)
		title := func() string {
			fp.a.hv.mu.Lock()
			defer fp.a.hv.mu.Unlock()
			return fp.a.hv.doms[runUUID].title
		}
		time.Sleep(2 * noteEvery)
		synctest.Wait()
		if got, want := title(), "libvirt-ft: web protected (backup on 10.0.0.2)"; got != want {
			t.Fatalf("title while replicating: %q, want %q", got, want)
		}
		if resp := fp.a.d.handleControl(ctl.Request{Op: ctl.OpUnprotect, Domain: "web"}); !resp.OK {
			t.Fatal(resp.Error)
		}
		time.Sleep(3 * time.Second)
		synctest.Wait()
		if got := title(); !strings.HasPrefix(got, "libvirt-ft: web UNPROTECTED") {
			t.Fatalf("title once unprotected: %q", got)
		}
		if def, _, _ := fp.a.hv.Definition("web"); strings.Contains(def.XML, "<title>") {
			t.Fatalf("the persistent definition got a title:\n%s", def.XML)
		}
	})
}

// Automatic re-protection (<ft:reprotect auto="yes">): the VM that went
// live on host b is re-protected onto host a as soon as a's daemon
// answers. Here a's QEMU cannot receive a running VM (the fake QEMU runs
// at once instead of waiting for its state): a refuses it, stops that
// QEMU, and b's VM runs on alone, unpaused, saying why; b tries again
// after its backoff.
func TestRunsAutoReprotectRefusedRunsOnAlone(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		xml := strings.Replace(runDomainXML(t.TempDir()), `<ft:reprotect auto="no"/>`, `<ft:reprotect auto="yes"/>`, 1)
		fp, _ := replicatingXML(t, xml)
		killPrimary(t, fp) // 5 s: go-live, then the first attempt
		synctest.Wait()
		fp.a.hv.mu.Lock()
		tries := fp.a.hv.pausedStarts
		fp.a.hv.mu.Unlock()
		if tries < 1 {
			t.Fatal("host b did not try to re-protect onto host a")
		}
		if fp.a.hv.running(runUUID) != nil {
			t.Fatal("host a's QEMU that could not receive the VM was left running")
		}
		s := fp.b.status(t, "web")
		if s.State != ctl.StateLive || s.Reprotect == nil || s.Reprotect.Phase != "failed" || !strings.Contains(s.Reprotect.Error, "inmigrate") {
			t.Fatalf("host b: state %s %q, reprotect %+v", s.State, s.Detail, s.Reprotect)
		}
		live := fp.b.hv.running(runUUID)
		if mode, _ := live.state(); mode != "none" || live.paused {
			t.Fatalf("host b's VM: mode %s paused %v, want running alone", mode, live.paused)
		}
		time.Sleep(autoReprotectFirst + autoReprotectPoll)
		synctest.Wait()
		fp.a.hv.mu.Lock()
		again := fp.a.hv.pausedStarts
		fp.a.hv.mu.Unlock()
		if again <= tries {
			t.Fatalf("no second attempt after the backoff (%d tries)", again)
		}
	})
}

// virt-ft protect re-protects only a VM that went live here and runs
// alone, one re-protection at a time; anything else is refused with the
// state it is in, and nothing changes.
func TestRunsProtectRefusals(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fp, _ := replicating(t)
		for _, c := range []struct {
			host       *fakeHost
			name, peer string
			want       string
		}{
			{fp.a, "web", "", "is replicating here (role primary)"},
			{fp.b, "web", "", "is replicating here (role backup)"},
			{fp.a, "nosuch", "", "is not known to libvirt-ftd here"},
			{fp.a, "", "", "name the domain"},
			{fp.a, "web", "10.0.0.3:x", `--peer "10.0.0.3:x": port "x" is not a TCP port`},
		} {
			if _, err := c.host.d.protect(c.name, c.peer); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("protect(%q, %q) on %s: %v, want %q", c.name, c.peer, c.host.ip, err, c.want)
			}
		}
		if s := fp.a.status(t, "web"); s.State != ctl.StateReplicating || s.Reprotect != nil {
			t.Fatalf("host a after refused protects: %+v", s)
		}
		killPrimary(t, fp)
		if _, err := fp.b.d.protect("web", ""); err != nil {
			t.Fatalf("protect of the live VM: %v", err)
		}
		if _, err := fp.b.d.protect("web", ""); err == nil || !strings.Contains(err.Error(), "a re-protection is under way") {
			t.Fatalf("a second protect while the first runs: %v", err)
		}
		synctest.Wait()
		// The fake QEMU cannot receive a running VM: refused, the VM runs
		// on alone, and a new protect may start.
		if s := fp.b.status(t, "web"); s.State != ctl.StateLive || s.Reprotect == nil || s.Reprotect.Phase != "failed" {
			t.Fatalf("host b: %s %q %+v", s.State, s.Detail, s.Reprotect)
		}
		if _, err := fp.b.d.protect("web", ""); err != nil {
			t.Fatalf("protect again after a failure: %v", err)
		}
		synctest.Wait()
	})
}

// A primary that lost its backup is re-protected automatically too. Its
// record log (read and discarded since the loss) is ended only once the
// peer took the new backup: here host b's QEMU cannot receive a running VM,
// so the attempt fails first and the VM goes on recording, unpaused. Ending
// the log (endLog): FIFO A's reader closes, QEMU's next write fails and
// stops the VM (0006), and the daemon continues it, no longer recording;
// it may then be re-protected as a VM that went live.
func TestRunsAutoReprotectAfterBackupLossEndsTheLog(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		xml := strings.Replace(runDomainXML(t.TempDir()), `<ft:reprotect auto="no"/>`, `<ft:reprotect auto="yes"/>`, 1)
		fp, primary := replicatingXML(t, xml)
		if _, err := fp.b.hv.Destroy(runUUID); err != nil { // the backup's QEMU dies
			t.Fatal(err)
		}
		time.Sleep(5 * time.Second)
		synctest.Wait()
		if s := fp.a.status(t, "web"); s.State != ctl.StateUnprotected || s.Failover != "unprotected" {
			t.Fatalf("host a after its backup's loss: %s (%s) %q", s.State, s.Failover, s.Detail)
		}
		time.Sleep(autoReprotectPoll) // the auto loop's attempt
		synctest.Wait()
		s := fp.a.status(t, "web")
		if s.Reprotect == nil || s.Reprotect.Phase != "failed" || !strings.Contains(s.Reprotect.Error, "inmigrate") {
			t.Fatalf("host a: %s %q, reprotect %+v", s.State, s.Detail, s.Reprotect)
		}
		if fp.b.hv.running(runUUID) != nil {
			t.Fatal("host b's QEMU that could not receive the VM was left running")
		}
		primary.emit(t, instructions(10, 10)) // still read: the log was not ended
		if mode, _ := primary.state(); mode != "record" || primary.paused {
			t.Fatalf("host a's VM after a refused attempt: mode %s paused %v, want recording", mode, primary.paused)
		}

		p := fp.a.d.lookup(runUUID).current().(*primaryRun)
		ended := make(chan error, 1)
		go func() { ended <- p.endLog() }()
		synctest.Wait()
		primary.emitToClosedLog(t, instructions(10, 10))
		if err := <-ended; err != nil {
			t.Fatal(err)
		}
		if mode, _ := primary.state(); mode != "none" || primary.paused {
			t.Fatalf("host a's VM after its log's end: mode %s paused %v, want running without recording", mode, primary.paused)
		}
		if ok, why := p.reprotectable(true); !ok {
			t.Fatalf("the VM running alone without recording is not re-protectable: %s", why)
		}
		if s := fp.a.status(t, "web"); s.State != ctl.StateUnprotected {
			t.Fatalf("host a after its log's end: %s %q", s.State, s.Detail)
		}
	})
}

// virt-ft unprotect of a VM that runs alone (here: went live) stops its
// automatic re-protection; virt-ft protect still may.
func TestRunsUnprotectStopsAutoReprotect(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		xml := strings.Replace(runDomainXML(t.TempDir()), `<ft:reprotect auto="no"/>`, `<ft:reprotect auto="yes"/>`, 1)
		fp, _ := replicatingXML(t, xml)
		if _, err := fp.a.hv.Destroy(runUUID); err != nil {
			t.Fatal(err)
		}
		time.Sleep(1500 * time.Millisecond) // go-live; the auto loop's first look is at 2 s
		synctest.Wait()
		if s := fp.b.status(t, "web"); s.State != ctl.StateLive {
			t.Fatalf("host b: %s %q", s.State, s.Detail)
		}
		if _, err := fp.b.d.unprotect("web"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Second)
		synctest.Wait()
		fp.a.hv.mu.Lock()
		tries := fp.a.hv.pausedStarts
		fp.a.hv.mu.Unlock()
		if tries != 0 {
			t.Fatalf("%d automatic re-protections after virt-ft unprotect", tries)
		}
		if _, err := fp.b.d.protect("web", ""); err != nil {
			t.Fatalf("virt-ft protect after unprotect: %v", err)
		}
		synctest.Wait()
	})
}

// A VM that went live runs on alone when its host's libvirt-ftd restarts:
// the restarted daemon adopts it (adoptalone.go) and re-protects it
// automatically, as its old daemon would have. Here host a's QEMU cannot
// receive a running VM, so each attempt is refused: what counts is that
// the restarted daemon on host b attempts at all, and the VM runs on
// alone and unpaused.
func TestRunsAutoReprotectAfterDaemonRestart(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		xml := strings.Replace(runDomainXML(t.TempDir()), `<ft:reprotect auto="no"/>`, `<ft:reprotect auto="yes"/>`, 1)
		fp, _ := replicatingXML(t, xml)
		killPrimary(t, fp)
		synctest.Wait()
		fp.crash(fp.b)
		fp.a.hv.mu.Lock()
		before := fp.a.hv.pausedStarts
		fp.a.hv.mu.Unlock()
		fp.restart(fp.b)
		synctest.Wait()
		s := fp.b.status(t, "web")
		if s.State != ctl.StateUnprotected || !strings.Contains(s.Detail, "went live") {
			t.Fatalf("host b after its daemon's restart: %s %q", s.State, s.Detail)
		}
		dm := fp.b.d.lookup(runUUID)
		if dm == nil {
			t.Fatal("host b: no domain entry after the restart")
		}
		p, ok := dm.current().(*primaryRun)
		if !ok {
			t.Fatalf("host b: the live VM was not adopted as a run (%T)", dm.current())
		}
		p.mu.Lock()
		adopted, liveXML, base, peer := p.adoptedAlone, p.liveXML, p.primaryXML, p.peer
		p.mu.Unlock()
		if !adopted || !liveXML || base == "" {
			t.Fatalf("host b: adopted %v liveXML %v base %d bytes", adopted, liveXML, len(base))
		}
		// The host it failed over from, at its daemon's port: not the
		// address the primary once connected from (the live record's).
		if want := peerAddr(p.cfg); peer != want || !strings.HasPrefix(want, fp.a.ip+":") {
			t.Fatalf("host b: adopted with peer %q, want %q (host a, %s)", peer, want, fp.a.ip)
		}
		time.Sleep(autoReprotectPoll + time.Second)
		synctest.Wait()
		fp.a.hv.mu.Lock()
		after := fp.a.hv.pausedStarts
		fp.a.hv.mu.Unlock()
		if after <= before {
			t.Fatal("the restarted daemon on host b did not try to re-protect the VM onto host a")
		}
		live := fp.b.hv.running(runUUID)
		if mode, _ := live.state(); mode != "none" || live.paused {
			t.Fatalf("host b's VM: mode %s paused %v, want running alone", mode, live.paused)
		}
		if s := fp.b.status(t, "web"); s.Reprotect == nil || s.Reprotect.Phase != "failed" {
			t.Fatalf("host b: %s %q, reprotect %+v", s.State, s.Detail, s.Reprotect)
		}
		// The VM stops: the adopted run ends with it (its gates, its
		// auto re-protection), so the domain may start again.
		if _, err := fp.b.hv.Destroy(runUUID); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		if p.active() {
			t.Fatal("host b: the adopted run outlived its VM")
		}
		fp.a.hv.mu.Lock()
		tries := fp.a.hv.pausedStarts
		fp.a.hv.mu.Unlock()
		time.Sleep(autoReprotectMax)
		synctest.Wait()
		fp.a.hv.mu.Lock()
		later := fp.a.hv.pausedStarts
		fp.a.hv.mu.Unlock()
		if later != tries {
			t.Fatalf("re-protection attempts went on after the VM stopped (%d, then %d)", tries, later)
		}
	})
}
