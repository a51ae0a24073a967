// Command virt-ft is libvirt-ft's command-line client: it asks the local
// libvirt-ftd over its control socket.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"

	"github.com/libvirt-ft/libvirt-ft/plugin/ctl"
)

// version is the package version, set at build time (Makefile: -ldflags
// "-X main.version=$(VERSION)"); "dev" in a plain go build.
var version = "dev"

func main() {
	var socket string
	root := &cobra.Command{
		Use:           "virt-ft",
		Short:         "inspect and drive libvirt-ft fault tolerance",
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&socket, "socket", ctl.DefaultSocket, "libvirt-ftd control socket")

	var asJSON, local bool
	status := &cobra.Command{
		Use:   "status [DOMAIN]",
		Short: "show protected domains: role, peer, state, log sent/acked, backup lag, heartbeat age",
		Long: `status shows this host's side of each domain protected here (or of DOMAIN, by
name, UUID or libvirt ID): its role, peer, state, the log sent and
acknowledged, the backup's lag and the heartbeat's age, then details, and
the peer host's side of each running pairing as its libvirt-ftd tells it
(its role, state and failover state; fetched through the daemons over the
log channel's TLS port, at most 2 s; --local leaves it out).

Exit status, for monitoring checks: 0 when every domain shown is
replicating (protected) or not running here on purpose (defined, or
stopped cleanly: shut down or switched over), and when none is shown; 1
when any is degraded or unprotected (starting, seeding, waiting for its
backup, unprotected, live after a failover, refused, stopped by a crash or
a halt); 2 when
status could not be read (libvirt-ftd unreachable, no permission, no such
domain).`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ds, err := statusOf(socket, args, !local)
			if err != nil {
				exitError(err)
			}
			if asJSON {
				err = printJSON(ds)
			} else {
				printStatus(ds)
			}
			if err != nil {
				exitError(err)
			}
			os.Exit(healthCode(ds))
			return nil
		},
	}
	status.Flags().BoolVar(&asJSON, "json", false, "print JSON (always a list: [] when nothing is protected here)")
	status.Flags().BoolVar(&local, "local", false, "show this host's side only (do not ask the peer host)")
	root.AddCommand(status)

	var listJSON bool
	list := &cobra.Command{
		Use:   "list",
		Short: "list the domains protected on this host, one line each: name, role, state, peer",
		Long: `list prints one line per domain protected on this host: its name, role
(primary or backup), state and peer host, for scripts (--json: a list of
{name, uuid, role, state, peer}). Exit status as for status.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ds, err := statusOf(socket, nil, false)
			if err != nil {
				exitError(err)
			}
			if listJSON {
				type entry struct {
					Name  string    `json:"name"`
					UUID  string    `json:"uuid"`
					Role  ctl.Role  `json:"role"`
					State ctl.State `json:"state"`
					Peer  string    `json:"peer"`
				}
				out := []entry{}
				for _, d := range ds {
					out = append(out, entry{d.Name, d.UUID, d.Role, d.State, d.Peer})
				}
				if err := printJSON(out); err != nil {
					exitError(err)
				}
			} else {
				w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
				for _, d := range ds {
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", d.Name, d.Role, d.State, d.Peer)
				}
				w.Flush()
			}
			os.Exit(healthCode(ds))
			return nil
		},
	}
	list.Flags().BoolVar(&listJSON, "json", false, "print JSON")
	root.AddCommand(list)

	var wait time.Duration
	fo := &cobra.Command{
		Use:   "failover DOMAIN",
		Short: "planned switchover: the backup goes live, then the primary is stopped (run on either host)",
		Long: `failover moves a replicating domain to its backup host without losing the
guest's state: the primary stops sending its log, the backup replays it to
the end and goes live (same MAC, announced with RARP), and only then is the
primary's QEMU stopped. It waits until the switchover finished (--wait) and
prints the result with the go-live time and its parts.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return switchover(socket, args[0], wait)
		},
	}
	fo.Flags().DurationVar(&wait, "wait", 2*time.Minute, "how long to wait for the switchover to finish (0: do not wait)")
	root.AddCommand(fo)

	var checkJSON bool
	check := &cobra.Command{
		Use:   "check DOMAIN",
		Short: "report every refusal and warning a domain's protected start would meet, without starting it",
		Long: `check asks libvirt-ftd whether DOMAIN (its persistent definition, by name or
UUID) can be protected, without starting or arming anything: every problem
of the definition (each naming the field and the fix), the split-brain
arbiter and the emulator on this host, then the backup host's own answer
(its first refusal). Root only (it dials the backup host). Exit status: 0
when it can be protected (warnings may be printed), 1 when its start would
be refused, 2 when the check could not be made.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			resp, err := ctl.Call(socket, ctl.Request{Op: ctl.OpCheck, Domain: args[0]}, 15*time.Second)
			if err == nil && !resp.OK {
				err = fmt.Errorf("%s", resp.Error)
			}
			if err == nil && resp.Check == nil {
				err = fmt.Errorf("libvirt-ftd gave no check result (an older daemon?)")
			}
			if err != nil {
				fmt.Fprintln(os.Stderr, "virt-ft:", err)
				os.Exit(2)
			}
			c := resp.Check
			if checkJSON {
				if err := printJSON(c); err != nil {
					return err
				}
			} else {
				for _, p := range c.Problems {
					fmt.Printf("%s: refused: %s\n", c.Domain, p)
				}
				for _, w := range c.Warnings {
					fmt.Printf("%s: warning: %s\n", c.Domain, w)
				}
				if len(c.Problems) == 0 {
					fmt.Printf("%s: can be protected (%d warning(s))\n", c.Domain, len(c.Warnings))
				}
			}
			if len(c.Problems) > 0 {
				os.Exit(1)
			}
			return nil
		},
	}
	check.Flags().BoolVar(&checkJSON, "json", false, "print JSON")
	root.AddCommand(check)

	var unWait time.Duration
	un := &cobra.Command{
		Use:   "unprotect DOMAIN",
		Short: "end a running domain's protection: its backup stops, the VM runs on alone (run on either host)",
		Long: `unprotect ends the protection of a replicating domain without stopping it:
the backup host stops its replaying VM (it never goes live), and the
primary, once it holds the pairing's split-brain lock, runs on alone: its
output is no longer held for a backup. If the arbiter cannot be reached,
the primary's VM is paused until it answers, as when a backup is lost. The
VM keeps recording until it shuts down. Its next start is protected again while its definition has the
ft element; remove the element (virsh edit) to start it as a plain VM.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return unprotect(socket, args[0], unWait)
		},
	}
	un.Flags().DurationVar(&unWait, "wait", 30*time.Second, "how long to wait until this host's side has ended (0: do not wait)")
	root.AddCommand(un)

	var protWait time.Duration
	var protPeer string
	prot := &cobra.Command{
		Use:   "protect DOMAIN [--peer HOST[:PORT]]",
		Short: "give a running VM a backup without a reboot: one alone after a failover, or one started without the ft element",
		Long: `protect re-protects DOMAIN, a VM that went live on this host after a
failover and runs alone: its backup host (the host it failed over from,
unless --peer names another) starts a new backup that waits for it, its
disks are mirrored and its memory migrated there live, and at the
switchover it starts recording a new log that the backup replays from
exactly that point. The VM does not reboot; it pauses once, at the
switchover (normally well under a second). Progress shows here and in
virt-ft status. If anything fails, the VM runs on alone as before.

A running VM started without the ft element (--peer required) cannot
start recording where it runs (it has no instruction counting): it moves,
live, to the --peer host, which runs it from then on and gives it its
backup on this host; its definition here gets the ft element. virt-ft
failover moves it back once it is protected. If anything fails before it
runs there, it runs on here as before. Root only.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return protect(socket, args[0], protPeer, protWait)
		},
	}
	prot.Flags().StringVar(&protPeer, "peer", "", "the new backup's host: HOST or HOST:PORT (default: the host the VM failed over from; required for a VM started without the ft element, which moves there)")
	prot.Flags().DurationVar(&protWait, "wait", 30*time.Minute, "how long to follow it (0: do not wait)")
	root.AddCommand(prot)

	var peer string
	en := &cobra.Command{
		Use:   "enable DOMAIN --peer HOST[:PORT]",
		Short: "protect a domain: add the ft element to its definition (the next start is protected)",
		Long: `enable adds libvirt-ft's ft element to DOMAIN's persistent definition (name,
UUID or ID), with HOST (port 7480 unless given) as its backup host and every
other setting the default, as virsh edit would; libvirt-ftd then rewrites
the definition for record/replay. It refuses, changing nothing, a domain
that has the element already or that a protected start would refuse. A
running domain is protected from its next start. virt-ft check DOMAIN then
asks the backup host too. Root only.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return edit(socket, ctl.Request{Op: ctl.OpEnable, Domain: args[0], Peer: peer})
		},
	}
	en.Flags().StringVar(&peer, "peer", "", "the backup host: HOST or HOST:PORT (libvirt-ftd's peer port, default 7480)")
	root.AddCommand(en)
	dis := &cobra.Command{
		Use:   "disable DOMAIN",
		Short: "stop protecting a domain: remove the ft element (the next start is a plain VM's)",
		Long: `disable removes the ft element from DOMAIN's persistent definition; libvirt-ftd
then removes the record/replay wiring it generated, and the next start is a
plain VM's. A running protected domain stays protected until it stops:
virt-ft unprotect ends that at once. Root only.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return edit(socket, ctl.Request{Op: ctl.OpDisable, Domain: args[0]})
		},
	}
	root.AddCommand(dis)
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "virt-ft:", err)
		os.Exit(1)
	}
}

// statusOf asks libvirt-ftd for the status of every domain protected here,
// or of args[0] (a name, UUID or libvirt ID); withPeer: with each running
// pairing's peer view (ctl.Request.WithPeer). Always a list, never nil.
// Errors: the daemon cannot be asked, or refuses, or has no such domain.
func statusOf(socket string, args []string, withPeer bool) ([]ctl.DomainStatus, error) {
	req := ctl.Request{Op: ctl.OpStatus, WithPeer: withPeer}
	if len(args) == 1 {
		req.Domain = args[0]
	}
	resp, err := ctl.Call(socket, req, 5*time.Second)
	if err != nil {
		return nil, err
	}
	if !resp.OK {
		return nil, fmt.Errorf("%s", resp.Error)
	}
	if len(args) == 1 && len(resp.Domains) == 0 {
		return nil, fmt.Errorf("domain %q is not protected here (no ft element, or libvirt-ftd has not seen it)", args[0])
	}
	return append([]ctl.DomainStatus{}, resp.Domains...), nil
}

// Exit codes of status and list, for monitoring checks.
const (
	exitProtected = 0 // every domain replicating or not running (or none)
	exitDegraded  = 1 // any domain degraded or unprotected
	exitFailed    = 2 // status could not be read
)

// healthCode is status's exit code for ds: exitProtected when each is
// replicating, or not running here on purpose (defined; stopped cleanly:
// shut down, or switched over to the peer host), else exitDegraded (a
// crash or a halt is a stop that needs a look).
func healthCode(ds []ctl.DomainStatus) int {
	for _, d := range ds {
		switch {
		case d.State == ctl.StateReplicating, d.State == ctl.StateDefined:
		case d.State == ctl.StateStopped && d.CleanStop:
		default:
			return exitDegraded
		}
	}
	return exitProtected
}

// exitError prints err and exits with exitFailed (2).
func exitError(err error) {
	fmt.Fprintln(os.Stderr, "virt-ft:", err)
	os.Exit(exitFailed)
}

// edit sends an OpEnable or OpDisable request and prints what was done.
func edit(socket string, req ctl.Request) error {
	resp, err := ctl.Call(socket, req, 15*time.Second)
	if err != nil {
		return err
	}
	if !resp.OK {
		return fmt.Errorf("%s", resp.Error)
	}
	fmt.Println(resp.Message)
	return nil
}

// command sends op for domain and returns this host's role in it (the
// primary's when libvirt-ftd does not say).
func command(socket, op, domain string) (ctl.Role, error) {
	resp, err := ctl.Call(socket, ctl.Request{Op: op, Domain: domain}, 5*time.Second)
	if err != nil {
		return "", err
	}
	if !resp.OK {
		return "", fmt.Errorf("%s", resp.Error)
	}
	if len(resp.Domains) == 1 {
		return resp.Domains[0].Role, nil
	}
	return ctl.RolePrimary, nil
}

// follow polls this host's status of domain every 100 ms for up to wait
// and hands each to step until it says done: the command's outcome (err
// nil: it succeeded). gone is called when libvirt-ftd no longer lists the
// domain (it forgets a backup whose VM stopped), with the last status
// seen. what names the command in errors.
func follow(socket, domain, what string, wait time.Duration,
	step func(st ctl.DomainStatus) (done bool, err error),
	gone func(last ctl.DomainStatus) error) error {
	deadline := time.Now().Add(wait)
	var last ctl.DomainStatus
	for time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		r, err := ctl.Call(socket, ctl.Request{Op: ctl.OpStatus, Domain: domain}, 5*time.Second)
		if err != nil {
			return err
		}
		if !r.OK {
			return fmt.Errorf("following the %s of %s: %s", what, domain, r.Error)
		}
		if len(r.Domains) != 1 {
			return gone(last)
		}
		last = r.Domains[0]
		if done, err := step(last); done {
			return err
		}
	}
	if last.Name != "" {
		printStatus([]ctl.DomainStatus{last})
	}
	return fmt.Errorf("%s of %s not finished after %v (state %s: %s)", what, domain, wait, last.State, last.Detail)
}

// switchover asks for a planned switchover and follows it in the local
// status until this host's side finished: a primary stopped after its
// backup went live, or a backup that is live.
func switchover(socket, domain string, wait time.Duration) error {
	role, err := command(socket, ctl.OpFailover, domain)
	if err != nil {
		return err
	}
	fmt.Printf("%s: switchover started on the %s's host\n", domain, role)
	if wait <= 0 {
		return nil
	}
	return follow(socket, domain, "switchover", wait, func(last ctl.DomainStatus) (bool, error) {
		switch {
		case role == ctl.RoleBackup && last.State == ctl.StateLive:
			printStatus([]ctl.DomainStatus{last})
			fmt.Printf("%s: switched over: this host runs the VM\n", domain)
			return true, nil
		case role != ctl.RoleBackup && last.SwitchedOver && last.State == ctl.StateStopped:
			printStatus([]ctl.DomainStatus{last})
			fmt.Printf("%s: switched over: the VM runs on %s\n", domain, last.Peer)
			return true, nil
		case last.State == ctl.StateUnprotected || last.State == ctl.StateStopped || last.Failover == "halted":
			printStatus([]ctl.DomainStatus{last})
			return true, fmt.Errorf("switchover of %s did not complete: %s (%s)", domain, last.State, last.Detail)
		}
		return false, nil
	}, func(last ctl.DomainStatus) error {
		// A halt after losing the lock, a failed go-live: it will not
		// come back.
		if last.Name != "" {
			printStatus([]ctl.DomainStatus{last})
		}
		return fmt.Errorf("switchover of %s did not complete: libvirt-ftd no longer protects it on this host (its VM stopped; see its log)", domain)
	})
}

// protect asks libvirt-ftd to re-protect a domain that runs alone here and
// follows it until it is done or failed, printing its progress.
func protect(socket, domain, peer string, wait time.Duration) error {
	resp, err := ctl.Call(socket, ctl.Request{Op: ctl.OpProtect, Domain: domain, Peer: peer}, 5*time.Second)
	if err != nil {
		return err
	}
	if !resp.OK {
		return fmt.Errorf("%s", resp.Error)
	}
	fmt.Printf("%s: re-protecting\n", domain)
	if wait <= 0 {
		return nil
	}
	lastLine := ""
	// On a terminal, a progress bar per phase (bytes, rate, time left);
	// otherwise a line per change (scripts, logs).
	fi, _ := os.Stdout.Stat()
	tty := fi != nil && fi.Mode()&os.ModeCharDevice != 0
	var bar *progressbar.ProgressBar
	barPhase := ""
	endBar := func() {
		if bar != nil {
			_ = bar.Finish()
			fmt.Println()
			bar = nil
		}
	}
	defer endBar()
	return follow(socket, domain, "re-protection", wait, func(st ctl.DomainStatus) (bool, error) {
		r := st.Reprotect
		if st.Role == ctl.RoleBackup && st.State == ctl.StateReplicating {
			// A VM started without the ft element moved to the
			// peer, which has re-protected it onto this host already
			// (its run here is the backup now).
			endBar()
			fmt.Printf("%s: protected: it runs on %s, its backup replays on this host (virt-ft failover moves it back)\n", domain, st.Peer)
			return true, nil
		}
		if r == nil {
			return false, nil
		}
		if tty && r.TotalBytes > 0 && (r.Phase == "disks" || r.Phase == "memory") {
			if bar == nil || barPhase != r.Phase {
				endBar()
				barPhase = r.Phase
				what := map[string]string{"disks": "copying the disks", "memory": "copying the memory"}[r.Phase]
				bar = progressbar.NewOptions64(int64(r.TotalBytes), progressbar.OptionSetDescription(what),
					progressbar.OptionShowBytes(true), progressbar.OptionSetPredictTime(true),
					progressbar.OptionFullWidth())
			}
			bar.ChangeMax64(int64(r.TotalBytes))
			_ = bar.Set64(int64(min(r.DoneBytes, r.TotalBytes)))
			return false, nil
		}
		endBar() // before any line
		switch r.Phase {
		case "done":
			if r.Moves {
				fmt.Printf("%s: runs on %s now, which gives it its backup on this host (virt-ft status there; virt-ft failover moves it back once protected): paused %d ms; %d MiB of memory and %d MiB of disk copied in %.1f s\n",
					domain, r.Peer, r.PauseMS, r.MemoryBytes>>20, r.DiskBytes>>20, float64(r.TotalMS)/1000)
				return true, nil
			}
			fmt.Printf("%s: protected again, backup on %s: paused %d ms at the switchover; %d MiB of memory and %d MiB of disk copied in %.1f s\n",
				domain, r.Peer, r.PauseMS, r.MemoryBytes>>20, r.DiskBytes>>20, float64(r.TotalMS)/1000)
			return true, nil
		case "failed":
			if r.Moves {
				return true, fmt.Errorf("%s: protect failed: %s", domain, r.Error)
			}
			return true, fmt.Errorf("%s: re-protection failed: %s; the VM runs on alone", domain, r.Error)
		}
		line := fmt.Sprintf("%s: %s", domain, r.Phase)
		if r.TotalBytes > 0 {
			line += fmt.Sprintf(" %d/%d MiB (%d%%)", r.DoneBytes>>20, r.TotalBytes>>20, pct(int64(r.DoneBytes), int64(r.TotalBytes)))
		}
		if r.RateBytesPerSec > 0 {
			line += fmt.Sprintf(", %.0f MiB/s", r.RateBytesPerSec/(1<<20))
			if r.TotalBytes > r.DoneBytes {
				line += fmt.Sprintf(", about %.0f s left", float64(r.TotalBytes-r.DoneBytes)/r.RateBytesPerSec)
			}
		}
		if line != lastLine {
			fmt.Println(line)
			lastLine = line
		}
		return false, nil
	}, func(last ctl.DomainStatus) error {
		return fmt.Errorf("%s: libvirt-ftd no longer runs it on this host (its VM stopped; see its log)", domain)
	})
}

// unprotect asks libvirt-ftd to end a domain's protection and follows this
// host's side until it ended: a primary running alone, or a backup whose
// replaying VM stopped (libvirt-ftd then forgets it).
func unprotect(socket, domain string, wait time.Duration) error {
	resp, err := ctl.Call(socket, ctl.Request{Op: ctl.OpUnprotect, Domain: domain}, 5*time.Second)
	if err != nil {
		return err
	}
	if !resp.OK {
		return fmt.Errorf("%s", resp.Error)
	}
	role := ctl.RolePrimary
	if len(resp.Domains) == 1 {
		role = resp.Domains[0].Role
		if st := resp.Domains[0].State; role == ctl.RolePrimary && (st == ctl.StateLive || st == ctl.StateUnprotected) {
			fmt.Printf("%s: runs alone on this host already; it will not be re-protected automatically (virt-ft protect still can)\n", domain)
			return nil
		}
	}
	fmt.Printf("%s: ending protection on the %s's host\n", domain, role)
	if wait <= 0 {
		return nil
	}
	return follow(socket, domain, "unprotect", wait, func(last ctl.DomainStatus) (bool, error) {
		switch {
		case role == ctl.RolePrimary && last.State == ctl.StateUnprotected && last.Failover == "unprotected":
			printStatus([]ctl.DomainStatus{last})
			fmt.Printf("%s: unprotected: the VM runs alone on this host; its backup stopped\n", domain)
			return true, nil
		case role == ctl.RoleBackup && (last.State == ctl.StateStopped || last.Failover == "halted"):
			fmt.Printf("%s: the backup stopped; the primary on %s runs on alone once it holds the split-brain lock (virt-ft status there)\n", domain, last.Peer)
			return true, nil
		case role == ctl.RolePrimary && (last.State == ctl.StateStopped || last.Failover == "halted"):
			printStatus([]ctl.DomainStatus{last})
			return true, fmt.Errorf("%s: the VM stopped: %s", domain, last.Detail)
		}
		return false, nil
	}, func(ctl.DomainStatus) error {
		if role == ctl.RoleBackup {
			fmt.Printf("%s: the backup stopped; the primary runs on alone once it holds the split-brain lock (virt-ft status on its host)\n", domain)
			return nil
		}
		return fmt.Errorf("%s: libvirt-ftd no longer protects it on this host (its VM stopped; see its log)", domain)
	})
}

// printJSON prints v as indented JSON on stdout.
func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func printStatus(ds []ctl.DomainStatus) {
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "DOMAIN\tROLE\tPEER\tSTATE\tLOG SENT\tACKED\tLAG\tLAG (instr)\tLAG (ms)\tHEARTBEAT")
	for _, d := range ds {
		hb := "never"
		if d.HeartbeatAgeMS >= 0 {
			hb = fmt.Sprintf("%d ms ago", d.HeartbeatAgeMS)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\n", d.Name, d.Role, d.Peer, d.State,
			bytes(d.SentBytes), bytes(d.AckedBytes), bytes(d.LagBytes), d.LagInstructions, d.LagMS, hb)
	}
	w.Flush()
	for _, d := range ds {
		if r := d.Reprotect; r != nil {
			switch r.Phase {
			case "done":
				fmt.Printf("%s: re-protected onto %s: paused %d ms at the switchover, %d MiB of memory and %d MiB of disk copied, %.1f s in all\n",
					d.Name, r.Peer, r.PauseMS, r.MemoryBytes>>20, r.DiskBytes>>20, float64(r.TotalMS)/1000)
			case "failed":
				fmt.Printf("%s: the last re-protection failed: %s\n", d.Name, r.Error)
			default:
				fmt.Printf("%s: re-protecting onto %s: %s %d/%d MiB (%d%%)\n", d.Name, r.Peer, r.Phase, r.DoneBytes>>20, r.TotalBytes>>20,
					pct(int64(r.DoneBytes), int64(r.TotalBytes)))
			}
		}
		if d.Seeding != nil {
			fmt.Printf("%s: seeding %s: %d/%d MiB (%d%%)\n", d.Name, d.Seeding.Path, d.Seeding.DoneBytes>>20, d.Seeding.TotalBytes>>20,
				pct(d.Seeding.DoneBytes, d.Seeding.TotalBytes))
		} else if d.Detail != "" {
			fmt.Printf("%s: %s\n", d.Name, d.Detail)
		}
		if d.Failover != "" {
			fmt.Printf("%s: failover state %s\n", d.Name, d.Failover)
		}
		if ev := lastEvent(d); ev != "" {
			fmt.Printf("%s: last failover event: %s\n", d.Name, ev)
		}
		for _, g := range d.Gates {
			fmt.Printf("%s: output gate: %s\n", d.Name, gateLine(g))
		}
		if d.Stall != nil {
			fmt.Printf("%s: backup %s\n", d.Name, stallLine(*d.Stall))
		}
		for _, w := range d.Warnings {
			fmt.Printf("%s: WARNING: %s\n", d.Name, w)
		}
		if v := d.PeerView; v != nil {
			fmt.Printf("%s: peer %s: %s\n", d.Name, v.Host, peerLine(*v))
		}
	}
}

// peerLine words the peer host's view of a pairing.
func peerLine(v ctl.PeerView) string {
	if v.Error != "" {
		return "no view: " + v.Error
	}
	s := fmt.Sprintf("%s, %s", v.Role, v.State)
	if v.Failover != "" {
		s += " (failover state " + v.Failover + ")"
	}
	if v.HeartbeatAgeMS >= 0 {
		s += fmt.Sprintf(", heard this host %d ms ago", v.HeartbeatAgeMS)
	}
	if v.Detail != "" {
		s += ": " + v.Detail
	}
	return s
}

// ms words a step's duration; -1 is a step not reached.
func ms(v int64) string {
	if v < 0 {
		return "-"
	}
	return fmt.Sprintf("%d ms", v)
}

// lastEvent words the last loss, go-live or switchover: its cause, the
// time of each step, how the VM went live, and the backup's own account.
func lastEvent(d ctl.DomainStatus) string {
	var parts []string
	if l := d.Loss; l != nil {
		parts = append(parts, fmt.Sprintf("cause: %s; silence to detection %s, to drained %s, lock %s, to running %s; total %s",
			l.Cause, ms(l.DetectionMS), ms(l.DrainMS), ms(l.LockMS), ms(l.StartMS), ms(l.TotalMS)))
	}
	if g := d.GoLive; g != nil {
		switch g.Path {
		case ctl.GoLiveContinued:
			parts = append(parts, fmt.Sprintf("(the backup's QEMU left replay mode at the end of the log and ran on (%d ms))", g.TotalMS))
			switch {
			case g.DiskSyncError != "":
				parts = append(parts, "(FLUSHING THE DISKS FAILED after go-live: "+g.DiskSyncError+")")
			case g.DisksSyncedMS > 0:
				parts = append(parts, fmt.Sprintf("(disks flushed to stable storage after go-live in %d ms)", g.DisksSyncedMS))
			}
		default:
			parts = append(parts, fmt.Sprintf("(stop %d ms, savevm %d ms, destroy %d ms, start with -loadvm %d ms)",
				g.StopMS, g.SaveVMMS, g.DestroyMS, g.StartMS))
		}
	}
	if d.PeerReport != "" {
		parts = append(parts, "(backup: "+d.PeerReport+")")
	}
	return strings.Join(parts, " ")
}

// gateLine words one output gate.
func gateLine(g ctl.Gate) string {
	s := gateWords(g)
	if g.DigestsOff && g.Mode != ctl.GatePassthrough {
		s += "; frame digests off for this run (adopted from a libvirt-ftd whose digest this one cannot continue): a diverged replay shows only as a stall until the domain is restarted or re-protected"
	}
	return s
}

// gateWords words one output gate's counts.
func gateWords(g ctl.Gate) string {
	switch {
	case g.Backup && g.Mode == ctl.GatePassthrough:
		return fmt.Sprintf("%s: the filter is off since go-live; the backup's gate sent the %d frames it held then, having forgotten %d the primary sent",
			g.Filter, g.Released, g.Forgot)
	case g.Backup:
		s := fmt.Sprintf("%s (backup) %s: holding %d replayed frames (%d B) the primary had not reported sent, forgot %d it sent; sent at go-live or after: %d; %d of the primary's frame digests compared",
			g.Filter, g.Mode, g.HeldFrames, g.HeldBytes, g.Forgot, g.Released, g.Verified)
		if g.Diverged != "" {
			s += "; DIVERGED: " + g.Diverged
		}
		return s
	default:
		return fmt.Sprintf("%s %s: held %d frames (%d B), released %d, dropped %d over the cap and %d by go-live; hold time avg %.1f ms, max %.1f ms",
			g.Filter, g.Mode, g.HeldFrames, g.HeldBytes, g.Released, g.DroppedOverCap, g.DroppedByGoLive, g.HoldAvgMS, g.HoldMaxMS)
	}
}

// stallLine words a replay stall: the backup's own figures, or on the
// primary the backup's report.
func stallLine(st ctl.Stall) string {
	if st.Report != "" {
		return st.Report
	}
	where := fmt.Sprintf("icount %d (not in the log kept)", st.Icount)
	if st.NextEvent != "" {
		where = fmt.Sprintf("icount %d, next event %s at log offset %d", st.Icount, st.NextEvent, st.Offset)
	}
	line := fmt.Sprintf("replay stalled at %s; no progress for %d ms with log up to icount %d queued", where, st.NoProgressMS, st.QueuedIcount)
	if st.KeptLog != "" {
		line += fmt.Sprintf("; the log around it is kept in %s (rrdump -base-offset %d -base-icount %d -icount %d %s)",
			st.KeptLog, st.BaseOffset, st.BaseIcount, st.Icount, st.KeptLog)
	}
	return line
}

func pct(a, b int64) int64 {
	if b == 0 {
		return 100
	}
	return a * 100 / b
}

func bytes(n uint64) string {
	switch {
	case n >= 10<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 10<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	default:
		return fmt.Sprintf("%d B", n)
	}
}
