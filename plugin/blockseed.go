package plugin

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/libvirt-ft/libvirt-ft/logchan"
)

// Delta seeding (issue 13, item 4; logchan/blocks.go; docs/replay.md §14).
// Each host names its copy of a disk by a BlockList: the SHA-256 of every
// block. Holes are not read (SEEK_DATA): a block that lies in a hole is a
// block of zeros. A BlockList is kept in a blockCache under the file's
// identity (device, inode, size, mtime, ctime: instep.go's statDisk), so a
// copy unchanged since it was last hashed or seeded is not read again. The
// primary sends only the blocks that differ; the backup host builds the
// new copy in a temporary file that starts as a clone of its old copy
// (FICLONE, else a sparse local copy), checks the hash of every block it
// received as it arrives (hashed from the bytes received) and reads back
// every block it did not before the rename: a seed cut short leaves the
// old copy whole, and every hash of the list it caches afterwards was
// taken from the bytes in the file. A file is fsynced before its
// identity is taken for a list it is about to read (a crash must not leave
// an identity that matches older blocks, and SEEK_DATA sees written data).

// DefaultBlockCacheDir keeps the block lists of disk copies this host
// hashed or received (blockCache): they survive a reboot, as the disks do.
const DefaultBlockCacheDir = "/var/lib/libvirt-ft/blocks"

// blockCache keeps BlockLists as <dir>/<sha256 of the path>.json, each
// valid while the file's identity is the one recorded. The zero value
// keeps nothing (every list is computed).
type blockCache struct {
	dir string
	// now is the clock that judges racily clean identities (nil:
	// time.Now; tests move it past file times they cannot set).
	now func() time.Time
}

func (c blockCache) clock() time.Time {
	if c.now != nil {
		return c.now()
	}
	return time.Now()
}

type blockRecord struct {
	Disk      inStepDisk `json:"disk"`
	BlockSize int64      `json:"block_size"`
	Hashes    []byte     `json:"hashes"`
}

func (c blockCache) file(path string) string {
	sum := sha256.Sum256([]byte(filepath.Clean(path)))
	return filepath.Join(c.dir, hex.EncodeToString(sum[:16])+".json")
}

// get returns the cached hashes of path in blocks of bs bytes if the
// record's identity is path's now.
func (c blockCache) get(path string, bs int64) ([]byte, bool) {
	if c.dir == "" {
		return nil, false
	}
	b, err := os.ReadFile(c.file(path))
	if err != nil {
		return nil, false
	}
	var rec blockRecord
	if json.Unmarshal(b, &rec) != nil || rec.BlockSize != bs || rec.Disk.Path != filepath.Clean(path) {
		return nil, false
	}
	now, err := statDisk(path)
	now.Path = rec.Disk.Path
	if err != nil || now != rec.Disk {
		return nil, false
	}
	return rec.Hashes, true
}

// put records hashes as path's block list (blocks of bs bytes) under
// identity id, taken at statAt before the content the hashes describe was
// read. Nothing is recorded if path's identity is no longer id, or if id
// was racily clean when taken (its times within racyWindow of statAt: a
// later write could have left the same times): a record is only ever
// evidence.
func (c blockCache) put(path string, bs int64, hashes []byte, id inStepDisk, statAt time.Time) {
	if c.dir == "" {
		return
	}
	now, err := statDisk(path)
	if err != nil || now != id || racy(id, statAt) {
		return
	}
	id.Path = filepath.Clean(path)
	b, err := json.Marshal(blockRecord{Disk: id, BlockSize: bs, Hashes: hashes})
	if err != nil || os.MkdirAll(c.dir, 0o700) != nil {
		return
	}
	p := c.file(path)
	f, err := os.CreateTemp(c.dir, filepath.Base(p)+".tmp-*")
	if err != nil {
		return
	}
	_, werr := f.Write(b)
	if cerr := f.Close(); werr != nil || cerr != nil || os.Rename(f.Name(), p) != nil {
		os.Remove(f.Name())
	}
}

// forget drops path's record.
func (c blockCache) forget(path string) {
	if c.dir != "" {
		_ = os.Remove(c.file(path))
	}
}

// racy: a file whose times are within racyWindow of now (2 s on a file
// system with whole-second times) may be written again without its times
// changing (instep.go's racyWindow).
func racy(id inStepDisk, now time.Time) bool {
	return now.Sub(time.Unix(0, max(id.CtimeNs, id.MtimeNs))) < racyWindowOf(id)
}

func racyWindowOf(id inStepDisk) time.Duration {
	if id.CtimeNs%1e9 == 0 && id.MtimeNs%1e9 == 0 {
		return 2 * time.Second
	}
	return racyWindow
}

