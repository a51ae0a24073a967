// Command rxcheck checks that a protected guest received exactly the frames
// its host delivered, in order and unchanged (issue 4, item 4: the output
// gate must not change what the guest receives). It compares two records
// made on the primary's host during the same traffic:
//
//   - CAPTURE: a pcap of the frames the host sent into the guest's tap
//     (tcpdump -Q out -i vnetN: "out" of the host is into the guest);
//
//   - LOG: the record log as libvirt-ftd read it from QEMU (the
//     LIBVIRT_FT_TEE_DIR copy: no header). Each frame the guest received is
//     an ASYNC_NET log entry holding the frame (replay_event_net_save,
//     replay/replay-net.c), written by filter-replay when the netdev hands
//     it to the guest; the backup replays exactly these entries.
//
//     rxcheck [-nic 0] CAPTURE LOG
//
// The capture starts after the guest booted, so the log may hold frames
// before the first captured one; from there on, each captured frame must
// be the next ASYNC_NET entry of the NIC (filter-replay index -nic), byte
// for byte after the virtio-net header that a tap with vnet_hdr puts in
// front (0, 10 or 12 bytes, the same for every frame). Log entries after
// the last captured frame are allowed (the capture stopped first).
//
// Output: one line "rxcheck result=pass|fail captured=N captured_bytes=N
// logged=N matched=N vnet_hdr=N first_failure=..."; exit status 0 on pass, 1 on a
// mismatch, 2 on a usage or read error.
package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/google/gopacket/pcapgo"

	"github.com/libvirt-ft/libvirt-ft/logchan"
)

func main() {
	nic := flag.Int("nic", 0, "filter-replay index of the NIC (its order among the domain's interfaces)")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: rxcheck [-nic 0] CAPTURE.pcap LOG.rrstream")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 2 {
		flag.Usage()
		os.Exit(2)
	}
	captured, err := readCapture(flag.Arg(0))
	if err != nil {
		fmt.Fprintln(os.Stderr, "rxcheck:", err)
		os.Exit(2)
	}
	logged, err := readLog(flag.Arg(1), byte(*nic))
	if err != nil {
		fmt.Fprintln(os.Stderr, "rxcheck:", err)
		os.Exit(2)
	}
	r := compare(captured, logged)
	fmt.Println(r)
	if r.failure != "" {
		os.Exit(1)
	}
}

// readCapture returns the frames of a pcap file in capture order. A frame
// cut short by the snap length is an error (run tcpdump with -s 0).
func readCapture(path string) ([][]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r, err := pcapgo.NewReader(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var frames [][]byte
	for {
		data, ci, err := r.ReadPacketData()
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			// tcpdump killed mid-write leaves a partial last record.
			return frames, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: frame %d: %w", path, len(frames)+1, err)
		}
		if ci.CaptureLength != ci.Length {
			return nil, fmt.Errorf("%s: frame %d: captured %d of %d bytes (run tcpdump with -s 0)", path, len(frames)+1, ci.CaptureLength, ci.Length)
		}
		frames = append(frames, append([]byte(nil), data...))
	}
}

// readLog returns the packets of the NIC's ASYNC_NET entries in log order.
// ASYNC_NET layout after the kind byte: filter-replay index (1 byte), flags
// (4 bytes), packet length (4 bytes, big-endian) and the packet.
func readLog(path string, nic byte) ([][]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var pkts [][]byte
	var bad error
	_, err = logchan.WalkEvents(data, 0, func(off uint64, ev []byte, _ uint64) bool {
		if ev[0] != logchan.KindAsyncNet {
			return true
		}
		if len(ev) < 10 {
			bad = fmt.Errorf("%s: ASYNC_NET at offset %d is %d bytes", path, off, len(ev))
			return false
		}
		n := binary.BigEndian.Uint32(ev[6:10])
		if uint64(len(ev)) != 10+uint64(n) {
			bad = fmt.Errorf("%s: ASYNC_NET at offset %d: packet length %d in a %d-byte entry", path, off, n, len(ev))
			return false
		}
		if ev[1] == nic {
			pkts = append(pkts, ev[10:])
		}
		return true
	})
	if bad != nil {
		return nil, bad
	}
	// A log cut at any byte (the tee stops where the stream stopped) may
	// end in a partial entry, which WalkEvents leaves out without an error.
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return pkts, nil
}

type result struct {
	captured, logged, matched, hdr int
	capturedBytes                  int
	failure                        string
}

func (r result) String() string {
	res := "pass"
	if r.failure != "" {
		res = "fail"
	}
	return fmt.Sprintf("rxcheck result=%s captured=%d captured_bytes=%d logged=%d matched=%d vnet_hdr=%d first_failure=%q",
		res, r.captured, r.capturedBytes, r.logged, r.matched, r.hdr, r.failure)
}

// vnetHeaderLens are the virtio-net header sizes a tap may prepend:
// none, struct virtio_net_hdr (10) and virtio_net_hdr_mrg_rxbuf (12).
var vnetHeaderLens = []int{0, 10, 12}

// compare aligns the capture's first frame with the log entry holding it
// and then requires every captured frame to be the next logged packet.
// Where the first frame is in the log several times (a repeated ARP
// request), the alignment that matches the most frames is taken.
func compare(captured, logged [][]byte) result {
	r := result{captured: len(captured), logged: len(logged)}
	for _, f := range captured {
		r.capturedBytes += len(f)
	}
	if len(captured) == 0 {
		r.failure = "the capture holds no frame"
		return r
	}
	best, bestHdr, bestRun := -1, 0, -1
	for i, p := range logged {
		for _, h := range vnetHeaderLens {
			if len(p) != len(captured[0])+h || !bytes.Equal(p[h:], captured[0]) {
				continue
			}
			run := 0
			for run < len(captured) && i+run < len(logged) && same(logged[i+run], captured[run], h) {
				run++
			}
			if run > bestRun {
				best, bestHdr, bestRun = i, h, run
			}
		}
	}
	if best < 0 {
		r.failure = fmt.Sprintf("the first captured frame (%d bytes) is not in the log", len(captured[0]))
		return r
	}
	r.hdr, r.matched = bestHdr, bestRun
	if bestRun < len(captured) {
		k := bestRun
		if best+k >= len(logged) {
			r.failure = fmt.Sprintf("captured frame %d (%d bytes) and the %d after it are not in the log (it ends first)", k+1, len(captured[k]), len(captured)-k-1)
		} else {
			r.failure = fmt.Sprintf("captured frame %d (%d bytes) differs from log packet %d (%d bytes): first differing byte %d",
				k+1, len(captured[k]), best+k+1, len(logged[best+k]), firstDiff(logged[best+k][min(bestHdr, len(logged[best+k])):], captured[k]))
		}
	}
	return r
}

// same reports whether a logged packet is the frame after an h-byte header.
func same(logged, frame []byte, h int) bool {
	return len(logged) == len(frame)+h && bytes.Equal(logged[h:], frame)
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
