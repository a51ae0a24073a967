package plugin

import (
	"strings"
	"sync"
	"time"

	"github.com/libvirt-ft/libvirt-ft/failover"
	ftxml "github.com/libvirt-ft/libvirt-ft/xml"
)

// TickInterval is the duration of one failover tick. The failover core
// counts heartbeat intervals and timeouts in ticks (failover.Config).
const TickInterval = 10 * time.Millisecond

// driver owns one failover.Node: a single goroutine calls Tick every
// TickInterval, Step for each posted event, and hands every action from
// Ready to exec. exec must not block for long: slow actions (locks, go-live,
// QMP) run in their own goroutines and post their results as events.
type driver struct {
	node   *failover.Node
	events chan failover.Event
	exec   func(failover.Action)
	stop   chan struct{}
	once   sync.Once

	mu      sync.Mutex
	status  failover.Status
	timings failover.Timings
}

func ticks(d time.Duration) int {
	t := int(d / TickInterval)
	if t < 1 {
		t = 1
	}
	return t
}

// newDriver starts the failover core of one domain. sample is the
// daemon's status interval (how often a backup samples its QEMU): the
// stall bound is at least ten of them, so that a stall is never a matter
// of a sample or two.
func newDriver(role failover.Role, cfg ftxml.Config, sample time.Duration, exec func(failover.Action)) (*driver, error) {
	n, err := failover.New(failover.Config{Role: role,
		HeartbeatInterval: ticks(cfg.HeartbeatInterval), HeartbeatTimeout: ticks(cfg.HeartbeatTimeout),
		StallTimeout: max(ticks(cfg.Stall()), 10*ticks(sample))})
	if err != nil {
		return nil, err
	}
	d := &driver{node: n, events: make(chan failover.Event, 4096), exec: exec, stop: make(chan struct{})}
	d.snapshot()
	return d, nil
}

// post hands an event to the driver; it never blocks once the driver stopped.
func (d *driver) post(ev failover.Event) {
	select {
	case d.events <- ev:
	case <-d.stop:
	}
}

func (d *driver) close() { d.once.Do(func() { close(d.stop) }) }

func (d *driver) run() {
	t := time.NewTicker(TickInterval)
	defer t.Stop()
	for {
		select {
		case <-d.stop:
			return
		case <-t.C:
			d.node.Tick()
		case ev := <-d.events:
			d.node.Step(ev)
		}
		for _, a := range d.node.Ready() {
			d.exec(a)
		}
		d.snapshot()
	}
}

func (d *driver) snapshot() {
	d.mu.Lock()
	d.status, d.timings = d.node.Status(), d.node.Timings()
	d.mu.Unlock()
}

func (d *driver) view() (failover.Status, failover.Timings) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.status, d.timings
}

// byeDetailSep separates a Bye's reason from an optional detail for the
// operator (the backup's go-live timings in a ByeLive).
const byeDetailSep = "|"

// Bye frames carry "clean:" or "unclean:" and the reason (failover.Bye*),
// optionally followed by byeDetailSep and a detail.
func encodeBye(clean bool, reason string) string {
	if clean {
		return "clean:" + reason
	}
	return "unclean:" + reason
}

// splitByeDetail splits a received Bye's reason from its detail. Only a
// clean ByeLive carries one (backupAction); any other reason is taken
// whole, even if it contains byeDetailSep.
func splitByeDetail(clean bool, text string) (reason, detail string) {
	if r, d, ok := strings.Cut(text, byeDetailSep); ok && clean && r == failover.ByeLive {
		return r, d
	}
	return text, ""
}

func decodeBye(s string) (clean bool, reason string) {
	if r, ok := strings.CutPrefix(s, "clean:"); ok {
		return true, r
	}
	if r, ok := strings.CutPrefix(s, "unclean:"); ok {
		return false, r
	}
	return false, s
}
