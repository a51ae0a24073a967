package main

import (
	"bytes"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
)

// SectorSize is the size of one disk record in bytes: the guest's disk
// writer (test/guest/rootfs/bin/ft-diskwriter) puts record seq N at sector N.
const SectorSize = 512

// recordMagic starts every record line.
const recordMagic = "FTREC1"

// errEmpty reports an all-zero sector: the end of the records.
var errEmpty = errors.New("diskcheck: empty sector")

// Record is one parsed disk record.
type Record struct {
	// Seq is the record's sequence number; it equals its sector index.
	Seq uint64
	// Line is the record's text without the trailing newline.
	Line string
}

// ParseSector parses one 512-byte sector. A record is a single ASCII line
//
//	FTREC1 <seq> up=<uptime> data=<hex> md5=<32 hex digits>
//
// ended by '\n' and padded with NUL bytes to the sector size; the md5 covers
// every byte before " md5=". It returns errEmpty for an all-zero sector.
func ParseSector(sec []byte) (Record, error) {
	if len(sec) != SectorSize {
		return Record{}, fmt.Errorf("diskcheck: sector is %d bytes, want %d", len(sec), SectorSize)
	}
	if isZero(sec) {
		return Record{}, errEmpty
	}
	nl := bytes.IndexByte(sec, '\n')
	if nl < 0 {
		return Record{}, errors.New("diskcheck: no newline in sector")
	}
	if !isZero(sec[nl+1:]) {
		return Record{}, errors.New("diskcheck: garbage after the record line")
	}
	line := string(sec[:nl])
	body, sum, ok := cutLast(line, " md5=")
	if !ok {
		return Record{}, fmt.Errorf("diskcheck: no checksum in %q", line)
	}
	want := md5.Sum([]byte(body))
	if sum != hex.EncodeToString(want[:]) {
		return Record{}, fmt.Errorf("diskcheck: checksum mismatch in %q", line)
	}
	fields := bytes.Fields([]byte(body))
	if len(fields) < 2 || string(fields[0]) != recordMagic {
		return Record{}, fmt.Errorf("diskcheck: bad magic in %q", line)
	}
	seq, err := strconv.ParseUint(string(fields[1]), 10, 64)
	if err != nil {
		return Record{}, fmt.Errorf("diskcheck: bad sequence number in %q", line)
	}
	return Record{Seq: seq, Line: line}, nil
}

// Scan is the result of checking one raw image.
type Scan struct {
	// Records is the number of valid records, seq 0..Records-1.
	Records int
	// Data holds the bytes of those records (Records*SectorSize bytes).
	Data []byte
}

// ScanImage checks a raw image: records contiguous from seq 0 at sector 0,
// each with a valid checksum, up to the first all-zero sector; nothing but
// zeros may follow that sector.
func ScanImage(img []byte) (Scan, error) {
	n := 0
	for off := 0; off+SectorSize <= len(img); off += SectorSize {
		rec, err := ParseSector(img[off : off+SectorSize])
		if errors.Is(err, errEmpty) {
			if !isZero(img[off:]) {
				first := off + bytes.IndexFunc(img[off:], func(r rune) bool { return r != 0 })
				return Scan{Records: n}, fmt.Errorf("diskcheck: data after the end of the records (sector %d empty, non-zero byte at offset %d)", n, first)
			}
			break
		}
		if err != nil {
			return Scan{Records: n}, fmt.Errorf("sector %d: %w", n, err)
		}
		if rec.Seq != uint64(n) {
			return Scan{Records: n}, fmt.Errorf("sector %d: record has seq %d, want %d", n, rec.Seq, n)
		}
		n++
	}
	return Scan{Records: n, Data: img[:n*SectorSize]}, nil
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func cutLast(s, sep string) (before, after string, ok bool) {
	i := bytes.LastIndex([]byte(s), []byte(sep))
	if i < 0 {
		return s, "", false
	}
	return s[:i], s[i+len(sep):], true
}
