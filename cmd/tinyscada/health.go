package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/tinyscada/tinyscada/services/health"
	"github.com/tinyscada/tinyscada/services/supervisor"
	"github.com/tinyscada/tinyscada/shared/config"
	"github.com/tinyscada/tinyscada/shared/service"
	"github.com/tinyscada/tinyscada/shared/topics"
)

// runHealth is the health role: see package health. Under `tinyscada run`
// it drives the run supervisor (pid checks against its parent, restarts by
// SIGTERM); otherwise systemd over D-Bus, and it fails (so that systemd
// restarts it) when D-Bus cannot be reached.
func runHealth(ctx context.Context, cfg *config.Config, log *slog.Logger) error {
	dropDevices(cfg)
	var sup health.Supervisor
	if name, value, _ := strings.Cut(supervisor.UnderRun, "="); os.Getenv(name) == value {
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
