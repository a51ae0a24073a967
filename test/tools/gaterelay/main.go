// Command gaterelay stands in for libvirt-ftd's output gate in tests that
// run QEMU on its own (test/e2e/determinism.sh): it listens on the two unix
// sockets of a filter-redirector (outdev and indev) and sends every byte
// QEMU writes into OUT back into IN at once, with an unbounded queue in
// between. The queue matters: QEMU writes a frame to OUT with the big lock
// held and reads IN only from its main loop, so a relay that stops reading
// OUT while its write to IN waits (socat) deadlocks the guest.
//
//	gaterelay OUT-SOCKET IN-SOCKET
package main

import (
	"fmt"
	"net"
	"os"
	"sync"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: gaterelay OUT-SOCKET IN-SOCKET")
		os.Exit(2)
	}
	// Both sockets listen before either is accepted: QEMU connects to
	// them one after the other as it starts.
	lout, err := listen(os.Args[1])
	if err != nil {
		fail(err)
	}
	lin, err := listen(os.Args[2])
	if err != nil {
		fail(err)
	}
	out, err := lout.Accept()
	if err != nil {
		fail(err)
	}
	in, err := lin.Accept()
	if err != nil {
		fail(err)
	}
	lout.Close()
	lin.Close()
	var (
		mu    sync.Mutex
		cond  = sync.NewCond(&mu)
		queue [][]byte
		eof   bool
	)
	go func() {
		buf := make([]byte, 64<<10)
		for {
			n, err := out.Read(buf)
			mu.Lock()
			if n > 0 {
				queue = append(queue, append([]byte(nil), buf[:n]...))
			}
			if err != nil {
				eof = true
			}
			cond.Broadcast()
			mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	for {
		mu.Lock()
		for len(queue) == 0 && !eof {
			cond.Wait()
		}
		if len(queue) == 0 {
			mu.Unlock()
			return // QEMU closed OUT: it exited
		}
		b := queue[0]
		queue = queue[1:]
		mu.Unlock()
		if _, err := in.Write(b); err != nil {
			return
		}
	}
}

// listen listens on the unix socket path, replacing a stale one.
func listen(path string) (net.Listener, error) {
	_ = os.Remove(path)
	return net.Listen("unix", path)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "gaterelay:", err)
	os.Exit(1)
}
