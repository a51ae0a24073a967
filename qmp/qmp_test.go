package qmp

import (
	"encoding/json"
	"errors"
	"testing"

	goqmp "github.com/digitalocean/go-qemu/qmp"
	"github.com/digitalocean/go-qemu/qmp/qmptest"
)

func fake(t *testing.T, want string, reply interface{}) Monitor {
	return qmptest.NewMonitor(func(cmd goqmp.Command) (interface{}, error) {
		if cmd.Execute != want {
			t.Fatalf("command %q, want %q", cmd.Execute, want)
		}
		return reply, nil
	})
}

func TestQueryReplay(t *testing.T) {
	c := NewClient(fake(t, "query-replay", map[string]interface{}{
		"return": map[string]interface{}{"mode": "play", "filename": "/x.fifo", "icount": 1234567},
	}))
	ri, err := c.QueryReplay()
	if err != nil {
		t.Fatal(err)
	}
	if ri.Mode != "play" || ri.Icount != 1234567 || ri.Filename != "/x.fifo" {
		t.Fatalf("got %+v", ri)
	}
}

func TestErrorClassKept(t *testing.T) {
	c := NewClient(fake(t, "replay-break", map[string]interface{}{
		"error": map[string]string{"class": "GenericError", "desc": "replay breakpoint must be in the future"},
	}))
	err := c.ReplayBreak(5)
	var qe *Error
	if !errors.As(err, &qe) || qe.Class != "GenericError" {
		t.Fatalf("err %v", err)
	}
}

func TestDecodeReplyNoReturn(t *testing.T) {
	raw, _ := json.Marshal(map[string]string{"id": "x"})
	if err := decodeReply("stop", raw, nil); !errors.Is(err, ErrNoReturn) {
		t.Fatalf("err %v", err)
	}
}
