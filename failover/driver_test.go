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
