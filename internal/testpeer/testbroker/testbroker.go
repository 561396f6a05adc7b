// Package testbroker runs our broker (services/broker) in the test's
// process. It is apart from internal/testpeer because the broker's own
// tests, and shared/bus's and shared/service's, use testpeer: testpeer
// importing the broker would be an import cycle.
package testbroker

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/internal/testpeer"
	"github.com/tinyscada/tinyscada/services/broker"
	"github.com/tinyscada/tinyscada/shared/config"
)

// Start runs broker.Run with cfg (testpeer.Config gives one on a free
// port) until the returned stop is called or the test ends, and returns
// once the bus address accepts connections. stop waits for Run to return
// and fails the test if it returned an error; the test may call it to take
// the broker away, and Start again on the same cfg to bring it back (the
// credentials in cfg.StateDir stay). log nil discards the broker's log.
func Start(t testing.TB, cfg *config.Config, log *slog.Logger) (stop func()) {
	t.Helper()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	var runErr error
	go func() { defer close(done); runErr = broker.Run(ctx, cfg, log) }()
	var once sync.Once
	stop = func() {
		t.Helper()
		once.Do(func() {
			cancel()
			<-done
			if runErr != nil {
				t.Errorf("broker on %s: %v", cfg.Bus.Address, runErr)
			}
		})
	}
	t.Cleanup(stop)
	if err := testpeer.WaitPort(cfg.Bus.Address, 10*time.Second); err != nil {
		select {
		case <-done:
			t.Fatalf("broker on %s: %v", cfg.Bus.Address, runErr)
		default:
		}
		t.Fatal(err)
	}
	return stop
}
