package logchan

import (
	"crypto/sha256"
	"encoding/json"
	"strings"
	"testing"
)

func TestSeedBlockSize(t *testing.T) {
	for _, c := range []struct{ size, want int64 }{
		{0, MinSeedBlock}, {10 << 30, 1 << 20}, {16 << 30, 1 << 20}, {16<<30 + 1, 2 << 20},
		{100 << 30, 8 << 20}, {1 << 50, MaxSeedBlock},
	} {
		if got := SeedBlockSize(c.size); got != c.want {
			t.Errorf("SeedBlockSize(%d) = %d, want %d", c.size, got, c.want)
		}
		if c.size < 1<<44 {
			l := BlockList{Exists: true, Size: c.size, BlockSize: SeedBlockSize(c.size)}
			l.Hashes = make([]byte, l.Count()*sha256.Size)
			if err := l.Check(); err != nil {
				t.Errorf("size %d: %v", c.size, err)
			}
		}
	}
}

// A peer's list is checked field by field; the largest one fits in a
// Control frame.
func TestBlockListCheck(t *testing.T) {
	ok := BlockList{Exists: true, Size: 3<<20 + 1, BlockSize: 1 << 20, Hashes: make([]byte, 4*32)}
	if err := ok.Check(); err != nil {
		t.Fatal(err)
	}
	for want, l := range map[string]BlockList{
		"block_size 3145728": {Exists: true, Size: 1, BlockSize: 3 << 20, Hashes: make([]byte, 32)},
		"block_size 4096":    {Exists: true, Size: 1, BlockSize: 4096, Hashes: make([]byte, 32)},
		"negative":           {Exists: true, Size: -1, BlockSize: 1 << 20},
		"expected 128":       {Exists: true, Size: 3<<20 + 1, BlockSize: 1 << 20, Hashes: make([]byte, 3*32)},
		"more than 16384":    {Exists: true, Size: 1 << 40, BlockSize: 1 << 20, Hashes: make([]byte, 32)},
		"does not exist":     {Size: 5, BlockSize: 1 << 20},
	} {
		if err := l.Check(); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%+v: %v, want an error with %q", l, err, want)
		}
	}
	// Sizes only (a file of another size than asked): valid, not listed.
	if l := (BlockList{Exists: true, Size: 1 << 40, BlockSize: 1 << 20}); l.Check() != nil || l.Listed() {
		t.Fatal("a list without hashes")
	}
	if l := (BlockList{Exists: true, Size: 1<<63 - 1, BlockSize: MaxSeedBlock}); l.Count() != 1<<33 {
		t.Fatalf("Count near the int64 limit: %d", l.Count())
	}
	big := BlockList{Exists: true, Size: MaxSeedBlocks << 20, BlockSize: 1 << 20, Hashes: make([]byte, MaxSeedBlocks*32)}
	req, err := json.Marshal(ControlRequest{Op: OpSeed, Path: "/var/lib/libvirt/images/" + strings.Repeat("x", 200), Blocks: &big})
	if err != nil || len(req) > MaxControlBytes {
		t.Fatalf("the largest list takes %d bytes, more than a Control frame's %d (%v)", len(req), MaxControlBytes, err)
	}
	if !(BlockList{Exists: true, Size: 5, BlockSize: 1 << 20, Hashes: ZeroBlockHash(5)}).Zero(0) {
		t.Fatal("ZeroBlockHash")
	}
}
