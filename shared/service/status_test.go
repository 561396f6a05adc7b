package service

import (
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/shared/bus"
)

// statusSink is a NOTIFY_SOCKET that keeps the STATUS= lines it gets.
type statusSink struct {
	mu    sync.Mutex
	lines []string
}

func (s *statusSink) has(line string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range s.lines {
		if l == line {
			return true
		}
	}
	return false
}

func listenStatus(t *testing.T) *statusSink {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("NOTIFY_SOCKET", path)
	s := &statusSink{}
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			for _, l := range strings.Split(string(buf[:n]), "\n") {
				if v, ok := strings.CutPrefix(l, "STATUS="); ok {
					s.mu.Lock()
					s.lines = append(s.lines, v)
					s.mu.Unlock()
				}
			}
		}
	}()
	t.Cleanup(func() { conn.Close() })
	return s
}

// states records the retained states published.
type states struct {
	mu  sync.Mutex
	all []State
}

func (s *states) Publish(_ context.Context, m bus.Message) error {
	if !strings.HasSuffix(m.Topic, "/state") {
		return nil
	}
	var st State
	if err := json.Unmarshal(m.Payload, &st); err != nil {
		return err
	}
	s.mu.Lock()
	s.all = append(s.all, st)
	s.mu.Unlock()
	return nil
}

func (s *states) last() State {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.all) == 0 {
		return State{}
	}
	return s.all[len(s.all)-1]
}

// The status follows what it describes after READY: a new status goes out
// as STATUS= (at most once a second; what is held back goes with a
// heartbeat) and into the retained state with the next heartbeat, which
// keeps "ready" and its since.
func TestStatusFollows(t *testing.T) {
	if !alone(t) {
		return
	}
	sink := listenStatus(t)
	cfg := testConfig(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := New(ctx, "poller", cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	rec := &states{}
	s.Attach(rec)
	s.Ready("0 devices online")
	ready := rec.last()
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() { cancel(); <-done }()

	s.Status("%d devices online", 1) // within a second of READY: held back
	s.Status("%d devices online", 3)
	waitUntil(t, "STATUS= with the live figure", func() bool { return sink.has("3 devices online") })
	waitUntil(t, "retained state with the live status", func() bool { return rec.last().Status == "3 devices online" })
	if st := rec.last(); st.State != Ready || st.Since != ready.Since {
		t.Errorf("republished state %+v, want ready since %d", st, ready.Since)
	}
	n := len(rec.all)
	time.Sleep(5 * cfg.Bus.HeartbeatInterval.Duration)
	rec.mu.Lock()
	again := len(rec.all) - n
	rec.mu.Unlock()
	if again != 0 {
		t.Errorf("state republished %d times with an unchanged status", again)
	}
}
