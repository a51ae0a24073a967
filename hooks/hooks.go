// Package hooks is the logic of libvirt-ft-hook, the libvirt qemu hook
// installed as /etc/libvirt/hooks/qemu.d/libvirt-ft.
//
// The hook contract (https://libvirt.org/hooks.html) is followed strictly:
//   - it never calls libvirt (libvirtd waits for the hook: a call back would
//     deadlock); it talks only to the local libvirt-ftd over its control
//     socket, with a timeout;
//   - for domains without the ft element, and for operations it does not
//     handle, it exits 0 and prints nothing;
//   - on "reconnect" it always exits 0 (a failing reconnect hook makes libvirt
//     kill the running VM);
//   - a non-zero exit on "prepare" makes libvirt refuse the start and show
//     what the hook printed on stderr: that is how a domain that cannot be
//     protected is refused at start time, before anything is started.
package hooks

import (
	"fmt"
	"io"
	"time"

	"github.com/libvirt-ft/libvirt-ft/plugin/ctl"
	ftxml "github.com/libvirt-ft/libvirt-ft/xml"
)

// Timeouts for the daemon call, by operation. Prepare includes verifying
// (and if needed seeding) the backup's disk copies and arming the backup on
// the peer host, so it may take as long as copying the disks.
var (
	PrepareTimeout = 10 * time.Minute
	NotifyTimeout  = 3 * time.Second
)

// maxXML bounds what is read from stdin (bytes).
const maxXML = 16 << 20

// Run executes one hook invocation. args are argv[1:] (domain, operation,
// sub-operation, extra); stdin carries the domain XML. It returns the exit
// status.
func Run(args []string, stdin io.Reader, stderr io.Writer, socket string) int {
	if len(args) < 2 {
		return 0
	}
	// Always drain stdin so libvirt never sees a broken pipe.
	data, _ := io.ReadAll(io.LimitReader(stdin, maxXML))
	domain, op := args[0], args[1]
	sub := ""
	if len(args) > 2 {
		sub = args[2]
	}
	_, present, perr := ftxml.ParseConfig(string(data))
	if op == "reconnect" {
		if present && perr == nil {
			notify(socket, domain, op, sub, string(data))
		}
		return 0
	}
	if perr != nil && op == "prepare" {
		fmt.Fprintf(stderr, "%v\n", perr)
		return 1
	}
	if !present && op == "prepare" {
		// The ft element removed, the generated wiring not yet (the
		// daemon strips it on libvirt's DEFINED event, and may be down):
		// QEMU would record into a FIFO no daemon reads. Checked here, so
		// that it holds without the daemon.
		if _, wired, err := ftxml.Unprotected(string(data)); err == nil && wired {
			fmt.Fprintf(stderr, "libvirt-ft: domain %q has no ft element but still has the record/replay wiring libvirt-ftd generated for it; libvirt-ftd removes it when it sees the new definition: retry virsh start in a moment, or remove the wiring by hand (virsh edit)\n", domain)
			return 1
		}
	}
	if !present || perr != nil {
		return 0
	}
	switch op {
	case "prepare":
		resp, err := ctl.Call(socket, ctl.Request{Op: ctl.OpHook, Domain: domain,
			Hook: &ctl.Hook{Domain: domain, Operation: op, SubOperation: sub, XML: string(data)}}, PrepareTimeout)
		if err != nil {
			fmt.Fprintf(stderr, "libvirt-ft: domain %q is protected but %v\n", domain, err)
			return 1
		}
		if !resp.OK {
			fmt.Fprintf(stderr, "%s\n", resp.Error)
			return 1
		}
		return 0
	case "migrate":
		fmt.Fprintf(stderr, "libvirt-ft: domain %q is protected: live migration is not supported; use `virt-ft failover %s` to move it to the backup host\n", domain, domain)
		return 1
	case "started", "stopped", "release":
		notify(socket, domain, op, sub, string(data))
		return 0
	default:
		return 0
	}
}

func notify(socket, domain, op, sub, xml string) {
	_, _ = ctl.Call(socket, ctl.Request{Op: ctl.OpHook, Domain: domain,
		Hook: &ctl.Hook{Domain: domain, Operation: op, SubOperation: sub, XML: xml}}, NotifyTimeout)
}
