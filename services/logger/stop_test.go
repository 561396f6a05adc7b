package logger

import (
	"context"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/internal/testpeer"
	"github.com/tinyscada/tinyscada/shared/config"
	"github.com/tinyscada/tinyscada/shared/service"
)

// A stop (ctx ends, as on SIGTERM) with messages in the open batch and
// queued: the logger commits them and acknowledges them before it
// returns, as `tinyscada logger` runs it (service.RunWith), however long
// the batch delay.
func TestStopCommitsAndAcknowledges(t *testing.T) {
	t.Parallel()
	st := newStack(t, func(c *config.Config) { c.Logger.BatchDelay.Duration = time.Minute })
	st.stopLogger() // newStack's logger runs without RunWith; this one with

	ctx, cancel := context.WithCancel(st.ctx)
	defer cancel()
	log := testLog(t).With("role", "logger")
	l, err := New(ctx, st.cfg, Options{Log: log})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	svc, err := service.Start(ctx, "logger", st.cfg, log, service.StartOptions{PersistentSession: true, OnMessage: l.Handle})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- svc.RunWith(ctx, func(ctx context.Context) error { return l.Serve(ctx, svc) }) }()

	// The first batch after a start commits within a second; the next
	// one waits out the delay.
	const n = 7
	msgs := series("r1", 1, n)
	st.publish(msgs[0])
	st.waitAck("r1", 1, 10*time.Second)
	for _, m := range msgs[1:] {
		st.publish(m)
	}
	if !testpeer.Until(10*time.Second, func() bool { return l.pending.Load() >= n-1 }) {
		t.Fatalf("%d of %d messages reached the logger", l.pending.Load(), n-1)
	}
	if got := st.ack("r1"); got != 1 {
		t.Fatalf("acknowledged up to %d before the batch delay; the test needs an open batch", got)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("logger after the stop: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the logger did not stop")
	}
	st.exactlyOnce("r1", n)
	// The acknowledgement left before the logger's bus closed.
	st.waitAck("r1", n, 5*time.Second)
}
