package plugin

import (
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

func TestLagExceeded(t *testing.T) {
	t0 := time.Unix(1000, 0)
	samples := []sample{{instr: 100, at: t0}, {instr: 200, at: t0.Add(100 * time.Millisecond)}, {instr: 300, at: t0.Add(200 * time.Millisecond)}}
	max := 500 * time.Millisecond
	for _, c := range []struct {
		name        string
		icount      uint64
		logInstr    uint64
		head        time.Time // the latest log sent
		wantLagging bool
	}{
		{"no sample from the backup yet", 0, 200, t0.Add(10 * time.Second), false},
		{"caught up with the log", 300, 300, t0.Add(10 * time.Second), false},
		{"behind, recent", 150, 200, t0.Add(400 * time.Millisecond), false},
		{"behind, old", 150, 200, t0.Add(700 * time.Millisecond), true},
		{"behind the first sample, old", 50, 200, t0.Add(600 * time.Millisecond), true},
		// A held primary sends nothing: its head stays at the last send
		// however long the hold, and the backup catching up ends it.
		{"held: head at the last send, backup within max of it", 250, 300, t0.Add(200 * time.Millisecond), false},
		{"held: backup far behind the last send", 50, 300, t0.Add(600 * time.Millisecond), true},
	} {
		if got := lagExceeded(samples, c.icount, c.logInstr, max, c.head); got != c.wantLagging {
			t.Errorf("%s: lagging %v, want %v", c.name, got, c.wantLagging)
		}
	}
}

// TestRecordSentCoalesces: log sent within 10 ms of the last sample is
// covered by that sample (at its time), so a backup anywhere in it has a
// lag, never none.
func TestRecordSentCoalesces(t *testing.T) {
	// synctest: the bubble's clock stands still between the two sends.
	synctest.Test(t, func(t *testing.T) {
		p := &primaryRun{}
		p.recordSent(100, 1000)
		p.recordSent(100, 500) // within 10 ms: the same sample
		if len(p.samples) != 1 || p.samples[0].instr != 1500 {
			t.Fatalf("samples %+v, want one covering instruction 1500", p.samples)
		}
		time.Sleep(20 * time.Millisecond)
		p.recordSent(100, 500) // 20 ms later: a new sample
		if len(p.samples) != 2 || p.samples[1].instr != 2000 {
			t.Fatalf("samples %+v, want a second one at instruction 2000", p.samples)
		}
		head := p.samples[0].at.Add(300 * time.Millisecond)
		if got := runLag(p.samples, 1200, head); got != 300*time.Millisecond {
			t.Errorf("runLag(1200) = %v, want 300ms", got)
		}
		if !lagExceeded(p.samples, 1200, p.logInstr, 100*time.Millisecond, head) {
			t.Error("a backup at 1200 of 2000, 300 ms behind, is not lagging")
		}
	})
}

// TestRecordAckClampsIcount: an acknowledged icount beyond the log sent
// (a backup past END, or a hostile one) counts only up to the log sent,
// so the lag bound holds again once more log is sent.
func TestRecordAckClampsIcount(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := &primaryRun{}
		p.recordSent(100, 1000)
		p.recordAck(100, 1<<62)
		if p.backupIcnt != 1000 {
			t.Fatalf("backup icount %d after an ack of 2^62, want 1000 (the log sent)", p.backupIcnt)
		}
		time.Sleep(500 * time.Millisecond)
		p.recordSent(100, 1000)
		if lag := p.lagLocked(); lag != 500*time.Millisecond {
			t.Errorf("lag %v with the backup at 1000 of 2000 sent 500 ms apart, want 500ms", lag)
		}
	})
}

// TestHeldTimes: the window's hold time counts the holds that ended and
// the one in progress, so the metric built on it never decreases; the lag
// bound's is what was added.
func TestHeldTimes(t *testing.T) {
	p := &primaryRun{}
	if lag, got := p.heldTimes(); got != 0 || lag != 0 {
		t.Fatalf("no hold yet: %v, %v, want 0, 0", lag, got)
	}
	p.heldWindow, p.heldLag = 2*time.Second, 40*time.Millisecond
	if lag, got := p.heldTimes(); got != 2*time.Second || lag != 40*time.Millisecond {
		t.Fatalf("holds ended: %v, %v, want 40ms, 2s", lag, got)
	}
	// In a bubble the clock stands still: the hold in progress is 1 s.
	synctest.Test(t, func(t *testing.T) {
		p.windowSince = time.Now().Add(-time.Second)
		if _, got := p.heldTimes(); got != 3*time.Second {
			t.Fatalf("a 1 s hold in progress: %v, want 3s", got)
		}
	})
}

