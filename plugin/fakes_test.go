package plugin

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	goqmp "github.com/digitalocean/go-qemu/qmp"
	"github.com/digitalocean/go-qemu/qmp/qmptest"
	"github.com/sirupsen/logrus"
	"libvirt.org/go/libvirtxml"

	"github.com/libvirt-ft/libvirt-ft/logchan"
	"github.com/libvirt-ft/libvirt-ft/plugin/ctl"
	"github.com/libvirt-ft/libvirt-ft/qmp"
	ftxml "github.com/libvirt-ft/libvirt-ft/xml"
)

// The fakes in this file stand in for everything a run touches outside
// the process, so that primaryRun and backupRun can be tested together, two
// daemons in one testing/synctest bubble: libvirtd and QEMU (fakeHV,
// fakeQEMU), FIFO A and FIFO B (memPipes), the network between the hosts
// (fakeNet, over net.Pipe) and the arbiter (fakeArbiter). Everything blocks
// on channels or sync.Cond, so synctest's clock runs the failover timers.

// ---------------------------------------------------------------- pipes

// memPipe is one in-memory FIFO: the daemon's end is a recordLog (FIFO A)
// or a replayLog (FIFO B); the fake QEMU holds the other.
type memPipe struct {
	mu   sync.Mutex
	cond *sync.Cond
	buf  []byte
	// written: bytes the writer put in; cap (FIFO B): Write waits while
	// this much is unread.
	written uint64
	cap     int
	// wclosed: the writer closed (reader sees EOF); rclosed: the reader
	// closed (reads fail, writes fail).
	wclosed, rclosed bool
	connected        bool // FIFO A: QEMU opened it
	instr            uint64
	dl               bool
	atLeast          uint64 // FIFO B: what ExecutedAtLeast says
}

func newMemPipe(capBytes int) *memPipe {
	p := &memPipe{cap: capBytes}
	p.cond = sync.NewCond(&p.mu)
	return p
}

// write appends data (the writer side); it waits while cap bytes are
// unread.
func (p *memPipe) write(data []byte) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	for p.cap > 0 && len(p.buf) >= p.cap && !p.rclosed && !p.wclosed {
		p.cond.Wait()
	}
	if p.rclosed || p.wclosed {
		return os.ErrClosed
	}
	p.buf = append(p.buf, data...)
	p.written += uint64(len(data))
	p.cond.Broadcast()
	return nil
}

// read waits for data (the reader side): io.EOF once the writer closed and
// everything was read.
func (p *memPipe) read(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for len(p.buf) == 0 && !p.wclosed && !p.rclosed && !p.dl {
		p.cond.Wait()
	}
	if p.rclosed {
		return 0, os.ErrClosed
	}
	if p.dl && len(p.buf) == 0 {
		return 0, os.ErrDeadlineExceeded
	}
	if len(p.buf) == 0 {
		return 0, io.EOF
	}
	n := copy(b, p.buf)
	p.buf = p.buf[n:]
	p.cond.Broadcast()
	return n, nil
}

func (p *memPipe) closeWriter() {
	p.mu.Lock()
	p.wclosed = true
	p.cond.Broadcast()
	p.mu.Unlock()
}

func (p *memPipe) closeReader() {
	p.mu.Lock()
	p.rclosed = true
	p.cond.Broadcast()
	p.mu.Unlock()
}

// recordEnd is the daemon's end of a memPipe used as FIFO A.
type recordEnd struct{ p *memPipe }

func (r recordEnd) Read(b []byte) (int, error) { return r.p.read(b) }
func (r recordEnd) Produced() (uint64, error) {
	r.p.mu.Lock()
	defer r.p.mu.Unlock()
	return r.p.written, nil
}
func (r recordEnd) Connected() bool {
	r.p.mu.Lock()
	defer r.p.mu.Unlock()
	return r.p.connected
}
func (r recordEnd) Close() error { r.p.closeReader(); return nil }
func (r recordEnd) ReadBytes() uint64 {
	r.p.mu.Lock()
	defer r.p.mu.Unlock()
	return r.p.written - uint64(len(r.p.buf))
}
func (r recordEnd) SetReadDeadline(time.Time) error {
	r.p.mu.Lock()
	r.p.dl = true
	r.p.cond.Broadcast()
	r.p.mu.Unlock()
	return nil
}
func (r recordEnd) File() *os.File { return nil }
func (w replayEnd) Events() uint64 { return 0 }
func (w replayEnd) File() *os.File { return nil }

