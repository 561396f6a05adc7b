package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/tinyscada/tinyscada/services/health"
	"github.com/tinyscada/tinyscada/services/supervisor"
	"github.com/tinyscada/tinyscada/shared/config"
	"github.com/tinyscada/tinyscada/shared/service"
	"github.com/tinyscada/tinyscada/shared/topics"
)

// supervisorEnv names the variable `tinyscada run` sets in its children's
// environment ("run"), so that health drives the run supervisor instead of
// systemd.
const supervisorEnv = "TINYSCADA_SUPERVISOR"

// runHealth is the health role: see package health. Under `tinyscada run`
// it drives the run supervisor (pid checks against its parent, restarts by
// SIGTERM); otherwise systemd over D-Bus, and it fails (so that systemd
// restarts it) when D-Bus cannot be reached.
func runHealth(ctx context.Context, cfg *config.Config, log *slog.Logger) error {
	if err := health.Check(cfg); err != nil {
		return &configError{err}
	}
	var sup health.Supervisor
	if os.Getenv(supervisorEnv) == "run" {
		sup = health.RunSupervisor{Parent: os.Getppid()}
		log.Info("driving the tinyscada run supervisor", "pid", os.Getppid())
	} else {
		s, err := health.DialSystemd(ctx)
		if err != nil {
			return fmt.Errorf("health: %w", err)
		}
		sup = s
	}
	defer sup.Close()
	if os.Getenv("NOTIFY_SOCKET") == "" {
		log.Warn("NOTIFY_SOCKET is not set: no watchdog pings will be sent")
	}
	svc, err := service.Start(ctx, topics.Health, cfg, log)
	if err != nil {
		return err
	}
	h, err := health.New(svc, health.Options{Supervisor: sup})
	if err != nil {
		return err
	}
	return svc.RunWith(ctx, func(ctx context.Context) error { return h.Serve(ctx) })
}

// runWatchdogs gives the roles of `tinyscada run` their watchdog timeouts,
// as WatchdogSec= does under systemd: health.run_self_watchdog for health,
// health.run_watchdog for the other roles (simulators have none). Only when
// health is among the roles (nothing else pings) and this process has
// CAP_SYS_ADMIN (health, its child, needs it to ping on behalf of other
// pids); otherwise it logs why the stack runs without watchdogs.
func runWatchdogs(cfg *config.Config, roles []supervisor.Role, log *slog.Logger) {
	if !slices.ContainsFunc(roles, func(r supervisor.Role) bool { return r.Name == string(topics.Health) }) {
		return
	}
	if !hasCapSysAdmin() {
		log.Info("no watchdogs: health needs CAP_SYS_ADMIN (root) to ping on behalf of the other roles")
		return
	}
	for i := range roles {
		switch {
		case roles[i].Name == string(topics.Health):
			roles[i].Watchdog = cfg.Health.RunSelfWatchdog.Duration
		case !strings.HasPrefix(roles[i].Name, "simulate-"):
			roles[i].Watchdog = cfg.Health.RunWatchdog.Duration
		}
	}
}

// hasCapSysAdmin reports whether CAP_SYS_ADMIN is in this process's
// effective set (/proc/self/status, CapEff).
func hasCapSysAdmin() bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && caps&(1<<21) != 0 // CAP_SYS_ADMIN = 21
		}
	}
	return false
}