// blockList returns path's BlockList in blocks of bs bytes and the
// identity it describes: from the cache when path is unchanged, else by
// reading it (holes are not read), caching what it read. A missing file is
// not an error (Exists false). With wantSize ≥ 0, a file of another size
// is not read: its list has no hashes (not Listed).
func (c blockCache) blockList(path string, bs, wantSize int64) (logchan.BlockList, inStepDisk, error) {
	id, err := statDisk(path)
	if errors.Is(err, os.ErrNotExist) {
		return logchan.BlockList{BlockSize: bs}, inStepDisk{}, nil
	}
	if err != nil {
		return logchan.BlockList{}, id, err
	}
	l := logchan.BlockList{Exists: true, Size: id.Size, BlockSize: bs}
	if wantSize >= 0 && id.Size != wantSize {
		return l, id, nil
	}
	if n := l.Count(); n > logchan.MaxSeedBlocks {
		return logchan.BlockList{}, id, fmt.Errorf("%s: %d blocks of %d bytes, more than %d", path, n, bs, logchan.MaxSeedBlocks)
	}
	if h, ok := c.get(path, bs); ok && int64(len(h)) == l.Count()*sha256.Size {
		l.Hashes = h
		return l, id, nil
	}
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return logchan.BlockList{}, id, err
	}
	defer f.Close()
	// Data on stable storage before the identity that will vouch for it
	// is taken (and delayed allocation resolved before SEEK_DATA looks);
	// the identity of the file opened (a rename over path since is not
	// it: put then records nothing).
	synced := f.Sync() == nil
	statAt := c.clock()
	if id, err = fileIdentity(f, path); err != nil {
		return logchan.BlockList{}, id, err
	}
	l.Size = id.Size
	if wantSize >= 0 && id.Size != wantSize {
		return l, id, nil
	}
	if n := l.Count(); n > logchan.MaxSeedBlocks {
		return logchan.BlockList{}, id, fmt.Errorf("%s: %d blocks of %d bytes, more than %d", path, n, bs, logchan.MaxSeedBlocks)
	}
	l.Hashes, err = hashBlocks(f, id.Size, bs)
	if err != nil {
		return logchan.BlockList{}, id, fmt.Errorf("hashing %s: %w", path, err)
	}
	if synced {
		c.put(path, bs, l.Hashes, id, statAt)
	}
	return l, id, nil
}

// fileIdentity is statDisk's identity of the open file f, named path.
func fileIdentity(f *os.File, path string) (inStepDisk, error) {
	fi, err := f.Stat()
	if err != nil {
		return inStepDisk{}, err
	}
	return diskIdentity(fi, path)
}

// hashBlocks returns the SHA-256 of each block of bs bytes of f's first
// size bytes, concatenated. A block that lies wholly in a hole (SEEK_DATA
// finds no data before its end) is not read: it hashes as zeros.
func hashBlocks(f *os.File, size, bs int64) ([]byte, error) {
	n := (size + bs - 1) / bs
	out := make([]byte, 0, n*sha256.Size)
	buf := make([]byte, min(bs, 1<<20))
	for i := int64(0); i < n; i++ {
		var err error
		if out, err = hashBlock(out, f, i*bs, min(bs, size-i*bs), buf); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// hashBlock appends the SHA-256 of f's l bytes at off to out, without
// reading them when they lie in a hole.
func hashBlock(out []byte, f *os.File, off, l int64, buf []byte) ([]byte, error) {
	if data, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA); errors.Is(err, unix.ENXIO) || (err == nil && data >= off+l) {
		return append(out, logchan.ZeroBlockHash(l)...), nil
	}
	h := sha256.New()
	if _, err := io.CopyBuffer(h, io.NewSectionReader(f, off, l), buf); err != nil {
		return nil, err
	}
	return h.Sum(out), nil
}

// blockSeedWriter receives a delta seed of path on the backup host
// (logchan.Conn.SeedBlocks): a temporary file beside path starts as a
// clone of path when path has the target's size (else empty and sparse),
// takes the blocks sent, and replaces path only when every block's hash
// is the target's.
type blockSeedWriter struct {
	path  string
	want  logchan.BlockList
	cache blockCache
	tmp   *os.File
	// have: the hash of each block of tmp as it stands; received: the
	// blocks written from Data (their hashes were taken from the bytes).
	have     []byte
	received map[int64]bool
	// cur is the block being received (-1: none), got its bytes so far;
	// last the highest block index announced (blocks come in order).
	cur, got, last int64
	h              hash.Hash
	sent           int64 // data bytes received
}

func newBlockSeedWriter(path string, want logchan.BlockList, cache blockCache) (*blockSeedWriter, error) {
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("seed: path %q is not absolute", path)
	}
	if err := want.Check(); err != nil {
		return nil, fmt.Errorf("seed of %s: %w", path, err)
	}
	if !want.Exists || !want.Listed() {
		return nil, fmt.Errorf("seed of %s: the target does not exist or is not listed block by block", path)
	}
	w := &blockSeedWriter{path: path, want: want, cache: cache, cur: -1, last: -1, h: sha256.New(), received: map[int64]bool{}}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".seed-*")
	if err != nil {
		return nil, err
	}
	w.tmp = tmp
	old, id, err := cache.blockList(path, want.BlockSize, want.Size)
	if err == nil && old.Exists && old.Listed() && old.Size == want.Size {
		err = w.cloneFrom(old, id)
	} else if err == nil {
		w.have = make([]byte, 0, len(want.Hashes))
		for i := int64(0); i < want.Count(); i++ {
			w.have = append(w.have, logchan.ZeroBlockHash(want.Len(i))...)
		}
		err = tmp.Truncate(want.Size)
	}
	if err != nil {
		w.abort()
		return nil, fmt.Errorf("seed of %s: %w", path, err)
	}
	return w, nil
}

