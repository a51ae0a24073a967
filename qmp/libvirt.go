package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"

	goqmp "github.com/digitalocean/go-qemu/qmp"
	"libvirt.org/go/libvirt"
)

// monitorDomain is the one libvirt domain method LibvirtMonitor calls;
// *libvirt.Domain satisfies it.
type monitorDomain interface {
	QemuMonitorCommand(command string, flags libvirt.DomainQemuMonitorCommandFlags) (string, error)
}

// eventSource is what LibvirtMonitor needs of a connection for events;
// *libvirt.Connect satisfies it. Events are delivered only while the caller
// runs libvirt's default event loop (libvirt.EventRunDefaultImpl).
type eventSource interface {
	DomainQemuMonitorEventRegister(dom *libvirt.Domain, event string, callback libvirt.DomainQemuMonitorEventCallback, flags libvirt.DomainQemuMonitorEventFlags) (int, error)
	DomainQemuEventDeregister(callbackID int) error
}

// LibvirtMonitor is a Monitor over libvirt's QEMU monitor pass-through
// (libvirt-qemu.h virDomainQemuMonitorCommand), so QMP can be used while
// libvirt owns the monitor socket. Commands bypass libvirt's state tracking:
// use only commands that do not change what libvirt believes (queries,
// replay-break, announce-self, savevm).
type LibvirtMonitor struct {
	dom  monitorDomain
	conn eventSource
	raw  *libvirt.Domain

	mu  sync.Mutex
	ids []int
}

// NewLibvirtMonitor returns a Monitor for dom. conn may be nil, in which case
// Events returns go-qemu's ErrEventsNotSupported.
func NewLibvirtMonitor(conn *libvirt.Connect, dom *libvirt.Domain) *LibvirtMonitor {
	m := &LibvirtMonitor{dom: dom, raw: dom}
	if conn != nil {
		m.conn = conn
	}
	return m
}

// Connect is a no-op: libvirt already holds the monitor.
func (m *LibvirtMonitor) Connect() error { return nil }

// Disconnect deregisters event callbacks.
func (m *LibvirtMonitor) Disconnect() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	var errs []error
	for _, id := range m.ids {
		if err := m.conn.DomainQemuEventDeregister(id); err != nil {
			errs = append(errs, err)
		}
	}
	m.ids = nil
	return errors.Join(errs...)
}

// Run sends one QMP command (JSON) and returns QEMU's full reply (JSON with
// "return" or "error").
func (m *LibvirtMonitor) Run(command []byte) ([]byte, error) {
	out, err := m.dom.QemuMonitorCommand(string(command), libvirt.DOMAIN_QEMU_MONITOR_COMMAND_DEFAULT)
	if err != nil {
		return nil, fmt.Errorf("libvirt monitor pass-through: %w", err)
	}
	return []byte(out), nil
}

// Events subscribes to every QEMU monitor event of the domain until ctx ends.
// Subscribe before running the command that triggers the event.
func (m *LibvirtMonitor) Events(ctx context.Context) (<-chan Event, error) {
	if m.conn == nil {
		return nil, fmt.Errorf("qmp: libvirt monitor without connection: %w", goqmp.ErrEventsNotSupported)
	}
	ch := make(chan Event, 64)
	var once sync.Once
	done := make(chan struct{})
	cb := func(_ *libvirt.Connect, _ *libvirt.Domain, ev *libvirt.DomainQemuMonitorEvent) {
		e := Event{Event: ev.Event}
		e.Timestamp.Seconds = ev.Seconds
		e.Timestamp.Microseconds = int64(ev.Micros)
		if ev.Details != "" {
			_ = json.Unmarshal([]byte(ev.Details), &e.Data)
		}
		select {
		case <-done:
		case ch <- e:
		default: // never block libvirt's event loop; drop when the reader is slow
		}
	}
	id, err := m.conn.DomainQemuMonitorEventRegister(m.raw, "", cb, 0)
	if err != nil {
		return nil, fmt.Errorf("qmp: register monitor events: %w", err)
	}
	m.mu.Lock()
	m.ids = append(m.ids, id)
	m.mu.Unlock()
	go func() {
		<-ctx.Done()
		once.Do(func() { close(done) })
		_ = m.conn.DomainQemuEventDeregister(id)
		m.mu.Lock()
		for i, x := range m.ids {
			if x == id {
				m.ids = append(m.ids[:i], m.ids[i+1:]...)
				break
			}
		}
		m.mu.Unlock()
	}()
	return ch, nil
}
