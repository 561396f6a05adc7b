package poller

import (
	"testing"
	"time"
)

// A logger process other than the one seen before becomes ready: what is
// unacknowledged is published again at once (the one before may have died
// with it in an open batch), not after ack_timeout. The first state seen,
// the same process again, and states other than ready change nothing.
func TestLoggerRestartSendsAgain(t *testing.T) {
	t.Parallel()
	p, err := New(testConfig(t, t.TempDir(), twoDevices("100ms", "20ms", "50ms")), Options{})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for range 3 {
		p.out.Add("d", now, func(uint64) []byte { return []byte("{}") })
	}
	if got := len(p.out.Due(now, time.Hour, 64, nil)); got != 3 {
		t.Fatalf("%d due at first, want 3", got)
	}
	due := func() int { return len(p.out.Due(now, time.Hour, 64, nil)) }
	for _, st := range []string{
		`{"state":"ready","pid":10}`,    // the first logger seen
		`{"state":"ready","pid":10}`,    // its state again
		`{"state":"stopping","pid":11}`, // not ready
		`not json`,
	} {
		p.HandleLoggerState([]byte(st))
		if n := due(); n != 0 {
			t.Fatalf("after %s: %d due again, want 0", st, n)
		}
	}
	p.HandleLoggerState([]byte(`{"state":"ready","pid":11}`))
	if n := due(); n != 3 {
		t.Fatalf("after a new logger: %d due again, want 3", n)
	}
}