// replayEnd is the daemon's end of a memPipe used as FIFO B.
type replayEnd struct{ p *memPipe }

func (w replayEnd) Write(events []byte) error {
	c, err := logchan.ScanEvents(events)
	if err != nil {
		return err
	}
	if err := w.p.write(events); err != nil {
		return err
	}
	w.p.mu.Lock()
	w.p.instr += c.Instructions
	w.p.mu.Unlock()
	return nil
}
func (w replayEnd) WriteEnd() error { return w.p.write([]byte{logchan.KindEnd}) }
func (w replayEnd) Offset() uint64 {
	w.p.mu.Lock()
	defer w.p.mu.Unlock()
	return w.p.written
}
func (w replayEnd) Instructions() uint64 {
	w.p.mu.Lock()
	defer w.p.mu.Unlock()
	return w.p.instr
}
func (w replayEnd) Unread() (int, error) {
	w.p.mu.Lock()
	defer w.p.mu.Unlock()
	if w.p.wclosed {
		return 0, os.ErrClosed
	}
	return len(w.p.buf), nil
}

// ExecutedAtLeast gives the fake's atLeast, which tests set (0: no bound).
func (w replayEnd) ExecutedAtLeast() (uint64, int, error) {
	w.p.mu.Lock()
	defer w.p.mu.Unlock()
	if w.p.wclosed {
		return 0, 0, os.ErrClosed
	}
	return w.p.atLeast, len(w.p.buf), nil
}
func (w replayEnd) Close() error { w.p.closeWriter(); return nil }

// memPipes is one host's FIFOs, by path.
type memPipes struct {
	mu    sync.Mutex
	pipes map[string]*memPipe
}

func (m *memPipes) put(path string, p *memPipe) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.pipes == nil {
		m.pipes = map[string]*memPipe{}
	}
	m.pipes[path] = p
}

func (m *memPipes) get(path string) *memPipe {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.pipes[path]
}

func (m *memPipes) Record(path string, uid, gid int) (recordLog, error) {
	p := newMemPipe(0)
	m.put(path, p)
	return recordEnd{p}, nil
}

func (m *memPipes) Replay(path string, uid, gid int, logVer uint32) (replayLog, error) {
	p := newMemPipe(replayPipeBytes)
	m.put(path, p)
	return replayEnd{p}, nil
}

// ---------------------------------------------------------------- QEMU

// fakeQEMU is a running domain: in record mode the test makes it write
// log (emit, exit); in replay mode it reads FIFO B, counting INSTRUCTION
// events into its icount, and leaves replay mode at END as the patched
// QEMU does (packaging/qemu 0001).
type fakeQEMU struct {
	uuid, name, xml string
	role            string
	id              uint   // libvirt's domain ID
	title           string // SetLiveNote

	// stock: QEMU 7.2 without packaging/qemu 0001: at END its replay
	// stays in play mode (go-live then restarts it with -loadvm).
	stock bool
	// noVersion: query-version fails (as a monitor that cannot answer).
	noVersion bool
	// hangCh, once hang was called: closed when the QEMU is killed; until
	// then every monitor command waits (a hung main loop).
	hangCh chan struct{}
	// busySince: when the first monitor command reached the hung QEMU.
	busySince time.Time
	// vcpuTime: what VCPUTime reports, plus the time since vcpuBusyFrom
	// while that is set (a vCPU on a CPU throughout: slowReplay).
	vcpuTime     time.Duration
	vcpuBusyFrom time.Time
	// schedTimes: what SchedTimes reports.
	schedTimes SchedTimes

	mu     sync.Mutex
	cond   *sync.Cond
	mode   string // "record", "play", "none"
	icount uint64
	paused bool
	// ioError: stopped by a record log write error (packaging/qemu
	// 0006); cont then ends recording (mode "none").
	ioError bool
	stalled bool
	gone    bool
	record  *memPipe
	replay  *memPipe
	// announced counts announce-self; savevm names taken.
	announced int
	// migStatus is query-migrate's status ("" none); postmigrate makes
	// query-status say so (paused after a completed migration).
	migStatus   string
	postmigrate bool
	qmpLog      []string
	// contGate, when set, holds every cont until it is closed.
	contGate chan struct{}
	// stopHolds hold the next stops, one each in order, until their
	// release is closed; such a stop then fails if fails (libvirt lost
	// its answer).
	stopHolds []heldStop
}

