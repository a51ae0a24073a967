// Command diskcheck verifies the disk records written by the libvirt-ft test
// guest (test/guest/rootfs/bin/ft-diskwriter).
//
//	diskcheck IMAGE...
//
// Each IMAGE is a qcow2 (converted to a temporary raw file with qemu-img) or
// a raw image. For each, the records must run from seq 0 at sector 0 without
// gaps, each with a valid checksum, up to the first empty sector. With two or
// more images the records must also be identical (same count, same bytes).
// Exit status 0 when everything verified, 1 otherwise, 2 on usage errors.
package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: diskcheck IMAGE...")
		os.Exit(2)
	}
	os.Exit(run(os.Args[1:]))
}

func run(images []string) int {
	scans := make([]Scan, len(images))
	failed := false
	for i, img := range images {
		data, err := readImage(img)
		if err != nil {
			fmt.Printf("%s: %v\n", img, err)
			failed = true
			continue
		}
		s, err := ScanImage(data)
		if err != nil {
			fmt.Printf("%s: FAILED after %d valid records: %v\n", img, s.Records, err)
			failed = true
			continue
		}
		scans[i] = s
		fmt.Printf("%s: %d records, all verified\n", img, s.Records)
	}
	if failed {
		return 1
	}
	if len(images) < 2 {
		return 0
	}
	for i := 1; i < len(images); i++ {
		a, b := scans[0], scans[i]
		if a.Records != b.Records {
			fmt.Printf("MISMATCH: %s has %d records, %s has %d\n", images[0], a.Records, images[i], b.Records)
			return 1
		}
		if !bytes.Equal(a.Data, b.Data) {
			for s := 0; s < a.Records; s++ {
				lo, hi := s*SectorSize, (s+1)*SectorSize
				if !bytes.Equal(a.Data[lo:hi], b.Data[lo:hi]) {
					fmt.Printf("MISMATCH: %s and %s differ at record %d\n", images[0], images[i], s)
					return 1
				}
			}
		}
	}
	fmt.Printf("all %d images hold identical records (%d records)\n", len(images), scans[0].Records)
	return 0
}

// readImage returns the raw contents of img, converting qcow2 with qemu-img.
func readImage(img string) ([]byte, error) {
	f, err := os.Open(img)
	if err != nil {
		return nil, err
	}
	magic := make([]byte, 4)
	_, err = f.ReadAt(magic, 0)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("reading header: %w", err)
	}
	if string(magic) != "QFI\xfb" {
		return os.ReadFile(img)
	}
	dir, err := os.MkdirTemp("", "diskcheck-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	raw := filepath.Join(dir, "disk.raw")
	// -U: no lock, so a disk of a running domain can be read too.
	out, err := exec.Command("qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", img, raw).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("qemu-img convert: %v: %s", err, bytes.TrimSpace(out))
	}
	return os.ReadFile(raw)
}
