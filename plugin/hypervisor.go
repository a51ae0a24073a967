package plugin

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"libvirt.org/go/libvirt"

	"github.com/libvirt-ft/libvirt-ft/qmp"
)

// Hypervisor is what libvirt-ftd needs of the local libvirtd, declared
// here where it is used, as kubevirt's virtwrap/cli does: the daemon and
// its runs never hold a *libvirt.Connect or *libvirt.Domain. libvirtHV
// (libvirt.go) implements it over a reconnecting connection; the unit
// tests use an in-memory fake.
//
// Domains are named by UUID (canonical text form) except where libvirt's
// events and the hook give a name. Every method fails with ErrNotConnected
// while libvirtd is unreachable.
type Hypervisor interface {
	// QEMUVersion is the local QEMU's version as libvirt reports it
	// ("7.2.22").
	QEMUVersion() (string, error)
	// EmulatorBuild identifies the QEMU binary at path on this host: the
	// first line of its --version and the SHA-256 of the file, e.g.
	// "QEMU emulator version 7.2.22 (libvirt-ft), sha256 3f0c…" (first 16
	// hex digits). A primary and its backup must run the same build: the
	// patches in packaging/qemu change what the log holds and how a replay
	// reads it, and --version does not name them. Errors: the file cannot
	// be read or run.
	EmulatorBuild(path string) (string, error)
	// DomainNames lists every domain libvirt knows (for a rescan).
	DomainNames() ([]string, error)
	// Definition returns a domain's persistent definition (inactive XML)
	// and UUID. ok is false for a transient domain or no such domain.
	Definition(name string) (def DomainDef, ok bool, err error)
	// Running lists the running domains with their live XML (a
	// restarted daemon resolves the protected ones, restart.go).
	Running() ([]DomainDef, error)
	// IsActive reports whether the domain runs; false without error when
	// there is no such domain.
	IsActive(uuid string) (bool, error)
	// Define defines (or redefines) a persistent domain
	// (virDomainDefineXML).
	Define(xml string) error
	// Create starts a transient domain from xml (virDomainCreateXML);
	// libvirt runs the hooks on the way.
	Create(xml string) error
	// CreatePaused is Create with VIR_DOMAIN_START_PAUSED: QEMU starts
	// with -S (virsh create --paused).
	CreatePaused(xml string) error
	// Destroy stops the domain's QEMU at once (virDomainDestroy). gone
	// reports that no QEMU of it runs any more (also when there was none).
	Destroy(uuid string) (gone bool, err error)
	// Kill ends the domain's QEMU with SIGKILL, bypassing libvirt's
	// destroy (which sends SIGTERM first: a QEMU that still runs its main
	// loop then ends its record log with END). It asks libvirt nothing
	// (libvirtd may be what is stuck): name is the domain's name, for
	// libvirt's pid file. libvirt sees QEMU die and cleans up as for a
	// crash. Errors: no running QEMU of uuid could be found.
	Kill(uuid, name string) error
	// MonitorBusy reports, without taking a libvirt job (so even while
	// another call holds one), whether libvirt sees the domain running
	// (virDomainGetState) and for how long a command on its monitor has
	// been waiting for QEMU's answer, 0 if none (virDomainGetControlInfo:
	// VIR_DOMAIN_CONTROL_OCCUPIED).
	MonitorBusy(uuid string) (running bool, busy time.Duration, err error)
	// VCPUTime is the CPU time the running domain's vCPU threads have used
	// since QEMU started, summed (SchedTimes' VCPURun: the scheduler's
	// run time from /proc, found as SchedTimes finds the QEMU of name;
	// neither libvirt nor the QEMU monitor is asked, so no cgo call holds
	// the daemon's Go P every vcpuWindow). Errors: no running QEMU of
	// uuid (errNoQEMU for a domain that stopped).
	VCPUTime(uuid, name string) (time.Duration, error)
	// SchedTimes reads the scheduler's times of the running domain's
	// QEMU threads (readSchedTimes), found as Kill finds it: name's pid
	// file, checked against uuid; neither libvirt nor the monitor is
	// asked. Errors: no running QEMU of uuid could be found or read.
	SchedTimes(uuid, name string) (SchedTimes, error)
	// Monitor opens a QMP monitor on the running domain (libvirt's
	// monitor pass-through); Disconnect releases it.
	Monitor(uuid string) (qmp.Monitor, error)
	// SetLiveNote sets the running domain's title and description
	// (libvirt metadata, VIR_DOMAIN_AFFECT_LIVE: never the persistent
	// definition, never guest-visible); what virsh list --title and
	// virt-manager show.
	SetLiveNote(uuid, title, description string) error
}

