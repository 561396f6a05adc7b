package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/internal/testpeer"
	"github.com/tinyscada/tinyscada/services/broker"
	"github.com/tinyscada/tinyscada/services/health"
	"github.com/tinyscada/tinyscada/services/logger"
	"github.com/tinyscada/tinyscada/services/poller"
	"github.com/tinyscada/tinyscada/shared/config"
	"github.com/tinyscada/tinyscada/shared/service"
	"github.com/tinyscada/tinyscada/shared/topics"
)

// crossFieldCases are configurations on either side of every rule that
// spans keys: ok says whether `tinyscada config check` must accept it (and
// then every role must too); otherwise the error must name key.
var crossFieldCases = []struct {
	name                             string
	bus, health, poller, logger, run string
	ok                               bool
	key                              string
}{
	{name: "defaults", ok: true},
	{name: "heartbeat 20s, stale_after default 15s", bus: `heartbeat_interval = "20s"`, key: "bus.heartbeat_interval"},
	{name: "stale_after 4s, heartbeat default 5s", health: "stale_after = \"4s\"\nstall_after = \"10s\"", key: "health.stale_after"},
	{name: "stale_after equal to the heartbeat", bus: `heartbeat_interval = "6s"`, health: `stale_after = "6s"`, key: "health.stale_after"},
	{name: "stale_after just above the heartbeat", bus: `heartbeat_interval = "6s"`, health: `stale_after = "6100ms"`, ok: true},
	{name: "stale_after two intervals", bus: `heartbeat_interval = "1s"`, health: "interval = \"2s\"\nstale_after = \"4s\"", ok: true},
	{name: "stale_after below two intervals", bus: `heartbeat_interval = "1s"`, health: "interval = \"2s\"\nstale_after = \"3s\"", key: "health.stale_after"},
	{name: "stall_after equal to stale_after", health: `stall_after = "15s"`, ok: true},
	{name: "stall_after below stale_after", health: `stall_after = "14s"`, key: "health.stall_after"},
	{name: "failing_restart_after one interval", health: `failing_restart_after = "2s"`, ok: true},
	{name: "failing_restart_after below the interval", health: `failing_restart_after = "1s"`, key: "health.failing_restart_after"},
	{name: "failing_restart_after off", health: `failing_restart_after = "0s"`, ok: true},
	{name: "run watchdogs two intervals", health: "run_watchdog = \"4s\"\nrun_self_watchdog = \"4s\"", ok: true},
	{name: "run watchdog below two intervals", health: `run_watchdog = "3s"`, key: "health.run_watchdog"},
	{name: "restart limit 0 without a window", health: "restart_limit = 0\nrestart_window = \"0s\"", ok: true},
	{name: "reserve a quarter of the database", logger: "max_db_size = \"8MiB\"\nreserve = \"2MiB\"", ok: true},
	{name: "reserve above a quarter", logger: "max_db_size = \"8MiB\"\nreserve = \"3MiB\"", key: "logger.reserve"},
	{name: "gap_after below three ack timeouts", logger: `gap_after = "1s"`, poller: `ack_timeout = "1m"`, ok: true},
	{name: "run backoff equal to its max", run: "restart_backoff = \"1s\"\nrestart_backoff_max = \"1s\"", ok: true},
	{name: "run backoff above its max", run: "restart_backoff = \"2s\"\nrestart_backoff_max = \"1s\"", key: "run.restart_backoff_max"},
	{name: "a line port with a regex", poller: "[[poller.port]]\nname = \"ascii\"\ndevice = \"/dev/ttyS9\"\nmode = \"line\"\nline_format = \"regex\"\nline_regex = 'V=(?P<v>[0-9.]+)'\n[[poller.device]]\nname = \"m\"\nport = \"ascii\"", ok: true},
	{name: "a device on an unknown port", poller: "[[poller.device]]\nname = \"m\"\nport = \"nowhere\"\nunit = 1", key: "poller.device[0].port"},
}

// One validation path: for every rule that spans keys, a configuration
// that `tinyscada config check` accepts is accepted by every role when it
// starts (the broker serves, the poller makes its plan, the logger opens
// its database, health starts), and one it refuses names the key. A role
// that refused what config check let through (health once did, with
// bus.heartbeat_interval = "20s") fails this test.
func TestConfigCheckAcceptsWhatRolesAccept(t *testing.T) {
	for _, tc := range crossFieldCases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			port := testpeer.FreePort(t)
			var b strings.Builder
			fmt.Fprintf(&b, "version = 1\nstate_dir = %q\n[bus]\naddress = \"127.0.0.1:%d\"\n%s\n[broker]\nlisten = [\"127.0.0.1:%d\"]\n[health]\n%s\n[logger]\n%s\n[run]\n%s\n[poller]\n",
				filepath.Join(dir, "state"), port, tc.bus, port, tc.health, tc.logger, tc.run)
			// Keys of [poller] first, then its arrays of tables.
			keys, tables, _ := strings.Cut(tc.poller, "[[")
			b.WriteString(keys + "\n")
			if tables != "" {
				b.WriteString("[[" + tables + "\n")
			}
			path := filepath.Join(dir, "tinyscada.toml")
			if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
				t.Fatal(err)
			}
			cfg, err := loadConfig(path) // what `tinyscada config check` does
			if !tc.ok {
				if err == nil || !strings.Contains(err.Error(), tc.key) {
					t.Fatalf("config check: %v, want an error naming %s\n%s", err, tc.key, b.String())
				}
				return
			}
			if err != nil {
				t.Fatalf("config check: %v\n%s", err, b.String())
			}
			for _, role := range topics.Roles() {
				if role == topics.Uplink {
					continue // not built yet
				}
				if err := roleStarts(t, role, cfg); err != nil {
					t.Errorf("config check accepts it, the %s refuses it: %v\n%s", role, err, b.String())
				}
			}
		})
	}
}

// stubSupervisor lets health start without systemd.
type stubSupervisor struct{}

func (stubSupervisor) UnitOf(context.Context, int) (string, error) { return "", nil }
func (stubSupervisor) Verify(context.Context, string, int) error   { return nil }
func (stubSupervisor) Ping(int) error                              { return nil }
func (stubSupervisor) Restart(context.Context, string, int) error  { return nil }
func (stubSupervisor) Close()                                      {}

// roleStarts runs what role checks of cfg when it starts, up to the point
// where it needs its peers, and returns the error it would exit with.
func roleStarts(t *testing.T, role topics.Role, cfg *config.Config) error {
	t.Helper()
	log := slog.New(slog.DiscardHandler)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	switch role {
	case topics.Broker:
		done := make(chan error, 1)
		go func() { done <- broker.Run(ctx, cfg, log) }()
		up := make(chan error, 1)
		go func() { up <- testpeer.WaitPort(cfg.Bus.Address, 10*time.Second) }()
		select {
		case err := <-done:
			return err
		case err := <-up:
			cancel()
			if rerr := <-done; rerr != nil {
				return rerr
			}
			return err
		}
	case topics.Poller:
		_, err := poller.New(cfg, poller.Options{})
		return err
	case topics.Logger:
		l, err := logger.New(ctx, cfg, logger.Options{})
		if err != nil {
			return err
		}
		return l.Close()
	case topics.Health:
		svc, err := service.New(ctx, topics.Health, cfg, log)
		if err != nil {
			return err
		}
		_, err = health.New(svc, health.Options{Supervisor: stubSupervisor{}})
		return err
	}
	return fmt.Errorf("no start check for role %s in this test", role)
}
