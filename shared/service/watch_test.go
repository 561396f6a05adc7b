package service

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tinyscada/tinyscada/shared/bus"
	"github.com/tinyscada/tinyscada/shared/config"
)

// waitUntil polls cond every 5ms for at most 10s.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after 10s: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func watchConfig(t *testing.T) *config.Config {
	cfg := testConfig(t)
	cfg.Health.StaleAfter = config.Duration{Duration: 200 * time.Millisecond}
	cfg.Health.StallAfter = config.Duration{Duration: 400 * time.Millisecond}
	cfg.Bus.HeartbeatInterval = config.Duration{Duration: 20 * time.Millisecond}
	return cfg
}

// A watched loop that waits as long as its schedule says (much longer than
// stale_after and stall_after) is not hung, and every heartbeat advances;
// one that overruns its promise by more than stale_after is hung, and then
// the progress stands still and the heartbeat says which loop; keeping a
// promise again ends it.
func TestLoopPromises(t *testing.T) {
	t.Parallel()
	cfg := watchConfig(t)
	s, err := New(context.Background(), "poller", cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	l := s.Loop("port sim")
	l.Wait(time.Hour) // a poll due in an hour
	last := s.Heartbeat().Progress
	end := time.Now().Add(3 * cfg.Health.StallAfter.Duration)
	for time.Now().Before(end) {
		h := s.Heartbeat()
		if h.Hung != "" || h.Progress == last {
			t.Fatalf("a loop waiting for its schedule: heartbeat %+v (progress before %d)", h, last)
		}
		last = h.Progress
		time.Sleep(cfg.Bus.HeartbeatInterval.Duration)
	}

	l.Busy(time.Millisecond) // a request that never ends
	var h Heartbeat
	waitUntil(t, "a loop stuck in a step is hung", func() bool { h = s.Heartbeat(); return h.Hung != "" })
	if !strings.Contains(h.Hung, "loop port sim: busy for") || !strings.Contains(h.Hung, "promised at most 1ms") {
		t.Errorf("hung = %q", h.Hung)
	}
	if h2 := s.Heartbeat(); h2.Progress != h.Progress || h2.Hung == "" {
		t.Errorf("progress moved while hung: %d then %+v", h.Progress, h2)
	}
	b, _ := json.Marshal(h)
	if !strings.Contains(string(b), `"hung":"loop port sim`) {
		t.Errorf("heartbeat JSON without hung: %s", b)
	}

	l.Wait(time.Minute)
	if h3 := s.Heartbeat(); h3.Hung != "" || h3.Progress == h.Progress {
		t.Errorf("after a new promise: %+v", h3)
	}
	l.Stop()
	l.Busy(time.Nanosecond) // a stopped loop is not watched
	time.Sleep(2 * cfg.Health.StaleAfter.Duration)
	if h := s.Heartbeat(); h.Hung != "" {
		t.Errorf("a stopped loop made the service hung: %+v", h)
	}
	var nl *Loop // unwatched code paths
	nl.Busy(time.Second)
	nl.Wait(time.Second)
	nl.Stop()
}

// notifyPings is a NOTIFY_SOCKET that counts WATCHDOG=1 by sender pid.
type notifyPings struct {
	mu    sync.Mutex
	pings int
}

func (n *notifyPings) count() int { n.mu.Lock(); defer n.mu.Unlock(); return n.pings }

func listenPings(t *testing.T) *notifyPings {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := conn.SyscallConn()
	_ = raw.Control(func(fd uintptr) { err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1) })
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("NOTIFY_SOCKET", path)
	n := &notifyPings{}
	go func() {
		buf, oob := make([]byte, 4096), make([]byte, 256)
		for {
			nb, noob, _, _, err := conn.ReadMsgUnix(buf, oob)
			if err != nil {
				return
			}
			msgs, _ := unix.ParseSocketControlMessage(oob[:noob])
			for _, m := range msgs {
				if c, err := unix.ParseUnixCredentials(&m); err == nil && int(c.Pid) == os.Getpid() && strings.Contains(string(buf[:nb]), "WATCHDOG=1") {
					n.mu.Lock()
					n.pings++
					n.mu.Unlock()
				}
			}
		}
	}()
	t.Cleanup(func() { conn.Close() })
	return n
}

