package plugin

import (
	"net"
	"testing"
	"testing/synctest"

	"github.com/libvirt-ft/libvirt-ft/logchan"
)

// TestAckNow: with the writer idle, ackNow writes the ack on the caller's
// goroutine; while another write is under way it queues it, and the
// writer sends the field-wise maximum once that write ends; after a
// failed write nothing more is written.
func TestAckNow(t *testing.T) {
	// synctest: Wait lets the writer goroutine settle.
	synctest.Test(t, testAckNow)
}

func testAckNow(t *testing.T) {
	a, b := net.Pipe()
	pc := newPeerConn(a)
	peer := logchan.NewConn(b)
	defer pc.Close()
	defer peer.Close()
	pc.startWriter()

	// Idle: written at once (net.Pipe is synchronous, so ackNow returns
	// only once the peer has read it).
	done := make(chan struct{})
	go func() { pc.ackNow(logchan.Ack{Offset: 10, Received: 20}); close(done) }()
	m, err := peer.Recv()
	if err != nil || m.Kind != logchan.MsgAck || m.Ack.Offset != 10 || m.Ack.Received != 20 {
		t.Fatalf("first ack: %+v %v", m, err)
	}
	<-done

	// Busy: a write in progress (writing set) makes ackNow queue; the
	// writer sends the maximum of what was queued when the write ends.
	pc.mu.Lock()
	pc.writing = true
	pc.mu.Unlock()
	pc.ackNow(logchan.Ack{Offset: 30, Received: 25})
	pc.ackNow(logchan.Ack{Offset: 15, Received: 40, Executed: 7})
	pc.mu.Lock()
	pc.writing = false
	pc.cond.Broadcast()
	pc.mu.Unlock()
	m, err = peer.Recv()
	if err != nil || m.Kind != logchan.MsgAck || m.Ack.Offset != 30 || m.Ack.Received != 40 || m.Ack.Executed != 7 {
		t.Fatalf("queued acks: %+v %v, want offset 30, received 40, executed 7", m, err)
	}

	// A failed write stops the connection's writes.
	synctest.Wait()
	peer.Close()
	pc.ackNow(logchan.Ack{Offset: 50})
	synctest.Wait()
	pc.mu.Lock()
	stopped := pc.stopped
	pc.mu.Unlock()
	if !stopped {
		t.Fatal("a failed ack write did not stop the connection's writes")
	}
}
