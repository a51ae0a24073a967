// Package logchan carries a QEMU record/replay event log from the primary
// host to the backup host.
//
// It has three parts:
//
//   - The codec (codec.go) splits the byte stream that a recording QEMU 7.2
//     writes into whole events. Only whole events may cross the log channel
//     and only whole events may be written into the backup's replay FIFO: a
//     replaying QEMU 7.2 that reads a partial event or hits EOF exits
//     (replay/replay-internal.c, "error reading the replay data").
//   - The daemon-to-daemon protocol: the framing and handshake (wire.go)
//     and the messages above it (messages.go): on a log channel, log data
//     with byte offsets, acks, heartbeats and byes; on a control
//     connection, requests and replies and disk seeding. docs/protocol.md
//     gives every byte.
//   - FIFO helpers (fifo.go, feeder.go): creating the named pipes QEMU
//     records into (FIFO A) and replays from (FIFO B), reading FIFO A
//     without being fooled by the EOF a FIFO reports before its writer has
//     connected, and feeding FIFO B without ever letting QEMU see EOF.
//
// Offsets: every offset in this package is a byte offset in the event
// stream, counted from the first byte of the first event. The 12-byte file
// header of a finished log file is not part of the stream (QEMU skips it in
// record mode and, writing into a pipe, never writes it at the start).
package logchan
