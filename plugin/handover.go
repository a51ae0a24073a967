package plugin

// Planned restarts (docs/architecture.md §6, "A planned restart"): a daemon
// that stops while systemd keeps a file descriptor store for it (sd_notify
// FDSTORE=1; systemd.service(5) FileDescriptorStoreMax=) hands every
// replicating domain's QEMU descriptors (FIFO A or B, the output gates'
// sockets) to the next process instead of closing them, and the pair goes
// on without a failover:
//
//   - the primary's VM is paused and the pair quiesced: all of FIFO A read
//     and sent, acknowledged, every gated frame released and written, the
//     backup's replay at the end of its log;
//   - the stopping daemon says ByeRestarting on the log channel; its peer
//     then waits up to the restart grace (Config.RestartGraceMS) for the
//     channel to come back (failover.Config.RestartGrace);
//   - the state the next process needs (offsets, counts, the decoder's
//     incomplete event, the gates' frame counts) goes to
//     <run dir>/handover/<uuid>.json, the descriptors to the store;
//   - the next process adopts them, the primary's daemon dials the log
//     channel again (logchan.Hello.Resume at the offset both sides hold)
//     and the VM resumes.
//
// Anything that does not fit (a domain not replicating, a quiesce that
// does not finish in time) falls back to what a crash does: the descriptors
// close, QEMU 0006 stops a recording VM, the peer's grace ends and the
// failover core decides, and the next daemon resolves what it finds
// (restart.go).

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
	"libvirt.org/go/libvirtxml"

	"github.com/libvirt-ft/libvirt-ft/failover"
	"github.com/libvirt-ft/libvirt-ft/logchan"
	"github.com/libvirt-ft/libvirt-ft/plugin/ctl"
	ftxml "github.com/libvirt-ft/libvirt-ft/xml"
)

// handoverTimeout bounds a domain's quiesce and handover when the daemon
// stops; past it the domain falls back to the crash path.
const handoverTimeout = 3 * time.Second // the whole of one domain's handOver

// resumeRetry is how often a primary dials its backup's restarting
// daemon again while the restart grace lasts.
const resumeRetry = 25 * time.Millisecond

// gateHandover is one output gate's state across a planned restart.
type gateHandover struct {
	// Frames is the number of frames the gate had read (its numbering
	// goes on from there: gate.Config.FramesBefore).
	Frames uint64 `json:"frames"`
	// Digest is the running digest of those frames (gate.Stats.Digest):
	// the next gate's digests go on from it. nil from a daemon older than
	// frame digests, or from one whose digest was another checksum (the
	// key "digest", CRC-64 until session 48; this one is "digest2",
	// gate.NextDigest's CRC-32C and CRC-32): the next gate's digests
	// cannot match the peer's, so a primary sends none and a backup
	// compares none (adoptGates). An older daemon adopting this record
	// finds no "digest" and does the same.
	Digest *uint64 `json:"digest2,omitempty"`
	// Forgotten (the backup's gates) is the last frame number the
	// primary reported sent (gate.Gate.Forget).
	Forgotten uint64 `json:"forgotten,omitempty"`
	// Leftover is what it had read of OUT beyond the last whole frame.
	Leftover []byte `json:"leftover,omitempty"`
}

// handoverRecord is one domain's run state handed from a daemon stopping
// for a planned restart to the next one (<run dir>/handover/<uuid>.json).
type handoverRecord struct {
	UUID  string `json:"uuid"`
	Name  string `json:"name"`
	Role  string `json:"role"` // ftxml.RolePrimary or ftxml.RoleBackup
	Epoch string `json:"epoch"`
	// Peer is the peer daemon's address (primary); PrimaryHost the IP of
	// the host that armed this backup (backup).
	Peer        string `json:"peer,omitempty"`
	PrimaryHost string `json:"primary_host,omitempty"`
	// DomainID is libvirt's ID of the QEMU handed over: the next daemon
	// adopts only that QEMU.
	DomainID uint `json:"domain_id"`
	// Primary: the stream decoder's Offset, Events and Instructions, its
	// incomplete event, and the bytes read from FIFO A (Offset +
	// len(Pending)).
	Offset       uint64 `json:"offset,omitempty"`
	Events       uint64 `json:"events,omitempty"`
	Instructions uint64 `json:"instructions,omitempty"`
	Pending      []byte `json:"pending,omitempty"`
	FIFORead     uint64 `json:"fifo_read,omitempty"`
	// Backup: what its feeder wrote into FIFO B (bytes, INSTRUCTION sum,
	// events), the replay's icount counted from the log's start and
	// query-replay's icount there (IcountBase: backupRun.icountBase), and
	// the backup's domain XML. A record of a daemon before IcountBase
	// has its absolute icount in Icount and no base: the adopted run
	// keeps that figure (its lag reads 0 until go-live, as it did).
	Fed        uint64 `json:"fed,omitempty"`
	FedInstr   uint64 `json:"fed_instr,omitempty"`
	FedEvents  uint64 `json:"fed_events,omitempty"`
	Icount     uint64 `json:"icount,omitempty"`
	IcountBase uint64 `json:"icount_base,omitempty"`
	BackupXML  string `json:"backup_xml,omitempty"`

	Gates []gateHandover `json:"gates,omitempty"`
	// PausedAt (primary) is when the stopping daemon paused the VM (Unix
	// ns), for the log line that says how long it stayed paused.
	PausedAt int64 `json:"paused_at,omitempty"`
	// Exact (primary): the running QEMU flushes its log before each
	// frame (qemuFlushesLog, checked when it started): gate positions
	// need no slack. Carried, not asked again: an upgrade may have put
	// another binary at the emulator's path since.
	Exact bool `json:"exact,omitempty"`
}

// handedFile is a descriptor for the store and its name there.
type handedFile struct {
	name string
	f    *os.File
}

// fdName names a descriptor of domain uuid in the store (systemd allows
// no ':' in a name).
func fdName(uuid, what string) string { return uuid + "." + what }

func gateFDNames(uuid string, j int) (out, in string) {
	return fdName(uuid, fmt.Sprintf("gate%d-out", j)), fdName(uuid, fmt.Sprintf("gate%d-in", j))
}

// ---- systemd's file descriptor store (sd_notify(3), sd_listen_fds(3)) ----

// fdStoreAvailable reports whether a service manager listens for
// notifications (NOTIFY_SOCKET) and keeps descriptors: only then can they
// outlive the process. systemd 254 and later say how many in $FDSTORE
// (FileDescriptorStoreMax=; 0 or unset there: none); older ones do not
// say, and a store they do not keep ends as a crash does.
func fdStoreAvailable() bool {
	if os.Getenv("NOTIFY_SOCKET") == "" {
		return false
	}
	v, set := os.LookupEnv("FDSTORE")
	return !set || (v != "" && v != "0")
}