// heldStop is one entry of fakeQEMU.stopHolds.
type heldStop struct {
	release chan struct{}
	fails   bool
}

// holdStop holds the next stop not held yet (see stopHolds) and returns
// the channel that releases it.
func (q *fakeQEMU) holdStop(fails bool) chan struct{} {
	h := heldStop{release: make(chan struct{}), fails: fails}
	q.mu.Lock()
	q.stopHolds = append(q.stopHolds, h)
	q.mu.Unlock()
	return h.release
}

// stopsHeldPending is how many held stops no stop has reached yet.
func (q *fakeQEMU) stopsHeldPending() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.stopHolds)
}

// emit writes events into FIFO A as a recording QEMU does.
func (q *fakeQEMU) emit(t testing.TB, events []byte) {
	t.Helper()
	c, err := logchan.ScanEvents(events)
	if err != nil {
		t.Fatal(err)
	}
	if err := q.record.write(events); err != nil {
		t.Fatalf("recording QEMU: %v", err)
	}
	q.mu.Lock()
	q.icount += c.Instructions
	q.mu.Unlock()
}

// emitToClosedLog is emit into a FIFO A nobody reads any more: the write
// fails and the QEMU stops, as packaging/qemu 0006 makes it (run state
// io-error; a cont then ends its recording).
func (q *fakeQEMU) emitToClosedLog(t testing.TB, events []byte) {
	t.Helper()
	if err := q.record.write(events); err == nil {
		t.Fatal("the record log was written although its reader closed")
	}
	q.mu.Lock()
	q.ioError, q.paused = true, true
	q.mu.Unlock()
}

// stall makes a replaying QEMU stop reading FIFO B (SIGSTOP).
func (q *fakeQEMU) stall() {
	q.mu.Lock()
	q.stalled = true
	q.mu.Unlock()
}

// slowReplay makes a replaying QEMU replay one long log event slowly, as
// the lab's did (docs/replay.md §12): it reads no more of FIFO B, its
// monitor answers nothing (the vCPU holds the replay mutex), and its vCPU
// is on a CPU throughout. endSlow ends the event.
func (q *fakeQEMU) slowReplay() {
	q.mu.Lock()
	q.stalled = true
	q.hangCh = make(chan struct{})
	q.vcpuBusyFrom = time.Now()
	q.mu.Unlock()
}

func (q *fakeQEMU) endSlow() {
	q.mu.Lock()
	q.stalled = false
	close(q.hangCh)
	q.hangCh, q.busySince = nil, time.Time{}
	q.vcpuTime += time.Since(q.vcpuBusyFrom)
	q.vcpuBusyFrom = time.Time{}
	q.cond.Broadcast()
	q.mu.Unlock()
}

// isPaused reports whether the fake VM is paused (stop, or a record log
// write error), under its lock.
func (q *fakeQEMU) isPaused() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.paused
}

func (q *fakeQEMU) state() (mode string, icount uint64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.mode, q.icount
}

// replayLoop reads FIFO B until END, the pipe's end or a kill.
func (q *fakeQEMU) replayLoop() {
	dec := logchan.NewStreamDecoder()
	buf := make([]byte, 4096)
	for {
		q.mu.Lock()
		for q.stalled && !q.gone {
			q.cond.Wait()
		}
		gone := q.gone
		q.mu.Unlock()
		if gone {
			return
		}
		n, err := q.replay.read(buf)
		if err != nil {
			return
		}
		c, derr := dec.Feed(buf[:n])
		q.mu.Lock()
		q.icount += c.Instructions
		if dec.Ended() && !q.stock {
			q.mode = "none"
		}
		q.mu.Unlock()
		if derr != nil || dec.Ended() {
			return
		}
	}
}

// hang makes the QEMU hang as a main loop stuck for good does: its log
// stops and its monitor answers nothing until it is killed.
func (q *fakeQEMU) hang() {
	q.mu.Lock()
	if q.hangCh == nil && !q.gone {
		q.hangCh = make(chan struct{})
	}
	q.mu.Unlock()
}

func (q *fakeQEMU) kill() {
	q.mu.Lock()
	if q.hangCh != nil && !q.gone {
		close(q.hangCh)
	}
	q.gone = true
	q.cond.Broadcast()
	q.mu.Unlock()
	if q.record != nil {
		q.record.closeWriter()
	}
	if q.replay != nil {
		q.replay.closeReader()
	}
}

