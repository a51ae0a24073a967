package plugin

import (
	"strings"
	"testing"
	"testing/synctest"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/libvirt-ft/libvirt-ft/plugin/ctl"
)

// The metrics of a replicating pair: state, role, replay mode and log
// bytes on both hosts; the go-live counter and histogram once the backup
// went live.
func TestMetrics(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fp, _ := replicating(t)
		ma := newMetrics(func() []ctl.DomainStatus { return fp.a.d.status("") })
		mb := newMetrics(func() []ctl.DomainStatus { return fp.b.d.status("") })
		want := `
# HELP libvirt_ft_domain_state 1 for the state each protected domain is in on this host (defined, preparing, seeding, waiting, armed, replicating, unprotected, live, stopped, refused, resolving), with its role.
# TYPE libvirt_ft_domain_state gauge
libvirt_ft_domain_state{domain="web",role="primary",state="replicating",uuid="` + runUUID + `"} 1
# HELP libvirt_ft_log_acked_bytes_total Log bytes the backup acknowledged in the current run (primary).
# TYPE libvirt_ft_log_acked_bytes_total counter
libvirt_ft_log_acked_bytes_total{domain="web"} 500
# HELP libvirt_ft_replay_mode 1 for the record/replay mode of each domain's QEMU on this host: record (a primary), play (a backup replaying), none (a VM that went live on a patched QEMU).
# TYPE libvirt_ft_replay_mode gauge
libvirt_ft_replay_mode{domain="web",mode="record"} 1
`
		if err := testutil.GatherAndCompare(ma.reg, strings.NewReader(want),
			"libvirt_ft_domain_state", "libvirt_ft_log_acked_bytes_total", "libvirt_ft_replay_mode"); err != nil {
			t.Fatal(err)
		}
		if err := testutil.GatherAndCompare(mb.reg, strings.NewReader(`
# HELP libvirt_ft_replay_mode 1 for the record/replay mode of each domain's QEMU on this host: record (a primary), play (a backup replaying), none (a VM that went live on a patched QEMU).
# TYPE libvirt_ft_replay_mode gauge
libvirt_ft_replay_mode{domain="web",mode="play"} 1
`), "libvirt_ft_replay_mode"); err != nil {
			t.Fatal(err)
		}
		if n, err := testutil.GatherAndCount(mb.reg, "libvirt_ft_log_sent_bytes_total", "libvirt_ft_heartbeat_age_seconds"); err != nil || n != 2 {
			t.Fatalf("backup: %d series, %v", n, err)
		}
		// The primary's hold times: one series per reason, none on a backup.
		if n, err := testutil.GatherAndCount(ma.reg, "libvirt_ft_primary_held_seconds_total"); err != nil || n != 2 {
			t.Fatalf("primary: %d held series, %v", n, err)
		}
		if n, err := testutil.GatherAndCount(mb.reg, "libvirt_ft_primary_held_seconds_total"); err != nil || n != 0 {
			t.Fatalf("backup: %d held series, %v", n, err)
		}
		mb.wentLive("web", &ctl.GoLive{Path: ctl.GoLiveContinued, TotalMS: 180})
		if got := testutil.ToFloat64(mb.goLives.WithLabelValues("web", ctl.GoLiveContinued)); got != 1 {
			t.Fatalf("go-lives %v", got)
		}
		if n := testutil.CollectAndCount(mb.goLiveSec); n != 1 {
			t.Fatalf("go-live histogram: %d series", n)
		}
		var nilMetrics *metrics
		nilMetrics.wentLive("web", &ctl.GoLive{}) // no metrics address: counts nothing
	})
}