// sdNotify sends state to NOTIFY_SOCKET with files attached (SCM_RIGHTS).
func sdNotify(state string, files ...*os.File) error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return errors.New("NOTIFY_SOCKET is not set: no service manager keeps descriptors")
	}
	if strings.HasPrefix(path, "@") {
		path = "\x00" + path[1:]
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var oob []byte
	if len(files) > 0 {
		fds := make([]int, len(files))
		for i, f := range files {
			fds[i] = int(f.Fd())
		}
		oob = unix.UnixRights(fds...)
	}
	return unix.Sendmsg(fd, []byte(state), oob, &unix.SockaddrUnix{Name: path}, 0)
}

// storeFile puts f in the store under name.
// FDPOLL=0: systemd must not drop it on POLLHUP (the next daemon checks
// that the QEMU is the one handed over).
func storeFile(name string, f *os.File) error {
	return sdNotify("FDSTORE=1\nFDPOLL=0\nFDNAME="+name, f)
}

// unstoreFiles removes the descriptors stored under name.
func unstoreFiles(name string) { _ = sdNotify("FDSTOREREMOVE=1\nFDNAME=" + name) }

// connFile returns a duplicate of conn's descriptor.
func connFile(c net.Conn) (*os.File, error) {
	fc, ok := c.(interface{ File() (*os.File, error) })
	if !ok {
		return nil, fmt.Errorf("a %T has no descriptor", c)
	}
	return fc.File()
}

// handoverLog is what a handover needs of FIFO A's reader
// (*logchan.RecordReader) beyond recordLog.
type handoverLog interface {
	ReadBytes() uint64
	SetReadDeadline(time.Time) error
	File() *os.File
}

// handoverFeed is what a handover needs of FIFO B's feeder
// (*logchan.Feeder) beyond replayLog.
type handoverFeed interface {
	Events() uint64
	File() *os.File
}

// ---- records ----

type handoverStore struct{ dir string }

func (s handoverStore) path(uuid string) (string, bool) {
	if s.dir == "" || !logchan.ValidUUID(uuid) {
		return "", false
	}
	return filepath.Join(s.dir, uuid+".json"), true
}

func (s handoverStore) save(r handoverRecord) error {
	p, ok := s.path(r.UUID)
	if !ok {
		return fmt.Errorf("no handover directory for %q", r.UUID)
	}
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return err
	}
	data, err := json.Marshal(r)
	if err != nil {
		return err
	}
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, p)
}

// has reports whether a record of uuid is stored.
func (s handoverStore) has(uuid string) bool {
	p, ok := s.path(uuid)
	if !ok {
		return false
	}
	_, err := os.Stat(p)
	return err == nil
}

// takeAll reads and removes every record (each is used once).
func (s handoverStore) takeAll() []handoverRecord {
	if s.dir == "" {
		return nil
	}
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return nil
	}
	var out []handoverRecord
	for _, ent := range ents {
		name := ent.Name()
		if !strings.HasSuffix(name, ".json") {
			continue
		}
		p := filepath.Join(s.dir, name)
		data, err := os.ReadFile(p)
		_ = os.Remove(p)
		if err != nil {
			continue
		}
		var r handoverRecord
		if json.Unmarshal(data, &r) == nil && logchan.ValidUUID(r.UUID) && name == r.UUID+".json" {
			out = append(out, r)
		}
	}
	return out
}

func (s handoverStore) remove(uuid string) {
	if p, ok := s.path(uuid); ok {
		_ = os.Remove(p)
	}
}

// ---- the stopping daemon ----

