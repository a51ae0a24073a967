package main

import (
	"crypto/md5"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
)

// sector builds a record the way the guest's disk writer does.
func sector(seq int, up string) []byte {
	body := fmt.Sprintf("FTREC1 %d up=%s data=%08x", seq, up, seq*7)
	sum := md5.Sum([]byte(body))
	line := body + " md5=" + hex.EncodeToString(sum[:]) + "\n"
	sec := make([]byte, SectorSize)
	copy(sec, line)
	return sec
}

func image(n, total int) []byte {
	img := make([]byte, 0, total*SectorSize)
	for i := 0; i < n; i++ {
		img = append(img, sector(i, fmt.Sprintf("%d.%02d", i, i%100))...)
	}
	return append(img, make([]byte, (total-n)*SectorSize)...)
}

func TestParseSector(t *testing.T) {
	rec, err := ParseSector(sector(42, "3.14"))
	if err != nil {
		t.Fatal(err)
	}
	if rec.Seq != 42 || !strings.HasPrefix(rec.Line, "FTREC1 42 up=3.14 ") {
		t.Fatalf("got %+v", rec)
	}
	if _, err := ParseSector(make([]byte, SectorSize)); err != errEmpty {
		t.Fatalf("zero sector: got %v, want errEmpty", err)
	}
	bad := sector(1, "1.00")
	bad[10] ^= 1 // inside the checksummed body
	if _, err := ParseSector(bad); err == nil || !strings.Contains(err.Error(), "checksum") {
		t.Fatalf("corrupt body: got %v", err)
	}
	trail := sector(1, "1.00")
	trail[SectorSize-1] = 'x'
	if _, err := ParseSector(trail); err == nil {
		t.Fatal("garbage after the line was accepted")
	}
	if _, err := ParseSector(sector(1, "1")[:100]); err == nil {
		t.Fatal("short sector was accepted")
	}
}

func TestScanImage(t *testing.T) {
	s, err := ScanImage(image(5, 16))
	if err != nil || s.Records != 5 || len(s.Data) != 5*SectorSize {
		t.Fatalf("good image: %d records, %v", s.Records, err)
	}
	if s, err := ScanImage(image(0, 4)); err != nil || s.Records != 0 {
		t.Fatalf("empty image: %d records, %v", s.Records, err)
	}
	full := image(4, 4)
	if s, err := ScanImage(full); err != nil || s.Records != 4 {
		t.Fatalf("full image: %d records, %v", s.Records, err)
	}

	gap := image(5, 16)
	copy(gap[7*SectorSize:], sector(7, "7.00"))
	if _, err := ScanImage(gap); err == nil || !strings.Contains(err.Error(), "after the end") {
		t.Fatalf("record after a gap: got %v", err)
	}

	wrongSeq := image(5, 16)
	copy(wrongSeq[2*SectorSize:], sector(3, "2.00"))
	if s, err := ScanImage(wrongSeq); err == nil || s.Records != 2 {
		t.Fatalf("wrong seq: %d records, %v", s.Records, err)
	}

	corrupt := image(5, 16)
	corrupt[3*SectorSize+20] ^= 0x20
	if s, err := ScanImage(corrupt); err == nil || s.Records != 3 {
		t.Fatalf("corrupt record: %d records, %v", s.Records, err)
	}
}
