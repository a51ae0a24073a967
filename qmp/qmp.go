// Package qmp gives libvirt-ft typed access to a QEMU monitor (QMP).
//
// Higher layers depend only on go-qemu's four-method qmp.Monitor seam
// (Connect, Disconnect, Run, Events). Two implementations are provided:
// NewLibvirtMonitor, over libvirt's monitor pass-through
// (virDomainQemuMonitorCommand and QEMU monitor events, usable while libvirt
// owns the monitor), and NewSocketMonitor, over a QMP unix socket (go-qemu's
// own SocketMonitor). Client adds the typed commands that go-qemu's generated
// API lacks for record/replay: query-replay, replay-break, announce-self and
// savevm through human-monitor-command.
package qmp

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	goqmp "github.com/digitalocean/go-qemu/qmp"
)

// Monitor is go-qemu's QMP seam, re-exported so callers need one import.
type Monitor = goqmp.Monitor

// Event is a QMP event as delivered by Monitor.Events.
type Event = goqmp.Event

// ErrNoReturn is returned when a QMP reply carries neither "return" nor "error".
var ErrNoReturn = errors.New("qmp: reply has no return value")

// Error is a QMP error reply. Class is QMP's error class (for example
// "GenericError", "CommandNotFound"), Desc its human-readable text.
type Error struct {
	Command string
	Class   string
	Desc    string
}

func (e *Error) Error() string {
	return fmt.Sprintf("qmp: %s: %s: %s", e.Command, e.Class, e.Desc)
}

// NewSocketMonitor connects to a QMP unix socket (QEMU's -qmp unix:PATH) with
// go-qemu's SocketMonitor. timeout bounds the dial.
func NewSocketMonitor(path string, timeout time.Duration) (Monitor, error) {
	return goqmp.NewSocketMonitor("unix", path, timeout)
}

// Client runs typed QMP commands over a Monitor.
type Client struct {
	Mon Monitor
}

// NewClient returns a Client over mon; mon must already be connected.
func NewClient(mon Monitor) *Client { return &Client{Mon: mon} }

// Execute runs command with args (nil for none) and unmarshals the "return"
// member into ret (nil to discard). A QMP error reply becomes *Error.
func (c *Client) Execute(command string, args interface{}, ret interface{}) error {
	req, err := json.Marshal(goqmp.Command{Execute: command, Args: args})
	if err != nil {
		return fmt.Errorf("qmp: %s: encode: %w", command, err)
	}
	raw, err := c.Mon.Run(req)
	if err != nil {
		return fmt.Errorf("qmp: %s: %w", command, err)
	}
	return decodeReply(command, raw, ret)
}

func decodeReply(command string, raw []byte, ret interface{}) error {
	var reply struct {
		Return json.RawMessage `json:"return"`
		Error  *struct {
			Class string `json:"class"`
			Desc  string `json:"desc"`
		} `json:"error"`
	}
	if err := json.Unmarshal(raw, &reply); err != nil {
		return fmt.Errorf("qmp: %s: decode reply %q: %w", command, truncate(raw), err)
	}
	if reply.Error != nil {
		return &Error{Command: command, Class: reply.Error.Class, Desc: reply.Error.Desc}
	}
	if reply.Return == nil {
		return fmt.Errorf("qmp: %s: %w", command, ErrNoReturn)
	}
	if ret == nil {
		return nil
	}
	if err := json.Unmarshal(reply.Return, ret); err != nil {
		return fmt.Errorf("qmp: %s: decode return %q: %w", command, truncate(reply.Return), err)
	}
	return nil
}

func truncate(b []byte) string {
	if len(b) > 200 {
		return string(b[:200]) + "..."
	}
	return string(b)
}

// ReplayInfo is the reply of query-replay (QEMU qapi/replay.json).
type ReplayInfo struct {
	// Mode is "none", "record" or "play".
	Mode string `json:"mode"`
	// Filename is the rrfile; empty when Mode is "none".
	Filename string `json:"filename,omitempty"`
	// Icount is the number of instructions executed so far (ticks of the
	// virtual CPU counter). Valid in record and play mode.
	Icount uint64 `json:"icount"`
}

// QueryReplay runs query-replay.
func (c *Client) QueryReplay() (ReplayInfo, error) { return QueryReplayOn(c) }

// Executor runs one QMP command, as Client.Execute does.
type Executor interface {
	Execute(command string, args, ret any) error
}

// QueryReplayOn is Client.QueryReplay through any Executor (a monitor the
// caller holds in another form, e.g. plugin/reprotect's). Errors: ex's.
func QueryReplayOn(ex Executor) (ReplayInfo, error) {
	var ri ReplayInfo
	err := ex.Execute("query-replay", nil, &ri)
	return ri, err
}

// ReplayBreak sets a replay breakpoint at icount (instructions): the VM stops
// (a STOP event) when replay reaches it. Only valid in play mode
// (QEMU qapi/replay.json, replay/replay-debugging.c).
func (c *Client) ReplayBreak(icount uint64) error {
	return c.Execute("replay-break", map[string]uint64{"icount": icount}, nil)
}

// ReplayDeleteBreak removes the replay breakpoint.
func (c *Client) ReplayDeleteBreak() error {
	return c.Execute("replay-delete-break", nil, nil)
}

// Status is the reply of query-status.
type Status struct {
	Running bool   `json:"running"`
	Status  string `json:"status"`
}

// QueryStatus runs query-status.
func (c *Client) QueryStatus() (Status, error) {
	var s Status
	err := c.Execute("query-status", nil, &s)
	return s, err
}

// Stop pauses the vCPU (QMP stop).
func (c *Client) Stop() error { return c.Execute("stop", nil, nil) }

// Cont resumes the vCPU (QMP cont).
func (c *Client) Cont() error { return c.Execute("cont", nil, nil) }

// AnnounceSelf makes QEMU send gratuitous RARP frames for every NIC's MAC
// (QMP announce-self, QEMU net/announce.c) with QEMU's default timing.
func (c *Client) AnnounceSelf() error {
	args := map[string]interface{}{"initial": 50, "max": 550, "rounds": 5, "step": 100}
	return c.Execute("announce-self", args, nil)
}

// HumanMonitorCommand runs an HMP command line and returns its output text.
func (c *Client) HumanMonitorCommand(line string) (string, error) {
	var out string
	err := c.Execute("human-monitor-command", map[string]string{"command-line": line}, &out)
	return out, err
}

// SaveVM takes an internal snapshot NAME through HMP savevm (QEMU 7.2 has no
// synchronous QMP equivalent). HMP reports failure as text, returned as error.
func (c *Client) SaveVM(name string) error {
	out, err := c.HumanMonitorCommand("savevm " + name)
	if err != nil {
		return err
	}
	if out != "" {
		return fmt.Errorf("qmp: savevm %s: %s", name, out)
	}
	return nil
}

// BlockNode is one entry of query-named-block-nodes (the fields we use).
type BlockNode struct {
	NodeName string `json:"node-name"`
	Driver   string `json:"drv"`
	File     string `json:"file"`
}

// QueryNamedBlockNodes runs query-named-block-nodes with flat=true.
func (c *Client) QueryNamedBlockNodes() ([]BlockNode, error) {
	var nodes []BlockNode
	err := c.Execute("query-named-block-nodes", map[string]bool{"flat": true}, &nodes)
	return nodes, err
}

// Version is the QEMU version as reported by query-version.
type Version = goqmp.Version

// QueryVersion runs query-version.
func (c *Client) QueryVersion() (Version, error) {
	var v Version
	err := c.Execute("query-version", nil, &v)
	return v, err
}