// cloneFrom fills tmp with path's content, whose block list old was
// taken at identity id: a reflink (FICLONE) where the file system has
// them, else a copy of its data extents (holes stay holes). path must
// still have identity id after the copy, or the hashes might not describe
// what was copied.
func (w *blockSeedWriter) cloneFrom(old logchan.BlockList, id inStepDisk) error {
	src, err := os.OpenFile(w.path, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer src.Close()
	if unix.IoctlFileClone(int(w.tmp.Fd()), int(src.Fd())) != nil {
		if err := w.tmp.Truncate(0); err != nil {
			return err
		}
		if err := copySparse(w.tmp, src, old.Size); err != nil {
			return err
		}
	}
	if after, err := statDisk(w.path); err != nil || after != id {
		return fmt.Errorf("the backup host's copy changed while it was hashed and copied (%v)", err)
	}
	w.have = bytes.Clone(old.Hashes)
	return nil
}

// copySparse copies src's first size bytes to dst (empty) at the same
// offsets, data extents only (copy_file_range); dst ends size bytes long
// with holes where src has them.
func copySparse(dst, src *os.File, size int64) error {
	if err := dst.Truncate(size); err != nil {
		return err
	}
	sfd, dfd := int(src.Fd()), int(dst.Fd())
	for off := int64(0); off < size; {
		data, err := unix.Seek(sfd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return nil
		}
		if err != nil {
			data = off // no SEEK_DATA: copy everything
		}
		end, err := unix.Seek(sfd, data, unix.SEEK_HOLE)
		if err != nil {
			end = size
		}
		end = min(end, size)
		for data < end {
			roff, woff := data, data
			n, err := unix.CopyFileRange(sfd, &roff, dfd, &woff, int(min(end-data, 1<<30)), 0)
			if errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EXDEV) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) {
				// No copy_file_range here: through user space.
				k, cerr := io.Copy(io.NewOffsetWriter(dst, data), io.NewSectionReader(src, data, end-data))
				if cerr != nil {
					return fmt.Errorf("copying at %d: %w", data, cerr)
				}
				n, err = int(k), nil
			}
			if err != nil {
				return fmt.Errorf("copying at %d: %w", data, err)
			}
			if n == 0 {
				return fmt.Errorf("copying at %d: the file ended early", data)
			}
			data += int64(n)
		}
		off = end
	}
	return nil
}

// block starts block index i (OpSeedBlock, zero false) or writes it as a
// hole (OpSeedZero). Blocks come in ascending order, each once, the
// previous one complete.
func (w *blockSeedWriter) block(off int64, zero bool) error {
	if w.cur >= 0 {
		return fmt.Errorf("seed of %s: block at %d announced before block %d was complete (%d of %d bytes)", w.path, off, w.cur, w.got, w.want.Len(w.cur))
	}
	bs := w.want.BlockSize
	if off < 0 || off%bs != 0 || off >= w.want.Size || off/bs <= w.last {
		return fmt.Errorf("seed of %s: block offset %d is not a new block boundary below %d bytes in ascending order", w.path, off, w.want.Size)
	}
	i := off / bs
	w.last = i
	if !zero {
		w.cur, w.got = i, 0
		w.h.Reset()
		return nil
	}
	if !w.want.Zero(i) {
		return fmt.Errorf("seed of %s: block %d sent as zeros, but its target hash is not", w.path, i)
	}
	if err := punchZero(w.tmp, off, w.want.Len(i)); err != nil {
		return fmt.Errorf("seed of %s: zeroing block %d: %w", w.path, i, err)
	}
	copy(w.have[i*sha256.Size:], w.want.Hash(i))
	return nil
}