// monitor answers QMP as QEMU 7.2 does for the commands the daemon sends.
func (q *fakeQEMU) monitor() qmp.Monitor {
	return qmptest.NewMonitor(func(cmd goqmp.Command) (any, error) {
		if cmd.Execute == "cont" {
			q.mu.Lock()
			g := q.contGate
			q.mu.Unlock()
			if g != nil {
				<-g // a cont held in flight (libvirt's job queue)
			}
		}
		if cmd.Execute == "stop" {
			q.mu.Lock()
			var h heldStop
			if len(q.stopHolds) > 0 {
				h, q.stopHolds = q.stopHolds[0], q.stopHolds[1:]
			}
			q.mu.Unlock()
			if h.release != nil {
				<-h.release // a stop held in flight
				if h.fails {
					return nil, errors.New("libvirt: monitor connection lost")
				}
			}
		}
		q.mu.Lock()
		if h := q.hangCh; h != nil {
			if q.busySince.IsZero() {
				q.busySince = time.Now() // libvirt's monStart
			}
			q.mu.Unlock()
			<-h // killed
			q.mu.Lock()
		}
		defer q.mu.Unlock()
		q.qmpLog = append(q.qmpLog, cmd.Execute)
		if q.gone {
			return nil, errors.New("libvirt monitor pass-through: domain is not running")
		}
		ok := map[string]any{"return": map[string]any{}}
		switch cmd.Execute {
		case "query-replay":
			return map[string]any{"return": map[string]any{"mode": q.mode, "icount": q.icount}}, nil
		case "query-version":
			if q.noVersion {
				return map[string]any{"error": map[string]string{"class": "GenericError", "desc": "monitor busy"}}, nil
			}
			pkg := "libvirt-ft"
			if q.stock {
				pkg = "Debian 1:7.2+dfsg-7+deb12u18+b3"
			}
			return map[string]any{"return": map[string]any{"qemu": map[string]int{"major": 7, "minor": 2, "micro": 22}, "package": pkg}}, nil
		case "query-migrate":
			st := q.migStatus
			if st == "" {
				st = "none"
			}
			return map[string]any{"return": map[string]any{"status": st}}, nil
		case "query-block":
			var dom libvirtxml.Domain
			_ = dom.Unmarshal(q.xml)
			var out []map[string]any
			if dom.Devices != nil {
				for i, disk := range dom.Devices.Disks {
					if disk.Source != nil && disk.Source.File != nil {
						out = append(out, map[string]any{"device": "", "inserted": map[string]any{
							"node-name": fmt.Sprintf("libvirt-%d-format", i+1), "file": disk.Source.File.File,
							"image": map[string]any{"virtual-size": 64 << 20}}})
					}
				}
			}
			return map[string]any{"return": out}, nil
		case "query-block-jobs", "query-named-block-nodes":
			return map[string]any{"return": []any{}}, nil
		case "query-status":
			st := "running"
			switch {
			case q.postmigrate && q.paused:
				st = "postmigrate"
			case q.ioError:
				st = "io-error"
			case q.paused:
				st = "paused"
			}
			return map[string]any{"return": map[string]any{"running": st == "running", "status": st}}, nil
		case "stop":
			q.paused = true
		case "cont":
			if q.ioError && q.mode == "record" {
				q.mode = "none"
			}
			q.paused, q.ioError = false, false
		case "announce-self":
			q.announced++
		case "human-monitor-command":
			args, _ := cmd.Args.(map[string]any)
			if line, _ := args["command-line"].(string); strings.HasPrefix(line, "savevm ") && !q.paused {
				return map[string]any{"return": "Error: the VM must be stopped"}, nil
			}
			return map[string]any{"return": ""}, nil
		case "qom-set":
			return map[string]any{"return": ""}, nil
		default:
			return map[string]any{"error": map[string]string{"class": "CommandNotFound", "desc": "The command " + cmd.Execute + " has not been found"}}, nil
		}
		return ok, nil
	})
}

// ---------------------------------------------------------------- libvirt

// fakeHV is one host's libvirtd: persistent definitions, running fake
// QEMUs, the hooks (the daemon's handleHook, called as libvirt calls the
// hook script) and lifecycle events.
type fakeHV struct {
	pipes *memPipes
	// hook and event are the daemon's handleHook and onLifecycle.
	hook  func(ctl.Hook) error
	event func(LifecycleEvent)

	// stock: the QEMUs it starts lack packaging/qemu 0001.
	stock bool
	// noVersion: the QEMUs it starts fail query-version.
	noVersion bool
	// kills counts Kill calls that found a QEMU.
	kills int
	// pausedStarts counts CreatePaused calls.
	pausedStarts int
	// build: EmulatorBuild's answer ("": a fixed patched build).
	build string

	mu     sync.Mutex
	down   bool // libvirtd unreachable
	nextID uint
	defs   map[string]DomainDef
	doms   map[string]*fakeQEMU // by UUID
}

