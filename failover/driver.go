package failover

import (
	"fmt"
	"sync"
	"time"
)

// TickInterval is the duration of one tick when a Driver runs a Node: the
// heartbeat interval, timeouts and Timings are counted in these.
const TickInterval = 10 * time.Millisecond

// Ticks converts d to ticks of TickInterval, at least 1.
func Ticks(d time.Duration) int {
	return max(int(d/TickInterval), 1)
}

// Driver runs one Node in real time, as etcd's raft node.go runs a RawNode:
// a single goroutine (Run) calls Tick every TickInterval, Step for each
// posted event, and hands every action from Ready to exec, in order. exec
// runs on that goroutine and must not block: slow work (a lock claim, a
// go-live, QMP) runs in its own goroutine and posts its result as an event.
//
// Status and Timings are snapshots taken after each step; any goroutine may
// read them. Post never blocks once the driver is stopped.
type Driver struct {
	node   *Node
	events chan Event
	calls  chan stepIf
	exec   func(Action)
	stop   chan struct{}
	done   chan struct{}
	once   sync.Once

	mu      sync.Mutex
	status  Status
	timings Timings
	changed chan struct{} // closed and replaced at each snapshot
}

// driverQueue is the number of events Post can queue before it blocks.
const driverQueue = 4096

// NewDriver creates the Node for cfg and a Driver for it; Run starts it.
// Errors: those of Config.Validate.
func NewDriver(cfg Config, exec func(Action)) (*Driver, error) {
	n, err := New(cfg)
	if err != nil {
		return nil, err
	}
	d := &Driver{node: n, events: make(chan Event, driverQueue), calls: make(chan stepIf), exec: exec,
		stop: make(chan struct{}), done: make(chan struct{}), changed: make(chan struct{})}
	d.snapshot()
	return d, nil
}

// Post hands ev to the Node. It blocks only while the queue is full and
// returns at once after Stop.
func (d *Driver) Post(ev Event) {
	select {
	case d.events <- ev:
	case <-d.stop:
	}
}

// stepIf is a StepIf call on its way to Run.
type stepIf struct {
	cond  func(Status) bool
	ev    Event
	reply chan bool
}

// StepIf steps ev into the Node only if cond holds for the Node's status
// at that moment, and reports whether it did. Both happen on Run's
// goroutine, after the events posted before it: nothing comes between the
// check and the step. It returns false once the Driver is stopped. (A
// resumed log channel is taken only while the core still waits for the
// peer's restart: ChannelUp if PeerRestarting.)
func (d *Driver) StepIf(cond func(Status) bool, ev Event) bool {
	c := stepIf{cond: cond, ev: ev, reply: make(chan bool, 1)}
	select {
	case d.calls <- c:
		return <-c.reply
	case <-d.stop:
		return false
	}
}

// Stop ends Run; later events are dropped. It may be called more than once
// and from exec.
func (d *Driver) Stop() { d.once.Do(func() { close(d.stop) }) }

// Done is closed when Run has returned.
func (d *Driver) Done() <-chan struct{} { return d.done }

// Run ticks and steps the Node until Stop.
func (d *Driver) Run() {
	defer close(d.done)
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
		case c := <-d.calls:
			// Events posted before the call come first.
			for drained := false; !drained; {
				select {
				case ev := <-d.events:
					d.node.Step(ev)
				default:
					drained = true
				}
			}
			ok := c.cond(d.node.Status())
			select {
			case <-d.stop:
				ok = false // stopped meanwhile: nothing steps
			default:
			}
			if ok {
				d.node.Step(c.ev)
			}
			c.reply <- ok
		}
		select {
		case <-d.stop:
			// Stopped while stepping: its owner is closing; no action.
			return
		default:
		}
		for _, a := range d.node.Ready() {
			d.exec(a)
		}
		d.snapshot()
	}
}

func (d *Driver) snapshot() {
	st, tm := d.node.Status(), d.node.Timings()
	d.mu.Lock()
	defer d.mu.Unlock()
	if st == d.status && tm == d.timings {
		return
	}
	d.status, d.timings = st, tm
	close(d.changed)
	d.changed = make(chan struct{})
}

// WaitFor waits until cond holds for the Node's status, the Driver stops,
// or timeout passes, and reports whether cond held.
func (d *Driver) WaitFor(cond func(Status) bool, timeout time.Duration) bool {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		d.mu.Lock()
		st, changed := d.status, d.changed
		d.mu.Unlock()
		if cond(st) {
			return true
		}
		select {
		case <-changed:
		case <-d.done:
			d.mu.Lock()
			st = d.status
			d.mu.Unlock()
			return cond(st)
		case <-t.C:
			return false
		}
	}
}

// Node is the driven Node. Only exec may use it (it runs on Run's
// goroutine); anyone else reads View.
func (d *Driver) Node() *Node { return d.node }

// View gives the Node's status and timings after its last step.
func (d *Driver) View() (Status, Timings) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.status, d.timings
}

// Summary gives the parts of tm in ms for an operator ("" when nothing
// was lost): the cause, silence to detection, drain, lock, start, total.
func (tm Timings) Summary() string {
	if tm.Detected == NotYet {
		return ""
	}
	ms := func(t int64) string {
		if t == NotYet {
			return "-"
		}
		return fmt.Sprintf("%d ms", t*int64(TickInterval/time.Millisecond))
	}
	return fmt.Sprintf("cause: %s; silence to detection %s, to drained %s, lock %s, to running %s; total %s",
		tm.Cause, ms(tm.Detection()), ms(tm.Drain()), ms(tm.Lock()), ms(tm.Start()), ms(tm.Total()))
}