// DomainDef is a persistent domain definition.
type DomainDef struct {
	UUID string
	Name string
	// ID is libvirt's domain ID (Running only): a new one at every start.
	ID uint
	// XML is the inactive definition (VIR_DOMAIN_XML_INACTIVE), or the
	// live XML from Running.
	XML string
}

// ErrNotConnected is returned while libvirtd is unreachable.
var ErrNotConnected = errors.New("plugin: not connected to libvirtd")

// LifecycleKind is the part of libvirt's lifecycle events the daemon acts
// on (libvirt.DomainEventType).
type LifecycleKind int

// Lifecycle events.
const (
	EventDefined LifecycleKind = iota + 1
	EventUndefined
	EventStopped
	// EventGuestShutdown: the guest itself shut the VM down (libvirt's
	// VIR_DOMAIN_EVENT_SHUTDOWN_GUEST, QEMU's SHUTDOWN with guest=true),
	// not a signal or a quit from the host; a replaying QEMU reports the
	// recorded guest's. EventStopped follows.
	EventGuestShutdown
)

// LifecycleEvent is one domain lifecycle event from libvirt.
type LifecycleEvent struct {
	Kind       LifecycleKind
	Name, UUID string
	// Shutdown (EventStopped): QEMU ended after a SHUTDOWN (libvirt's
	// VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN: the guest's, or a signal or quit
	// from the host; EventGuestShutdown tells them apart), not a
	// destroy, a crash or a failed start.
	Shutdown bool
}

// libvirtHV implements Hypervisor on the daemon's libvirt connection.
type libvirtHV struct{ lv *libvirtConn }

func (h libvirtHV) QEMUVersion() (string, error) {
	conn, err := h.lv.get()
	if err != nil {
		return "", err
	}
	v, err := conn.GetVersion()
	if err != nil {
		return "", fmt.Errorf("asking libvirt for the QEMU version: %w", err)
	}
	return fmt.Sprintf("%d.%d.%d", v/1000000, v/1000%1000, v%1000), nil
}

func (h libvirtHV) EmulatorBuild(path string) (string, error) { return emulatorBuild(path) }

func (h libvirtHV) DomainNames() ([]string, error) {
	conn, err := h.lv.get()
	if err != nil {
		return nil, err
	}
	doms, err := conn.ListAllDomains(0)
	if err != nil {
		return nil, fmt.Errorf("listing domains: %w", err)
	}
	var names []string
	for i := range doms {
		if name, err := doms[i].GetName(); err == nil {
			names = append(names, name)
		}
		doms[i].Free()
	}
	return names, nil
}

func (h libvirtHV) Definition(name string) (DomainDef, bool, error) {
	conn, err := h.lv.get()
	if err != nil {
		return DomainDef{}, false, err
	}
	dom, err := conn.LookupDomainByName(name)
	if err != nil {
		if isNoDomain(err) {
			return DomainDef{}, false, nil
		}
		return DomainDef{}, false, err
	}
	defer dom.Free()
	persistent, err := dom.IsPersistent()
	if err != nil || !persistent {
		return DomainDef{}, false, err
	}
	xml, err := dom.GetXMLDesc(libvirt.DOMAIN_XML_INACTIVE)
	if err != nil {
		return DomainDef{}, false, fmt.Errorf("reading the definition of %q: %w", name, err)
	}
	uuid, err := dom.GetUUIDString()
	if err != nil {
		return DomainDef{}, false, err
	}
	return DomainDef{UUID: uuid, Name: name, XML: xml}, true, nil
}

func (h libvirtHV) Running() ([]DomainDef, error) {
	conn, err := h.lv.get()
	if err != nil {
		return nil, err
	}
	doms, err := conn.ListAllDomains(libvirt.CONNECT_LIST_DOMAINS_ACTIVE)
	if err != nil {
		return nil, fmt.Errorf("listing running domains: %w", err)
	}
	var out []DomainDef
	for i := range doms {
		name, nerr := doms[i].GetName()
		uuid, uerr := doms[i].GetUUIDString()
		xml, xerr := doms[i].GetXMLDesc(0)
		id, ierr := doms[i].GetID()
		if nerr == nil && uerr == nil && xerr == nil && ierr == nil {
			out = append(out, DomainDef{UUID: uuid, Name: name, XML: xml, ID: id})
		}
		doms[i].Free()
	}
	return out, nil
}