func (h *fakeHV) callHook(hk ctl.Hook) error {
	h.mu.Lock()
	f := h.hook
	h.mu.Unlock()
	return f(hk)
}

func (h *fakeHV) callEvent(ev LifecycleEvent) {
	h.mu.Lock()
	f := h.event
	h.mu.Unlock()
	f(ev)
}

func (h *fakeHV) check() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.down {
		return ErrNotConnected
	}
	return nil
}

func (h *fakeHV) setDown(down bool) {
	h.mu.Lock()
	h.down = down
	h.mu.Unlock()
}

func (h *fakeHV) QEMUVersion() (string, error) { return "7.2.22", h.check() }

// EmulatorBuild: build, or a fixed patched-QEMU line when it is empty.
func (h *fakeHV) EmulatorBuild(path string) (string, error) {
	h.mu.Lock()
	build := h.build
	h.mu.Unlock()
	if build == "" {
		build = "QEMU emulator version 7.2.22 (libvirt-ft), sha256 0123456789abcdef"
	}
	return build, nil
}

func (h *fakeHV) DomainNames() ([]string, error) {
	if err := h.check(); err != nil {
		return nil, err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	var names []string
	for n := range h.defs {
		names = append(names, n)
	}
	return names, nil
}

func (h *fakeHV) Definition(name string) (DomainDef, bool, error) {
	if err := h.check(); err != nil {
		return DomainDef{}, false, err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	d, ok := h.defs[name]
	return d, ok, nil
}

func (h *fakeHV) Running() ([]DomainDef, error) {
	if err := h.check(); err != nil {
		return nil, err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []DomainDef
	for _, q := range h.doms {
		out = append(out, DomainDef{UUID: q.uuid, Name: q.name, XML: q.xml, ID: q.id})
	}
	return out, nil
}

func (h *fakeHV) SetLiveNote(uuid, title, description string) error {
	if err := h.check(); err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if q := h.doms[uuid]; q != nil {
		q.title = title
		return nil
	}
	return errors.New("fakeHV: no running domain " + uuid)
}

func (h *fakeHV) IsActive(uuid string) (bool, error) {
	if err := h.check(); err != nil {
		return false, err
	}
	return h.running(uuid) != nil, nil
}

func (h *fakeHV) running(uuid string) *fakeQEMU {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.doms[uuid]
}

func (h *fakeHV) Define(xml string) error {
	if err := h.check(); err != nil {
		return err
	}
	var d libvirtxml.Domain
	if err := d.Unmarshal(xml); err != nil {
		return err
	}
	h.mu.Lock()
	if h.defs == nil {
		h.defs = map[string]DomainDef{}
	}
	h.defs[d.Name] = DomainDef{UUID: d.UUID, Name: d.Name, XML: xml}
	h.mu.Unlock()
	go h.callEvent(LifecycleEvent{Kind: EventDefined, Name: d.Name, UUID: d.UUID})
	return nil
}

// start is `virsh start NAME`.
func (h *fakeHV) start(name string) error {
	h.mu.Lock()
	d, ok := h.defs[name]
	h.mu.Unlock()
	if !ok {
		return fmt.Errorf("no domain %q", name)
	}
	return h.Create(d.XML)
}

// CreatePaused: the fake QEMU has no paused start; it records the call.
func (h *fakeHV) CreatePaused(xml string) error {
	h.mu.Lock()
	h.pausedStarts++
	h.mu.Unlock()
	return h.Create(xml)
}

func (h *fakeHV) Create(xml string) error {
	if err := h.check(); err != nil {
		return err
	}
	var d libvirtxml.Domain
	if err := d.Unmarshal(xml); err != nil {
		return err
	}
	if h.running(d.UUID) != nil {
		return fmt.Errorf("domain %q is already active", d.Name)
	}
	cfg, present, err := ftxml.ParseConfig(xml)
	if err == nil && !present {
		// A plain VM (no ft element): the hook script passes it by
		// without a word to the daemon (hooks.Run); no icount.
		return h.createPlain(d, xml)
	}
	if err := h.callHook(ctl.Hook{Domain: d.Name, Operation: "prepare", SubOperation: "begin", XML: xml}); err != nil {
		return fmt.Errorf("hook script execution failed: %w", err)
	}
	if err != nil {
		return fmt.Errorf("fake libvirtd: %v", err)
	}
	h.mu.Lock()
	stock, noVersion := h.stock, h.noVersion
	h.mu.Unlock()
	h.mu.Lock()
	h.nextID++
	id := h.nextID
	h.mu.Unlock()
	q := &fakeQEMU{uuid: d.UUID, name: d.Name, xml: xml, role: cfg.Role, stock: stock, noVersion: noVersion, id: id}
	q.cond = sync.NewCond(&q.mu)
	if strings.Contains(xml, "rr=replay") {
		q.mode = "play"
		q.replay = h.pipes.get(ftxml.ReplayFIFOPath(*cfg, d.UUID))
		if q.replay == nil {
			return errors.New("rr=replay: FIFO B is missing")
		}
		go q.replayLoop()
	} else {
		q.mode = "record"
		q.record = h.pipes.get(ftxml.RecordFIFOPath(*cfg, d.UUID))
		if q.record == nil {
			return errors.New("rr=record: FIFO A is missing")
		}
		q.record.mu.Lock()
		q.record.connected = true
		q.record.mu.Unlock()
	}
	h.mu.Lock()
	if h.doms == nil {
		h.doms = map[string]*fakeQEMU{}
	}
	h.doms[d.UUID] = q
	h.mu.Unlock()
	_ = h.callHook(ctl.Hook{Domain: d.Name, Operation: "started", SubOperation: "begin", XML: xml})
	return nil
}

// createPlain starts a VM without the ft element: replay mode none, no
// log; its monitor answers query-block for its file disks.
func (h *fakeHV) createPlain(d libvirtxml.Domain, xml string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.nextID++
	q := &fakeQEMU{uuid: d.UUID, name: d.Name, xml: xml, mode: "none", stock: h.stock, noVersion: h.noVersion, id: h.nextID}
	q.cond = sync.NewCond(&q.mu)
	if h.doms == nil {
		h.doms = map[string]*fakeQEMU{}
	}
	h.doms[d.UUID] = q
	return nil
}

func (h *fakeHV) Destroy(uuid string) (bool, error) {
	if err := h.check(); err != nil {
		return false, err
	}
	h.stopped(uuid)
	return true, nil
}

// Kill is Destroy without the orderly part; it counts the kills.
func (h *fakeHV) Kill(uuid, name string) error {
	if err := h.check(); err != nil {
		return err
	}
	if h.running(uuid) == nil {
		return fmt.Errorf("domain %s is not running", uuid)
	}
	h.mu.Lock()
	h.kills++
	h.mu.Unlock()
	h.stopped(uuid)
	return nil
}

// MonitorBusy: running unless paused; a hung QEMU's monitor has been
// busy since it hung.
func (h *fakeHV) MonitorBusy(uuid string) (bool, time.Duration, error) {
	if err := h.check(); err != nil {
		return false, 0, err
	}
	q := h.running(uuid)
	if q == nil {
		return false, 0, fmt.Errorf("domain %s is not running", uuid)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	var busy time.Duration
	if !q.busySince.IsZero() {
		busy = time.Since(q.busySince)
	}
	return !q.paused, busy, nil
}

// SchedTimes: the times set in schedTimes (zero by default).
func (h *fakeHV) SchedTimes(uuid, name string) (SchedTimes, error) {
	if err := h.check(); err != nil {
		return SchedTimes{}, err
	}
	q := h.running(uuid)
	if q == nil {
		return SchedTimes{}, fmt.Errorf("domain %s is not running", uuid)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.schedTimes, nil
}

// VCPUTime: the CPU time set by setVCPUTime (0 by default).
func (h *fakeHV) VCPUTime(uuid, _ string) (time.Duration, error) {
	if err := h.check(); err != nil {
		return 0, err
	}
	q := h.running(uuid)
	if q == nil {
		return 0, fmt.Errorf("domain %s is not running", uuid)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	t := q.vcpuTime
	if !q.vcpuBusyFrom.IsZero() {
		t += time.Since(q.vcpuBusyFrom)
	}
	return t, nil
}

func (h *fakeHV) killCount() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.kills
}

// stopped ends uuid's QEMU as libvirt does when it exits or is destroyed:
// the stopped and release hooks, then the STOPPED event.
func (h *fakeHV) stopped(uuid string) {
	h.mu.Lock()
	q := h.doms[uuid]
	delete(h.doms, uuid)
	h.mu.Unlock()
	if q == nil {
		return
	}
	q.kill()
	for _, op := range []string{"stopped", "release"} {
		_ = h.callHook(ctl.Hook{Domain: q.name, Operation: op, SubOperation: "end", XML: q.xml})
	}
	go h.callEvent(LifecycleEvent{Kind: EventStopped, Name: q.name, UUID: uuid})
}

func (h *fakeHV) Monitor(uuid string) (qmp.Monitor, error) {
	if err := h.check(); err != nil {
		return nil, err
	}
	q := h.running(uuid)
	if q == nil {
		return nil, fmt.Errorf("domain %s is not running", uuid)
	}
	return q.monitor(), nil
}

// ---------------------------------------------------------------- arbiter

// fakeArbiter is an arbiter both daemons share; me names the claimer.
type fakeArbiter struct {
	me string
	s  *arbiterState
}

type arbiterState struct {
	mu          sync.Mutex
	claims      map[string]string // uuid/epoch -> winner
	unreachable map[string]bool   // claimer -> arbiter unreachable
	winner      string            // if set, the claimer that wins every claim
	current     map[string]string // uuid -> current epoch (Forget)
}

func (a fakeArbiter) Acquire(uuid, epoch string) (bool, error) {
	a.s.mu.Lock()
	defer a.s.mu.Unlock()
	if a.s.unreachable[a.me] {
		return false, errors.New("arbiter: unreachable")
	}
	if a.s.winner != "" {
		return a.s.winner == a.me, nil
	}
	if cur, ok := a.s.current[uuid]; ok && cur != epoch {
		return false, nil
	}
	key := uuid + "/" + epoch
	if w, ok := a.s.claims[key]; ok {
		return w == a.me, nil
	}
	a.s.claims[key] = a.me
	return true, nil
}

func (a fakeArbiter) Forget(uuid, epoch string) error {
	a.s.mu.Lock()
	defer a.s.mu.Unlock()
	if a.s.unreachable[a.me] {
		return errors.New("arbiter: unreachable")
	}
	if a.s.current == nil {
		a.s.current = map[string]string{}
	}
	a.s.current[uuid] = epoch
	return nil
}

// ---------------------------------------------------------------- network

// fakeNet connects the hosts' daemons with net.Pipe: a dial runs the
// target daemon's servePeer on the other end. cut severs every
// connection to or from a host and refuses new ones.
type fakeNet struct {
	mu    sync.Mutex
	hosts map[string]*fakeHost // by IP
	conns []fakeLink
	cut   map[string]bool
}

type fakeLink struct {
	a, b   string
	ca, cb net.Conn
}

type pipeAddr string

func (a pipeAddr) Network() string { return "tcp" }
func (a pipeAddr) String() string  { return string(a) }

// addrConn gives a net.Pipe end the peers' TCP addresses.
type addrConn struct {
	net.Conn
	local, remote net.Addr
}

func (c addrConn) LocalAddr() net.Addr  { return c.local }
func (c addrConn) RemoteAddr() net.Addr { return c.remote }

func (n *fakeNet) dialer(from string) func(addr string, timeout time.Duration) (net.Conn, error) {
	return func(addr string, timeout time.Duration) (net.Conn, error) {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		n.mu.Lock()
		to := n.hosts[host]
		blocked := n.cut[from] || n.cut[host]
		var d *Daemon
		if to != nil {
			d = to.d
		}
		n.mu.Unlock()
		if to == nil || blocked {
			return nil, fmt.Errorf("dial tcp %s: connect: no route to host", addr)
		}
		a, b := net.Pipe()
		ca := addrConn{a, pipeAddr(from + ":40000"), pipeAddr(addr)}
		cb := addrConn{b, pipeAddr(addr), pipeAddr(from + ":40000")}
		n.mu.Lock()
		n.conns = append(n.conns, fakeLink{from, host, ca, cb})
		n.mu.Unlock()
		go d.servePeer(cb)
		return ca, nil
	}
}

// sever closes every connection of host and refuses new ones (host torn
// off the network).
func (n *fakeNet) sever(host string) {
	n.mu.Lock()
	if n.cut == nil {
		n.cut = map[string]bool{}
	}
	n.cut[host] = true
	var links []fakeLink
	for _, l := range n.conns {
		if l.a == host || l.b == host {
			links = append(links, l)
		}
	}
	n.mu.Unlock()
	for _, l := range links {
		l.ca.Close()
		l.cb.Close()
	}
}

// ---------------------------------------------------------------- hosts

// fakeHost is one simulated host: a Daemon on a fakeHV.
type fakeHost struct {
	ip    string
	d     *Daemon
	hv    *fakeHV
	pipes *memPipes
}

// fakePair is two hosts, a (10.0.0.1) and b (10.0.0.2), and their shared
// arbiter and network.
type fakePair struct {
	a, b *fakeHost
	net  *fakeNet
	arb  *arbiterState
}

func newFakePair(t *testing.T) *fakePair {
	t.Helper()
	log := logrus.New()
	log.SetOutput(io.Discard)
	if testing.Verbose() {
		log.SetOutput(os.Stderr)
	}
	fp := &fakePair{net: &fakeNet{hosts: map[string]*fakeHost{}},
		arb: &arbiterState{claims: map[string]string{}, unreachable: map[string]bool{}}}
	mk := func(ip string) *fakeHost {
		cfg := Config{Arbiter: ArbiterEtcd, AllowedEmulators: []string{"/nonexistent/qemu-system-x86_64"}}
		cfg.applyDefaults()
		cfg.Listen = ip + ":7480"
		pipes := &memPipes{}
		hv := &fakeHV{pipes: pipes}
		d := newDaemon(cfg, log, hv, fakeArbiter{me: ip, s: fp.arb})
		d.pipes = pipes
		d.pairings = pairingStore{dir: filepath.Join(t.TempDir(), "pairings")}
		d.dial = fp.net.dialer(ip)
		hv.hook = d.handleHook
		hv.event = d.onLifecycle
		h := &fakeHost{ip: ip, d: d, hv: hv, pipes: pipes}
		fp.net.hosts[ip] = h
		return h
	}
	fp.a, fp.b = mk("10.0.0.1"), mk("10.0.0.2")
	return fp
}

// unreachable makes the arbiter unreachable (or reachable again) from host.
func (fp *fakePair) unreachable(host string, down bool) {
	fp.arb.mu.Lock()
	fp.arb.unreachable[host] = down
	fp.arb.mu.Unlock()
}

// crash ends host h's daemon as kill -9 does: its connections, FIFO ends
// and sockets close (its runs' undo stacks) and nothing else of it is
// left; its QEMUs run on. A recording QEMU then stops with an I/O error
// when it next writes its log (packaging/qemu 0006); a replaying one reads
// the end of FIFO B.
func (fp *fakePair) crash(h *fakeHost) {
	h.d.shutdown()
	if q := h.hv.running(runUUID); q != nil {
		q.mu.Lock()
		if q.mode == "record" {
			q.ioError = true
		}
		q.mu.Unlock()
	}
}

// restart starts a new daemon on host h after crash, on the same
// libvirtd, arbiter identity and run directory, as systemd restarts it;
// it connects to libvirtd (rescan).
func (fp *fakePair) restart(h *fakeHost) {
	old := h.d
	d := newDaemon(old.cfg, old.log, h.hv, old.arb)
	d.pipes, d.pairings = old.pipes, old.pairings
	d.dial = fp.net.dialer(h.ip)
	h.hv.mu.Lock()
	h.hv.hook, h.hv.event = d.handleHook, d.onLifecycle
	h.hv.mu.Unlock()
	fp.net.mu.Lock()
	h.d = d
	fp.net.mu.Unlock()
	d.rescan()
}

// shutdown stops both daemons and every fake QEMU, so that the bubble's
// goroutines end.
func (fp *fakePair) shutdown() {
	for _, h := range []*fakeHost{fp.a, fp.b} {
		h.d.shutdown()
		h.hv.mu.Lock()
		var qs []*fakeQEMU
		for _, q := range h.hv.doms {
			qs = append(qs, q)
		}
		h.hv.doms = nil
		h.hv.mu.Unlock()
		for _, q := range qs {
			q.kill()
		}
	}
	fp.net.mu.Lock()
	links := fp.net.conns
	fp.net.mu.Unlock()
	for _, l := range links {
		l.ca.Close()
		l.cb.Close()
	}
}

func (h *fakeHost) status(t testing.TB, name string) ctl.DomainStatus {
	t.Helper()
	s := h.d.status(name)
	if len(s) != 1 {
		t.Fatalf("host %s: %d statuses for %q: %+v", h.ip, len(s), name, s)
	}
	return s[0]
}
