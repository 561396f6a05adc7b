package logger

import (
	"encoding/json"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/internal/testpeer"
	"github.com/tinyscada/tinyscada/shared/config"
)

// A batch waiting out a batch_delay longer than health's stall_after is
// progress: the logger's heartbeats count it while nothing is committed,
// so that health does not take the logger for hung.
func TestOpenBatchIsProgress(t *testing.T) {
	t.Parallel()
	st := newStack(t, func(c *config.Config) { c.Logger.BatchDelay.Duration = time.Minute })
	var progress atomic.Uint64
	if err := st.poller.Bus.Subscribe(st.poller.Topics.SvcHeartbeat("logger"), 0, func(_ string, b []byte) {
		var h struct {
			Progress uint64 `json:"progress"`
		}
		if json.Unmarshal(b, &h) == nil {
			progress.Store(h.Progress)
		}
	}); err != nil {
		t.Fatal(err)
	}
	// The first batch after a start commits within a second; the next
	// one waits out the delay.
	const n = 3
	msgs := series("r1", 1, n+1)
	st.publish(msgs[0])
	st.waitAck("r1", 1, 10*time.Second)
	for _, m := range msgs[1:] {
		st.publish(m)
	}
	if !testpeer.Until(10*time.Second, func() bool { return st.logger.pending.Load() >= n }) {
		t.Fatalf("%d of %d messages reached the logger", st.logger.pending.Load(), n)
	}
	from := progress.Load()
	// Two ticks of the write loop (a second each at least).
	if !testpeer.Until(5*time.Second, func() bool { return progress.Load() >= from+2 }) {
		t.Fatalf("progress %d, %d before: it stood still while the batch waited", progress.Load(), from)
	}
	if got := st.ack("r1"); got != 1 {
		t.Fatalf("acknowledged up to %d: the batch was committed, the test needs it open", got)
	}
}
