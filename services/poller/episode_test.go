package poller

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/internal/testpeer"
	"github.com/tinyscada/tinyscada/services/simulate"
	"github.com/tinyscada/tinyscada/shared/bus"
)

// logBuffer collects JSON log lines, safe for concurrent use.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// records returns the log records so far whose msg is msg.
func (b *logBuffer) records(msg string) []map[string]any {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(b.buf.String(), "\n") {
		var r map[string]any
		if json.Unmarshal([]byte(line), &r) == nil && r["msg"] == msg {
			out = append(out, r)
		}
	}
	return out
}

// startLoggedPoller is startPoller with the poller's logs as JSON in the
// returned buffer.
func startLoggedPoller(t *testing.T, cfgText string, dir string, pub bus.Conn) (*Poller, *logBuffer) {
	t.Helper()
	logs := &logBuffer{}
	p, err := New(testConfig(t, dir, cfgText), Options{Log: slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx, pub) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return p, logs
}

// TestOfflineEpisodesCountedApart: a device that goes offline, comes back
// and goes offline again within log_interval starts a new episode; the
// first "still offline" line of the second episode counts only that
// episode's repeats, and comes one log_interval after the second
// episode's first line, not after the first episode's. Against the
// simulator on a real pseudo-terminal.
func TestOfflineEpisodesCountedApart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	link := simLink(t, dir)
	sim, _ := startSim(t, "baud = 115200\n[[unit]]\nid = 1\n[[unit.register]]\ntable = \"holding\"\naddress = 0\ntype = \"u16\"\nvalue = 5\n", link)
	rec := newRecorder()
	p, logs := startLoggedPoller(t, fmt.Sprintf(`
[poller]
log_interval = "2s"
offline_backoff_max = "20ms"
[[poller.port]]
name = "bus"
device = %q
baud = 115200
timeout = "50ms"
[[poller.device]]
name = "d"
port = "bus"
unit = 1
interval = "20ms"
[[poller.device.point]]
name = "v"
table = "holding"
`, link), dir, rec)
	<-p.Started()
	topic := "tinyscada/data/d"
	from := 0
	isBad := func(m bus.Message) bool { return !allGood(m) }
	rec.wait(t, &from, topic, 5*time.Second, "a good round", allGood)
	// Rounds before the first good one may have failed on a loaded machine
	// (the simulator starting): episodes of their own, not counted here.
	base := len(logs.records("device offline"))

	// Episode 1: a few failed rounds, so that repeats are suppressed.
	sim.Device.SetFault(1, simulate.Fault{Kind: simulate.NoAnswer})
	for range 5 {
		rec.wait(t, &from, topic, 5*time.Second, "a failed round", isBad)
	}
	sim.Device.SetFault(1, simulate.Fault{})
	rec.wait(t, &from, topic, 5*time.Second, "a good round again", allGood)

	// Episode 2, well within log_interval of episode 1's first line.
	sim.Device.SetFault(1, simulate.Fault{Kind: simulate.NoAnswer})
	rec.wait(t, &from, topic, 5*time.Second, "episode 2's first failed round", isBad)
	ep2 := from - 1 // index of that message in rec.msgs
	// The poller publishes a round before it logs the state change the
	// round made: the line may follow the message by a moment.
	testpeer.Until(5*time.Second, func() bool { return len(logs.records("device offline")) >= base+2 })
	if n := len(logs.records("device offline")) - base; n != 2 {
		t.Fatalf("%d \"device offline\" lines after the first good round, want 2 (one per episode)", n)
	}
	var still map[string]any
	testpeer.Eventually(t, 10*time.Second, "a \"device still offline\" line", func() bool {
		if r := logs.records("device still offline"); len(r) > 0 {
			still = r[0]
		}
		return still != nil
	})
	logTime := func(rec map[string]any) time.Time {
		t.Helper()
		s, _ := rec["time"].(string)
		at, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			t.Fatalf("log line %v: its time: %v", rec, err)
		}
		return at
	}
	// Failed rounds of episode 2 up to the line: at least one more than
	// the repeats it may count. The sender publishes a moment after the
	// rounds (it lets a burst gather): wait for a round stamped after the
	// line, so that every round before it is in.
	lineAt := logTime(still)
	testpeer.Eventually(t, 5*time.Second, "a round after the line", func() bool {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		for _, m := range rec.msgs[ep2:] {
			var d struct{ T int64 }
			if m.Topic == topic && json.Unmarshal(m.Payload, &d) == nil && d.T > lineAt.UnixMilli() {
				return true
			}
		}
		return false
	})
	rounds := 0
	rec.mu.Lock()
	for _, m := range rec.msgs[ep2:] {
		var d struct{ T int64 }
		if m.Topic == topic && isBad(m) && json.Unmarshal(m.Payload, &d) == nil && d.T <= lineAt.UnixMilli() {
			rounds++
		}
	}
	rec.mu.Unlock()
	if n := still["suppressed"].(float64); int(n) >= rounds {
		t.Errorf("first \"still offline\" of episode 2 says suppressed=%v, but episode 2 had only %d failed rounds: episode 1's repeats carried over", n, rounds)
	}
	offline := logs.records("device offline")
	t2, ts := logTime(offline[base+1]), lineAt
	if ts.Sub(t2) < 2*time.Second {
		t.Errorf("\"still offline\" %v after episode 2 began, want at least log_interval (2s): the interval ran from episode 1", ts.Sub(t2))
	}
}
