package main

import (
	"context"
	"log/slog"

	"github.com/tinyscada/tinyscada/services/uplink"
	"github.com/tinyscada/tinyscada/shared/config"
	"github.com/tinyscada/tinyscada/shared/service"
	"github.com/tinyscada/tinyscada/shared/topics"
)

// runUplink is the uplink role: see package uplink. Without an upstream
// broker (uplink.address) it is a configuration error: restarting does not
// fix it, and `tinyscada run` does not start the role then.
func runUplink(ctx context.Context, cfg *config.Config, log *slog.Logger) error {
	if !cfg.Uplink.Configured() {
		return &configError{errNoUpstream}
	}
	svc, err := service.Start(ctx, topics.Uplink, cfg, log)
	if err != nil {
		return err
	}
	return svc.RunWith(ctx, func(ctx context.Context) error { return uplink.Run(ctx, cfg, svc) })
}