func (h libvirtHV) IsActive(uuid string) (bool, error) {
	conn, err := h.lv.get()
	if err != nil {
		return false, err
	}
	dom, err := conn.LookupDomainByUUIDString(uuid)
	if err != nil {
		if isNoDomain(err) {
			return false, nil
		}
		return false, err
	}
	defer dom.Free()
	return dom.IsActive()
}

func (h libvirtHV) SetLiveNote(uuid, title, description string) error {
	conn, err := h.lv.get()
	if err != nil {
		return err
	}
	dom, err := conn.LookupDomainByUUIDString(uuid)
	if err != nil {
		return err
	}
	defer dom.Free()
	if err := dom.SetMetadata(libvirt.DOMAIN_METADATA_TITLE, title, "", "", libvirt.DOMAIN_AFFECT_LIVE); err != nil {
		return err
	}
	return dom.SetMetadata(libvirt.DOMAIN_METADATA_DESCRIPTION, description, "", "", libvirt.DOMAIN_AFFECT_LIVE)
}

func (h libvirtHV) Define(xml string) error {
	conn, err := h.lv.get()
	if err != nil {
		return err
	}
	dom, err := conn.DomainDefineXML(xml)
	if err != nil {
		return err
	}
	return dom.Free()
}

func (h libvirtHV) Create(xml string) error { return h.create(xml, 0) }

func (h libvirtHV) CreatePaused(xml string) error { return h.create(xml, libvirt.DOMAIN_START_PAUSED) }

func (h libvirtHV) create(xml string, flags libvirt.DomainCreateFlags) error {
	conn, err := h.lv.get()
	if err != nil {
		return err
	}
	dom, err := conn.DomainCreateXML(xml, flags)
	if err != nil {
		return err
	}
	return dom.Free()
}

func (h libvirtHV) Destroy(uuid string) (bool, error) {
	conn, err := h.lv.get()
	if err != nil {
		return false, err
	}
	dom, err := conn.LookupDomainByUUIDString(uuid)
	if err != nil {
		return isNoDomain(err), err
	}
	defer dom.Free()
	if active, err := dom.IsActive(); err == nil && !active {
		return true, nil
	}
	if err := dom.Destroy(); err != nil {
		return isNoDomain(err), err
	}
	return true, nil
}

// qemuPidDir is where the QEMU driver of a system libvirt (libvirtd or
// virqemud) keeps a running domain's pid file, NAME.pid (libvirt's
// qemu_conf.c, stateDir).
const qemuPidDir = "/run/libvirt/qemu"

// qemuPidFile is libvirt's pid file of domain name's QEMU (in
// qemuPidDir). Errors: a name that cannot be a file name there.
func qemuPidFile(name string) (string, error) {
	if name == "" || strings.ContainsAny(name, "/\x00") {
		return "", fmt.Errorf("domain name %q: no pid file to read", name)
	}
	return filepath.Join(qemuPidDir, name+".pid"), nil
}

func (h libvirtHV) Kill(uuid, name string) error {
	pidFile, err := qemuPidFile(name)
	if err != nil {
		return err
	}
	return killQEMU(pidFile, uuid)
}

