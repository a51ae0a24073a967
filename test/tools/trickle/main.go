// Command trickle copies a record log into a FIFO much as a backup's FIFO B
// is fed while its primary runs: in chunks of random size, with random
// pauses between them, so that the replaying QEMU keeps catching up with
// what it was given and waits for the next bytes. Harsher than FIFO B in
// two ways: chunks are cut at any byte, so QEMU also waits inside an
// event (libvirt-ftd writes whole events), and the FIFO is closed at the
// end, so QEMU reads EOF there as from a file (FIFO B never gives EOF). A replay of a file never
// waits (its read returns at once); this makes a replay from the file take
// the waiting paths a backup takes, so the
// determinism check (test/e2e/determinism.sh FEED=trickle) covers them.
//
// SRC is a log file as QEMU records it (a 12-byte header: the version
// dword, then 8 bytes). Into the FIFO go the version dword and then the
// events, without the other 8 header bytes, as libvirt-ftd's feeder starts
// FIFO B: replaying QEMU reads the version, and its seek past the rest of
// the header fails on a pipe (docs/replay.md section 5).
//
//	trickle [-seed N] [-max-chunk BYTES] [-max-pause-us US] SRC FIFO
//
// Chunks are 1 to -max-chunk bytes (default 65536), pauses 0 to
// -max-pause-us µs (default 2000), both from a PRNG seeded by -seed
// (default 1), so a failing run can be repeated. Opening FIFO blocks until
// QEMU opens it for reading; its pipe is then set to 256 KiB, FIFO B's
// size (plugin/config.go replayPipeBytes), when the kernel allows. It
// prints "trickle: N bytes written" and exits 0 once the version dword and
// everything after SRC's header were written (N = SRC's size - 8), 1 on a
// read or write error (QEMU closing the FIFO early among them).
package main

import (
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	seed := flag.Uint64("seed", 1, "PRNG seed for the chunk sizes and pauses")
	maxChunk := flag.Int("max-chunk", 64<<10, "largest chunk written at once (bytes)")
	maxPause := flag.Int("max-pause-us", 2000, "longest pause between chunks (µs)")
	flag.Parse()
	if flag.NArg() != 2 || *maxChunk < 1 || *maxPause < 0 {
		fmt.Fprintln(os.Stderr, "usage: trickle [-seed N] [-max-chunk BYTES] [-max-pause-us US] SRC FIFO")
		os.Exit(2)
	}
	n, err := run(flag.Arg(0), flag.Arg(1), *seed, *maxChunk, time.Duration(*maxPause)*time.Microsecond)
	if err != nil {
		fmt.Fprintf(os.Stderr, "trickle: %v (after %d bytes)\n", err, n)
		os.Exit(1)
	}
	fmt.Printf("trickle: %d bytes written\n", n)
}

// headerBytes is the size of a record log file's header, of which the
// first versionBytes are written (replay_enable, QEMU's replay/replay.c).
const (
	headerBytes  = 12
	versionBytes = 4
	// fifoBBytes is FIFO B's pipe size (plugin/config.go replayPipeBytes).
	fifoBBytes = 256 << 10
)

// run copies src into dst (opened for writing, so a FIFO waits for its
// reader): the version dword of src's header, then the events after the
// header in chunks of 1..maxChunk bytes with pauses of 0..maxPause between
// them. It returns the bytes written and the first read or write error; a
// src shorter than the header is an error.
func run(src, dst string, seed uint64, maxChunk int, maxPause time.Duration) (int64, error) {
	in, err := os.Open(src)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY, 0)
	if err != nil {
		return 0, err
	}
	defer out.Close()
	// FIFO B's pipe size; best effort (not a pipe, or not allowed).
	_, _ = unix.FcntlInt(out.Fd(), unix.F_SETPIPE_SZ, fifoBBytes)
	var hdr [headerBytes]byte
	if _, err := io.ReadFull(in, hdr[:]); err != nil {
		return 0, fmt.Errorf("reading the %d-byte log header of %s: %w", headerBytes, src, err)
	}
	if _, err := out.Write(hdr[:versionBytes]); err != nil {
		return 0, err
	}
	total := int64(versionBytes)
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	buf := make([]byte, maxChunk)
	for {
		k, rerr := io.ReadFull(in, buf[:1+rng.IntN(maxChunk)])
		if k > 0 {
			if _, werr := out.Write(buf[:k]); werr != nil {
				return total, werr
			}
			total += int64(k)
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			return total, nil
		}
		if rerr != nil {
			return total, rerr
		}
		if maxPause > 0 {
			time.Sleep(time.Duration(rng.Int64N(int64(maxPause) + 1)))
		}
	}
}
