// Package gate is the output gate of libvirt-ft: on the primary, it holds
// every frame the guest transmits until the backup has acknowledged the log
// up to the point where the frame was produced. This is the output rule of
// Scales et al. 2010, "The Design of a Practical System for Fault-Tolerant
// Virtual Machines", section 2.2: the primary may not send an output to the
// outside world until the backup has received and acknowledged the log
// entries up to that output. As in the paper, only the output is delayed,
// never the guest: the gate always reads the guest's frames promptly and
// holds packets, not the VM.
//
// It has two layers, like failover/:
//
//   - Queue, the pure core: no goroutine, clock or socket. Hold, Ack,
//     Unprotect and Drop take the inputs and return the frames to release;
//     Written frees room under the limit.
//   - Gate, the I/O layer: Serve reads QEMU's OUT socket, tags each frame
//     with a log position, feeds a Queue under a mutex, and one writer
//     goroutine writes released frames to QEMU's IN socket. Ack, Unprotect
//     and Drop come from the daemon's other goroutines. Time is measured
//     here only (hold times in Stats).
//
// # Wiring (primary)
//
// QEMU sends every guest frame through a filter-redirector to the daemon
// and takes back, for the network, what the daemon writes:
//
//	-chardev socket,id=ftout0,path=OUT.sock   (client; no reconnect)
//	-chardev socket,id=ftin0,path=IN.sock
//	-object filter-redirector,id=ftgate0,netdev=hostnet0,queue=rx,outdev=ftout0,indev=ftin0
//
// queue=rx, not tx: a filter on the tap netdev sees the guest's frames in
// the RX direction (net/net.c qemu_sendv_packet_async runs the sender's
// filters as TX and the receiving netdev's filters as RX; QEMU's netfilter
// documentation: "rx: ... packets sent to the netdev"). queue=tx would gate
// the frames coming from the network to the guest and let the guest's
// output through.
//
// The daemon listens on both paths (Listen), accepts one connection on
// each, and runs Serve(outConn, inConn). Ack(pos) for every acknowledgement
// from the backup, Unprotect when the primary goes on alone (failover
// ReportUnprotected), Drop when it must not output any more (failover
// HaltVM, StopPrimaryVM).
//
// Framing on both sockets is QEMU's (net/filter-mirror.c filter_send,
// net/net.c net_fill_rstate, vnet_hdr_support=off): a 4-byte big-endian
// length, then that many bytes of Ethernet frame; 1 to MaxFrameLen (69632,
// NET_BUFSIZE in include/net/net.h) bytes. ReadFrame and WriteFrame.
//
// # Log positions
//
// Every frame is tagged, when its last byte has been read from OUT, with
// Config.Position(): an upper bound, in bytes of the record log stream, of
// the log QEMU had produced when the guest emitted the frame. A later
// value is always safe (a larger tag only waits longer). The backup's
// acknowledgements are positions in the same stream, cumulative: a smaller
// one than already seen is ignored.
//
// # Rules
//
//	Gated (start)  Hold: release at once if nothing is held and acked >= tag,
//	               else hold. Ack(p): release the head run with tag <= p.
//	               Release order = read order, always.
//	Passthrough    (start when Config.Enabled is false, or after Unprotect):
//	               every frame released at once; Ack is a no-op.
//	Dropping       (after Drop; terminal): held, unwritten and new frames are
//	               discarded; Ack and Unprotect are no-ops.
//	Limit          held + released-but-unwritten bytes <= LimitBytes; a new
//	               frame over it is dropped and counted (DroppedOverCap),
//	               like a full NIC queue: the reader never blocks.
//
// Drop's guarantee: once Drop has returned, nothing more is written to IN
// (see Gate.Drop for the one write that may be in progress when it is
// called, and how it is cut short).
//
// # Limits
//
// Frames the gate drops (over the limit, or after Drop) are lost as a full
// NIC queue loses them: TCP retransmits. A frame cut short on IN (Drop or
// the end of Serve during a write) leaves IN inside a frame: the
// connection must not be reused. Once OUT's connection is closed, QEMU
// drops every later guest frame and logs an error for each
// (net/filter-mirror.c filter_redirector_receive_iov consumes the frame
// when filter_send fails; chardev/char-socket.c tcp_chr_write fails with
// EIO while disconnected): safe for the output rule, but the guest loses
// its network, Passthrough included, until QEMU reconnects.
package gate
