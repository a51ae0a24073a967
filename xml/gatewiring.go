package ftxml

import (
	"fmt"
	"strings"

	"libvirt.org/go/libvirtxml"
)

// GateWire is how generate wired the output gate of one interface into
// QEMU (docs/replay.md §10): the filter-redirector object FilterID on
// netdev Netdev (queue Queue) and its two socket chardevs, OutID
// connected to OutPath and InID to InPath (GateSocketPaths). A restarted
// libvirt-ftd connects a running QEMU to new gate sockets with them
// (object-del, chardev-remove, chardev-add, object-add).
type GateWire struct {
	FilterID, Netdev, Queue string
	OutID, OutPath          string
	InID, InPath            string
}

// GateWiring reads the gate wiring of interfaces 0..n-1 from dom's
// qemu:commandline (a generated definition with the output gate on, as
// libvirt reports it for a running domain). Errors name the interface
// whose filter-redirector or socket chardev is missing.
func GateWiring(dom *libvirtxml.Domain, n int) ([]GateWire, error) {
	objects := map[string]map[string]string{}
	chardevs := map[string]map[string]string{}
	if dom.QEMUCommandline != nil {
		args := dom.QEMUCommandline.Args
		for i := 0; i+1 < len(args); i++ {
			var into map[string]map[string]string
			switch args[i].Value {
			case "-object":
				into = objects
			case "-chardev":
				into = chardevs
			default:
				continue
			}
			opts := splitQemuOpts(args[i+1].Value)
			kv := map[string]string{"": opts[0]}
			for _, o := range opts[1:] {
				if k, v, ok := strings.Cut(o, "="); ok {
					kv[k] = v
				}
			}
			if id := kv["id"]; id != "" {
				into[id] = kv
			}
			i++
		}
	}
	out := make([]GateWire, 0, n)
	for j := 0; j < n; j++ {
		id := GateFilterID(j)
		f := objects[id]
		if f == nil || f[""] != "filter-redirector" || f["netdev"] == "" || f["outdev"] == "" || f["indev"] == "" {
			return nil, fmt.Errorf("interface %d: no filter-redirector %s with netdev, outdev and indev in qemu:commandline (a definition from an older libvirt-ft, or the output gate off)", j, id)
		}
		w := GateWire{FilterID: id, Netdev: f["netdev"], Queue: f["queue"], OutID: f["outdev"], InID: f["indev"]}
		for _, c := range []struct {
			id   string
			path *string
		}{{w.OutID, &w.OutPath}, {w.InID, &w.InPath}} {
			ch := chardevs[c.id]
			if ch == nil || ch[""] != "socket" || ch["path"] == "" {
				return nil, fmt.Errorf("interface %d: chardev %s is not a unix socket chardev in qemu:commandline", j, c.id)
			}
			*c.path = ch["path"]
		}
		out = append(out, w)
	}
	return out, nil
}
