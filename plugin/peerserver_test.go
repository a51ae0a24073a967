package plugin

import (
	"errors"
	"net"
	"strings"
	"testing"
	"testing/synctest"

	"github.com/libvirt-ft/libvirt-ft/logchan"
	"github.com/libvirt-ft/libvirt-ft/plugin/ctl"
)

// A peer whose handshake names a UUID that is not canonical is refused
// there: the UUID would name FIFOs and sockets on this host.
func TestPeerHandshakeRefusesOddUUIDs(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fp := newFakePair(t)
		defer func() { fp.shutdown(); synctest.Wait() }()
		for _, uuid := range []string{"../../../root/.ssh", "5C0E7D1A-2B3C-4D5E-8F60-718293A4B5C6", ""} {
			a, b := net.Pipe()
			go fp.b.d.servePeer(addrConn{b, pipeAddr("10.0.0.2:7480"), pipeAddr("10.0.0.1:40000")})
			_, err := logchan.ClientHandshake(logchan.NewConn(a), logchan.Hello{Protocol: logchan.ProtocolVersion, DomainUUID: uuid,
				QEMUVersion: "7.2.22", LogVersion: logchan.LogVersionQEMU72, Role: logchan.RoleControl})
			if !errors.Is(err, logchan.ErrHandshake) || !strings.Contains(err.Error(), "canonical") {
				t.Errorf("handshake for %q: %v", uuid, err)
			}
			a.Close()
		}
	})
}

// A control connection opened for one domain cannot arm or cancel another.
func TestControlRequestForAnotherDomain(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fp := newFakePair(t)
		defer func() { fp.shutdown(); synctest.Wait() }()
		pc, err := dialControl(fp.a.d.env(), "10.0.0.2:7480", runUUID, "7.2.22", logchan.LogVersionQEMU72)
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		other := "11111111-2222-4333-8444-555555555555"
		err = pc.request(logchan.ControlRequest{Op: logchan.OpCancelBackup, UUID: other}, nil)
		if err == nil || !strings.Contains(err.Error(), "on a connection for") {
			t.Fatalf("cancel-backup of another domain: %v", err)
		}
	})
}

// Status is for anyone who may connect; a failover or a hook call needs
// root.
func TestControlAuthorization(t *testing.T) {
	d := newDaemon(Config{ControlGroup: "libvirt"}, nil, nil, nil)
	for _, c := range []struct {
		op  string
		uid int
		ok  bool
	}{
		{ctl.OpStatus, 1000, true}, {ctl.OpStatus, 0, true},
		{ctl.OpFailover, 1000, false}, {ctl.OpFailover, 0, true},
		{ctl.OpHook, 1000, false}, {ctl.OpHook, -1, false}, {ctl.OpHook, 0, true},
	} {
		err := d.authorize(ctl.Request{Op: c.op}, c.uid)
		if (err == nil) != c.ok || (err != nil && !strings.Contains(err.Error(), "permission denied")) {
			t.Errorf("%s by uid %d: %v", c.op, c.uid, err)
		}
	}
}

// The backup host hashes only regular files under seed-dirs.
func TestHashOnlySeedableFiles(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fp := newFakePair(t)
		defer func() { fp.shutdown(); synctest.Wait() }()
		pc, err := dialControl(fp.a.d.env(), "10.0.0.2:7480", runUUID, "7.2.22", logchan.LogVersionQEMU72)
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		var d logchan.FileDigest
		for _, path := range []string{"/dev/zero", "/etc/shadow"} {
			err := pc.request(logchan.ControlRequest{Op: logchan.OpHash, Path: path}, &d)
			if err == nil || !strings.Contains(err.Error(), "does not hash") {
				t.Fatalf("hash of %s: %v", path, err)
			}
			// The connection is dropped after a refusal; open another.
			pc.Close()
			if pc, err = dialControl(fp.a.d.env(), "10.0.0.2:7480", runUUID, "7.2.22", logchan.LogVersionQEMU72); err != nil {
				t.Fatal(err)
			}
		}
	})
}