type discard struct{}

func (discard) Publish(context.Context, bus.Message) error { return nil }

// A role feeds its own watchdog exactly while health is absent and it is
// working: not while health's heartbeats are fresh, at once when health
// says "stopping" (or "lost"), again once health's heartbeats are stale,
// and not while one of its loops is hung or its progress stands still.
func TestFeedsOwnWatchdogWhileHealthAbsent(t *testing.T) {
	if !alone(t) {
		return
	}
	pings := listenPings(t)
	t.Setenv("WATCHDOG_USEC", "10000000")
	t.Setenv("WATCHDOG_PID", fmt.Sprint(os.Getpid()))
	cfg := watchConfig(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := New(ctx, "poller", cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	s.Attach(discard{})
	s.WatchHealth(func(string, func(string, []byte)) error { return nil })
	l := s.Loop("port sim")
	l.Wait(time.Hour)
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() { cancel(); <-done }()

	stateTopic, beatTopic := s.HealthTopics()[0], s.HealthTopics()[1]
	ready, _ := json.Marshal(State{State: Ready, PID: 4242})
	stopping, _ := json.Marshal(State{State: Stopping, PID: 4242})
	stopBeats := make(chan struct{})
	beating := func() {
		s.ObserveHealth(stateTopic, ready)
		stopBeats = make(chan struct{})
		go func(stop chan struct{}) {
			for {
				s.ObserveHealth(beatTopic, []byte(`{"pid":4242}`))
				select {
				case <-stop:
					return
				case <-time.After(20 * time.Millisecond):
				}
			}
		}(stopBeats)
	}
	quiet := func(what string) {
		t.Helper()
		waitUntil(t, what+": stops feeding", func() bool { return !s.FeedsOwnWatchdog() })
		n := pings.count()
		time.Sleep(3 * cfg.Health.StaleAfter.Duration)
		if m := pings.count(); m > n+1 { // one may have been on its way
			t.Errorf("%s: %d own pings", what, m-n)
		}
	}
	fed := func(what string) {
		t.Helper()
		n := pings.count()
		waitUntil(t, what+": feeds its own watchdog", func() bool { return pings.count() > n+2 })
	}

	// Nothing heard of health: after the grace the role feeds itself.
	fed("no health at all")
	// Health comes: the role hands over.
	beating()
	quiet("health heartbeating")
	// Health stops cleanly: at once.
	close(stopBeats)
	s.ObserveHealth(stateTopic, stopping)
	fed("health stopping")
	// Health back, then hung (its heartbeats stop, no state change).
	beating()
	quiet("health back")
	close(stopBeats)
	fed("health's heartbeats stale")
	// Health absent and the role hung: no pings.
	l.Busy(time.Millisecond)
	waitUntil(t, "hung", func() bool { return s.hung() != "" })
	n := pings.count()
	time.Sleep(3 * cfg.Health.StaleAfter.Duration)
	if m := pings.count(); m > n+1 {
		t.Errorf("a hung role fed its own watchdog %d times", m-n)
	}
	// Not hung, but no progress either (no watched loop, nothing advances).
	l.Stop()
	n = pings.count()
	time.Sleep(2 * cfg.Health.StallAfter.Duration)
	waitUntil(t, "stalled role stops feeding", func() bool {
		before := pings.count()
		time.Sleep(3 * cfg.Bus.HeartbeatInterval.Duration)
		return pings.count() == before
	})
	// Idle counts as working.
	s.SetIdle(true)
	fed("idle")
}