// handOverAll hands every replicating domain over for a planned restart
// (when a service manager keeps descriptors) and reports the UUIDs handed
// over; the others are closed as usual by shutdown.
func (d *Daemon) handOverAll() map[string]bool {
	// An adoption under way ends first (it gives up on the stop; its
	// run is closed or registered by then), and none begins after.
	d.beginStop()
	d.adoptMu.Lock()
	d.adoptMu.Unlock() //nolint:staticcheck // only waits for the holder
	done := map[string]bool{}
	if !fdStoreAvailable() {
		return done
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, dm := range d.domains() {
		r := dm.current()
		if r == nil || !r.active() {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			var rec handoverRecord
			var files []handedFile
			var err error
			switch r := r.(type) {
			case *primaryRun:
				rec, files, err = r.handOver(handoverTimeout)
			case *backupRun:
				rec, files, err = r.handOver(handoverTimeout)
			default:
				return
			}
			log := d.log.WithFields(logrus.Fields{"domain": dm.name})
			if err != nil {
				log.WithError(err).Warn("planned restart: not handed over; this domain's protection ends as in a crash")
				return
			}
			if rec.DomainID, err = d.domainID(rec.UUID); err == nil {
				err = d.handovers.save(rec)
			}
			for _, hf := range files {
				if err == nil {
					err = storeFile(hf.name, hf.f)
				}
				hf.f.Close()
			}
			if err != nil {
				d.handovers.remove(rec.UUID)
				log.WithError(err).Error("planned restart: the descriptors could not be kept; this domain's protection ends as in a crash")
				return
			}
			log.Infof("planned restart: %s handed over to the next libvirt-ftd (%d descriptors)", rec.Role, len(files))
			mu.Lock()
			done[rec.UUID] = true
			mu.Unlock()
		}()
	}
	wg.Wait()
	return done
}

// domainID returns libvirt's ID of uuid's running QEMU.
func (d *Daemon) domainID(uuid string) (uint, error) {
	running, err := d.hv.Running()
	if err != nil {
		return 0, err
	}
	for _, r := range running {
		if r.UUID == uuid {
			return r.ID, nil
		}
	}
	return 0, fmt.Errorf("domain %s is not running", uuid)
}

// pollUntil polls cond every 5 ms until it holds or timeout passes.
func pollUntil(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}

// quiet reports whether the primary's side of the pair is quiescent: FIFO
// A read to its end, everything read sent and acknowledged, every gated
// frame written to QEMU and read by it.
func (p *primaryRun) quiet() bool {
	p.mu.Lock()
	rr, gates, sent, acked := p.rr, p.gates, p.sentBytes, p.ackedBytes
	p.mu.Unlock()
	hl, ok := rr.(handoverLog)
	if !ok {
		return false
	}
	if prod, err := rr.Produced(); err != nil || prod != hl.ReadBytes() {
		return false
	}
	if acked < sent {
		return false
	}
	return gates == nil || gates.waitSent(0)
}

// pauseForRestart pauses the VM for a planned restart of either daemon;
// ReportUnprotected (the restart did not come back) or a resumed channel
// resumes it. The run is marked paused only once the pause succeeded (a
// claim that found it marked would not pause it: pauseForClaim), and
// before pauseVM may start its follow-up (pauseAfterAdoptResume), which
// reads the mark.
func (p *primaryRun) pauseForRestart(why string) bool {
	return p.pauseVM(why, adoptResumeWait, false, func() {
		p.restartPaused, p.claimPaused, p.restartPausedAt, p.pauseDoubt = true, true, time.Now(), false
	}) == nil
}

// pauseVM pauses the run's VM (env.pauseVM) once the resume that ended
// its adoption has ended (endAdoptResume, waiting up to wait), so that
// the resume's cont cannot undo the pause; every pause of a primary run
// goes through here. paused (may be nil) runs under p.mu once the VM is
// paused: the caller's marks (it must not take p.mu: no setState). When
// that resume is still under way, strict refuses to pause
// (errAdoptResumeBusy); otherwise it warns, pauses anyway, and pauses
// again once that resume has returned if the run is still paused for a
// claim or a restart (pauseAfterAdoptResume): its cont, in flight past
// wait, may have undone this pause. A pause that
// failed returns errPauseFailed and resumes nothing: if it cancelled that
// resume before its cont, the VM stays in the stopping daemon's pause
// (fail closed: a VM resumed here could run beside a backup gone live
// while a claim is undecided; helper-137).
func (p *primaryRun) pauseVM(why string, wait time.Duration, strict bool, paused func()) error {
	late := !p.endAdoptResume(wait)
	if late {
		if strict {
			return errAdoptResumeBusy
		}
		p.log.Warn("the resume that ended this run's adoption is still under way: the VM is paused now and again once that resume returns")
	}
	if !p.env.pauseVM(p.uuid, why) {
		return errPauseFailed
	}
	p.mu.Lock()
	p.pauseGen++
	if paused != nil {
		paused()
	}
	p.mu.Unlock()
	if late {
		go p.pauseAfterAdoptResume(why)
	}
	return nil
}

// pauseAfterAdoptResume waits for the adoption's resume that pauseVM
// could not wait for (adoptResumed), then pauses the VM again if the run
// is still paused for a claim or a restart (claimPaused): a cont that
// landed after pauseVM's stop must not leave the VM running while a
// split-brain claim is undecided (between that cont and this stop it
// runs for a monitor round trip: narrowed, not closed). A run that stops
// first, or whose pause was lifted meanwhile (ReportUnprotected, the
// channel resumed), is left as it is. Should the lifting come between
// the check and this stop, the VM stays paused (fail closed: a resume
// from here could land after a later claim's pause): logged, for an
// operator's virsh resume. A second pause that fails leaves the VM running
// or paused, nobody knows which (pauseDoubt): the claim's mark goes, so
// that the next claim attempt pauses again, and a resumed link or
// ReportUnprotected resumes it. When another pause succeeded while this
// one was failing (pauseGen moved), its marks are left as they are and the
// run is only marked in doubt; a second pause that succeeds after its mark
// was lifted marks it in doubt too (the VM is paused and nobody else would
// resume it).
func (p *primaryRun) pauseAfterAdoptResume(why string) {
	p.mu.Lock()
	resumed := p.adoptResumed
	p.mu.Unlock()
	if resumed == nil {
		return
	}
	select {
	case <-resumed:
	case <-p.stop:
		return
	}
	p.mu.Lock()
	still, gen := p.claimPaused, p.pauseGen
	p.mu.Unlock()
	if !still {
		return
	}
	if !p.env.pauseVM(p.uuid, why+" (again: the adoption's resume returned after the first pause)") {
		// The VM may run (the late cont landed) or still be paused
		// (it failed too): unmarked for the claim, so that the next
		// claim attempt pauses it again (pauseForClaim skips a marked
		// run, helper-140), and in doubt, so that a claim pause that
		// then fails does not take the mark back from a planned
		// restart's (helper-143). A planned restart's own mark stays:
		// the resumed link resumes the VM if it is still paused
		// (helper-145), as ReportUnprotected does for the claim. When
		// another pause succeeded meanwhile (pauseGen moved), its marks
		// stand (they may have been lifted since, or set by a claim
		// whose pause is still under way): in doubt only, which adds
		// resumes where a pause is lifted and nothing else (helper-147).
		p.mu.Lock()
		newer := p.pauseGen != gen
		if newer {
			p.pauseDoubt = true
		} else {
			p.claimPaused, p.pauseDoubt = false, true
		}
		p.mu.Unlock()
		if newer {
			p.log.Warn("pausing the VM again after the adoption's late resume failed after another pause succeeded: the VM may be paused by either; a resumed log channel or a decided claim resumes it")
			return
		}
		p.log.Warn("pausing the VM again after the adoption's late resume failed: the VM may be running or still paused; the next split-brain claim attempt pauses it, and a resumed log channel or a decided claim resumes it")
		return
	}
	p.mu.Lock()
	p.pauseGen++
	still = p.claimPaused
	// Paused for sure: out of doubt while still marked; lifted meanwhile,
	// nobody would resume it but for the doubt (helper-147).
	p.pauseDoubt = !still
	p.mu.Unlock()
	if !still {
		p.log.Error("the VM's pause was lifted while it was paused again after the adoption's late resume: it stays paused; resume it (virsh resume) if this host still runs the VM")
	}
}

// The errors of primaryRun.pauseVM.
var (
	errAdoptResumeBusy = errors.New("the VM's resume after the last adoption has not finished")
	errPauseFailed     = errors.New("cannot pause the VM")
)

// endAdoptResume stops the resume that ended this run's adoption
// (adoptPrimary) from trying again, and waits up to wait for a cont of it
// in flight: a pause after it must not be undone by it. It reports
// whether no such resume is left (true for a run not adopted).
func (p *primaryRun) endAdoptResume(wait time.Duration) bool {
	p.mu.Lock()
	cancel, resumed := p.adoptCancel, p.adoptResumed
	p.adoptCancel = nil
	p.mu.Unlock()
	if cancel != nil {
		close(cancel)
	}
	if resumed == nil {
		return true
	}
	select {
	case <-resumed:
		return true
	case <-time.After(wait):
		return false
	}
}

// runHeldResume resumes the VM (resumeVM) as the resume held by resumed
// and cancel (adoptResumed, adoptCancel): a pause's endAdoptResume stops
// it, and it does not begin once cancelled. It closes resumed when it
// returns, and reports whether QEMU said it runs.
func (p *primaryRun) runHeldResume(resumed, cancel chan struct{}) bool {
	defer close(resumed)
	select {
	case <-cancel: // a pause came first (resumeVM tries once before it looks at stop)
		return false
	case <-p.stop:
		return false
	default:
	}
	stop := make(chan struct{})
	go func() {
		select {
		case <-p.stop:
		case <-cancel:
		case <-resumed:
		}
		close(stop)
	}()
	return p.env.resumeVM(p.uuid, stop)
}

// quiesceForPeer runs when the backup's daemon said ByeRestarting: the VM
// pauses, everything FIFO A holds goes to the backup and is acknowledged,
// the gates release it, a last heartbeat tells the backup which frames
// left, and our direction of the channel closes. The backup's daemon then
// hands over and closes; receive sees that and reconnect waits for the
// next one.
func (p *primaryRun) quiesceForPeer(link *peerConn, ps *pumpState, gates *outputGates) {
	ps.mu.Lock()
	gone := ps.discard
	ps.mu.Unlock()
	if gone {
		// The failover core moved on first (the backup declared lost,
		// the VM halted: each such action discards the pump): its state
		// stands, and a VM it let run is not paused for a pairing that
		// is over (helper-117). Decided by the core's discard, not the
		// run's state: a primary still waiting for QEMU's first log
		// pauses as before (helper-118).
		link.closeWrite()
		return
	}
	const detail = "the backup host's libvirt-ftd restarts: VM paused until its log channel is back"
	if !p.setStateIf(ctl.StateReplicating, ctl.StateReplicating, detail) {
		p.setStateIf(ctl.StateWaiting, ctl.StateReplicating, detail)
	}
	p.pauseForRestart("the backup host's libvirt-ftd restarts (planned)")
	if !pollUntil(handoverTimeout, p.quiet) {
		p.log.Warn("the backup's planned restart: the pair did not quiesce in time; its daemon may not resume the pairing")
	}
	ps.setHeld(true)
	_ = link.writeHeartbeat()
	link.closeWrite()
}

// reconnect dials the backup's daemon again after its planned restart,
// every resumeRetry until the restart grace ends (then the failover core
// declares the backup lost). The backup answers a resumed channel with an
// ack (accepted) or a bye (refused).
func (p *primaryRun) reconnect(drv *failover.Driver, ps *pumpState, gates *outputGates) {
	deadline := time.Now().Add(restartGrace(p.cfg, p.env.cfg))
	qemuVer, err := p.env.hv.QEMUVersion()
	if err != nil {
		return
	}
	logVer, _ := logchan.LogVersionForQEMU(qemuVer)
	p.mu.Lock()
	epoch := p.epoch
	p.mu.Unlock()
	for p.active() && time.Now().Before(deadline) {
		if st, _ := drv.View(); !st.PeerRestarting {
			return // the grace ended: the failover core decided
		}
		link, err := p.resumeLink(qemuVer, logVer, epoch, ps.sentOnLink.Load())
		if err == nil {
			p.attach(link, drv, ps, gates)
			return
		}
		p.log.WithError(err).Debug("resuming the log channel")
		select {
		case <-p.stop:
			return
		case <-time.After(resumeRetry):
		}
	}
}

// resumeLink dials a resumed log channel at offset and waits for the
// backup's answer: its first message is an ack (the channel is accepted)
// or a bye saying why not.
func (p *primaryRun) resumeLink(qemuVer string, logVer uint32, epoch string, offset uint64) (*peerConn, error) {
	link, err := dialHello(p.env, p.peer, logchan.Hello{Protocol: logchan.ProtocolVersion, DomainUUID: p.uuid,
		QEMUVersion: qemuVer, LogVersion: logVer, Role: logchan.RolePrimary, Epoch: epoch, Resume: true, Offset: offset})
	if err != nil {
		return nil, err
	}
	_ = link.nc.SetReadDeadline(time.Now().Add(2 * time.Second))
	m, err := link.recv()
	for err == nil && m.Kind == logchan.MsgHeartbeat {
		m, err = link.recv()
	}
	_ = link.nc.SetReadDeadline(time.Time{})
	switch {
	case err != nil:
		link.Close()
		return nil, err
	case m.Kind == logchan.MsgBye:
		link.Close()
		return nil, fmt.Errorf("the backup refused to resume: %s", logchan.CleanText(m.Bye.Reason, 256))
	case m.Kind != logchan.MsgAck || m.Ack.Received != offset:
		link.Close()
		return nil, fmt.Errorf("the backup answered a resume with %v (received %d, want %d)", m.Kind, m.Ack.Received, offset)
	}
	return link, nil
}

// attach makes link (a resumed log channel) the run's, tells the failover
// core, and resumes the VM if a restart paused it.
func (p *primaryRun) attach(link *peerConn, drv *failover.Driver, ps *pumpState, gates *outputGates) {
	ps.mu.Lock()
	gone := ps.discard || ps.handover
	ps.mu.Unlock()
	p.mu.Lock()
	gone = gone || !p.active() || p.link != nil
	p.mu.Unlock()
	// Taken only while the core still waits for the backup's restart,
	// decided on its goroutine (no lock held: its actions take p.mu): a
	// grace that ended meanwhile (drain, claim) keeps the channel out.
	if gone || !drv.StepIf(func(st failover.Status) bool { return st.PeerRestarting && st.State == failover.StateReplicating }, failover.ChannelUp{}) {
		link.Close()
		return
	}
	link.released = gates.released
	link.digests = gates.digests
	link.startWriter()
	p.mu.Lock()
	if !p.active() {
		p.mu.Unlock()
		link.Close()
		return
	}
	p.link = link
	p.undo.push(func() { link.Close() })
	resume, pausedAt := p.restartPaused || p.pauseDoubt, p.restartPausedAt
	p.restartPaused, p.claimPaused, p.pauseDoubt = false, false, false
	p.mu.Unlock()
	ps.setHeld(false)
	// The state first: a channel that drops at once, or a switchover,
	// makes receive's core set the state, which must not be turned back;
	// and only while still replicating (the core acted since StepIf).
	p.setStateIf(ctl.StateReplicating, ctl.StateReplicating, "")
	go p.receive(link, drv, ps, gates)
	p.log.Info("log channel resumed after a planned restart")
	if resume {
		go func() {
			p.env.resumeVM(p.uuid, p.stop)
			p.log.Infof("the backup's planned restart: the VM ran again %d ms after it was paused", time.Since(pausedAt).Milliseconds())
		}()
	}
}

// handOver quiesces this primary for a planned restart of its own daemon
// and returns what the next process needs. On error nothing was given up:
// the run goes on (and ends with the daemon, as in a crash), the VM is
// resumed if this paused it.
func (p *primaryRun) handOver(timeout time.Duration) (rec handoverRecord, files []handedFile, err error) {
	p.mu.Lock()
	drv, ps, rr, link, gates, state := p.drv, p.ps, p.rr, p.link, p.gates, p.state
	p.mu.Unlock()
	if drv == nil || ps == nil || rr == nil || link == nil || state != ctl.StateReplicating {
		return rec, nil, fmt.Errorf("not replicating (%s)", state)
	}
	hl, ok := rr.(handoverLog)
	if !ok {
		return rec, nil, fmt.Errorf("FIFO A's reader (%T) cannot be handed over", rr)
	}
	ps.mu.Lock()
	held, discard := ps.held, ps.discard
	ps.mu.Unlock()
	if held || discard {
		return rec, nil, errors.New("the backup's daemon is restarting too, or the backup is lost")
	}
	if gates != nil && len(gates.gates) > 0 && !gates.exact {
		// Its gate positions carry the stdio slack: with the VM paused
		// the last frames would wait for log that never comes.
		return rec, nil, errors.New("the QEMU does not flush its log before each frame (not libvirt-ft's patched QEMU): a planned restart needs it")
	}
	if st, _ := drv.View(); st.State != failover.StateReplicating || !st.ChannelOpen || st.PeerRestarting || st.Hung != "" {
		return rec, nil, fmt.Errorf("the failover core is %s (channel open %v, peer restarting %v, QEMU being killed as hung: %q)", st.State, st.ChannelOpen, st.PeerRestarting, st.Hung)
	}
	deadline := time.Now().Add(timeout) // for the whole handover
	if err := p.pauseVM("libvirt-ftd restarts (planned): the VM waits for the next daemon", time.Until(deadline), true, nil); err != nil {
		return rec, nil, err
	}
	pausedAt := time.Now()
	resume := true
	defer func() {
		if resume {
			go p.env.resumeVM(p.uuid, p.stop)
		}
	}()
	if !pollUntil(time.Until(deadline), p.quiet) {
		return rec, nil, errors.New("the pair did not quiesce in time (log unread, unacknowledged, or frames held)")
	}
	// Stop the pump at its next read: nothing is in FIFO A.
	ps.mu.Lock()
	ps.handover = true
	ps.cond.Broadcast()
	ps.mu.Unlock()
	_ = hl.SetReadDeadline(time.Unix(1, 0))
	select {
	case <-ps.ended:
	case <-time.After(time.Until(deadline)):
		return rec, nil, errors.New("the log pump did not stop")
	}
	// From here on the run is given up, whatever happens: the VM stays
	// paused for the next daemon (or, failing that, for restart.go).
	resume = false
	drv.Stop()
	<-drv.Done() // the actions of its last step have run
	if st, _ := drv.View(); st.State != failover.StateReplicating || !st.ChannelOpen || st.PeerRestarting {
		return rec, nil, fmt.Errorf("the failover core left replicating during the quiesce (%s: %s)", st.State, st.Reason)
	}
	_ = link.writeHeartbeat() // the frames that left, for the backup's gates
	link.bye(logchan.Bye{Clean: true, Reason: failover.ByeRestarting})
	link.closeWrite()
	dec := ps.dec
	rec = handoverRecord{UUID: p.uuid, Name: p.name, Role: ftxml.RolePrimary, Epoch: p.epoch, Peer: p.peer,
		Offset: dec.Offset(), Events: dec.Events(), Instructions: dec.Instructions(), Pending: dec.PendingBytes(),
		FIFORead: hl.ReadBytes(), PausedAt: pausedAt.UnixNano(), Exact: gates != nil && gates.exact}
	if rec.FIFORead != rec.Offset+uint64(len(rec.Pending)) {
		return rec, nil, fmt.Errorf("FIFO A: %d bytes read, but the decoder holds %d+%d", rec.FIFORead, rec.Offset, len(rec.Pending))
	}
	if rec.Gates, files, err = detachFiles(p.uuid, hl.File(), gates); err != nil {
		return rec, nil, err
	}
	p.mu.Lock()
	p.link = nil
	p.state, p.detail = ctl.StateStopped, "handed over to the next libvirt-ftd (planned restart)"
	p.mu.Unlock()
	return rec, files, nil
}

// handOver, on the backup, quiesces the pair for a planned restart of
// this daemon: it says ByeRestarting, the primary pauses its VM, sends
// and closes; this backup feeds everything into FIFO B and lets its gates
// forget the frames the primary sent.
// Errors leave the run to end with the daemon, as in a crash (its primary
// then goes on alone when the restart grace ends).
func (b *backupRun) handOver(timeout time.Duration) (rec handoverRecord, files []handedFile, err error) {
	b.mu.Lock()
	drv, link, feeder, gates, q := b.drv, b.link, b.feeder, b.gates, b.q
	ok := b.qemuStarted && b.running && !b.goingLive && !b.live && !b.awaitingResume
	// A re-protected backup whose replay finishIncoming has not started
	// (it sets replaying, with the icount base, under b.mu just before
	// cont) has no base yet: its handover would record none.
	notStarted := b.incoming != nil && !b.incoming.replaying.Load()
	b.mu.Unlock()
	if notStarted {
		return rec, nil, errors.New("the re-protected backup's replay has not started yet")
	}
	if drv == nil || link == nil || q == nil || feeder == nil || !ok {
		return rec, nil, errors.New("not replicating")
	}
	if st, _ := drv.View(); st.State != failover.StateReplicating || !st.ChannelOpen || st.PeerRestarting {
		return rec, nil, fmt.Errorf("the failover core is %s (channel open %v, peer restarting %v)", st.State, st.ChannelOpen, st.PeerRestarting)
	}
	hf, ok := feeder.(handoverFeed)
	if !ok {
		return rec, nil, fmt.Errorf("FIFO B's feeder (%T) cannot be handed over", feeder)
	}
	// Its failover core stops first: the primary sends no heartbeat while
	// it quiesces, and this backup must not take that for a loss and go
	// live while it hands over (this daemon ends either way).
	drv.Stop()
	<-drv.Done() // the actions of its last step (a FeedEnd) have run
	if st, _ := drv.View(); st.State != failover.StateReplicating || !st.ChannelOpen || st.PeerRestarting {
		return rec, nil, fmt.Errorf("the failover core is %s (%s)", st.State, st.Reason)
	}
	deadline := time.Now().Add(timeout) // for the whole handover
	eof := make(chan struct{})
	b.mu.Lock()
	if b.goingLive || b.live {
		b.mu.Unlock()
		return rec, nil, errors.New("going live")
	}
	b.handingOver, b.linkEOF = true, eof
	b.mu.Unlock()
	link.bye(logchan.Bye{Clean: true, Reason: failover.ByeRestarting})
	select {
	case <-eof:
	case <-time.After(time.Until(deadline)):
		return rec, nil, errors.New("the primary did not close its log channel in time")
	}
	fedAll := func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		return b.fed == b.received
	}
	if !pollUntil(time.Until(deadline), fedAll) {
		return rec, nil, errors.New("the log received was not all fed into FIFO B in time")
	}
	// The replay is not waited for: it goes on reading FIFO B, whose
	// descriptor the next daemon keeps open, and its monitor cannot be
	// asked (a replay waiting for log holds it). The frames it still
	// sends wait in the gate sockets; the next daemon's gates read them
	// and forget them by the mark carried over (gateHandover.Forgotten).
	forgotten := func() bool {
		if gates == nil {
			return true
		}
		for _, g := range gates.gates {
			if g.Stats().HeldFrames > 0 {
				return false
			}
		}
		return true
	}
	if !pollUntil(time.Until(deadline), forgotten) {
		return rec, nil, errors.New("the backup's gates still hold frames the primary did not report sent")
	}
	b.mu.Lock()
	rec = handoverRecord{UUID: b.uuid, Name: b.name, Role: ftxml.RoleBackup, Epoch: b.epoch, PrimaryHost: b.primaryHost,
		Fed: b.fed, FedInstr: b.fedInstr, FedEvents: hf.Events(), Icount: b.icount, IcountBase: b.icountBase, BackupXML: b.backupXML}
	b.mu.Unlock()
	if rec.Gates, files, err = detachFiles(b.uuid, hf.File(), gates); err != nil {
		return rec, nil, err
	}
	b.mu.Lock()
	b.link = nil
	b.state, b.detail = ctl.StateStopped, "handed over to the next libvirt-ftd (planned restart)"
	b.mu.Unlock()
	link.Close()
	return rec, files, nil
}

