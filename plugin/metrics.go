package plugin

import (
	"context"
	"errors"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/sirupsen/logrus"

	"github.com/libvirt-ft/libvirt-ft/plugin/ctl"
	"github.com/libvirt-ft/libvirt-ft/plugin/gate"
)

// Prometheus metrics (issue 14): libvirt-ftd serves them at
// http://<metrics-address>/metrics when Config.MetricsAddress is set. Names
// follow Prometheus's conventions (base units: bytes, seconds; counters end
// in _total). Most are read from the same status virt-ft shows, at scrape
// time (statusCollector); the go-live counter and histogram are kept as
// go-lives happen (metrics.wentLive).

// goLiveBuckets are the go-live histogram's bounds (seconds).
var goLiveBuckets = []float64{0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30}

// standBuckets are the replay stand histogram's bounds (seconds): stands
// are reported from a fifth of the stall bound (1 s by default) up to it.
var standBuckets = []float64{0.5, 1, 1.5, 2, 3, 4, 5, 10, 30}

// metrics is what the daemon counts itself. nil-safe: a nil *metrics (no
// metrics address, tests) counts nothing.
type metrics struct {
	reg       *prometheus.Registry
	goLives   *prometheus.CounterVec
	goLiveSec *prometheus.HistogramVec
	standSec  *prometheus.HistogramVec
}

// newMetrics registers the metrics; status gives the status of every
// protected domain (Daemon.status("")), read at each scrape.
func newMetrics(status func() []ctl.DomainStatus) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		goLives: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "libvirt_ft_go_lives_total",
			Help: "Backups that went live on this host (failovers and planned switchovers), by domain and path (continued: patched QEMU left replay mode; restarted: stock QEMU).",
		}, []string{"domain", "path"}),
		goLiveSec: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "libvirt_ft_go_live_duration_seconds",
			Help:    "Go-live's own time on this host: from the failover core's go-live action (the log replayed to its end, the split-brain lock won) to the VM running alone.",
			Buckets: goLiveBuckets,
		}, []string{"domain"}),
		standSec: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "libvirt_ft_backup_replay_stand_seconds",
			Help:    "Stands of this host's replaying backup that ended short of a stall: its icount stood still with log unread in FIFO B for at least a fifth of the stall bound, then moved again (docs/replay.md §12). A stand reaching the bound is a stall instead, unless the backup's vCPU was seen running with its monitor silent (a slow replay), which gets up to four bounds.",
			Buckets: standBuckets,
		}, []string{"domain"}),
	}
	m.reg.MustRegister(m.goLives, m.goLiveSec, m.standSec, statusCollector{status: status},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// wentLive counts a go-live of domain.
func (m *metrics) wentLive(domain string, how *ctl.GoLive) {
	if m == nil || how == nil {
		return
	}
	m.goLives.WithLabelValues(domain, how.Path).Inc()
	m.goLiveSec.WithLabelValues(domain).Observe(float64(how.TotalMS) / 1000)
}

// replayStood counts a stand of domain's replaying backup that ended
// (failover.BackupResumed), d long.
func (m *metrics) replayStood(domain string, d time.Duration) {
	if m == nil {
		return
	}
	m.standSec.WithLabelValues(domain).Observe(d.Seconds())
}

// serve serves /metrics on addr until ctx ends. A listen error is
// returned at once (the caller logs it; the daemon runs on without
// metrics).
func (m *metrics) serve(ctx context.Context, addr string, log logrus.FieldLogger) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.WithError(err).Error("metrics: the server stopped; no metrics until libvirt-ftd restarts")
		}
	}()
	return nil
}

// statusCollector turns the daemon's status of each protected domain
// (what virt-ft status shows) into metrics at every scrape.
type statusCollector struct{ status func() []ctl.DomainStatus }

