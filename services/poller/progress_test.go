package poller

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/shared/pty"
	"github.com/tinyscada/tinyscada/shared/service"
)

// A poller whose devices are slow or silent is not hung: a Modbus device
// polled every 2 minutes that does not answer (timeouts, then its backoff)
// and a line device that sends nothing, on real pseudo-terminals. Over
// several stall_after periods every heartbeat advances the progress and
// none says "hung", although no poll round completes (the old progress, a
// count of rounds, stood still).
func TestSlowAndSilentDevicesProgress(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	rtu, err := pty.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer rtu.Close()
	line, err := pty.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer line.Close()
	cfg := testConfig(t, dir, fmt.Sprintf(`
[health]
interval = "100ms"
stale_after = "300ms"
stall_after = "600ms"
[bus]
heartbeat_interval = "100ms"
[[poller.port]]
name = "rs485"
device = %q
timeout = "50ms"
[[poller.port]]
name = "ascii"
device = %q
mode = "line"
timeout = "100ms"
[[poller.device]]
name = "slow"
port = "rs485"
unit = 7
interval = "2m"
[[poller.device.point]]
name = "p"
table = "holding"
address = 0
[[poller.device]]
name = "silent"
port = "ascii"
interval = "100ms"
`, rtu.SlavePath, line.SlavePath))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	svc, err := service.New(ctx, "poller", cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	p, err := New(cfg, Options{OnRound: svc.Advance, Watch: svc.Loop})
	if err != nil {
		t.Fatal(err)
	}
	rec := newRecorder()
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx, rec) }()
	defer func() { cancel(); <-done }()
	<-p.Started()

	rounds := p.devices[0].rounds.Load
	last, lastAt := svc.Heartbeat().Progress, time.Now()
	stall := cfg.Health.StallAfter.Duration
	end := time.Now().Add(4 * stall)
	for n := 0; time.Now().Before(end); n++ {
		time.Sleep(cfg.Bus.HeartbeatInterval.Duration)
		h := svc.Heartbeat()
		if h.Hung != "" {
			t.Fatalf("heartbeat %d: hung %q with a slow and a silent device", n, h.Hung)
		}
		if h.Progress != last {
			last, lastAt = h.Progress, time.Now()
		}
		if time.Since(lastAt) > stall {
			t.Fatalf("progress stood at %d for longer than stall_after (%s; %d rounds of the slow device): health would take the poller for hung", last, stall, rounds())
		}
	}
	if s := p.Stats(); s.DevicesOffline != 2 {
		t.Errorf("stats %+v: want both devices offline (dead and silent)", s)
	}
}