// detachFiles detaches gates (nil: none) at a frame boundary and returns
// what the next process needs of them, with the descriptors to store:
// FIFO A or B (fifo, duplicated) and each gate's OUT and IN sockets.
func detachFiles(uuid string, fifo *os.File, gates *outputGates) (gs []gateHandover, files []handedFile, err error) {
	var conns [][2]net.Conn
	if gates != nil {
		if conns, gs, err = gates.detach(time.Second); err != nil {
			return nil, nil, err
		}
	}
	f, err := dupFile(fifo)
	if err != nil {
		return nil, nil, err
	}
	files = append(files, handedFile{fdName(uuid, "fifo"), f})
	for j, c := range conns {
		on, in := gateFDNames(uuid, j)
		for k, name := range []string{on, in} {
			f, err := connFile(c[k])
			if err != nil {
				closeHanded(files)
				return nil, nil, err
			}
			files = append(files, handedFile{name, f})
		}
	}
	return gs, files, nil
}

// dupFile duplicates f's descriptor (f stays open and its own).
func dupFile(f *os.File) (*os.File, error) {
	raw, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	nfd := -1
	var derr error
	if err := raw.Control(func(fd uintptr) { nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return nil, err
	}
	if derr != nil {
		return nil, derr
	}
	return os.NewFile(uintptr(nfd), f.Name()), nil
}

func closeHanded(files []handedFile) {
	for _, hf := range files {
		hf.f.Close()
	}
}

// ---- the next daemon ----

// inheritedFiles returns the descriptors the service manager passed
// (LISTEN_FDS, named by LISTEN_FDNAMES), by name.
func inheritedFiles() map[string]*os.File {
	out := map[string]*os.File{}
	for _, f := range activation.Files(true) {
		if old, dup := out[f.Name()]; dup {
			old.Close()
		}
		out[f.Name()] = f
	}
	return out
}

// adoptHandovers adopts the domains a daemon stopping for a planned
// restart handed over (their records and the inherited descriptors). A
// domain that cannot be adopted is left to resolve (restart.go) with its
// descriptors closed, as after a crash. The store's copies are removed
// either way.
func (d *Daemon) adoptHandovers() {
	files := d.inherited
	d.inherited = nil
	recs := d.handovers.takeAll()
	// Each domain takes its own descriptors out of files first (under
	// mu), then adopts concurrently: a primary may wait for its backup's
	// daemon up to the restart grace.
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, rec := range recs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			log := d.log.WithFields(logrus.Fields{"domain": rec.Name, "role": rec.Role, "part": "restart"})
			mu.Lock()
			own := map[string]*os.File{}
			for name, f := range files {
				if strings.HasPrefix(name, rec.UUID+".") {
					own[name] = f
					delete(files, name)
				}
			}
			mu.Unlock()
			var err error
			switch rec.Role {
			case ftxml.RolePrimary:
				err = d.adoptPrimary(rec, own)
			case ftxml.RoleBackup:
				err = d.adoptBackup(rec, own)
			default:
				err = fmt.Errorf("unknown role %q", rec.Role)
			}
			for name, f := range own {
				f.Close()
				unstoreFiles(name)
			}
			if err != nil {
				log.WithError(err).Warn("planned restart: cannot adopt the domain handed over; resolving it as after a crash")
			} else {
				log.Info("planned restart: adopted the domain handed over; protection goes on")
			}
		}()
	}
	wg.Wait()
	for name, f := range files {
		f.Close()
		unstoreFiles(name)
	}
}

