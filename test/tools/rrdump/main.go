// Command rrdump lists the events of a QEMU 7.2 record/replay log stream
// (as read from FIFO A: no header; or a finished log file with -header)
// with their offsets and the icount reached before each, for diagnosing a
// replay that stops short of the log's end.
//
//	rrdump [-header] [-base-offset B -base-icount I] [-summary | -kinds | -find KIND | -find-all KIND | -icount N [-before K] [-after K]] FILE
//
// Without -icount it prints every event; with it, the K events before and
// after the point where the cumulative icount reaches N. A stretch of log
// that libvirt-ftd kept at a replay stall (keep-stall-log) starts inside
// the stream: -base-offset and -base-icount give its first byte's stream
// offset and the icount before it (libvirt-ftd's log and virt-ft status
// print both).
package main

import (
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/libvirt-ft/libvirt-ft/logchan"
)

func main() {
	header := flag.Bool("header", false, "FILE starts with the 12-byte log header")
	at := flag.Uint64("icount", 0, "show the events around this icount (guest instructions)")
	before := flag.Int("before", 20, "events to show before -icount")
	after := flag.Int("after", 20, "events to show after -icount")
	summary := flag.Bool("summary", false, "print only the summary line (events, bytes, the icount at the end)")
	kinds := flag.Bool("kinds", false, "print only a table of events and bytes by kind, then the summary line")
	find := flag.String("find", "", "print only the first event whose kind starts with this (e.g. SHUTDOWN_), then the summary up to it")
	findAll := flag.String("find-all", "", "print every event whose kind starts with this, then the summary")
	baseOff := flag.Uint64("base-offset", 0, "stream offset of FILE's first byte")
	baseIcount := flag.Uint64("base-icount", 0, "icount before FILE's first event")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: rrdump [-header] [-base-offset B -base-icount I] [-icount N] [-before K] [-after K] FILE")
		os.Exit(2)
	}
	data, err := os.ReadFile(flag.Arg(0))
	if err != nil {
		fmt.Fprintln(os.Stderr, "rrdump:", err)
		os.Exit(1)
	}
	if *header {
		if len(data) < logchan.HeaderSize {
			fmt.Fprintln(os.Stderr, "rrdump: shorter than a header")
			os.Exit(1)
		}
		data = data[logchan.HeaderSize:]
	}
	type line struct {
		off, icount uint64
		ev          []byte
	}
	var (
		icount uint64
		ring   []line
		shown  = -1 // events printed after the point; -1: not reached
		events uint64
		byKind = map[string][2]uint64{} // events, bytes
	)
	print := func(l line) {
		n := len(l.ev)
		if n > 24 {
			n = 24
		}
		fmt.Printf("%10d  icount %12d  %-22s %4d B  % x\n", l.off, l.icount, logchan.KindName(l.ev[0]), len(l.ev), l.ev[1:n])
	}
	icount = *baseIcount
	n, err := logchan.WalkEvents(data, *baseOff, func(off uint64, ev []byte, instr uint64) bool {
		events++
		if *kinds {
			k := byKind[logchan.KindName(ev[0])]
			byKind[logchan.KindName(ev[0])] = [2]uint64{k[0] + 1, k[1] + uint64(len(ev))}
		}
		l := line{off, icount, ev}
		icount += instr
		switch {
		case *findAll != "":
			if strings.HasPrefix(logchan.KindName(ev[0]), *findAll) {
				print(l)
			}
		case *find != "":
			if strings.HasPrefix(logchan.KindName(ev[0]), *find) {
				print(l)
				return false
			}
		case *summary, *kinds:
		case *at == 0:
			print(l)
		case shown < 0 && icount >= *at:
			for _, r := range ring {
				print(r)
			}
			fmt.Printf("---- icount %d reached here ----\n", *at)
			print(l)
			shown = 0
		case shown >= 0:
			print(l)
			shown++
			return shown < *after
		default:
			ring = append(ring, l)
			if len(ring) > *before {
				ring = ring[1:]
			}
		}
		return true
	})
	if *kinds {
		names := make([]string, 0, len(byKind))
		for k := range byKind {
			names = append(names, k)
		}
		sort.Slice(names, func(i, j int) bool { return byKind[names[i]][0] > byKind[names[j]][0] })
		for _, k := range names {
			fmt.Printf("kind %-26s events %10d bytes %12d\n", k, byKind[k][0], byKind[k][1])
		}
	}
	fmt.Printf("%d events, %d of %d bytes walked, icount %d at the end walked\n", events, n, len(data), icount)
	if err != nil {
		fmt.Fprintln(os.Stderr, "rrdump:", err)
		os.Exit(1)
	}
}