var (
	descState = prometheus.NewDesc("libvirt_ft_domain_state",
		"1 for the state each protected domain is in on this host (defined, preparing, seeding, waiting, armed, replicating, unprotected, live, stopped, refused, resolving), with its role.",
		[]string{"domain", "uuid", "role", "state"}, nil)
	descReplayMode = prometheus.NewDesc("libvirt_ft_replay_mode",
		"1 for the record/replay mode of each domain's QEMU on this host: record (a primary), play (a backup replaying), none (a VM that went live on a patched QEMU).",
		[]string{"domain", "mode"}, nil)
	descSent = prometheus.NewDesc("libvirt_ft_log_sent_bytes_total",
		"Log bytes sent to the backup (primary) or received from the primary (backup) in the current run.",
		[]string{"domain", "role"}, nil)
	descAcked = prometheus.NewDesc("libvirt_ft_log_acked_bytes_total",
		"Log bytes the backup acknowledged in the current run (primary).",
		[]string{"domain"}, nil)
	descLagBytes = prometheus.NewDesc("libvirt_ft_backup_lag_bytes",
		"Log bytes sent and not yet acknowledged by the backup.",
		[]string{"domain"}, nil)
	descLagSeconds = prometheus.NewDesc("libvirt_ft_backup_lag_seconds",
		"How far the backup's replay is behind the primary, in the primary's time between sending the log the backup reached and its latest log.",
		[]string{"domain"}, nil)
	descHeld = prometheus.NewDesc("libvirt_ft_primary_held_seconds_total",
		"Time the primary stopped reading its record log, holding its QEMU and the output in its gate, in the current run: reason lag (the backup more than max-lag-ms behind) or window (the window in force of log not yet in the backup's FIFO B: window-bytes, at most 64 KiB while the backup stands still); docs/protocol.md §7.",
		[]string{"domain", "reason"}, nil)
	descLagInstr = prometheus.NewDesc("libvirt_ft_backup_lag_instructions",
		"Guest instructions in the log the backup has not executed yet.",
		[]string{"domain"}, nil)
	descHeartbeat = prometheus.NewDesc("libvirt_ft_heartbeat_age_seconds",
		"Time since the last heartbeat from the peer (absent when none was received).",
		[]string{"domain"}, nil)
	descLastFailover = prometheus.NewDesc("libvirt_ft_last_failover_seconds",
		"The last peer loss, go-live or switchover on this host: from the last frame heard to running alone.",
		[]string{"domain"}, nil)
	descGateHeld = prometheus.NewDesc("libvirt_ft_output_gate_held_frames",
		"Frames the output gate holds now (primary: waiting for the backup's acknowledgement; backup: replayed frames the primary has not reported sent).",
		[]string{"domain", "filter"}, nil)
	descGateHeldBytes = prometheus.NewDesc("libvirt_ft_output_gate_held_bytes",
		"Bytes of the frames the output gate holds now.",
		[]string{"domain", "filter"}, nil)
	descGateReleased = prometheus.NewDesc("libvirt_ft_output_gate_released_frames_total",
		"Frames the output gate let out.",
		[]string{"domain", "filter"}, nil)
	descGateDropped = prometheus.NewDesc("libvirt_ft_output_gate_dropped_frames_total",
		"Frames the output gate discarded: over its memory cap (cap) or because the backup went live (go_live).",
		[]string{"domain", "filter", "reason"}, nil)
	descGateHold = prometheus.NewDesc("libvirt_ft_output_gate_hold_seconds",
		"How long the primary's output gate held each frame until the backup acknowledged the log it depends on (the output rule).",
		[]string{"domain", "filter"}, nil)
	descDigests = prometheus.NewDesc("libvirt_ft_frame_digests_verified_total",
		"The primary's frame digests the backup compared with its replayed frames (divergence detection).",
		[]string{"domain", "filter"}, nil)
	descDiverged = prometheus.NewDesc("libvirt_ft_backup_diverged",
		"1 when the backup's replayed frames differed from the primary's (the backup then stops).",
		[]string{"domain", "filter"}, nil)
)

func (statusCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descState, descReplayMode, descSent, descAcked, descLagBytes, descLagSeconds,
		descHeld, descLagInstr, descHeartbeat, descLastFailover, descGateHeld, descGateHeldBytes, descGateReleased,
		descGateDropped, descGateHold, descDigests, descDiverged} {
		ch <- d
	}
}

func (c statusCollector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c.status() {
		collectDomain(ch, s)
	}
}

// replayMode is the record/replay mode of s's QEMU on this host, "" when
// no QEMU of it runs or it is not known from the status alone.
func replayMode(s ctl.DomainStatus) string {
	switch {
	case s.State == ctl.StateLive && s.GoLive != nil && !s.GoLive.Recording:
		return "none"
	case s.State == ctl.StateLive:
		return "record"
	case s.Role == ctl.RolePrimary && (s.State == ctl.StateReplicating || s.State == ctl.StateUnprotected):
		// An unprotected primary records until it shuts down.
		return "record"
	case s.Role == ctl.RoleBackup && s.State == ctl.StateReplicating:
		return "play"
	}
	return ""
}

func collectDomain(ch chan<- prometheus.Metric, s ctl.DomainStatus) {
	g := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	cnt := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	g(descState, 1, s.Name, s.UUID, string(s.Role), string(s.State))
	if m := replayMode(s); m != "" {
		g(descReplayMode, 1, s.Name, m)
	}
	cnt(descSent, float64(s.SentBytes), s.Name, string(s.Role))
	if s.Role == ctl.RolePrimary {
		cnt(descAcked, float64(s.AckedBytes), s.Name)
		g(descLagBytes, float64(s.LagBytes), s.Name)
		g(descLagSeconds, float64(s.LagMS)/1000, s.Name)
		g(descLagInstr, float64(s.LagInstructions), s.Name)
		cnt(descHeld, float64(s.HeldLagMS)/1000, s.Name, "lag")
		cnt(descHeld, float64(s.HeldWindowMS)/1000, s.Name, "window")
	}
	if s.HeartbeatAgeMS >= 0 && s.Failover != "" {
		g(descHeartbeat, float64(s.HeartbeatAgeMS)/1000, s.Name)
	}
	if s.Loss != nil && s.Loss.TotalMS >= 0 {
		g(descLastFailover, float64(s.Loss.TotalMS)/1000, s.Name)
	}
	for _, gt := range s.Gates {
		g(descGateHeld, float64(gt.HeldFrames), s.Name, gt.Filter)
		g(descGateHeldBytes, float64(gt.HeldBytes), s.Name, gt.Filter)
		cnt(descGateReleased, float64(gt.Released), s.Name, gt.Filter)
		cnt(descGateDropped, float64(gt.DroppedOverCap), s.Name, gt.Filter, "cap")
		cnt(descGateDropped, float64(gt.DroppedByGoLive), s.Name, gt.Filter, "go_live")
		if gt.Backup {
			cnt(descDigests, float64(gt.Verified), s.Name, gt.Filter)
			diverged := 0.0
			if gt.Diverged != "" {
				diverged = 1
			}
			g(descDiverged, diverged, s.Name, gt.Filter)
		} else if len(gt.HoldBuckets) == len(gate.HoldBounds) {
			buckets := make(map[float64]uint64, len(gate.HoldBounds))
			for i, b := range gate.HoldBounds {
				buckets[b.Seconds()] = gt.HoldBuckets[i]
			}
			ch <- prometheus.MustNewConstHistogram(descGateHold, gt.HoldCount, gt.HoldSumMS/1000, buckets, s.Name, gt.Filter)
		}
	}
}
