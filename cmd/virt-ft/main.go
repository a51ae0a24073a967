// Command virt-ft is libvirt-ft's command-line client: it asks the local
// libvirt-ftd over its control socket.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/libvirt-ft/libvirt-ft/plugin/ctl"
)

func main() {
	var socket string
	root := &cobra.Command{
		Use:           "virt-ft",
		Short:         "inspect and drive libvirt-ft fault tolerance",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&socket, "socket", ctl.DefaultSocket, "libvirt-ftd control socket")

	var asJSON bool
	status := &cobra.Command{
		Use:   "status [DOMAIN]",
		Short: "show protected domains: role, peer, state, log sent/acked, backup lag, heartbeat age",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := ctl.Request{Op: ctl.OpStatus}
			if len(args) == 1 {
				req.Domain = args[0]
			}
			resp, err := ctl.Call(socket, req, 5*time.Second)
			if err != nil {
				return err
			}
			if !resp.OK {
				return fmt.Errorf("%s", resp.Error)
			}
			if len(args) == 1 && len(resp.Domains) == 0 {
				return fmt.Errorf("domain %q is not protected here (no ft element, or libvirt-ftd has not seen it)", args[0])
			}
			if asJSON {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(resp.Domains)
			}
			printStatus(resp.Domains)
			return nil
		},
	}
	status.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	root.AddCommand(status)

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
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "virt-ft:", err)
		os.Exit(1)
	}
}

// switchover asks for a planned switchover and follows it in the local
// status until this host's side finished: a primary stopped after its
// backup went live, or a backup that is live.
func switchover(socket, domain string, wait time.Duration) error {
	resp, err := ctl.Call(socket, ctl.Request{Op: ctl.OpFailover, Domain: domain}, 5*time.Second)
	if err != nil {
		return err
	}
	if !resp.OK {
		return fmt.Errorf("%s", resp.Error)
	}
	role := "primary"
	if len(resp.Domains) == 1 {
		role = resp.Domains[0].Role
	}
	fmt.Printf("%s: switchover started on the %s's host\n", domain, role)
	if wait <= 0 {
		return nil
	}
	deadline := time.Now().Add(wait)
	var last ctl.DomainStatus
	for time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		r, err := ctl.Call(socket, ctl.Request{Op: ctl.OpStatus, Domain: domain}, 5*time.Second)
		if err != nil {
			return err
		}
		if !r.OK {
			return fmt.Errorf("following the switchover of %s: %s", domain, r.Error)
		}
		if len(r.Domains) != 1 {
			// libvirt-ftd forgets a backup whose VM stopped (a halt
			// after losing the lock, a failed go-live): it will not
			// come back.
			if last.Name != "" {
				printStatus([]ctl.DomainStatus{last})
			}
			return fmt.Errorf("switchover of %s did not complete: libvirt-ftd no longer protects it on this host (its VM stopped; see its log)", domain)
		}
		last = r.Domains[0]
		switch {
		case role == "backup" && last.State == "live":
			printStatus(r.Domains)
			fmt.Printf("%s: switched over: this host runs the VM\n", domain)
			return nil
		case role != "backup" && last.SwitchedOver && last.State == "stopped":
			printStatus(r.Domains)
			fmt.Printf("%s: switched over: the VM runs on %s\n", domain, last.Peer)
			return nil
		case last.State == "unprotected" || last.State == "stopped" || last.Failover == "halted":
			printStatus(r.Domains)
			return fmt.Errorf("switchover of %s did not complete: %s (%s)", domain, last.State, last.Detail)
		}
	}
	printStatus([]ctl.DomainStatus{last})
	return fmt.Errorf("switchover of %s not finished after %v (state %s: %s)", domain, wait, last.State, last.Detail)
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
		if d.Detail != "" {
			fmt.Printf("%s: %s\n", d.Name, d.Detail)
		}
		if d.Failover != "" {
			fmt.Printf("%s: failover state %s\n", d.Name, d.Failover)
		}
		if d.GoLive != "" {
			fmt.Printf("%s: last failover event: %s\n", d.Name, d.GoLive)
		}
		if d.OutputGate != "" {
			fmt.Printf("%s: output gate: %s\n", d.Name, d.OutputGate)
		}
		if d.Stall != "" {
			fmt.Printf("%s: backup %s\n", d.Name, d.Stall)
		}
	}
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
