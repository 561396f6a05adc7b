package testpeer

import (
	"fmt"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/shared/config"
)

// Config is the defaults with what lets tests run side by side and
// quickly: a state directory of the test's own, the bus (and the broker's
// one listener) on a free port of 127.0.0.1, heartbeats every 100 ms and
// reconnects retried within 200 ms. A test changes what else it needs.
func Config(t testing.TB) *config.Config {
	t.Helper()
	cfg := config.Default()
	cfg.StateDir = t.TempDir()
	cfg.Bus.Address = fmt.Sprintf("127.0.0.1:%d", FreePort(t))
	cfg.Broker.Listen = []string{cfg.Bus.Address}
	cfg.Bus.HeartbeatInterval.Duration = 100 * time.Millisecond
	cfg.Bus.RetryMax.Duration = 200 * time.Millisecond
	return cfg
}

// Port is the TCP port of cfg's bus address, for mosquitto_sub and
// mosquitto_pub.
func Port(t testing.TB, cfg *config.Config) int {
	t.Helper()
	var port int
	if _, err := fmt.Sscanf(cfg.Bus.Address, "127.0.0.1:%d", &port); err != nil {
		t.Fatalf("bus address %q is not 127.0.0.1:port: %v", cfg.Bus.Address, err)
	}
	return port
}
