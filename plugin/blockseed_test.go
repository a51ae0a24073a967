package plugin

import (
	"bytes"
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/libvirt-ft/libvirt-ft/logchan"
	ftxml "github.com/libvirt-ft/libvirt-ft/xml"
)

const mib = 1 << 20

// testCache is a block cache whose clock runs a second ahead, so that a
// file written by the test is not racily clean when hashed.
func testCache(t *testing.T) blockCache {
	return blockCache{dir: t.TempDir(), now: func() time.Time { return time.Now().Add(time.Second) }}
}

// sparseDisk writes a size-byte file at path, a hole but for random data
// in the blocks of 1 MiB listed in data; it returns the content.
func sparseDisk(t *testing.T, path string, size int64, seed uint64, data ...int64) []byte {
	t.Helper()
	content := make([]byte, size)
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(seed, 1))
	for _, i := range data {
		b := content[i*mib : min((i+1)*mib, size)]
		for j := range b {
			b[j] = byte(r.Uint32())
		}
		if _, err := f.WriteAt(b, i*mib); err != nil {
			t.Fatal(err)
		}
	}
	return content
}

func naiveHashes(content []byte, bs int64) []byte {
	var out []byte
	for off := int64(0); off < int64(len(content)); off += bs {
		sum := sha256.Sum256(content[off:min(off+bs, int64(len(content)))])
		out = append(out, sum[:]...)
	}
	return out
}

// Block lists: holes hash as zeros without being read, the same as
// reading them; an unchanged file comes from the cache, a written one is
// hashed again.
func TestBlockList(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "disk.raw")
	content := sparseDisk(t, path, 5*mib+3, 1, 1, 5)
	c := testCache(t)
	l, _, err := c.blockList(path, mib, -1)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Check(); err != nil || !l.Exists || l.Size != 5*mib+3 || l.Count() != 6 {
		t.Fatalf("list %+v: %v", l, err)
	}
	if !bytes.Equal(l.Hashes, naiveHashes(content, mib)) {
		t.Fatal("block hashes differ from hashing every byte")
	}
	if !l.Zero(0) || l.Zero(1) || !l.Zero(4) || l.Zero(5) {
		t.Fatal("zero blocks misjudged")
	}
	if _, ok := c.get(path, mib); !ok {
		t.Fatal("the list was not cached")
	}
	if _, ok := c.get(path, 2*mib); ok {
		t.Fatal("a list of another block size served from the cache")
	}
	// A write changes the identity: the cached list no longer serves.
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{1}, 3*mib); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if _, ok := c.get(path, mib); ok {
		t.Fatal("a cached list served after a write")
	}
	content[3*mib] = 1
	if l, _, err = c.blockList(path, mib, -1); err != nil || !bytes.Equal(l.Hashes, naiveHashes(content, mib)) {
		t.Fatalf("list after a write: %v", err)
	}
	// Asked about another size, the file is not read: no hashes.
	if l, _, err := c.blockList(path, mib, 3*mib); err != nil || !l.Exists || l.Listed() || l.Size != 5*mib+3 {
		t.Fatalf("list for another size: %+v %v", l, err)
	}
	// A missing file has an empty list; a racily clean one is not cached.
	if l, _, err := c.blockList(filepath.Join(dir, "none"), mib, -1); err != nil || l.Exists || l.Check() != nil {
		t.Fatalf("missing file: %+v %v", l, err)
	}
	// (The clock reads 10 ms after the file's last change, whatever the
	// machine's load.)
	sparseDisk(t, path, 2*mib, 2, 0)
	if err := syncFile(path); err != nil {
		t.Fatal(err)
	}
	id, err := statDisk(path)
	if err != nil {
		t.Fatal(err)
	}
	changed := time.Unix(0, max(id.CtimeNs, id.MtimeNs))
	rc := blockCache{dir: t.TempDir(), now: func() time.Time { return changed.Add(10 * time.Millisecond) }}
	if _, _, err := rc.blockList(path, mib, -1); err != nil {
		t.Fatal(err)
	}
	if _, ok := rc.get(path, mib); ok {
		t.Fatal("a file written just now was cached (racily clean)")
	}
}