// adoptHandoversUnlessStopping runs adoptHandovers unless the daemon
// began to stop: a daemon already stopping for a planned restart leaves the
// records in the store and the descriptors in systemd's store, for the
// next daemon to adopt.
func (d *Daemon) adoptHandoversUnlessStopping() {
	d.adoptMu.Lock()
	defer d.adoptMu.Unlock()
	if d.isStopping() {
		if len(d.inherited) > 0 {
			d.log.Info("planned restart: stopping again before adopting; the domains handed over stay for the next libvirt-ftd")
		}
		return
	}
	d.adoptHandovers()
}

// takeFile removes name from files and the store, returning it.
func takeFile(files map[string]*os.File, name string) (*os.File, error) {
	f, ok := files[name]
	if !ok {
		return nil, fmt.Errorf("the descriptor %s was not passed (is FileDescriptorStoreMax set in the unit?)", name)
	}
	delete(files, name)
	unstoreFiles(name)
	return f, nil
}

// takeGateConns takes the n gates' OUT and IN sockets of uuid.
func takeGateConns(files map[string]*os.File, uuid string, n int) ([][2]net.Conn, error) {
	var conns [][2]net.Conn
	fail := func(err error) ([][2]net.Conn, error) {
		for _, c := range conns {
			c[0].Close()
			c[1].Close()
		}
		return nil, err
	}
	for j := 0; j < n; j++ {
		var pair [2]net.Conn
		on, in := gateFDNames(uuid, j)
		for k, name := range []string{on, in} {
			f, err := takeFile(files, name)
			if err != nil {
				if k == 1 {
					pair[0].Close()
				}
				return fail(err)
			}
			c, err := net.FileConn(f)
			f.Close()
			if err != nil {
				if k == 1 {
					pair[0].Close()
				}
				return fail(fmt.Errorf("%s: %w", name, err))
			}
			pair[k] = c
		}
		conns = append(conns, pair)
	}
	return conns, nil
}

