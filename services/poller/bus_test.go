package poller

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/internal/testpeer"
	"github.com/tinyscada/tinyscada/services/simulate"
	"github.com/tinyscada/tinyscada/shared/bus"
	"github.com/tinyscada/tinyscada/shared/service"
)

// dial connects a client to the broker at port, until the test ends.
func dial(t testing.TB, port int, id string) *bus.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := bus.Dial(ctx, bus.Options{Address: fmt.Sprintf("127.0.0.1:%d", port), ClientID: id,
		CleanSession: true, RetryMax: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// acker is a test acknowledger: it subscribes to the data messages like
// the logger and, while acking is on, acknowledges the highest sequence
// number up to which it has seen every message.
type acker struct {
	c      *bus.Client
	acking atomic.Bool

	mu    sync.Mutex
	seen  map[uint64]int // seq → times received
	run   string
	upTo  uint64 // every seq ≤ upTo seen
	total int
}

func newAcker(t testing.TB, port int) *acker {
	a := &acker{c: dial(t, port, "test-acker"), seen: map[uint64]int{}}
	err := a.c.Subscribe("tinyscada/data/#", 1, func(_ string, payload []byte) {
		var d dataMsg
		if err := json.Unmarshal(payload, &d); err != nil {
			t.Errorf("data message %s: %v", payload, err)
			return
		}
		a.mu.Lock()
		a.run = d.Run
		a.seen[d.Seq]++
		a.total++
		for a.seen[a.upTo+1] > 0 {
			a.upTo++
		}
		upTo := a.upTo
		a.mu.Unlock()
		if a.acking.Load() && upTo > 0 {
			// Sent, not waited for, as the logger does: a handler that
			// waits for its own QoS 1 publish holds back the broker's
			// next messages (see bus.Handler), which a burst of rounds
			// turns into a crawl.
			_, _ = bus.Send(context.Background(), a.c, bus.Message{Topic: "tinyscada/ack/poller", QoS: 1,
				Payload: fmt.Appendf(nil, `{"run":%q,"seq":%d}`, d.Run, upTo)})
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// snapshot returns the highest seq seen, whether every seq up to it was
// seen, and the number of seqs received more than once.
func (a *acker) snapshot() (maxSeq uint64, complete bool, dups int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for s, n := range a.seen {
		maxSeq = max(maxSeq, s)
		if n > 1 {
			dups++
		}
	}
	return maxSeq, a.upTo == maxSeq, dups
}

func busPoller(t testing.TB, port int, body string) (*Poller, string) {
	dir := t.TempDir()
	startSim(t, twoUnits, simLink(t, dir))
	cfg := testConfig(t, dir, body)
	c := dial(t, port, "tinyscada-poller")
	p := startPoller(t, cfg, c)
	// As Serve does.
	if err := c.Subscribe("tinyscada/ack/poller", 1, func(_ string, b []byte) { p.HandleAck(b) }); err != nil {
		t.Fatal(err)
	}
	return p, dir
}

// TestAcknowledgedOutbox: with an acknowledger the outbox stays short and
// every message arrives.
func TestAcknowledgedOutbox(t *testing.T) {
	t.Parallel()
	port := testpeer.FreePort(t)
	testpeer.Mosquitto(t, port)
	a := newAcker(t, port)
	a.acking.Store(true)
	// Room for an acknowledger slowed by a loaded machine (or -race): an
	// outbox of a second's messages, and a re-send only after a second
	// without an acknowledgement.
	p, dir := busPoller(t, port, twoDevices("100ms", "20ms", "50ms", "outbox = 64", `ack_timeout = "1s"`))
	testpeer.Eventually(t, 10*time.Second, "60 messages acknowledged", func() bool { return p.Outbox().Stats(time.Now()).Acked >= 60 })
	maxSeq, complete, _ := a.snapshot()
	st := p.Stats()
	if !complete || st.Skipped != 0 || st.Outbox.Depth >= 64 {
		t.Errorf("max seq %d, complete %v, stats %+v", maxSeq, complete, st)
	}
	// While the logger keeps up, the run file is never written.
	if r, err := ReadRunRecord(filepath.Join(dir, RunFileName)); r != nil || err != nil {
		t.Errorf("run file written while acknowledged: %+v %v", r, err)
	}
}

// TestBackpressure: without acknowledgements the outbox fills, the poller
// stops taking samples and says so, re-sends after ack_timeout; once
// acknowledgements come, it drains and goes on, and no seq is missing.
func TestBackpressure(t *testing.T) {
	t.Parallel()
	port := testpeer.FreePort(t)
	testpeer.Mosquitto(t, port)
	a := newAcker(t, port)
	p, dir := busPoller(t, port, twoDevices("100ms", "20ms", "50ms", "outbox = 5", `ack_timeout = "300ms"`))

	testpeer.Eventually(t, 10*time.Second, "back-pressure", func() bool {
		s := p.Stats()
		return s.Skipped > 0 && s.Outbox.Depth == 5 && s.Backpressure
	})
	hb := p.HeartbeatFields()
	if hb["backpressure"] != true || hb["outbox"] != 5 || hb["outbox_oldest_s"].(float64) <= 0 {
		t.Errorf("heartbeat fields %v", hb)
	}
	testpeer.Eventually(t, 10*time.Second, "re-sent after ack_timeout", func() bool { return p.Stats().Resent > 0 })
	if m, _, _ := a.snapshot(); m != 5 {
		t.Errorf("max seq %d while blocked, want 5", m)
	}
	// Unacknowledged past ack_timeout: the run's progress is noted, and
	// the next run's heartbeats carry it.
	runFile := filepath.Join(dir, RunFileName)
	testpeer.Eventually(t, 5*time.Second, "the run file", func() bool {
		r, _ := ReadRunRecord(runFile)
		return r != nil && r.Run == p.RunID() && r.DataSeq == 5
	})
	next, err := New(testConfig(t, dir, twoDevices("100ms", "20ms", "50ms")), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if hb := next.HeartbeatFields(); hb["prev_run"] != p.RunID() || hb["prev_data_seq"] != uint64(5) {
		t.Errorf("next run's heartbeat: prev_run %v, prev_data_seq %v", hb["prev_run"], hb["prev_data_seq"])
	}

	a.acking.Store(true)
	testpeer.Eventually(t, 10*time.Second, "draining and sampling again", func() bool {
		m, complete, _ := a.snapshot()
		return m > 20 && complete
	})
	// Sampling goes on faster than the acknowledgements come back here,
	// so the outbox fills again and again, but not for good.
	testpeer.Eventually(t, 10*time.Second, "room in the outbox after acks", func() bool { return p.Stats().Outbox.Depth < 5 })
}

// TestRepublishAfterReconnect: a broker restart loses nothing that was not
// acknowledged: the poller publishes its outbox again.
func TestRepublishAfterReconnect(t *testing.T) {
	t.Parallel()
	port := testpeer.FreePort(t)
	broker := testpeer.Mosquitto(t, port)
	a := newAcker(t, port)
	// The poller publishes its outbox again as soon as it is back; the
	// acker may resubscribe only after that (both reconnect on their own),
	// and then the re-send after ack_timeout is what brings them: either
	// way nothing unacknowledged is lost.
	p, _ := busPoller(t, port, twoDevices("100ms", "50ms", "50ms", "outbox = 1000", `ack_timeout = "3s"`))
	testpeer.Eventually(t, 10*time.Second, "10 messages", func() bool { m, _, _ := a.snapshot(); return m >= 10 })

	broker.Process.Kill()
	broker.Wait()
	testpeer.Mosquitto(t, port)
	// Re-sent, and then every seq up to the highest one (a re-send may be
	// under way when the first duplicates arrive, as is the sampling).
	testpeer.Eventually(t, 30*time.Second, "messages of before the restart received again, none missing", func() bool {
		_, complete, dups := a.snapshot()
		return dups >= 5 && complete
	})
	a.acking.Store(true)
	testpeer.Eventually(t, 10*time.Second, "outbox drained", func() bool { return p.Outbox().Stats(time.Now()).Depth < 5 })
}

// TestMosquittoSubShowsReadings runs the poller role as `tinyscada
// poller` does, with the demo configuration, against the demo simulator
// and a broker: `mosquitto_sub -t 'tinyscada/data/#' -v` shows readings.
func TestMosquittoSubShowsReadings(t *testing.T) {
	t.Parallel()
	port := testpeer.FreePort(t)
	testpeer.Mosquitto(t, port)
	data := testpeer.Sub(t, port, "-t", "tinyscada/data/#", "-v")
	svcTopics := testpeer.Sub(t, port, "-t", "tinyscada/svc/poller/#", "-v")
	states := testpeer.Sub(t, port, "-t", "tinyscada/device/#", "-v")

	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "run"), 0o700)
	m := simulate.Demo()
	m.Baud, m.ByteTiming = 9600, true
	ctx, cancel := context.WithCancel(context.Background())
	sim, err := simulate.Start(ctx, m, filepath.Join(dir, "run", "sim-tty"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); sim.Wait() }()

	cfg := testConfig(t, dir, fmt.Sprintf("[bus]\naddress = \"127.0.0.1:%d\"\nheartbeat_interval = \"200ms\"\n", port))
	if !cfg.Poller.Port[0].Simulate || cfg.Poller.Port[0].Path(cfg.StateDir) != filepath.Join(dir, "run", "sim-tty") {
		t.Fatalf("demo port %+v", cfg.Poller.Port[0])
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	svc, err := service.Start(ctx, "poller", cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 2)
	go func() { done <- Serve(ctx, svc) }()
	go func() { done <- svc.Run(ctx) }()
	defer func() {
		cancel()
		for range 2 {
			if err := <-done; err != nil {
				t.Error(err)
			}
		}
	}()

	line := testpeer.Expect(t, data, 10*time.Second, "a reading of the meter", func(l string) bool {
		return strings.HasPrefix(l, "tinyscada/data/meter {")
	})
	t.Log(line)
	for _, k := range []string{`"voltage":`, `"energy":`, `"frequency":50`, `"breaker_closed":true`, `"run":"`, `"seq":`, `"b":"`} {
		if !strings.Contains(line, k) {
			t.Errorf("reading lacks %s: %s", k, line)
		}
	}
	testpeer.Expect(t, data, 10*time.Second, "a reading of the climate sensor", func(l string) bool {
		return strings.HasPrefix(l, "tinyscada/data/climate {") && strings.Contains(l, `"pressure":1013.25`)
	})
	testpeer.Expect(t, svcTopics, 10*time.Second, "ready", func(l string) bool {
		return strings.HasPrefix(l, "tinyscada/svc/poller/state ") && strings.Contains(l, `"state":"ready"`)
	})
	testpeer.Expect(t, svcTopics, 10*time.Second, "the heartbeat with the outbox", func(l string) bool {
		return strings.HasPrefix(l, "tinyscada/svc/poller/heartbeat ") && strings.Contains(l, `"outbox":`) &&
			strings.Contains(l, `"devices_online":2`)
	})
	testpeer.Expect(t, states, 10*time.Second, "the meter online", func(l string) bool {
		return strings.HasPrefix(l, "tinyscada/device/meter/state ") && strings.Contains(l, `"online"`)
	})
}
