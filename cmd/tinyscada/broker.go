package main

import (
	"context"
	"log/slog"
	"os"
	"runtime"

	"github.com/tinyscada/tinyscada/services/broker"
	"github.com/tinyscada/tinyscada/shared/config"
)

// runBroker is the broker role: see package broker.
//
// The broker runs Go code on one thread unless GOMAXPROCS is set in its
// environment: routing is a chain of hand-offs between connection
// goroutines, and on one thread they cost no cross-core wake-ups. Measured
// with services/broker/internal/brokerbench (docs/broker-benchmark.md): more
// messages per second and less memory than with both cores of the machine.
func runBroker(ctx context.Context, cfg *config.Config, log *slog.Logger) error {
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(1)
	}
	return broker.Run(ctx, cfg, log)
}
