package main

// The hostile backup (hostile -fake-backup): a peer that holds a valid
// certificate for the backup host's address and plays its daemon to the
// primary's one, then lies in its acknowledgement: it acks a log offset
// beyond what the primary sent. The primary must take that for a protocol
// error (plugin/primary.go receive), declare its backup lost and run on
// alone; it must never take the lie for progress (its output gate would
// release frames the backup never held).

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"github.com/libvirt-ft/libvirt-ft/logchan"
)

// fakeBackup listens on listen with the backup host's certificate, answers
// control requests as an obliging backup host would (hash, seed,
// prepare-backup), and on the log channel acks, once it has received some
// log, an offset 1 GiB beyond it. It reports the primary's reaction and
// returns; the process exits 1 if the primary carried on with the channel.
func fakeBackup(listen, qemuVer string, timeout time.Duration) {
	pool, pair := loadPKI()
	cfg := &tls.Config{Certificates: []tls.Certificate{pair}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS13}
	ln, err := tls.Listen("tcp", listen, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "hostile: -listen:", err)
		os.Exit(2)
	}
	defer ln.Close()
	fmt.Printf("fake-backup listening on %s\n", listen)

	var (
		mu      sync.Mutex
		digests = map[string]logchan.FileDigest{}
		done    = make(chan struct{})
		once    sync.Once
	)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				lc := logchan.NewConn(c)
				logVer, _ := logchan.LogVersionForQEMU(qemuVer)
				local := logchan.Hello{Protocol: logchan.ProtocolVersion, QEMUVersion: qemuVer, LogVersion: logVer, Role: logchan.RoleBackup}
				hello, err := logchan.ServerHandshake(lc, local, nil)
				if err != nil {
					fmt.Printf("fake-backup: handshake from %s: %v\n", c.RemoteAddr(), err)
					return
				}
				_ = c.SetDeadline(time.Time{})
				switch hello.Role {
				case logchan.RoleControl:
					serveControl(lc, &mu, digests)
				case logchan.RolePrimary:
					if lieInAck(c, lc) {
						once.Do(func() { close(done) })
					}
				}
			}()
		}
	}()
	select {
	case <-done:
	case <-time.After(timeout):
		report("ack-beyond-sent", "accepted", fmt.Sprintf("no log channel came within %s, or the primary kept it open after the lie", timeout))
	}
}

// serveControl answers a primary's control requests as a backup host that
// agrees to everything: a seeded copy hashes to the digest it was sent
// with.
func serveControl(lc *logchan.Conn, mu *sync.Mutex, digests map[string]logchan.FileDigest) {
	var seeding string
	var want logchan.FileDigest
	for {
		req, data, err := lc.RecvControl()
		if err != nil {
			return
		}
		if data != nil {
			continue // seed data: thrown away
		}
		var reply any
		switch req.Op {
		case logchan.OpHash:
			mu.Lock()
			reply = digests[req.Path]
			mu.Unlock()
		case logchan.OpSeed:
			seeding, want = req.Path, req.Seed
			continue
		case logchan.OpSeedEnd:
			mu.Lock()
			digests[seeding] = want
			mu.Unlock()
		case logchan.OpPrepareBackup:
			fmt.Printf("fake-backup: prepare-backup of %s (epoch %s): ok\n", req.UUID, req.Epoch)
		}
		if err := lc.Reply(reply, nil); err != nil {
			return
		}
	}
}

// lieInAck reads the primary's log until some has arrived, acks 1 GiB
// beyond it, and reports whether the primary then dropped the channel
// within 10 s (what it must do).
func lieInAck(c net.Conn, lc *logchan.Conn) bool {
	var received uint64
	deadline := time.Now().Add(60 * time.Second)
	for received < 4096 {
		_ = c.SetReadDeadline(deadline)
		m, err := lc.Recv()
		if err != nil {
			report("ack-beyond-sent", "accepted", "the log channel ended before any log: "+err.Error())
			return true
		}
		if m.Kind == logchan.MsgLog {
			received = m.Offset + uint64(len(m.Data))
		}
	}
	lie := received + 1<<30
	fmt.Printf("fake-backup: received %d bytes of log; acking %d\n", received, lie)
	_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if err := lc.WriteAck(logchan.Ack{Offset: lie, Received: lie}); err == nil {
		err = lc.Flush()
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		_, err := lc.Recv()
		if err == nil {
			continue // frames the primary had already sent
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			report("ack-beyond-sent", "accepted", "the primary kept the channel open 10 s after an ack beyond what it sent")
		} else {
			report("ack-beyond-sent", "dropped", fmt.Sprintf("the primary closed the channel after an ack of %d with %d bytes sent: %v", lie, received, err))
		}
		return true
	}
}
