package plugin

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
	"libvirt.org/go/libvirtxml"

	"github.com/libvirt-ft/libvirt-ft/logchan"
	ftxml "github.com/libvirt-ft/libvirt-ft/xml"
)

// seedProblem says why the backup host will not hash or take a copy of
// path on a control connection for domain uuid (size: the copy's bytes,
// 0 for a hash), or "": the path must be absolute and clean (no "." or
// ".." element, no doubled or trailing slash: the kernel resolves ".."
// after a link, so the checks below would judge another file), lie under
// seed-dirs in a real directory (no symbolic link on the way), be a
// regular file if it exists, not be a disk of another domain libvirt knows
// here, not be in use by a running QEMU of the domain itself, and fit in
// the free space.
func (d *Daemon) seedProblem(uuid, from, path string, size int64) string {
	if !filepath.IsAbs(path) || filepath.Clean(path) != path {
		return fmt.Sprintf("%q is not an absolute path in clean form (%q): refused", path, filepath.Clean(path))
	}
	if b := filepath.Base(path); strings.HasPrefix(b, ".") && strings.Contains(b, ".seed-") {
		return fmt.Sprintf("%s is the name of a seed's temporary copy: refused", path)
	}
	if !d.cfg.seedAllowed(path) {
		return fmt.Sprintf("%s is outside seed-dirs %v: put the disk under one of them, or add its directory to seed-dirs in %s", path, d.cfg.SeedDirs, DefaultConfigPath)
	}
	dir := filepath.Dir(filepath.Clean(path))
	if real, err := filepath.EvalSymlinks(dir); err != nil || real != dir {
		if err != nil {
			return fmt.Sprintf("directory %s: %v; create it on the backup host", dir, err)
		}
		return fmt.Sprintf("%s lies under a symbolic link (%s is %s): refused", path, dir, real)
	}
	if fi, err := os.Lstat(path); err == nil && !fi.Mode().IsRegular() {
		return fmt.Sprintf("%s is not a regular file here (a link or a device): refused", path)
	}
	if other := d.diskOwner(uuid, path, from, true); other != "" {
		return fmt.Sprintf("%s is a disk of domain %q on the backup host: a peer may only write the disks of the domain it protects", path, other)
	}
	if size > 0 {
		// Any run here, of any domain: an armed backup is not defined in
		// libvirt until its first log, and a peer may name another UUID
		// on this connection than the one it armed.
		if owner := d.runFileOwner(path, "", false); owner != "" {
			return fmt.Sprintf("%s is a disk of %s on this host: not replaced under it", path, owner)
		}
		if dm := d.lookup(uuid); dm != nil {
			if r := dm.current(); r != nil && r.active() {
				return fmt.Sprintf("the domain has a %s run on this host: its disks are not replaced under it", r.role())
			}
		}
	}
	if size > 0 {
		if active, err := d.hv.IsActive(uuid); err != nil || active {
			return fmt.Sprintf("the domain runs on the backup host (%v): its disks are not replaced under it", err)
		}
		var st unix.Statfs_t
		if err := unix.Statfs(dir, &st); err == nil {
			if free := int64(st.Bavail) * int64(st.Bsize); size > free {
				return fmt.Sprintf("a copy of %d bytes does not fit in the %d bytes free in %s", size, free, dir)
			}
		}
	}
	return ""
}

// diskOwner returns the name of a domain, defined or running on this host,
// that has path as a disk image (any device: disk, cdrom, floppy) or, with
// withBoot, as a kernel, initrd or DTB; "" if none. The domain uuid itself counts
// too unless its ft element names the requesting host (from) as its peer:
// a domain that went live here after a failover from that host, whose
// disks that host may seed again. (A UUID alone proves nothing: a peer may
// name any domain's.)
func (d *Daemon) diskOwner(uuid, path, from string, withBoot bool) string {
	var defs []DomainDef
	if names, err := d.hv.DomainNames(); err == nil {
		for _, n := range names {
			if def, ok, err := d.hv.Definition(n); err == nil && ok {
				defs = append(defs, def)
			}
		}
	}
	if running, err := d.hv.Running(); err == nil {
		defs = append(defs, running...)
	}
	want := filepath.Clean(path)
	wantKey := placeKey(want)
	for _, def := range defs {
		if def.UUID == uuid {
			if cfg, present, err := ftxml.ParseConfig(def.XML); err == nil && present && cfg.PeerAddress == from {
				continue
			}
		}
		var dom libvirtxml.Domain
		if dom.Unmarshal(def.XML) != nil || dom.Devices == nil {
			continue
		}
		files := domainFiles(&dom)
		if !withBoot {
			files = diskFiles(&dom)
		}
		for _, f := range files {
			if p := filepath.Clean(f); p == want || (wantKey != "" && placeKey(p) == wantKey) {
				return dom.Name
			}
		}
	}
	return ""
}

// diskFiles lists the source of every file-backed disk of dom (disk,
// cdrom, floppy, lun).
func diskFiles(dom *libvirtxml.Domain) []string {
	var out []string
	if dom.Devices != nil {
		for _, disk := range dom.Devices.Disks {
			if disk.Source != nil && disk.Source.File != nil && disk.Source.File.File != "" {
				out = append(out, disk.Source.File.File)
			}
		}
	}
	return out
}

