package service

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/internal/testpeer"
	"github.com/tinyscada/tinyscada/shared/config"
	"github.com/tinyscada/tinyscada/shared/credentials"
)

// testConfig is testpeer.Config with the poller's credential made, as the
// broker would.
func testConfig(t *testing.T) *config.Config {
	t.Helper()
	cfg := testpeer.Config(t)
	if _, err := credentials.Ensure(cfg.StateDir, []string{"poller"}); err != nil {
		t.Fatal(err)
	}
	return cfg
}

func stateOf(t *testing.T, line string) State {
	t.Helper()
	_, payload, _ := strings.Cut(line, " ")
	var st State
	if err := json.Unmarshal([]byte(payload), &st); err != nil {
		t.Fatalf("state payload %q: %v", payload, err)
	}
	return st
}

// A role started before the broker keeps retrying and reaches ready once the
// broker appears; after a broker restart it publishes its retained state
// again by itself. Debian's mosquitto is the broker here, so this also
// checks the runtime against a broker we did not write.
func TestStartBeforeBrokerAndRepublishAfterRestart(t *testing.T) {
	t.Parallel()
	testpeer.Need(t, "mosquitto")
	cfg := testConfig(t)
	port := testpeer.Port(t, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	type result struct {
		s   *Service
		err error
	}
	started := make(chan result, 1)
	go func() {
		s, err := Start(ctx, "poller", cfg, slog.New(slog.DiscardHandler))
		started <- result{s, err}
	}()
	time.Sleep(500 * time.Millisecond) // several failed attempts
	select {
	case r := <-started:
		t.Fatalf("Start returned before any broker existed: %v", r.err)
	default:
	}
	broker := testpeer.Mosquitto(t, port)
	var svc *Service
	select {
	case r := <-started:
		if r.err != nil {
			t.Fatal(r.err)
		}
		svc = r.s
	case <-time.After(10 * time.Second):
		t.Fatal("Start did not connect after the broker appeared")
	}
	runDone := make(chan error, 1)
	go func() { runDone <- svc.Run(ctx) }()
	svc.Ready("polling 0 devices")

	sub := testpeer.Sub(t, port, "-v", "-t", "tinyscada/svc/poller/#")
	testpeer.Expect(t, sub, 5*time.Second, "retained ready state", func(l string) bool {
		return strings.HasPrefix(l, "tinyscada/svc/poller/state ") && stateOf(t, l).State == Ready
	})
	svc.Advance()
	svc.Advance()
	hb := testpeer.Expect(t, sub, 5*time.Second, "heartbeat with progress", func(l string) bool {
		return strings.HasPrefix(l, "tinyscada/svc/poller/heartbeat ") && strings.Contains(l, `"progress":2`)
	})
	var beat map[string]any
	_, payload, _ := strings.Cut(hb, " ")
	if err := json.Unmarshal([]byte(payload), &beat); err != nil {
		t.Fatal(err)
	}
	if int(beat["pid"].(float64)) != os.Getpid() || beat["seq"].(float64) < 1 {
		t.Errorf("heartbeat %s: want our pid and a sequence number", payload)
	}

	// The broker dies and comes back empty: no retained state survives in it.
	_ = broker.Process.Kill()
	_ = broker.Wait()
	testpeer.Mosquitto(t, port)
	sub2 := testpeer.Sub(t, port, "-v", "-t", "tinyscada/svc/poller/state")
	st := stateOf(t, testpeer.Expect(t, sub2, 15*time.Second, "state re-published after broker restart", func(l string) bool { return true }))
	if st.State != Ready || st.PID != os.Getpid() || st.Status != "polling 0 devices" {
		t.Errorf("re-published state %+v: want ready, our pid, the status", st)
	}

	cancel()
	if err := <-runDone; err != nil {
		t.Fatal(err)
	}
}

func TestHeartbeatJSONIsFlat(t *testing.T) {
	b, err := json.Marshal(Heartbeat{PID: 7, Seq: 3, Progress: 9, Uptime: 1500 * time.Millisecond, Extra: map[string]any{"outbox": 4}})
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"pid": 7.0, "seq": 3.0, "progress": 9.0, "uptime_s": 1.5, "outbox": 4.0}
	for k, v := range want {
		if m[k] != v {
			t.Errorf("%s = %v, want %v (payload %s)", k, m[k], v, b)
		}
	}
	if _, ok := m["idle"]; ok {
		t.Errorf("idle present although false: %s", b)
	}
}