// seedPair runs a backup host's control server (the real one, with its
// seed policy) and returns a primary run and a control connection to it
// that offers delta seeds.
func seedPair(t *testing.T, images string, cache blockCache) (*primaryRun, *peerConn, *Daemon) {
	t.Helper()
	hv := quietHV()
	log := logrus.New()
	log.SetOutput(io.Discard)
	d := newDaemon(Config{SeedDirs: []string{images}}, log, hv, nil)
	d.blocks = cache
	a, b := net.Pipe()
	done := make(chan struct{})
	go func() { d.serveControlConn(newPeerConn(b), runUUID); close(done) }()
	t.Cleanup(func() { a.Close(); <-done })
	p := newPrimaryRun(env{log: log, blocks: testCache(t)}, runUUID, "web", ftxml.Config{PeerAddress: "10.0.0.2", PeerPort: 7480})
	ctrl := newPeerConn(a)
	ctrl.peer = logchan.Hello{Features: []string{logchan.FeatureBlockSeed}}
	return p, ctrl, d
}

func allocated(t *testing.T, path string) int64 {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// A first seed sends the data blocks only and leaves holes; a second,
// after a write on the primary, sends the changed block only; a third
// finds the copies identical from both caches. No temporary file stays.
func TestDeltaSeed(t *testing.T) {
	primaryDir, images := t.TempDir(), t.TempDir()
	src := filepath.Join(primaryDir, "web.raw")
	dst := filepath.Join(images, "web.raw")
	content := sparseDisk(t, src, 32*mib+5, 3, 0, 7, 8, 30, 32)
	cache := testCache(t)
	p, ctrl, _ := seedPair(t, images, cache)
	var sent []int64
	seed := func() {
		t.Helper()
		p.seeding = nil
		if err := p.seedBlocksFrom(ctrl, src, dst); err != nil {
			t.Fatal(err)
		}
		if got, err := os.ReadFile(dst); err != nil || !bytes.Equal(got, content) {
			t.Fatalf("the backup's copy differs (%v)", err)
		}
		if p.seeding != nil {
			sent = append(sent, p.seeding.TotalBytes)
		} else {
			sent = append(sent, 0)
		}
		if ents, _ := os.ReadDir(images); len(ents) != 1 {
			t.Fatalf("files left on the backup host: %v", ents)
		}
	}
	seed()
	if sent[0] != 4*mib+5 {
		t.Fatalf("first seed sent %d bytes, want the 4 data blocks and the 5-byte tail", sent[0])
	}
	if a := allocated(t, dst); a > 8*mib {
		t.Fatalf("the first copy takes %d bytes on disk: holes were filled", a)
	}
	// The primary writes 2 bytes in block 20 and zeros over block 7.
	f, err := os.OpenFile(src, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte{9, 9}, 20*mib+100)
	f.WriteAt(make([]byte, mib), 7*mib)
	f.Close()
	content[20*mib+100], content[20*mib+101] = 9, 9
	clear(content[7*mib : 8*mib])
	seed()
	if sent[1] != mib {
		t.Fatalf("second seed sent %d bytes, want one block", sent[1])
	}
	seed()
	if sent[2] != 0 {
		t.Fatalf("third seed sent %d bytes, want none", sent[2])
	}
	// A backup copy of another size is replaced by a new one.
	if err := os.Truncate(dst, 3*mib); err != nil {
		t.Fatal(err)
	}
	seed()
	if sent[3] != 4*mib+5 {
		t.Fatalf("seed over a shorter copy sent %d bytes", sent[3])
	}
}

// Refusals by the backup host's writer: a block whose bytes do not hash
// to the target's, a block out of order, zeros for a block that is not,
// and an end with a block missing. Each leaves the old copy untouched and
// no temporary file.
func TestBlockSeedWriterRefusals(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "web.raw")
	old := sparseDisk(t, path, 4*mib, 4, 0, 1)
	srcDir := t.TempDir()
	newer := sparseDisk(t, filepath.Join(srcDir, "n"), 4*mib, 5, 1, 2)
	cache := testCache(t)
	want := logchan.BlockList{Exists: true, Size: 4 * mib, BlockSize: mib, Hashes: naiveHashes(newer, mib)}
	for name, c := range map[string]struct {
		steps func(w *blockSeedWriter) error
		want  string
	}{
		"bad bytes": {func(w *blockSeedWriter) error {
			if err := w.block(mib, false); err != nil {
				return err
			}
			_, err := w.Write(old[mib : 2*mib])
			return err
		}, "announced"},
		"out of order": {func(w *blockSeedWriter) error {
			if err := w.block(2*mib, false); err != nil {
				return err
			}
			if _, err := w.Write(newer[2*mib : 3*mib]); err != nil {
				return err
			}
			return w.block(mib, false)
		}, "ascending"},
		"not zeros": {func(w *blockSeedWriter) error { return w.block(mib, true) }, "not"},
		"missing block": {func(w *blockSeedWriter) error {
			if err := w.block(0, true); err != nil {
				return err
			}
			return w.commit(placeNow)
		}, "block 1 (at byte 1048576) differs"},
		"too much data": {func(w *blockSeedWriter) error {
			if err := w.block(3*mib, false); err != nil {
				return err
			}
			_, err := w.Write(make([]byte, mib+1))
			return err
		}, "more than block 3"},
		"unaligned": {func(w *blockSeedWriter) error { return w.block(mib+1, false) }, "boundary"},
	} {
		t.Run(name, func(t *testing.T) {
			w, err := newBlockSeedWriter(path, want, cache)
			if err != nil {
				t.Fatal(err)
			}
			err = c.steps(w)
			w.abort()
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error with %q", err, c.want)
			}
			if got, _ := os.ReadFile(path); !bytes.Equal(got, old) {
				t.Fatal("the old copy changed")
			}
			if ents, _ := os.ReadDir(dir); len(ents) != 1 {
				t.Fatalf("files left: %v", ents)
			}
		})
	}
	if _, err := newBlockSeedWriter(path, logchan.BlockList{Exists: true, Size: 4 * mib, BlockSize: 3 * mib}, cache); err == nil || !strings.Contains(err.Error(), "block_size") {
		t.Fatalf("a bad block size: %v", err)
	}
}