// domainFiles lists the host files dom's QEMU reads or writes that a seed
// could replace: the source of every file-backed disk (disk, cdrom,
// floppy, lun) and the kernel, initrd and DTB.
func domainFiles(dom *libvirtxml.Domain) []string {
	out := diskFiles(dom)
	if o := dom.OS; o != nil {
		for _, f := range []string{o.Kernel, o.Initrd, o.DTB} {
			if f != "" {
				out = append(out, f)
			}
		}
	}
	return out
}

// runFileOwner names the run here, of any domain, one of whose files
// (domainFiles, or with disksOnly its disk images; a primary's disks) is
// path, any spelling: "domain NAME's backup run"; "" if none. Runs of
// domain except are left out.
func (d *Daemon) runFileOwner(path, except string, disksOnly bool) string {
	key := placeKey(filepath.Clean(path))
	for _, dm := range d.domains() {
		if except != "" && dm.uuid == except {
			continue
		}
		r := dm.current()
		if r == nil || !r.active() {
			continue
		}
		var disks []string
		switch r := r.(type) {
		case *backupRun:
			disks = r.files
			if disksOnly {
				disks = r.disks
			}
		case *primaryRun:
			r.mu.Lock()
			disks = slices.Clone(r.disks)
			r.mu.Unlock()
		}
		for _, disk := range disks {
			if filepath.Clean(disk) == filepath.Clean(path) || (key != "" && placeKey(disk) == key) {
				dm.mu.Lock()
				name := dm.name
				dm.mu.Unlock()
				return fmt.Sprintf("domain %q's %s run", name, r.role())
			}
		}
	}
	return ""
}

// placeKey names the file path refers to, whatever its spelling (a link
// in a directory above it, a bind mount): the device and inode of the file
// when it exists, else of its directory, with its name; "" when neither
// can be looked at.
func placeKey(path string) string {
	if fi, err := os.Stat(path); err == nil {
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			return fmt.Sprintf("file %d:%d", st.Dev, st.Ino)
		}
	}
	return dirKey(path)
}

// dirKey names the place of path by its directory's device and inode and
// its name: the same for every spelling, and across a rename over it.
func dirKey(path string) string {
	fi, err := os.Stat(filepath.Dir(path))
	if err != nil {
		return ""
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return ""
	}
	return fmt.Sprintf("dir %d:%d/%s", st.Dev, st.Ino, filepath.Base(path))
}

// hashFile returns path's size and SHA-256. A missing file is not an error
// (Exists false).
func hashFile(path string) (logchan.FileDigest, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if errors.Is(err, os.ErrNotExist) {
		return logchan.FileDigest{}, nil
	}
	if err != nil {
		return logchan.FileDigest{}, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return logchan.FileDigest{}, fmt.Errorf("hashing %s: %w", path, err)
	}
	return logchan.FileDigest{Exists: true, Size: n, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}

// diskSeed is a disk copy being received on a control connection: a
// whole file (seedWriter) or a delta (blockSeedWriter).
type diskSeed interface {
	io.Writer
	// commit checks the copy and moves it into place through place,
	// which runs the move (rename) under the daemon's checks and lock;
	// the seed is over either way.
	commit(place func(rename func() error) error) error
	// abort discards the copy.
	abort()
}

// seedWriter receives a disk copy on the backup host: it writes to a
// temporary file beside path, and only a complete copy whose SHA-256 matches
// replaces path (so a failed copy never leaves a half-written disk).
type seedWriter struct {
	path string
	want logchan.FileDigest
	tmp  *os.File
	h    interface {
		io.Writer
		Sum([]byte) []byte
	}
	n int64
}

func newSeedWriter(path string, want logchan.FileDigest) (*seedWriter, error) {
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("seed: path %q is not absolute", path)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".seed-*")
	if err != nil {
		return nil, err
	}
	return &seedWriter{path: path, want: want, tmp: tmp, h: sha256.New()}, nil
}

func (s *seedWriter) Write(p []byte) (int, error) {
	if s.n+int64(len(p)) > s.want.Size {
		return 0, fmt.Errorf("seed: more data than announced (%d bytes)", s.want.Size)
	}
	n, err := s.tmp.Write(p)
	s.h.Write(p[:n])
	s.n += int64(n)
	return n, err
}

// commit verifies the copy, then renames it into place through place.
func (s *seedWriter) commit(place func(rename func() error) error) error {
	defer os.Remove(s.tmp.Name())
	if err := s.tmp.Sync(); err != nil {
		s.tmp.Close()
		return err
	}
	if err := s.tmp.Close(); err != nil {
		return err
	}
	got := hex.EncodeToString(s.h.Sum(nil))
	if s.n != s.want.Size || got != s.want.SHA256 {
		return fmt.Errorf("seed: copy of %s is %d bytes sha256 %s, expected %d bytes sha256 %s", s.path, s.n, got, s.want.Size, s.want.SHA256)
	}
	if why := qcow2Problem(s.tmp.Name()); why != "" {
		return fmt.Errorf("seed: the copy of %s: %s", s.path, why)
	}
	if err := os.Chmod(s.tmp.Name(), 0o600); err != nil {
		return err
	}
	return place(func() error { return os.Rename(s.tmp.Name(), s.path) })
}

func (s *seedWriter) abort() {
	s.tmp.Close()
	os.Remove(s.tmp.Name())
}
