//go:build linux

package logchan

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

const guestDir = "../test/guest/out"

// recordedGuest skips the test unless QEMU is installed and test/guest/out
// holds the very kernel and initrd the fixture was recorded with (a replay
// of another guest diverges).
func recordedGuest(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("replays a real QEMU; skipped in -short mode")
	}
	for _, tool := range []string{"qemu-system-x86_64", "qemu-img"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	sums, err := os.ReadFile("testdata/boot.guest.sha256")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(sums)), "\n") {
		want, name, _ := strings.Cut(line, "  ")
		b, err := os.ReadFile(filepath.Join(guestDir, name))
		if err != nil {
			t.Skipf("guest not built (test/guest/build.sh test/guest/out): %v", err)
		}
		if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != want {
			t.Skipf("test/guest/out/%s is not the guest the fixture was recorded with; re-run testdata/record-fixture.sh", name)
		}
	}
}

// replayArgs is the command line of record-fixture.sh with rr=replay.
func replayArgs(dir, rrfile string) []string {
	return []string{
		"-M", "pc", "-m", "256", "-smp", "1", "-nodefaults", "-no-user-config", "-display", "none",
		"-serial", "file:" + filepath.Join(dir, "console.log"),
		"-kernel", filepath.Join(guestDir, "vmlinuz"), "-initrd", filepath.Join(guestDir, "initrd.img"),
		"-append", "console=ttyS0 panic=-1",
		"-icount", "shift=auto,rr=replay,rrfile=" + rrfile,
		"-drive", "file=" + filepath.Join(dir, "disk.qcow2") + ",if=none,id=img0,format=qcow2",
		"-drive", "driver=blkreplay,if=none,image=img0,id=rr0",
		"-device", "virtio-blk-pci,drive=rr0",
		"-netdev", "user,id=net0",
		"-object", "filter-replay,id=fr0,netdev=net0",
		"-device", "virtio-net-pci,netdev=net0,mac=52:54:00:f7:00:01",
		"-qmp", "unix:" + filepath.Join(dir, "qmp.sock") + ",server=on,wait=off",
	}
}

// syncBuffer collects a child's output; it may be read while written.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// qmpClient is a minimal QMP client for the test.
type qmpClient struct {
	c net.Conn
	r *bufio.Reader
}

func dialQMP(path string) (*qmpClient, error) {
	c, err := net.Dial("unix", path)
	if err != nil {
		return nil, err
	}
	q := &qmpClient{c: c, r: bufio.NewReader(c)}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := q.r.ReadBytes('\n'); err != nil { // greeting
		c.Close()
		return nil, err
	}
	if _, err := q.run("qmp_capabilities", nil); err != nil {
		c.Close()
		return nil, err
	}
	return q, nil
}

func (q *qmpClient) run(cmd string, out any) (json.RawMessage, error) {
	q.c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := fmt.Fprintf(q.c, `{"execute":%q}`+"\n", cmd); err != nil {
		return nil, err
	}
	for {
		line, err := q.r.ReadBytes('\n')
		if err != nil {
			return nil, err
		}
		var resp struct {
			Return json.RawMessage  `json:"return"`
			Error  *json.RawMessage `json:"error"`
			Event  string           `json:"event"`
		}
		if err := json.Unmarshal(line, &resp); err != nil {
			return nil, err
		}
		if resp.Event != "" {
			continue
		}
		if resp.Error != nil {
			return nil, fmt.Errorf("%s: %s", cmd, *resp.Error)
		}
		if out != nil {
			return resp.Return, json.Unmarshal(resp.Return, out)
		}
		return resp.Return, nil
	}
}