// adoptedQEMU checks that rec's QEMU still runs (the same libvirt ID) and
// returns its definition.
func (d *Daemon) adoptedQEMU(rec handoverRecord) (DomainDef, error) {
	running, err := d.hv.Running()
	if err != nil {
		return DomainDef{}, err
	}
	for _, r := range running {
		if r.UUID == rec.UUID {
			if r.ID != rec.DomainID {
				return DomainDef{}, fmt.Errorf("its QEMU changed (libvirt ID %d, handed over %d)", r.ID, rec.DomainID)
			}
			return r, nil
		}
	}
	return DomainDef{}, errors.New("its QEMU is gone")
}

// adoptResumeWait bounds how long the pause for the backup's planned
// restart waits for the adoption's resume in flight (endAdoptResume):
// well inside the backup's own handover bound (handoverTimeout), which
// also covers the quiesce after that pause.
const adoptResumeWait = time.Second

// adoptCheckTimeout bounds adoptPrimary's wait for the QEMU's answer to
// query-replay once the pump reads FIFO A again (a QEMU that drained into
// FIFO A answers within milliseconds).
const adoptCheckTimeout = 10 * time.Second

// adoptPrimary rebuilds a primary run from a handover and resumes its log
// channel; the VM, paused by the stopping daemon, resumes once the backup
// accepted.
func (d *Daemon) adoptPrimary(rec handoverRecord, files map[string]*os.File) error {
	def, err := d.adoptedQEMU(rec)
	if err != nil {
		return err
	}
	// Its QEMU is asked for its replay mode only once the pump reads
	// FIFO A again (below): paused, it may still log (incoming frames,
	// checkpoints), and a QEMU blocked on a full FIFO A answers no
	// monitor command until the FIFO is read (seen in CI, e2e/faults
	// restart-a: the next daemon waited on query-replay while the QEMU's
	// main loop sat in write(2) on FIFO A, and the backup went live).
	cfg, present, err := ftxml.ParseConfig(def.XML)
	if err != nil || !present {
		return fmt.Errorf("its definition has no ft element (%v)", err)
	}
	var dom libvirtxml.Domain
	if dom.Unmarshal(def.XML) == nil && dom.Devices != nil && len(dom.Devices.RNGs) > 0 {
		// Protected by an older libvirt-ftd, which accepted an <rng>
		// (xml/validate.go refuses it now): the pause and resume of
		// this restart may already have made its backup diverge.
		d.log.WithField("domain", rec.Name).Warn("this protected domain has an <rng> device, which libvirt-ft now refuses (QEMU does not replay it exactly): its backup may diverge and be halted after this restart; shut the VM down, remove the <rng> and start it again")
	}
	e := d.env()
	ff, err := takeFile(files, fdName(rec.UUID, "fifo"))
	if err != nil {
		return err
	}
	rr, err := logchan.AdoptRecordReader(ff, rec.FIFORead)
	if err != nil {
		ff.Close()
		return err
	}
	dec, err := logchan.ResumeStreamDecoder(rec.Offset, rec.Events, rec.Instructions, rec.Pending)
	if err != nil {
		rr.Close()
		return err
	}
	p := newPrimaryRun(e, rec.UUID, rec.Name, *cfg)
	p.peer, p.epoch, p.running = rec.Peer, rec.Epoch, true
	// A VM that went live here (re-protected since) still runs with the
	// backup's definition. What a re-protection after its backup's loss
	// arms from (protect.go): the persistent definition, not libvirt's
	// live XML (reprotectBase).
	p.liveXML = cfg.Role == ftxml.RoleBackup
	if base, berr := d.reprotectBase(def); berr != nil {
		// Not re-protectable (reprotectable says why).
		p.log.WithError(berr).Warn("adopted: no primary definition to re-protect it from")
	} else {
		p.primaryXML = base
	}
	p.sentBytes, p.ackedBytes, p.logInstr = rec.Offset, rec.Offset, rec.Instructions
	p.restartPaused, p.claimPaused = true, true
	p.undo.push(func() { rr.Close() })
	gates := &outputGates{}
	if len(rec.Gates) > 0 {
		conns, err := takeGateConns(files, rec.UUID, len(rec.Gates))
		if err != nil {
			p.close("adoption failed")
			return err
		}
		gates.exact = rec.Exact
		slack := uint64(stdioSlackBytes)
		if gates.exact {
			slack = 0
		}
		if err := adoptGates(e, gates, conns, rec.Gates, func(int) func() uint64 {
			return func() uint64 {
				pos, err := rr.Produced()
				if err != nil {
					return ^uint64(0) >> 1
				}
				return pos + slack
			}
		}); err != nil {
			p.close("adoption failed")
			return err
		}
	}
	p.mu.Lock()
	p.gates = gates // released by close from here on
	p.mu.Unlock()
	p.undo.push(func() { p.releaseGates() })
	qemuVer, err := e.hv.QEMUVersion()
	if err != nil {
		p.close("adoption failed")
		return err
	}
	logVer, _ := logchan.LogVersionForQEMU(qemuVer)
	var link *peerConn
	deadline := time.Now().Add(restartGrace(*cfg, d.cfg))
	for {
		if d.isStopping() {
			// Stopping again: give up now (the crash path) rather than
			// hold the stop for the rest of the grace.
			p.close("adoption failed")
			return errors.New("this daemon began to stop during the adoption")
		}
		link, err = p.resumeLink(qemuVer, logVer, rec.Epoch, rec.Offset)
		if err == nil || time.Now().After(deadline) {
			break
		}
		select {
		case <-d.stopping: // checked at the loop's top
		case <-time.After(resumeRetry):
		}
	}
	if err != nil {
		p.close("adoption failed")
		return fmt.Errorf("the backup on %s did not resume the log channel: %w", rec.Peer, err)
	}
	link.released = gates.released
	link.digests = gates.digests
	link.startWriter()
	p.undo.push(func() { link.Close() })
	// The resume that ends this adoption (below) must not undo a pause
	// that comes after it (a handover, a claim, the backup's restart):
	// set before the pump starts the failover core, whose actions may
	// pause; ended by endAdoptResume.
	resumed, cancel := make(chan struct{}), make(chan struct{})
	p.mu.Lock()
	p.recordFIFO, p.rr, p.link, p.gates = ftxml.RecordFIFOPath(*cfg, rec.UUID), rr, link, gates
	p.state, p.detail = ctl.StateReplicating, "resumed after a planned restart of libvirt-ftd"
	p.restartPaused, p.claimPaused = false, false
	p.adoptResumed, p.adoptCancel = resumed, cancel
	p.mu.Unlock()
	go p.pump(rr, link, gates, dec)
	// A primary handed over still records (the check waits for a QEMU
	// blocked on FIFO A until the pump has read it). A failure, or no
	// answer within adoptCheckTimeout (libvirt's monitor call cannot be
	// cancelled: its goroutine ends when the QEMU answers or goes),
	// leaves the domain to the crash path, as the failures above do.
	check := make(chan error, 1)
	go func() { check <- d.replayModeIs(rec.UUID, "record") }()
	var cerr error
	select {
	case cerr = <-check:
	case <-time.After(adoptCheckTimeout):
		cerr = fmt.Errorf("its QEMU did not answer query-replay within %v", adoptCheckTimeout)
	case <-d.stopping:
		cerr = errors.New("this daemon began to stop during the adoption")
	}
	if cerr != nil {
		close(resumed) // no resume: nothing for a pause to wait for
		p.close("adoption failed")
		return cerr
	}
	dm := d.entry(rec.UUID, rec.Name)
	dm.setRun(p)
	p.startNotes()
	go d.autoReprotect(dm, p) // should its backup be lost
	go func() {
		if p.runHeldResume(resumed, cancel) && rec.PausedAt > 0 {
			p.log.Infof("planned restart: the VM ran again %d ms after the stopping daemon paused it", time.Since(time.Unix(0, rec.PausedAt)).Milliseconds())
		}
	}()
	return nil
}

