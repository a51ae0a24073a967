// Command libvirt-ftd is the libvirt-ft daemon: run one on every host that
// holds primaries or backups. It reads /etc/libvirt-ft/libvirt-ftd.yaml.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"

	"github.com/libvirt-ft/libvirt-ft/plugin"
)

// version is the package version, set at build time (Makefile: -ldflags
// "-X main.version=$(VERSION)"); "dev" in a plain go build.
var version = "dev"

// softMemoryLimit is the Go runtime's soft memory limit for the daemon
// (bytes) unless GOMEMLIMIT is set: see runtime/debug.SetMemoryLimit.
const softMemoryLimit = 1 << 30

func main() {
	var configPath, level string
	cmd := &cobra.Command{
		Use:           "libvirt-ftd",
		Short:         "libvirt-ft daemon: record/replay fault tolerance for libvirt/QEMU domains",
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			// First, before anything opens a file or starts a
			// goroutine: re-executes in place unless sysmon's deep
			// sleep is already off (sysmon.go).
			sysmonErr := keepSysmonAwake()
			log := logrus.New()
			log.SetFormatter(&logrus.TextFormatter{FullTimestamp: true, TimestampFormat: "15:04:05.000"})
			lvl, err := logrus.ParseLevel(level)
			if err != nil {
				return fmt.Errorf("--log-level %q: %w", level, err)
			}
			log.SetLevel(lvl)
			if sysmonErr != nil {
				log.WithError(sysmonErr).Warnf("could not re-execute with GODEBUG=%s (the daemon runs on, with more thread wake-ups under load); set it in the environment (the systemd unit's Environment=)", sysmonGODEBUG)
			}
			if os.Getenv("GOGC") == "" {
				// The log channel allocates each frame it moves (the
				// log, at up to tens of MB/s under network load) over
				// a live heap of a few MB: at Go's default (GOGC 100)
				// the daemon collected several times a second. 400
				// cut its CPU per MB of log by about a third in the
				// lab (BENCHMARKS.md, session 32) for a heap of at
				// most about five times the live one. GOGC set in the
				// environment wins.
				debug.SetGCPercent(400)
			}
			if os.Getenv("GOMEMLIMIT") == "" {
				// GOGC 400 lets the heap grow to five times the live
				// one; this soft limit makes the collector work
				// harder instead once the daemon's memory nears
				// softMemoryLimit. The live heap is a few MB per
				// protected domain in steady state (a 1 MiB log ring,
				// the 256 KiB window, frame buffers) but grows with
				// what a domain holds: an output gate's queue up to
				// 16 MiB (gate.DefaultLimitBytes) while its backup
				// lags, seed chunks and block lists at a protected
				// start. Near the limit the collector may use up to
				// half a CPU; GOMEMLIMIT set in the environment (the
				// systemd unit's Environment=) wins.
				debug.SetMemoryLimit(softMemoryLimit)
			}
			cfg, err := plugin.LoadConfig(configPath)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			d, err := plugin.New(cfg, log)
			if err != nil {
				return err
			}
			return d.Run(ctx)
		},
	}
	cmd.Flags().StringVarP(&configPath, "config", "c", plugin.DefaultConfigPath, "configuration file (YAML)")
	cmd.Flags().StringVar(&level, "log-level", "info", "log level: debug, info, warn, error")
	if err := cmd.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "libvirt-ftd:", err)
		os.Exit(1)
	}
}