// TestReplayFixtureThroughFeeder replays the recorded fixture in a real
// QEMU 7.2 that reads FIFO B, fed by a Feeder with the decoder's chunks,
// and stops it cleanly with WriteEnd before the recorded SHUTDOWN events,
// as a backup that is about to go live. The backup must reach exactly the
// icount that the fed INSTRUCTION events add up to, and stay responsive.
func TestReplayFixtureThroughFeeder(t *testing.T) {
	recordedGuest(t)
	dir := t.TempDir()
	stream := fixture(t)[HeaderSize:]

	// Cut before the first SHUTDOWN event: the primary's exit is not
	// forwarded to a backup that should go live.
	cut := -1
	off := 0
	eachEvent(t, stream, func(k byte, ev []byte) {
		if cut < 0 && k >= KindShutdown && k <= KindShutdownLast {
			cut = off
		}
		off += len(ev)
	})
	if cut < 0 {
		t.Fatal("fixture has no SHUTDOWN event")
	}

	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", filepath.Join(dir, "disk.qcow2"), "64M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v %s", err, out)
	}
	fifo := filepath.Join(dir, "replay.fifo")
	if err := CreateFIFO(fifo, -1, -1, 0o600); err != nil {
		t.Fatal(err)
	}
	feeder, err := NewFeeder(fifo, LogVersionQEMU72)
	if err != nil {
		t.Fatal(err)
	}
	defer feeder.Close()
	if _, err := feeder.SetPipeSize(1 << 20); err != nil {
		t.Log(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var qemuOut syncBuffer
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", replayArgs(dir, fifo)...)
	cmd.Stdout = &qemuOut
	cmd.Stderr = &qemuOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		close(exited)
		feeder.Close() // unblock a Write into a dead QEMU
	}()
	defer func() {
		cmd.Process.Kill()
		<-exited
	}()

	d := NewStreamDecoder()
	start := time.Now()
	for i := 0; i < cut; i += 64 << 10 {
		c, err := d.Feed(stream[i:min(i+64<<10, cut)])
		if err != nil {
			t.Fatal(err)
		}
		if err := feeder.Write(c.Data); err != nil {
			t.Fatalf("feeding at offset %d: %v; QEMU said: %s", c.Offset, err, qemuOut.String())
		}
	}
	if d.Pending() != 0 || feeder.Offset() != uint64(cut) {
		t.Fatalf("pending %d, fed %d of %d", d.Pending(), feeder.Offset(), cut)
	}
	if err := feeder.WriteEnd(); err != nil {
		t.Fatal(err)
	}
	fed := feeder.Instructions()
	t.Logf("fed %d bytes, %d events, %d instructions in %v", feeder.Offset(), feeder.Events(), fed, time.Since(start))

	q, err := dialQMP(filepath.Join(dir, "qmp.sock"))
	if err != nil {
		t.Fatalf("QMP: %v; QEMU said: %s", err, qemuOut.String())
	}
	defer q.c.Close()
	var rep struct {
		Mode   string `json:"mode"`
		Icount uint64 `json:"icount"`
	}
	for {
		if _, err := q.run("query-replay", &rep); err != nil {
			t.Fatalf("query-replay: %v; QEMU said: %s", err, qemuOut.String())
		}
		if rep.Icount >= fed || ctx.Err() != nil {
			break
		}
		select {
		case <-exited:
			t.Fatalf("QEMU exited during replay: %v: %s", waitErr, qemuOut.String())
		case <-time.After(200 * time.Millisecond):
		}
	}
	if rep.Mode != "play" || rep.Icount != fed {
		t.Fatalf("backup at icount %d (%s), fed %d", rep.Icount, rep.Mode, fed)
	}
	t.Logf("backup drained to icount %d after %v", rep.Icount, time.Since(start))
	// At the stop point the backup idles, monitor responsive.
	if _, err := q.run("stop", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := q.run("query-replay", &rep); err != nil || rep.Icount != fed {
		t.Fatalf("after stop: icount %d, %v", rep.Icount, err)
	}
	console, _ := os.ReadFile(filepath.Join(dir, "console.log"))
	for _, want := range []string{"ft-guest: up", "disk writer starts at record 0", "tick 3 "} {
		if !bytes.Contains(console, []byte(want)) {
			t.Errorf("replayed console lacks %q:\n%s", want, console)
		}
	}
	q.run("quit", nil)
	select {
	case <-exited:
	case <-ctx.Done():
		t.Fatal("QEMU did not quit")
	}
}