// A malformed delta seed is refused with the field named and the backup's
// daemon carries on (a writer that failed to start is not aborted as nil);
// a second seed of a path under way elsewhere is refused.
func TestDeltaSeedRefusals(t *testing.T) {
	images := t.TempDir()
	path := filepath.Join(images, "web.raw")
	cache := testCache(t)
	_, ctrl, _ := seedPair(t, images, cache)
	bad := logchan.BlockList{Exists: true, Size: 1, BlockSize: 4096, Hashes: make([]byte, 32)}
	err := ctrl.request(logchan.ControlRequest{Op: logchan.OpSeed, Path: path, Blocks: &bad}, nil)
	if err == nil || !strings.Contains(err.Error(), "block_size") {
		t.Fatalf("a bad block size: %v", err)
	}
	_, ctrl, _ = seedPair(t, images, cache)
	gone := logchan.BlockList{BlockSize: mib}
	if err := ctrl.request(logchan.ControlRequest{Op: logchan.OpSeed, Path: path, Blocks: &gone}, nil); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("a target that does not exist: %v", err)
	}
	// Two connections to one daemon: the second seed of the path waits
	// for nothing, it is refused.
	_, first, d := seedPair(t, images, cache)
	content := sparseDisk(t, filepath.Join(t.TempDir(), "src"), 2*mib, 7, 0, 1)
	want := logchan.BlockList{Exists: true, Size: 2 * mib, BlockSize: mib, Hashes: naiveHashes(content, mib)}
	if err := first.request(logchan.ControlRequest{Op: logchan.OpSeed, Path: path, Blocks: &want}, nil); err != nil {
		t.Fatal(err)
	}
	a, b := net.Pipe()
	done := make(chan struct{})
	go func() { d.serveControlConn(newPeerConn(b), runUUID); close(done) }()
	other := newPeerConn(a)
	err = other.request(logchan.ControlRequest{Op: logchan.OpSeed, Path: path, Blocks: &want}, nil)
	a.Close()
	<-done
	if err == nil || !strings.Contains(err.Error(), "under way") {
		t.Fatalf("a second seed of the same path: %v", err)
	}
}

