package failover

import (
	"testing"
	"testing/synctest"
	"time"
)

// The Driver ticks its Node in real time: silence past the heartbeat
// timeout makes a backup go live, and WaitFor sees it without polling.
func TestDriverRunsTheNode(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var actions []Action
		d, err := NewDriver(Config{Role: RoleBackup, HeartbeatInterval: 10, HeartbeatTimeout: 100}, func(a Action) {
			actions = append(actions, a)
		})
		if err != nil {
			t.Fatal(err)
		}
		go d.Run()
		d.Post(HeartbeatReceived{})
		if d.WaitFor(func(s Status) bool { return s.State != StateReplicating }, 500*time.Millisecond) {
			t.Fatal("left replicating within 500 ms of a heartbeat (timeout 1 s)")
		}
		if !d.WaitFor(func(s Status) bool { return s.State == StateGoingLive }, 2*time.Second) {
			st, _ := d.View()
			t.Fatalf("not going live 2.5 s after the last heartbeat: %v", st.State)
		}
		if st, tm := d.View(); st.Role != RoleBackup || tm.Detected == NotYet || tm.Summary() == "" {
			t.Fatalf("view after the loss: %+v %+v", st, tm)
		}
		d.Stop()
		<-d.Done()
		d.Post(HeartbeatReceived{}) // never blocks once stopped
		if len(actions) == 0 {
			t.Fatal("no action reached exec")
		}
	})
}

// StepIf takes a resumed channel only while the core waits for the
// restarting peer: after the grace it is refused, and nothing else moves.
func TestDriverStepIf(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d, err := NewDriver(Config{Role: RolePrimary, HeartbeatInterval: 10, HeartbeatTimeout: 100}, func(Action) {})
		if err != nil {
			t.Fatal(err)
		}
		go d.Run()
		restarting := func(s Status) bool { return s.PeerRestarting }
		d.Post(PeerBye{Clean: true, Reason: ByeRestarting})
		if !d.StepIf(restarting, ChannelUp{}) {
			t.Fatal("a channel back within the grace was refused")
		}
		if st, _ := d.View(); st.PeerRestarting || !st.ChannelOpen || st.State != StateReplicating {
			t.Fatalf("after the resume: %+v", st)
		}
		d.Post(PeerBye{Clean: true, Reason: ByeRestarting})
		time.Sleep(1100 * time.Millisecond) // the grace (the timeout) ends
		if d.StepIf(restarting, ChannelUp{}) {
			t.Fatal("a channel back after the grace was taken")
		}
		if st, _ := d.View(); st.State != StateClaiming {
			t.Fatalf("after the grace: %v, want claiming", st.State)
		}
		d.Stop()
		if d.StepIf(func(Status) bool { return true }, ChannelUp{}) {
			t.Fatal("StepIf on a stopped driver")
		}
	})
}
