package failover

import (
	"errors"
	"fmt"
	"testing"
)

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want error
	}{
		{Config{Role: RolePrimary, HeartbeatInterval: 10, HeartbeatTimeout: 100}, nil},
		{Config{Role: RoleBackup, HeartbeatInterval: 1, HeartbeatTimeout: 2, LockRetryInterval: 5}, nil},
		{Config{HeartbeatInterval: 10, HeartbeatTimeout: 100}, ErrBadRole},
		{Config{Role: Role(7), HeartbeatInterval: 10, HeartbeatTimeout: 100}, ErrBadRole},
		{Config{Role: RoleBackup, HeartbeatTimeout: 100}, ErrBadInterval},
		{Config{Role: RoleBackup, HeartbeatInterval: 10, HeartbeatTimeout: 10}, ErrBadTimeout},
		{Config{Role: RoleBackup, HeartbeatInterval: 10, HeartbeatTimeout: 100, LockRetryInterval: -1}, ErrBadRetry},
	} {
		err := tc.cfg.Validate()
		if !errors.Is(err, tc.want) || (err == nil) != (tc.want == nil) {
			t.Errorf("%+v: Validate() = %v, want %v", tc.cfg, err, tc.want)
		}
		n, err2 := New(tc.cfg)
		if (n == nil) != (tc.want != nil) || !errors.Is(err2, tc.want) {
			t.Errorf("%+v: New() = %v, %v", tc.cfg, n, err2)
		}
	}
}

// Every event prints in the form the scripts parse back.
func TestEventStringRoundTrip(t *testing.T) {
	for _, ev := range []Event{
		HeartbeatReceived{},
		LogReceived{Offset: 1, Bytes: 2, Instructions: 3},
		AckReceived{Offset: 4, Icount: 5},
		ChannelDown{Reason: `read tcp: connection reset by "peer"`},
		ChannelUp{},
		PeerBye{Clean: true, Reason: ByeSwitchover},
		BackupIcount{Icount: 6},
		EndFed{Bytes: 7, Instructions: 8},
		LockResult{Won: true},
		LockResult{Err: errors.New("lock: timeout")},
		GoLiveDone{},
		GoLiveDone{Err: errors.New("savevm: failed")},
		QEMUExited{Clean: true},
		SwitchoverRequested{},
	} {
		toks, err := tokenize(ev.String())
		if err != nil {
			t.Fatalf("%v: %v", ev, err)
		}
		back, err := parseEvent(toks)
		if err != nil {
			t.Fatalf("%v: %v", ev, err)
		}
		if fmt.Sprint(back) != fmt.Sprint(ev) {
			t.Errorf("round trip: %v became %v", ev, back)
		}
	}
}

// ExampleNode walks a backup through a go-live after the primary fell
// silent.
func ExampleNode() {
	n, err := New(Config{Role: RoleBackup, HeartbeatInterval: 10, HeartbeatTimeout: 30})
	if err != nil {
		panic(err)
	}
	show := func() {
		for _, a := range n.Ready() {
			fmt.Println(" ", a)
		}
	}
	n.Step(LogReceived{Offset: 0, Bytes: 4096, Instructions: 1000})
	for range 30 {
		n.Tick()
	}
	fmt.Println(n.State(), n.Phase())
	show()
	n.Step(EndFed{Bytes: 4096, Instructions: 1000})
	show()
	n.Step(BackupIcount{Icount: 1000})
	show()
	n.Step(LockResult{Won: true})
	show()
	n.Step(GoLiveDone{})
	show()
	fmt.Println(n.Role(), n.State(), n.Timings())
	// Output:
	// going-live feeding-end
	//   send-heartbeat
	//   send-heartbeat
	//   close-channel
	//   feed-end
	//   wait-drain icount=1000
	//   acquire-lock
	//   go-live
	//   announce
	//   cleanup
	// primary live detect=30 drain=0 lock=0 start=0 total=30
}
