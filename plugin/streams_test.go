package plugin

import (
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"testing/synctest"

	"github.com/libvirt-ft/libvirt-ft/logchan"
)

// A re-protection stream reaches the new backup's QEMU only from the host
// that armed it, for its domain and pairing epoch, once for the
// migration; its bytes go both ways untouched, and the target's end
// closes it.
func TestReprotectStreamsOnlyForTheArmingHost(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fp := newFakePair(t)
		defer func() { fp.shutdown(); synctest.Wait() }()
		qemu := make(chan net.Conn, 4) // the new backup's QEMU's ends
		target := &streamTarget{uuid: runUUID, armedBy: "10.0.0.1", epoch: "e1",
			sockets: map[string]string{logchan.StreamMigration: "/run/x/migrate.sock", logchan.StreamNBD: "/run/x/nbd.sock"},
			dial: func(path string) (net.Conn, error) {
				a, b := net.Pipe()
				qemu <- b
				return a, nil
			}}
		unregister := fp.b.d.registerStreams(target)
		open := func(d *Daemon, epoch, kind string) (net.Conn, error) {
			return dialStream(d.env(), "10.0.0.2:7480", runUUID, "7.2.22", logchan.LogVersionQEMU72, epoch, kind)
		}

		c, err := open(fp.a.d, "e1", logchan.StreamMigration)
		if err != nil {
			t.Fatalf("the migration stream: %v", err)
		}
		q := <-qemu
		go func() { _, _ = c.Write([]byte("QEVM state")) }()
		buf := make([]byte, 10)
		if _, err := io.ReadFull(q, buf); err != nil || string(buf) != "QEVM state" {
			t.Fatalf("QEMU read %q, %v", buf, err)
		}
		go func() { _, _ = q.Write([]byte("ack")) }()
		if _, err := io.ReadFull(c, buf[:3]); err != nil || string(buf[:3]) != "ack" {
			t.Fatalf("the source read %q, %v", buf[:3], err)
		}

		for _, tc := range []struct {
			name        string
			from        *Daemon
			epoch, kind string
			want        string
		}{
			{"a second migration", fp.a.d, "e1", logchan.StreamMigration, "open already"},
			{"another pairing", fp.a.d, "e0", logchan.StreamNBD, "epoch"},
			{"another kind", fp.a.d, "e1", "monitor", `no "monitor" stream`},
		} {
			if _, err := open(tc.from, tc.epoch, tc.kind); !errors.Is(err, logchan.ErrHandshake) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%s: %v, want a refusal with %q", tc.name, err, tc.want)
			}
		}
		// Another host may not open one (here b dials itself: the
		// connection comes from 10.0.0.2, not the arming 10.0.0.1).
		if _, err := open(fp.b.d, "e1", logchan.StreamNBD); !errors.Is(err, logchan.ErrHandshake) || !strings.Contains(err.Error(), "another host") {
			t.Errorf("a stream from another host: %v", err)
		}

		n, err := open(fp.a.d, "e1", logchan.StreamNBD)
		if err != nil {
			t.Fatalf("an NBD stream: %v", err)
		}
		qn := <-qemu
		// The end of the arming ends the streams still open.
		unregister()
		if _, err := c.Read(buf); err == nil {
			t.Error("the migration stream still open after the target ended")
		}
		if _, err := n.Read(buf); err == nil {
			t.Error("the NBD stream still open after the target ended")
		}
		_ = q.Close()
		_ = qn.Close()
		if _, err := open(fp.a.d, "e1", logchan.StreamNBD); !errors.Is(err, logchan.ErrHandshake) || !strings.Contains(err.Error(), "waits for a running VM") {
			t.Errorf("a stream after the target ended: %v", err)
		}
	})
}