// TestWaitLag: a pump held by the lag bound wakes on the next ack, not on
// a poll; without one it waits until the backup would count as no longer
// advancing (3 status intervals after its icount last grew), and a close
// ends it at once.
func TestWaitLag(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := &primaryRun{stop: make(chan struct{})}
		p.env.cfg.StatusIntervalMS = 50
		ps := &pumpState{}
		ps.cond = sync.NewCond(&ps.mu)
		p.icountChangedAt = time.Now()

		// An ack 20 ms in ends the wait then.
		t0 := time.Now()
		acks := ps.acks
		go func() {
			time.Sleep(20 * time.Millisecond)
			ps.mu.Lock()
			ps.acks++
			ps.cond.Broadcast()
			ps.mu.Unlock()
		}()
		p.waitLag(ps, acks)
		if d := time.Since(t0); d != 20*time.Millisecond {
			t.Errorf("woken by an ack after %v, want 20ms", d)
		}

		// No ack: until 150 ms after the icount last grew.
		p.waitLag(ps, ps.acks)
		if d := time.Since(t0); d != 150*time.Millisecond {
			t.Errorf("without an ack the wait ended %v after the icount grew, want 150ms", d)
		}

		// Past that bound: at least 1 ms, never a busy loop.
		t1 := time.Now()
		p.waitLag(ps, ps.acks)
		if d := time.Since(t1); d != time.Millisecond {
			t.Errorf("a wait past the advancing bound took %v, want 1ms", d)
		}

		// An ack counted before the wait (after the pump's check) ends
		// it at once.
		p.icountChangedAt = time.Now()
		before := ps.acks
		ps.acks++
		t3 := time.Now()
		p.waitLag(ps, before)
		if d := time.Since(t3); d != 0 {
			t.Errorf("an ack between the check and the wait was lost: waited %v", d)
		}

		// A close ends it.
		p.icountChangedAt = time.Now()
		t2 := time.Now()
		go func() {
			time.Sleep(5 * time.Millisecond)
			close(p.stop)
			ps.mu.Lock()
			ps.cond.Broadcast()
			ps.mu.Unlock()
		}()
		p.waitLag(ps, ps.acks)
		if d := time.Since(t2); d != 5*time.Millisecond {
			t.Errorf("a close ended the wait after %v, want 5ms", d)
		}
	})
}

// TestWindowNow: the window beyond standWindowBytes is in force only while
// the lag bound holds the backup's lag (its icount known and advancing,
// max-lag-ms on); else at most standWindowBytes.
func TestWindowNow(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const big = 256 << 10
		p := &primaryRun{}
		p.env.cfg.StatusIntervalMS = 50
		lag := 100 * time.Millisecond
		if got := p.windowNow(big, lag); got != standWindowBytes {
			t.Errorf("before the backup's first icount: window %d, want %d", got, standWindowBytes)
		}
		p.recordSent(100, 1000)
		p.recordAck(100, 500) // icount grew now
		if got := p.windowNow(big, lag); got != big {
			t.Errorf("backup advancing: window %d, want %d", got, big)
		}
		if got := p.windowNow(big, 0); got != standWindowBytes {
			t.Errorf("max-lag-ms off: window %d, want %d", got, standWindowBytes)
		}
		if got := p.windowNow(32<<10, lag); got != 32<<10 {
			t.Errorf("a configured window below the stand window: %d, want %d", got, 32<<10)
		}
		time.Sleep(149 * time.Millisecond)
		if got := p.windowNow(big, lag); got != big {
			t.Errorf("149 ms after the icount grew: window %d, want %d", got, big)
		}
		time.Sleep(time.Millisecond)
		if got := p.windowNow(big, lag); got != standWindowBytes {
			t.Errorf("backup standing still for three status intervals: window %d, want %d", got, standWindowBytes)
		}
	})
}