// punchZero makes [off, off+n) of f zeros: a hole where the file system
// can punch one, else written zeros.
func punchZero(f *os.File, off, n int64) error {
	if unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n) == nil {
		return nil
	}
	zero := make([]byte, min(n, 1<<20))
	for n > 0 {
		k, err := f.WriteAt(zero[:min(n, int64(len(zero)))], off)
		if err != nil {
			return err
		}
		off, n = off+int64(k), n-int64(k)
	}
	return nil
}

// Write takes Data bytes of the current block; the block's last byte
// checks its hash against the target's.
func (w *blockSeedWriter) Write(p []byte) (int, error) {
	if w.cur < 0 {
		return 0, fmt.Errorf("seed of %s: data outside a block", w.path)
	}
	l := w.want.Len(w.cur)
	if w.got+int64(len(p)) > l {
		return 0, fmt.Errorf("seed of %s: more than block %d's %d bytes", w.path, w.cur, l)
	}
	n, err := w.tmp.WriteAt(p, w.cur*w.want.BlockSize+w.got)
	w.h.Write(p[:n])
	w.got += int64(n)
	w.sent += int64(n)
	if err != nil {
		return n, err
	}
	if w.got == l {
		sum := w.h.Sum(nil)
		if !bytes.Equal(sum, w.want.Hash(w.cur)) {
			return n, fmt.Errorf("seed of %s: block %d has sha256 %x, announced %x", w.path, w.cur, sum, w.want.Hash(w.cur))
		}
		copy(w.have[w.cur*sha256.Size:], sum)
		w.received[w.cur] = true
		w.cur = -1
	}
	return n, nil
}

// commit checks that every block is the target's: the bookkeeping first
// (a block that differed and was not sent is named), then every block not
// received is read back from the new copy (holes unread), so that neither
// the old list nor the clone is taken on trust. Then it syncs the copy,
// renames it into place and records its list in the cache.
func (w *blockSeedWriter) commit(place func(rename func() error) error) error {
	defer os.Remove(w.tmp.Name())
	fail := func(err error) error {
		w.tmp.Close()
		return err
	}
	if w.cur >= 0 {
		return fail(fmt.Errorf("seed of %s: ended in block %d (%d of %d bytes)", w.path, w.cur, w.got, w.want.Len(w.cur)))
	}
	if err := w.tmp.Sync(); err != nil {
		return fail(err)
	}
	buf := make([]byte, min(w.want.BlockSize, 1<<20))
	for i := int64(0); i < w.want.Count(); i++ {
		got := w.have[i*sha256.Size : (i+1)*sha256.Size]
		if !w.received[i] && bytes.Equal(got, w.want.Hash(i)) {
			read, err := hashBlock(nil, w.tmp, i*w.want.BlockSize, w.want.Len(i), buf)
			if err != nil {
				return fail(fmt.Errorf("seed of %s: reading back block %d: %w", w.path, i, err))
			}
			got = read
		}
		if !bytes.Equal(got, w.want.Hash(i)) {
			return fail(fmt.Errorf("seed of %s: block %d (at byte %d) differs from the target and was not sent", w.path, i, i*w.want.BlockSize))
		}
	}
	if fi, err := w.tmp.Stat(); err != nil || fi.Size() != w.want.Size {
		return fail(fmt.Errorf("seed of %s: the copy is not %d bytes (%v)", w.path, w.want.Size, err))
	}
	tmpID, err := fileIdentity(w.tmp, w.tmp.Name())
	if err != nil {
		return fail(err)
	}
	if err := w.tmp.Close(); err != nil {
		return err
	}
	if why := qcow2Problem(w.tmp.Name()); why != "" {
		return fmt.Errorf("seed of %s: the copy: %s", w.path, why)
	}
	if err := os.Chmod(w.tmp.Name(), 0o600); err != nil {
		return err
	}
	err = place(func() error {
		w.cache.forget(w.path)
		return os.Rename(w.tmp.Name(), w.path)
	})
	if err != nil {
		return err
	}
	if d, err := os.Open(filepath.Dir(w.path)); err == nil {
		if err := d.Sync(); err != nil {
			d.Close()
			return fmt.Errorf("seed of %s: syncing its directory: %w", w.path, err)
		}
		d.Close()
	}
	// Cache the list just read back, under the identity of the file
	// renamed here (not another seed's), once its times are not racy.
	id, err := statDisk(w.path)
	if err != nil || id.Dev != tmpID.Dev || id.Ino != tmpID.Ino {
		return nil
	}
	if racy(id, w.cache.clock()) {
		time.Sleep(2 * racyWindowOf(id))
	}
	statAt := w.cache.clock()
	if now, err := statDisk(w.path); err == nil && now == id {
		w.cache.put(w.path, w.want.BlockSize, w.want.Hashes, id, statAt)
	}
	return nil
}

func (w *blockSeedWriter) abort() {
	w.tmp.Close()
	os.Remove(w.tmp.Name())
}
