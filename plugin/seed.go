package plugin

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/libvirt-ft/libvirt-ft/logchan"
)

// hashFile returns path's size and SHA-256. A missing file is not an error
// (Exists false).
func hashFile(path string) (logchan.FileDigest, error) {
	f, err := os.Open(path)
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
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
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

// commit verifies and renames the copy into place.
func (s *seedWriter) commit() error {
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
	if err := os.Chmod(s.tmp.Name(), 0o600); err != nil {
		return err
	}
	return os.Rename(s.tmp.Name(), s.path)
}

func (s *seedWriter) abort() {
	s.tmp.Close()
	os.Remove(s.tmp.Name())
}