// adoptBackup rebuilds a backup run from a handover: its failover core
// starts at once (a primary that does not resume the log channel within
// the heartbeat timeout is lost: the backup goes live), and the primary's
// daemon dials it again (serveLog with Resume).
func (d *Daemon) adoptBackup(rec handoverRecord, files map[string]*os.File) error {
	// Its QEMU is not asked for its replay mode: a replay waiting for
	// log holds its monitor until log comes, and the log comes only once
	// this run is adopted. The stopping daemon handed it over only after
	// its failover core had stopped short of any go-live (handOver).
	if _, err := d.adoptedQEMU(rec); err != nil {
		return err
	}
	cfg, present, err := ftxml.ParseConfig(rec.BackupXML)
	if err != nil || !present {
		return fmt.Errorf("the backup's XML has no ft element (%v)", err)
	}
	e := d.env()
	ff, err := takeFile(files, fdName(rec.UUID, "fifo"))
	if err != nil {
		return err
	}
	feeder, err := logchan.AdoptFeeder(ff, rec.Fed, rec.FedInstr, rec.FedEvents)
	if err != nil {
		ff.Close()
		return err
	}
	dm := d.entry(rec.UUID, rec.Name)
	b := &backupRun{env: e, uuid: rec.UUID, name: rec.Name, cfg: *cfg, backupXML: rec.BackupXML, primaryHost: rec.PrimaryHost,
		epoch: rec.Epoch, promote: func(p *primaryRun) { dm.setRun(p); go d.autoReprotect(dm, p) }, stop: make(chan struct{}), wake: make(chan struct{}, 1),
		state: ctl.StateReplicating, detail: "adopted after a planned restart of libvirt-ftd: waiting for the primary's log channel",
		log:         e.log.WithFields(logrus.Fields{"domain": rec.Name, "role": ftxml.RoleBackup}),
		qemuStarted: true, running: true, fed: rec.Fed, received: rec.Fed, fedInstr: rec.FedInstr, icount: rec.Icount, icountBase: rec.IcountBase,
		awaitingResume: true, replayFIFO: ftxml.ReplayFIFOPath(*cfg, rec.UUID), feeder: feeder}
	b.undo.push(func() { feeder.Close() })
	gates := &outputGates{exact: true, backup: true}
	if len(rec.Gates) > 0 {
		conns, err := takeGateConns(files, rec.UUID, len(rec.Gates))
		if err != nil {
			b.close("adoption failed")
			return err
		}
		if err := adoptGates(e, gates, conns, rec.Gates, func(j int) func() uint64 {
			var seq sync.Mutex
			n := rec.Gates[j].Frames
			return func() uint64 {
				seq.Lock()
				defer seq.Unlock()
				n++
				return n
			}
		}); err != nil {
			b.close("adoption failed")
			return err
		}
	}
	b.gates = gates
	b.undo.push(b.releaseGates)
	// The core first, then the run is published (a resume may come at
	// once): the primary's channel is expected back within the restart
	// grace, as if its daemon had said ByeRestarting to this one.
	if !b.startCore(failover.PeerBye{Clean: true, Reason: failover.ByeRestarting}) {
		b.close("adoption failed")
		return errors.New("the run closed while it started")
	}
	if _, err := d.adoptedQEMU(rec); err != nil {
		b.close("adoption failed")
		return err
	}
	dm.setRun(b)
	go b.sampleIcount()
	return nil
}

// replayModeIs checks that uuid's QEMU is in the replay mode want
// (query-replay): a primary handed over still records. (Never asked of a
// replaying backup: see adoptBackup.)
func (d *Daemon) replayModeIs(uuid, want string) error {
	client, release, err := d.env().qmp(uuid)
	if err != nil {
		return err
	}
	defer release()
	ri, err := client.QueryReplay()
	if err != nil {
		return err
	}
	if ri.Mode != want {
		return fmt.Errorf("its QEMU is in replay mode %q, not %q", ri.Mode, want)
	}
	return nil
}