func (h libvirtHV) SchedTimes(uuid, name string) (SchedTimes, error) {
	pidFile, err := qemuPidFile(name)
	if err != nil {
		return SchedTimes{}, err
	}
	pid, err := readQEMUPid(pidFile)
	if errors.Is(err, fs.ErrNotExist) {
		return SchedTimes{}, fmt.Errorf("%w: %v", errNoQEMU, err)
	}
	if err != nil {
		return SchedTimes{}, err
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if errors.Is(err, fs.ErrPermission) {
		// Not a stopped domain: say so (watchSched warns once). As
		// root, libvirt-ftd does not meet hidepid; a confined daemon
		// (an AppArmor profile without ptrace read) may get EPERM.
		return SchedTimes{}, fmt.Errorf("reading QEMU pid %d's command line: %w", pid, err)
	}
	if err != nil || !runsDomain(cmdline, uuid) {
		return SchedTimes{}, fmt.Errorf("%w: pid %d from %s does not run domain %s", errNoQEMU, pid, pidFile, uuid)
	}
	st, err := readSchedTimes("/proc", pid)
	if errors.Is(err, fs.ErrNotExist) {
		return SchedTimes{}, fmt.Errorf("%w: %v", errNoQEMU, err)
	}
	return st, err
}

// killQEMU sends SIGKILL to the QEMU whose pid pidFile holds, once its
// command line shows it runs domain uuid (libvirt passes -uuid): a pid
// file left from an earlier QEMU must not make it kill another process.
// The process is held by a pidfd from before the check to the signal, so
// a pid reused in between is not signalled.
func killQEMU(pidFile, uuid string) error {
	pid, err := readQEMUPid(pidFile)
	if err != nil {
		return err
	}
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return fmt.Errorf("QEMU pid %d from %s: %w", pid, pidFile, err)
	}
	defer unix.Close(pidfd)
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return fmt.Errorf("QEMU pid %d from %s: %w", pid, pidFile, err)
	}
	if !runsDomain(cmdline, uuid) {
		return fmt.Errorf("pid %d from %s does not run domain %s", pid, pidFile, uuid)
	}
	if err := unix.PidfdSendSignal(pidfd, unix.SIGKILL, nil, 0); err != nil {
		return fmt.Errorf("SIGKILL to QEMU pid %d: %w", pid, err)
	}
	return nil
}

// readQEMUPid reads the pid in libvirt's pid file of a QEMU. Errors: the
// file cannot be read, or holds no pid above 1.
func readQEMUPid(pidFile string) (int, error) {
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return 0, fmt.Errorf("QEMU's pid: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return 0, fmt.Errorf("QEMU's pid file %s holds %q, not a pid", pidFile, b)
	}
	return pid, nil
}

// runsDomain reports whether a QEMU command line (/proc/PID/cmdline: NUL-
// separated arguments) holds libvirt's -uuid of domain uuid.
func runsDomain(cmdline []byte, uuid string) bool {
	return strings.Contains(strings.ToLower(string(cmdline)), "\x00-uuid\x00"+strings.ToLower(uuid)+"\x00")
}

func (h libvirtHV) MonitorBusy(uuid string) (bool, time.Duration, error) {
	conn, err := h.lv.get()
	if err != nil {
		return false, 0, err
	}
	dom, err := conn.LookupDomainByUUIDString(uuid)
	if err != nil {
		return false, 0, err
	}
	defer dom.Free()
	state, _, err := dom.GetState()
	if err != nil {
		return false, 0, err
	}
	ci, err := dom.GetControlInfo(0)
	if err != nil {
		return false, 0, err
	}
	var busy time.Duration
	if ci.State == libvirt.DOMAIN_CONTROL_OCCUPIED {
		busy = time.Duration(ci.StateTime) * time.Millisecond
	}
	return state == libvirt.DOMAIN_RUNNING, busy, nil
}

func (h libvirtHV) VCPUTime(uuid, name string) (time.Duration, error) {
	st, err := h.SchedTimes(uuid, name)
	if err != nil {
		return 0, err
	}
	return st.VCPURun, nil
}

func (h libvirtHV) Monitor(uuid string) (qmp.Monitor, error) {
	conn, err := h.lv.get()
	if err != nil {
		return nil, err
	}
	dom, err := conn.LookupDomainByUUIDString(uuid)
	if err != nil {
		return nil, err
	}
	return &ownedMonitor{LibvirtMonitor: qmp.NewLibvirtMonitor(conn, dom), dom: dom}, nil
}

// ownedMonitor frees its domain handle on Disconnect.
type ownedMonitor struct {
	*qmp.LibvirtMonitor
	dom *libvirt.Domain
}

func (m *ownedMonitor) Disconnect() error {
	err := m.LibvirtMonitor.Disconnect()
	return errors.Join(err, m.dom.Free())
}

// isNoDomain reports whether err is libvirt's "no such domain".
func isNoDomain(err error) bool {
	var lerr libvirt.Error
	return errors.As(err, &lerr) && lerr.Code == libvirt.ERR_NO_DOMAIN
}

// isGoneOrStopping reports whether err says the domain is gone (no such
// domain) or not running (libvirt's VIR_ERR_OPERATION_INVALID, "domain is
// not running": a domain being torn down): an ending run, not a failure.
func isGoneOrStopping(err error) bool {
	var lerr libvirt.Error
	return isNoDomain(err) || (errors.As(err, &lerr) && lerr.Code == libvirt.ERR_OPERATION_INVALID)
}