// RunWith returns the role loop's error and stops the heartbeats with it,
// also when the loop returns nil; when ctx ends first, it returns nil.
func TestRunWith(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, err := New(ctx, "poller", testConfig(t), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	done := make(chan error, 1)
	go func() {
		done <- s.RunWith(ctx, func(ctx context.Context) error { return boom })
	}()
	select {
	case err := <-done:
		if !errors.Is(err, boom) {
			t.Fatalf("RunWith = %v, want the loop's error", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("RunWith did not return after its loop failed: the heartbeats kept it running")
	}

	// A loop that ends without an error ends the heartbeats too, which
	// go through their stop path ("stopping").
	go func() { done <- s.RunWith(ctx, func(ctx context.Context) error { return nil }) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("RunWith = %v, want the loop's nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("RunWith did not return after its loop returned nil: the heartbeats kept it running")
	}
	s.mu.Lock()
	st := s.state.State
	s.mu.Unlock()
	if st != Stopping {
		t.Errorf("state after the loop ended = %q, want %q", st, Stopping)
	}

	cctx, cancel := context.WithCancel(ctx)
	go func() { done <- s.RunWith(cctx, func(ctx context.Context) error { <-ctx.Done(); return nil }) }()
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("RunWith after ctx ended = %v, want nil", err)
	}

	// When ctx ends, the loop finishes its work before the heartbeats
	// stop: until it returns the service is not "stopping" (and its bus
	// is not closed), however long it takes.
	s.Ready("again")
	cctx, cancel = context.WithCancel(ctx)
	states := make(chan string, 1)
	go func() {
		done <- s.RunWith(cctx, func(ctx context.Context) error {
			<-ctx.Done()
			deadline := time.Now().Add(300 * time.Millisecond)
			for time.Now().Before(deadline) {
				s.mu.Lock()
				st := s.state.State
				s.mu.Unlock()
				if st == Stopping {
					break
				}
				time.Sleep(5 * time.Millisecond)
			}
			s.mu.Lock()
			states <- s.state.State
			s.mu.Unlock()
			return nil
		})
	}()
	cancel()
	if st := <-states; st != Ready {
		t.Errorf("state while the loop was still finishing = %q, want %q", st, Ready)
	}
	if err := <-done; err != nil {
		t.Fatalf("RunWith = %v", err)
	}
	s.mu.Lock()
	st = s.state.State
	s.mu.Unlock()
	if st != Stopping {
		t.Errorf("state after the loop finished = %q, want %q", st, Stopping)
	}
}

// A changed failing report goes out at once, in a heartbeat of its own,
// not a heartbeat interval later: until then health would judge the
// service ok on its last heartbeat.
func TestFailingBeatsAtOnce(t *testing.T) {
	t.Parallel()
	testpeer.Need(t, "mosquitto")
	cfg := testConfig(t)
	cfg.Bus.HeartbeatInterval.Duration = time.Hour // only the first, and the ones Failing sends
	port := testpeer.Port(t, cfg)
	testpeer.Mosquitto(t, port)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	svc, err := Start(ctx, "poller", cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	runDone := make(chan error, 1)
	go func() { runDone <- svc.Run(ctx) }()
	svc.Ready("polling")
	sub := testpeer.Sub(t, port, "-v", "-t", "tinyscada/svc/poller/#")
	// The retained state arrives however late the subscription is: what
	// follows it is live.
	testpeer.Expect(t, sub, 10*time.Second, "the retained state", func(l string) bool {
		return strings.HasPrefix(l, "tinyscada/svc/poller/state ")
	})
	heartbeat := func(l string) bool { return strings.HasPrefix(l, "tinyscada/svc/poller/heartbeat ") }
	svc.Failing("1 of 2 ports not open")
	testpeer.Expect(t, sub, 5*time.Second, "a heartbeat with the report", func(l string) bool {
		return heartbeat(l) && strings.Contains(l, `"failing":"1 of 2 ports not open"`)
	})
	svc.Failing("1 of 2 ports not open") // unchanged: no heartbeat
	svc.Failing("")
	testpeer.Expect(t, sub, 5*time.Second, "a heartbeat without it", func(l string) bool {
		return heartbeat(l) && !strings.Contains(l, `"failing"`)
	})
	cancel()
	if err := <-runDone; err != nil {
		t.Fatal(err)
	}
}