// The backup host does not take its cached list of the old copy on trust:
// a stale record that says a block matches when it does not fails the
// seed at the read-back, and the old copy stays.
func TestDeltaSeedReadsBack(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "web.raw")
	old := sparseDisk(t, path, 3*mib, 8, 0, 1, 2)
	newer := bytes.Clone(old)
	newer[mib+5] ^= 0xff
	want := logchan.BlockList{Exists: true, Size: 3 * mib, BlockSize: mib, Hashes: naiveHashes(newer, mib)}
	cache := testCache(t)
	id, err := statDisk(path)
	if err != nil {
		t.Fatal(err)
	}
	cache.put(path, mib, want.Hashes, id, time.Now().Add(time.Second)) // a lie: block 1 differs
	w, err := newBlockSeedWriter(path, want, cache)
	if err != nil {
		t.Fatal(err)
	}
	err = w.commit(placeNow)
	if err == nil || !strings.Contains(err.Error(), "block 1 ") {
		t.Fatalf("commit with a stale list: %v, want block 1 named", err)
	}
	if got, _ := os.ReadFile(path); !bytes.Equal(got, old) {
		t.Fatal("the old copy changed")
	}
}

// The backup host may take longer than a write's deadline to get ready for
// a delta seed (a local copy of its old copy); the blocks must still go.
func TestDeltaSeedAfterSlowReady(t *testing.T) {
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	content := sparseDisk(t, src, 3*mib, 9, 0, 2)
	synctest.Test(t, func(t *testing.T) {
		a, b := net.Pipe()
		defer a.Close()
		defer b.Close()
		done := make(chan error, 1)
		go func() { // the backup's daemon, slow to get ready
			sc := logchan.NewConn(b)
			var w *blockSeedWriter
			for {
				req, data, err := sc.RecvControl()
				if err != nil {
					done <- err
					return
				}
				switch {
				case data != nil:
					if _, err := w.Write(data); err != nil {
						done <- err
						return
					}
				case req.Op == logchan.OpBlocks:
					_ = sc.Reply(logchan.BlockList{BlockSize: req.Blocks.BlockSize}, nil)
				case req.Op == logchan.OpSeed:
					time.Sleep(2*writeTimeout + time.Second)
					w, err = newBlockSeedWriter(dst, *req.Blocks, blockCache{})
					_ = sc.Reply(nil, err)
				case req.Op == logchan.OpSeedBlock, req.Op == logchan.OpSeedZero:
					if err := w.block(req.Offset, req.Op == logchan.OpSeedZero); err != nil {
						done <- err
						return
					}
				case req.Op == logchan.OpSeedEnd:
					err := w.commit(placeNow)
					_ = sc.Reply(nil, err)
					done <- err
					return
				}
			}
		}()
		ctrl := newPeerConn(a)
		bs := int64(mib)
		local, _, err := blockCache{}.blockList(src, bs, -1)
		if err != nil {
			t.Fatal(err)
		}
		if err := ctrl.seedBlocks(src, dst, local, []int64{0, 2}, 2*mib, func(int64, int64) {}); err != nil {
			t.Fatalf("seeding after a slow ready: %v", err)
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	})
	if got, err := os.ReadFile(dst); err != nil || !bytes.Equal(got, content) {
		t.Fatalf("the copy differs (%v)", err)
	}
}

// A seed is checked again when it ends: a domain that began to run here
// (or a backup armed on another connection) since the seed began does not
// get the copy after its own checks.
func TestSeedCheckedAgainAtEnd(t *testing.T) {
	images := t.TempDir()
	path := filepath.Join(images, "web.raw")
	_, ctrl, d := seedPair(t, images, testCache(t))
	content := sparseDisk(t, filepath.Join(t.TempDir(), "src"), mib, 10, 0)
	want := logchan.BlockList{Exists: true, Size: mib, BlockSize: mib, Hashes: naiveHashes(content, mib)}
	if err := ctrl.request(logchan.ControlRequest{Op: logchan.OpSeed, Path: path, Blocks: &want}, nil); err != nil {
		t.Fatal(err)
	}
	hv := d.hv.(*fakeHV)
	hv.mu.Lock()
	if hv.doms == nil {
		hv.doms = map[string]*fakeQEMU{}
	}
	hv.doms[runUUID] = &fakeQEMU{}
	hv.mu.Unlock()
	if err := ctrl.c.WriteControl(logchan.ControlRequest{Op: logchan.OpSeedBlock, Offset: 0}); err != nil {
		t.Fatal(err)
	}
	if err := ctrl.c.WriteData(content); err != nil {
		t.Fatal(err)
	}
	err := ctrl.request(logchan.ControlRequest{Op: logchan.OpSeedEnd, Path: path}, nil)
	if err == nil || !strings.Contains(err.Error(), "does not accept the copy") {
		t.Fatalf("a seed ending after its domain started here: %v", err)
	}
	if ents, _ := os.ReadDir(images); len(ents) != 0 {
		t.Fatalf("files left: %v", ents)
	}
}

// placeNow moves a seed's copy into place without the daemon's checks.
func placeNow(rename func() error) error { return rename() }

// quietHV is a fake hypervisor whose events go nowhere.
func quietHV() *fakeHV {
	hv := &fakeHV{pipes: &memPipes{}}
	hv.event = func(LifecycleEvent) {}
	return hv
}

// otherDomainXML is the test domain renamed name with UUID uuid, and with
// disk as its disk when disk is not "".
func otherDomainXML(t *testing.T, uuid, name, disk string) string {
	x := strings.Replace(strings.Replace(runDomainXML(t.TempDir()), runUUID, uuid, 1), "<name>web</name>", "<name>"+name+"</name>", 1)
	if disk != "" {
		x = strings.Replace(x, "<controller type='pci'", "<disk type='file' device='disk'><source file='"+disk+"'/><target dev='vda' bus='virtio'/></disk><controller type='pci'", 1)
	}
	return x
}

// A backup armed here (not yet defined in libvirt) keeps its disks from a
// seed on a connection that names another domain.
func TestSeedRefusedOverArmedBackupsDisk(t *testing.T) {
	images := t.TempDir()
	disk := filepath.Join(images, "db.qcow2")
	if err := os.WriteFile(disk, []byte("db"), 0o600); err != nil {
		t.Fatal(err)
	}
	hv := quietHV()
	d := newDaemon(Config{SeedDirs: []string{images}}, logrus.New(), hv, nil)
	d.entry("0e2b6d1c-1111-4222-8333-944455556666", "db").setRun(&backupRun{disks: []string{disk}, files: []string{disk}, stop: make(chan struct{})})
	if got := d.seedProblem(runUUID, "10.0.0.1", disk, 1); !strings.Contains(got, `domain "db"'s backup run`) {
		t.Fatalf("seeding an armed backup's disk under another UUID: %q", got)
	}
	if got := d.seedProblem(runUUID, "10.0.0.1", filepath.Join(images, "web.qcow2"), 1); got != "" {
		t.Fatalf("seeding a disk of no run: %q", got)
	}
}

// An armed backup's CD-ROM and kernel are kept from seeds too, and so are
// the boot files of domains libvirt knows; a seed's temporary name is not
// a target.
func TestSeedRefusedOverArmedBackupsFiles(t *testing.T) {
	images := t.TempDir()
	iso, kernel := filepath.Join(images, "debian.iso"), filepath.Join(images, "vmlinuz")
	hv := quietHV()
	d := newDaemon(Config{SeedDirs: []string{images}}, logrus.New(), hv, nil)
	d.entry("0e2b6d1c-1111-4222-8333-944455556666", "db").setRun(&backupRun{files: []string{iso, kernel}, stop: make(chan struct{})})
	for _, p := range []string{iso, kernel} {
		if got := d.seedProblem(runUUID, "10.0.0.1", p, 1); !strings.Contains(got, `domain "db"'s backup run`) {
			t.Errorf("seeding %s of an armed backup: %q", p, got)
		}
	}
	other := strings.Replace(otherDomainXML(t, "0e2b6d1c-2222-4222-8333-944455556666", "mail", ""), "/var/lib/libvirt/boot/web-vmlinuz", filepath.Join(images, "mail-vmlinuz"), 1)
	if err := hv.Define(other); err != nil {
		t.Fatal(err)
	}
	if got := d.seedProblem(runUUID, "10.0.0.1", filepath.Join(images, "mail-vmlinuz"), 1); !strings.Contains(got, `domain "mail"`) {
		t.Errorf("seeding another domain's kernel: %q", got)
	}
	if got := d.seedProblem(runUUID, "10.0.0.1", filepath.Join(images, ".web.qcow2.seed-123"), 1); !strings.Contains(got, "temporary copy") {
		t.Errorf("seeding a seed's temporary name: %q", got)
	}
}
