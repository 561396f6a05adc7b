package main

import (
	"context"
	"log/slog"

	"github.com/tinyscada/tinyscada/services/broker"
	"github.com/tinyscada/tinyscada/shared/config"
)

// runBroker is the broker role: see package broker. Like every role it runs
// Go code on one thread (tuneRuntime).
func runBroker(ctx context.Context, cfg *config.Config, log *slog.Logger) error {
	return broker.Run(ctx, cfg, log)
}
