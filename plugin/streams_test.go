package plugin

import (
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"testing/synctest"
	"time"

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

// gatedConn holds its reads until gate is closed.
type gatedConn struct {
	net.Conn
	gate chan struct{}
}

func (g gatedConn) Read(p []byte) (int, error) {
	<-g.gate
	return g.Conn.Read(p)
}

// After the new backup's QEMU completed its incoming migration, finish
// lets the relay carry its last return-path bytes to the source and ends
// the streams only once they ended by themselves, or after the grace.
func TestStreamFinishWaitsForTheLastBytes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fp := newFakePair(t)
		defer func() { fp.shutdown(); synctest.Wait() }()
		qemu := make(chan net.Conn, 4) // the new backup's QEMU's ends
		gate := make(chan struct{})
		var unregister []func()
		defer func() {
			for _, u := range unregister {
				u()
			}
		}()
		// arm registers a target for pairing epoch; open opens a stream of
		// it from host a: the source's end and the QEMU's.
		arm := func(epoch string) *streamTarget {
			target := &streamTarget{uuid: runUUID, armedBy: "10.0.0.1", epoch: epoch,
				sockets: map[string]string{logchan.StreamMigration: "/run/x/migrate.sock", logchan.StreamNBD: "/run/x/nbd.sock"},
				dial: func(path string) (net.Conn, error) {
					a, b := net.Pipe()
					qemu <- b
					return gatedConn{a, gate}, nil
				}}
			unregister = append(unregister, fp.b.d.registerStreams(target))
			return target
		}
		open := func(epoch, kind string) (source, q net.Conn) {
			c, err := dialStream(fp.a.d.env(), "10.0.0.2:7480", runUUID, "7.2.22", logchan.LogVersionQEMU72, epoch, kind)
			if err != nil {
				t.Fatalf("%s stream of pairing %s: %v", kind, epoch, err)
			}
			return c, <-qemu
		}
		target := arm("e1")
		c, q := open("e1", logchan.StreamMigration)
		synctest.Wait() // the stream is open (serveStream counted it)
		// The destination QEMU's last message, then its end; the relay
		// has not read it yet when finish starts.
		go func() {
			_, _ = q.Write([]byte("SHUTDOWN"))
			_ = q.Close()
		}()
		finished := make(chan struct{})
		start := time.Now()
		go func() { target.finish(streamFinishGrace); close(finished) }()
		synctest.Wait()
		close(gate)
		buf := make([]byte, 8)
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "SHUTDOWN" {
			t.Fatalf("the source read %q, %v: the last bytes were dropped", buf, err)
		}
		_ = c.Close() // the source ends its side: the stream is over
		<-finished
		if took := time.Since(start); took >= streamFinishGrace {
			t.Errorf("finish took %v: it did not end with the stream", took)
		}

		// A stream that never ends is closed after the grace.
		target2 := arm("e2")
		c2, q2 := open("e2", logchan.StreamNBD)
		defer q2.Close()
		synctest.Wait() // the relay is up
		start = time.Now()
		target2.finish(streamFinishGrace)
		if took := time.Since(start); took != streamFinishGrace {
			t.Errorf("finish took %v with a stream that never ends, want the grace %v", took, streamFinishGrace)
		}
		if _, err := c2.Read(buf); err == nil {
			t.Error("a stream still open after finish's grace")
		}
	})
}
