package logchan

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sync"
)

// Delta seeding (issue 13, item 4; docs/protocol.md "Seeding"). A disk is
// cut into blocks of BlockSize bytes (the last may be shorter) and each
// block is named by its SHA-256. The primary's daemon asks the backup
// host for the BlockList of its copy (OpBlocks), compares it with its own,
// and sends only the blocks that differ: an OpSeed carrying the BlockList
// the copy must end with, then per differing block an OpSeedBlock and the
// block's bytes as Data frames, or an OpSeedZero for a block of zeros, and
// OpSeedEnd. The backup host builds the new copy beside the old one and
// moves it into place only when every block's hash matches.

// FeatureBlockSeed (Hello.Features): the server answers OpBlocks and takes
// a delta seed (OpSeed with Blocks, OpSeedBlock, OpSeedZero).
const FeatureBlockSeed = "block-seed"

// Block sizes of a delta seed, in bytes: at least MinSeedBlock, at most
// MaxSeedBlock, a power of two, and large enough that a disk has at most
// MaxSeedBlocks blocks (so a BlockList fits in one control frame:
// MaxSeedBlocks × 32 bytes, base64 in JSON, is 683 KiB of
// MaxControlBytes' 1 MiB).
const (
	MinSeedBlock  = 1 << 20
	MaxSeedBlock  = 1 << 30
	MaxSeedBlocks = 1 << 14
)

// SeedBlockSize is the block size a delta seed of a file of size bytes
// uses: the least power of two ≥ MinSeedBlock that cuts it into at most
// MaxSeedBlocks blocks (1 MiB up to a 16 GiB disk, 8 MiB at 100 GiB). It returns
// MaxSeedBlock for a file too large for any (BlockList.Check refuses it).
func SeedBlockSize(size int64) int64 {
	bs := int64(MinSeedBlock)
	for bs < MaxSeedBlock && (size/bs+min(size%bs, 1)) > MaxSeedBlocks {
		bs <<= 1
	}
	return bs
}

// BlockList describes a file as blocks for a delta seed: whether it
// exists, its size and block size in bytes, and the SHA-256 of each block,
// in order, 32 bytes each (Hashes; base64 in JSON). An OpBlocks answer for
// a file of another size than the one asked about has no Hashes (the file
// was not read: it cannot be a base for a delta); Listed tells.
type BlockList struct {
	Exists    bool   `json:"exists"`
	Size      int64  `json:"size"`
	BlockSize int64  `json:"block_size"`
	Hashes    []byte `json:"hashes,omitempty"`
}

// Count is the number of blocks: Size / BlockSize rounded up.
func (b BlockList) Count() int64 {
	if b.BlockSize <= 0 || b.Size <= 0 {
		return 0
	}
	n := b.Size / b.BlockSize
	if b.Size%b.BlockSize != 0 {
		n++
	}
	return n
}

// Len is the length in bytes of block i (BlockSize but for the last).
func (b BlockList) Len(i int64) int64 {
	return min(b.BlockSize, b.Size-i*b.BlockSize)
}

// Hash is block i's SHA-256 (32 bytes, shared with Hashes).
func (b BlockList) Hash(i int64) []byte { return b.Hashes[i*sha256.Size : (i+1)*sha256.Size] }

// Zero reports whether block i holds only zeros (by its hash).
func (b BlockList) Zero(i int64) bool { return string(b.Hash(i)) == string(ZeroBlockHash(b.Len(i))) }

// Listed reports whether Hashes holds every block's hash.
func (b BlockList) Listed() bool { return int64(len(b.Hashes)) == b.Count()*sha256.Size }

// Check returns an error naming the field that is wrong: a BlockSize that
// is not a power of two within [MinSeedBlock, MaxSeedBlock], a negative
// Size, or Hashes neither empty (not listed) nor 32 bytes per block; more
// than MaxSeedBlocks blocks when listed. A list that does not exist must
// be empty.
func (b BlockList) Check() error {
	if b.BlockSize < MinSeedBlock || b.BlockSize > MaxSeedBlock || b.BlockSize&(b.BlockSize-1) != 0 {
		return fmt.Errorf("block list: block_size %d is not a power of two between %d and %d bytes", b.BlockSize, MinSeedBlock, MaxSeedBlock)
	}
	if b.Size < 0 {
		return fmt.Errorf("block list: size %d is negative", b.Size)
	}
	if !b.Exists && (b.Size != 0 || len(b.Hashes) != 0) {
		return errors.New("block list: a file that does not exist has no size and no hashes")
	}
	if len(b.Hashes) == 0 {
		return nil
	}
	if n := b.Count(); n > MaxSeedBlocks {
		return fmt.Errorf("block list: %d blocks of %d bytes, more than %d: a larger block_size is needed", n, b.BlockSize, MaxSeedBlocks)
	}
	if want := b.Count() * sha256.Size; int64(len(b.Hashes)) != want {
		return fmt.Errorf("block list: hashes hold %d bytes, expected %d (32 per block)", len(b.Hashes), want)
	}
	return nil
}

