// Command reprotect runs plugin/reprotect's two sides against QEMUs' QMP
// sockets, for tests that run QEMU on its own (test/e2e/rr-migrate.sh): the
// code libvirt-ftd uses for re-protection, on real QEMU.
//
//	reprotect dest-prepare -qmp SOCK -migrate URI [-nbd SOCK -export NODE]...
//	reprotect source -qmp SOCK -log FILE -migrate URI [-nbd SOCK -disk NODE=EXPORT]... [-console FILE] [-cont]
//	reprotect dest-finish -qmp SOCK [-export NODE]...
//
// source prints one JSON line: the icount where the new log starts, the
// bytes of memory and disk copied, the console's size at the switchover
// (-console) and, with -cont (the VM continued at once), the pause in ms
// from the VM seen stopped at the switchover to its cont.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/libvirt-ft/libvirt-ft/plugin/reprotect"
	"github.com/libvirt-ft/libvirt-ft/qmp"
)

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: reprotect source|dest-prepare|dest-finish FLAGS")
		os.Exit(2)
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	sock := fs.String("qmp", "", "QMP unix socket of the QEMU")
	logPath := fs.String("log", "", "source: the new record log")
	migrate := fs.String("migrate", "", "migration URI (unix:PATH)")
	nbd := fs.String("nbd", "", "unix socket of the destination's NBD server")
	console := fs.String("console", "", "source: a console file whose size at the switchover is reported")
	cont := fs.Bool("cont", false, "source: continue the VM once it records")
	timeout := fs.Duration("timeout", 5*time.Minute, "bound on each phase")
	var disks, exports list
	fs.Var(&disks, "disk", "source: NODE=EXPORT, repeated")
	fs.Var(&exports, "export", "destination: a format node to export, repeated")
	_ = fs.Parse(os.Args[2:])

	mon, err := qmp.NewSocketMonitor(*sock, 5*time.Second)
	if err != nil {
		fail(err)
	}
	if err := mon.Connect(); err != nil {
		fail(err)
	}
	defer func() { _ = mon.Disconnect() }()
	c := qmp.NewClient(mon)
	ctx := context.Background()

	switch os.Args[1] {
	case "dest-prepare":
		d := reprotect.Destination{QMP: c, MigrateURI: *migrate, NBDSocket: *nbd, Exports: exports, Timeout: *timeout}
		if err := d.Prepare(); err != nil {
			fail(err)
		}
	case "dest-finish":
		d := reprotect.Destination{QMP: c, Exports: exports, Timeout: *timeout}
		if err := d.Finish(ctx); err != nil {
			fail(err)
		}
	case "source":
		s := reprotect.Source{QMP: c, LogPath: *logPath, MigrateURI: *migrate, NBDSocket: *nbd, Timeout: *timeout,
			MaxBandwidth: 1 << 30}
		for _, d := range disks {
			node, export, ok := strings.Cut(d, "=")
			if !ok {
				fail(fmt.Errorf("-disk %q: want NODE=EXPORT", d))
			}
			s.Disks = append(s.Disks, reprotect.Disk{Node: node, Export: export})
		}
		res, err := s.Run(ctx)
		if err != nil {
			fail(err)
		}
		out := map[string]any{"icount": res.Icount, "memory_bytes": res.MemoryBytes, "disk_bytes": res.DiskBytes}
		if *console != "" {
			if fi, err := os.Stat(*console); err == nil {
				out["console_bytes"] = fi.Size()
			}
		}
		if *cont {
			if err := c.Cont(); err != nil {
				fail(err)
			}
			out["pause_ms"] = time.Since(res.Stopped).Milliseconds()
		}
		b, _ := json.Marshal(out)
		fmt.Println(string(b))
	default:
		fail(fmt.Errorf("unknown command %q", os.Args[1]))
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "reprotect:", err)
	os.Exit(1)
}
