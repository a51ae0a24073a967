package gate

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

// Frame digests: divergence detection on the output path (issue 13;
// docs/replay.md §10, "Divergence").
//
// A backup whose replay no longer follows its primary (console input, which
// QEMU does not record, is the usual cause) can keep running and even keep
// consuming the log, and would go live as a different machine. Its replayed
// guest transmits the same frames as the primary's, in the same order, as
// long as the two agree; so both gates keep a running digest of every frame
// they read, in order, and the primary's heartbeats carry (frames, digest)
// per interface (logchan.FrameDigests). The backup's gate compares the
// primary's digest at frame n with its own at frame n, whichever of the two
// reaches n first, and reports the first disagreement.
//
// The digest is 64 bits: CRC-32C (Castagnoli) in the high half and CRC-32
// (IEEE) in the low half, each over each frame's length (4 bytes,
// big-endian) and bytes, chained from its half of the previous frame's
// value (hash/crc32.Update). A running checksum, not a cryptographic hash:
// it guards against accidents (the peer is authenticated by TLS), and any
// change to one frame, or a frame more, less or out of order, changes every
// later digest. Both CRCs run on the CPU's own instructions (amd64: SSE4.2
// crc32 and PCLMULQDQ; arm64: its CRC32 instructions): 7.8–8.0 GB/s for a
// 1514-byte frame and 13.4–13.7 GB/s for a 64 KiB one on the lab machine,
// where the CRC-64/ECMA digest it replaces (table-driven; Hello feature
// "frame-digests", until session 48) ran at 1.7–1.8 GB/s and cost each
// daemon about 36 µs per 64 KiB frame of a bulk transmit (BENCHMARKS.md,
// session 49). The Hello feature logchan.FeatureFrameDigests names this
// digest, so that two daemons compare digests only if both compute this one.

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// NextDigest is the running digest after a frame: d is the digest of the
// frames before it (0 before the first).
func NextDigest(d uint64, frame []byte) uint64 {
	var n [4]byte
	binary.BigEndian.PutUint32(n[:], uint32(len(frame)))
	hi := crc32.Update(crc32.Update(uint32(d>>32), castagnoli, n[:]), castagnoli, frame)
	lo := crc32.Update(crc32.Update(uint32(d), crc32.IEEETable, n[:]), crc32.IEEETable, frame)
	return uint64(hi)<<32 | uint64(lo)
}

// Checkpoint is a gate's running digest at a frame: Digest covers frames
// 1..Frames of one interface, numbered from the guest's first (Stats.ReadFrames).
type Checkpoint struct {
	Frames uint64
	Digest uint64
}

// Mismatch is a disagreement between the primary's frames and the backup's
// replayed ones: the digests at Frame differ. The first differing frame is
// in After+1..Frame: After is the last frame at which a digest was compared
// and matched, or the frames an earlier process of the daemon read (a
// planned restart), whichever is later; 0: none.
type Mismatch struct {
	Frame, After uint64
	// Primary and Backup are the two digests at Frame.
	Primary, Backup uint64
}

// String describes the mismatch for the operator.
func (m Mismatch) String() string {
	from := "the guest's first frame"
	if m.After > 0 {
		from = fmt.Sprintf("frame %d (frames up to %d matched)", m.After+1, m.After)
	}
	return fmt.Sprintf("the replayed guest's frames differ from the primary's: digest at frame %d is %016x on the backup, %016x on the primary; the first differing frame is between %s and frame %d",
		m.Frame, m.Backup, m.Primary, from, m.Frame)
}

// VerifyHistory is how many of its latest digests a verifying gate keeps,
// for primary checkpoints that arrive after the replay passed them (a
// backup less than a heartbeat behind). Older checkpoints are skipped
// (Stats.VerifySkipped).
const VerifyHistory = 8192

// maxPending bounds the primary checkpoints a verifying gate keeps while
// its replay has not reached them; over it new ones are skipped.
const maxPending = 256

// verifier is the backup gate's comparison state. Not safe for concurrent
// use: the Gate calls it with its mutex held.
type verifier struct {
	base     uint64                // frames before the first recorded here (Config.FramesBefore)
	ring     [VerifyHistory]uint64 // ring[n % VerifyHistory]: local digest at frame n
	pending  []Checkpoint          // the primary's, beyond the local frames; increasing Frames
	matched  uint64                // last frame compared equal
	checked  uint64                // checkpoints compared
	skipped  uint64                // checkpoints too old (or too many) to compare
	mismatch *Mismatch             // the first disagreement; nothing is compared after it
	stopped  bool                  // stop: nothing is compared any more
	lastPeer uint64                // the primary's latest checkpoint (frames)
}

// settled: every checkpoint of the primary was compared, equal (none
// pending, the latest matched or within the frames read by an earlier
// process), and nothing differed.
func (v *verifier) settled() bool {
	return v.mismatch == nil && !v.stopped && len(v.pending) == 0 && (v.lastPeer <= v.matched || v.lastPeer <= v.base)
}

// maxAhead bounds how far beyond the local frames a checkpoint may be to
// be kept (frames): a backup lags its primary by far less (the lag bound),
// and one absurd checkpoint kept pending would block every later one.
const maxAhead = 1 << 24

// stop ends the comparisons for good (the replay reached END: later frames
// are the live guest's, not replayed ones).
func (v *verifier) stop() {
	v.stopped, v.pending = true, nil
}

// local records the local digest d at frame n (frames arrive in order) and
// compares the pending checkpoint at n, if any. It returns a new mismatch.
func (v *verifier) local(n, d uint64) *Mismatch {
	if v.stopped {
		return nil
	}
	v.ring[n%VerifyHistory] = d
	for len(v.pending) > 0 && v.pending[0].Frames <= n {
		c := v.pending[0]
		v.pending = v.pending[1:]
		if c.Frames < n { // cannot happen: frames come one by one
			v.skipped++
			continue
		}
		if m := v.compare(c, d); m != nil {
			return m
		}
	}
	return nil
}

// peer takes the primary's checkpoint c, with the local side at frame n:
// compared at once if n has reached it (and it is still in the ring),
// else kept until it does. It returns a new mismatch.
func (v *verifier) peer(c Checkpoint, n uint64) *Mismatch {
	v.lastPeer = max(v.lastPeer, c.Frames)
	if v.mismatch != nil || v.stopped || c.Frames == 0 || c.Frames <= v.matched {
		return nil // nothing to compare, or compared equal already
	}
	switch {
	case c.Frames <= v.base:
		v.skipped++ // read by an earlier process: not in the ring
		return nil
	case c.Frames > n && c.Frames-n > maxAhead:
		v.skipped++
		return nil
	case c.Frames > n:
		if len(v.pending) > 0 && c.Frames <= v.pending[len(v.pending)-1].Frames {
			return nil // not newer than one already kept
		}
		if len(v.pending) >= maxPending {
			v.skipped++
			return nil
		}
		v.pending = append(v.pending, c)
		return nil
	case n-c.Frames >= VerifyHistory:
		v.skipped++
		return nil
	default:
		return v.compare(c, v.ring[c.Frames%VerifyHistory])
	}
}

func (v *verifier) compare(c Checkpoint, d uint64) *Mismatch {
	if v.mismatch != nil {
		return nil
	}
	v.checked++
	if c.Digest == d {
		v.matched = max(v.matched, c.Frames)
		return nil
	}
	// Frames up to base were compared (or not) by an earlier process.
	v.mismatch = &Mismatch{Frame: c.Frames, After: max(v.matched, v.base), Primary: c.Digest, Backup: d}
	v.pending = nil
	return v.mismatch
}