// Root is a digest of the whole list (size, block size and every block's
// hash), lower-case hex: two copies with the same Root are identical. For
// logs and status, not the wire.
func (b BlockList) Root() string {
	h := sha256.New()
	var hdr [16]byte
	binary.BigEndian.PutUint64(hdr[:8], uint64(b.Size))
	binary.BigEndian.PutUint64(hdr[8:], uint64(b.BlockSize))
	h.Write(hdr[:])
	h.Write(b.Hashes)
	return hex.EncodeToString(h.Sum(nil))
}

var zeroHashes sync.Map // int64 → []byte

// ZeroBlockHash is the SHA-256 of n zero bytes (n ≤ MaxSeedBlock). Only
// powers of two are kept (block sizes): a peer chooses the length of a
// file's last block, and each length it chose would otherwise stay.
func ZeroBlockHash(n int64) []byte {
	pow2 := n > 0 && n&(n-1) == 0
	if pow2 {
		if v, ok := zeroHashes.Load(n); ok {
			return v.([]byte)
		}
	}
	h := sha256.New()
	zero := make([]byte, min(n, 1<<20))
	for left := n; left > 0; left -= int64(len(zero)) {
		h.Write(zero[:min(left, int64(len(zero)))])
	}
	sum := h.Sum(nil)
	if pow2 {
		zeroHashes.Store(n, sum)
	}
	return sum
}

// SeedBlocks sends a delta seed of path (blocks.go's header): OpSeed with
// want (the BlockList the copy must have) and a wait for the server's
// ready reply, then for each block index in send, ascending, an
// OpSeedZero if want says it is zeros, else an OpSeedBlock and the block's
// bytes read from r as Data frames of at most SeedChunk bytes; then
// OpSeedEnd and its reply. progress (may be nil) is called with the data
// bytes sent so far: once the server is ready, and after every block or
// Data frame (a caller with a write deadline renews it there). A refusal comes back as an error with the server's
// message.
func (c *Conn) SeedBlocks(path string, want BlockList, send []int64, r io.ReaderAt, progress func(done int64)) error {
	if err := want.Check(); err != nil {
		return err
	}
	if !want.Exists || !want.Listed() {
		return fmt.Errorf("seed of %s: the target list is not complete", path)
	}
	if err := c.Request(ControlRequest{Op: OpSeed, Path: path, Blocks: &want}, nil); err != nil {
		return err
	}
	// The server may take long to get ready (a local copy of its old
	// copy): progress lets the caller renew its write deadline.
	if progress != nil {
		progress(0)
	}
	buf := make([]byte, min(want.BlockSize, SeedChunk))
	var done int64
	last := int64(-1)
	for _, i := range send {
		if i <= last || i >= want.Count() {
			return fmt.Errorf("seed of %s: block %d out of order or past the end (%d blocks)", path, i, want.Count())
		}
		last = i
		off := i * want.BlockSize
		if want.Zero(i) {
			if err := c.WriteControl(ControlRequest{Op: OpSeedZero, Offset: off}); err != nil {
				return c.refusalOr(err)
			}
			if progress != nil {
				progress(done)
			}
			continue
		}
		if err := c.WriteControl(ControlRequest{Op: OpSeedBlock, Offset: off}); err != nil {
			return c.refusalOr(err)
		}
		for left := want.Len(i); left > 0; {
			n := min(left, int64(len(buf)))
			if _, err := r.ReadAt(buf[:n], off); err != nil {
				return fmt.Errorf("seed of %s: reading %d bytes at %d: %w", path, n, off, err)
			}
			if err := c.WriteData(buf[:n]); err != nil {
				return c.refusalOr(err)
			}
			off += n
			left -= n
			done += n
			if progress != nil {
				progress(done)
			}
		}
	}
	if err := c.WriteControl(ControlRequest{Op: OpSeedEnd, Path: path}); err != nil {
		return c.refusalOr(err)
	}
	return c.readReply(nil)
}
