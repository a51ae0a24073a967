// Command libvirt-ft-hook is libvirt-ft's libvirt qemu hook. Install it as
// /etc/libvirt/hooks/qemu.d/libvirt-ft (mode 0755) before libvirtd starts.
// See package hooks for the contract it follows.
package main

import (
	"os"

	"github.com/libvirt-ft/libvirt-ft/hooks"
	"github.com/libvirt-ft/libvirt-ft/plugin/ctl"
)

func main() {
	socket := os.Getenv("LIBVIRT_FT_SOCKET")
	if socket == "" {
		socket = ctl.DefaultSocket
	}
	os.Exit(hooks.Run(os.Args[1:], os.Stdin, os.Stderr, socket))
}
