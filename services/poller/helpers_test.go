package poller

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/services/simulate"
	"github.com/tinyscada/tinyscada/shared/bus"
	"github.com/tinyscada/tinyscada/shared/config"
)

// testConfig parses body (TOML after version and state_dir) as the
// services would.
func testConfig(t testing.TB, stateDir, body string) *config.Config {
	t.Helper()
	// The tests acknowledge at once (an acker, not a logger) and some use
	// a short ack_timeout, which must exceed the logger's batch delay.
	doc := fmt.Sprintf("version = 1\nstate_dir = %q\n%s\n[logger]\nbatch_delay = \"100ms\"\n", stateDir, body)
	c, err := config.Parse("test.toml", []byte(doc))
	if err != nil {
		t.Fatalf("config: %v\n%s", err, doc)
	}
	return c
}

// startSim serves the map text on a new pseudo-terminal linked at link
// until the returned stop is called (or the test ends).
func startSim(t testing.TB, mapText, link string) (*simulate.Sim, func()) {
	t.Helper()
	m, err := simulate.ParseMap([]byte(mapText), "test map")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s, err := simulate.Start(ctx, m, link, nil)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			s.Wait()
		})
	}
	t.Cleanup(stop)
	return s, stop
}

// startPoller runs a Poller for cfg publishing to pub until the test ends.
func startPoller(t testing.TB, cfg *config.Config, pub bus.Conn) *Poller {
	t.Helper()
	p, err := New(cfg, Options{})
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
	return p
}

// runAckedPoller runs a Poller for cfg, publishing to rec, which
// acknowledges its data messages at once as a logger would, until the
// test ends.
func runAckedPoller(t *testing.T, cfg *config.Config, rec *recorder) *Poller {
	t.Helper()
	p, err := New(cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	rec.mu.Lock()
	rec.ack = p.HandleAck
	rec.mu.Unlock()
	rec.autoAck.Store(true)
	runTestPoller(t, p, rec)
	return p
}

// recorder is a Publisher that keeps what it is given, in order, and can
// acknowledge data messages like the logger does.
type recorder struct {
	mu        sync.Mutex
	msgs      []bus.Message
	at        []time.Time   // when each of msgs was published
	cond      chan struct{} // closed and replaced on every message
	down      atomic.Bool
	autoAck   atomic.Bool
	ack       func([]byte)
	published atomic.Int64
}

func newRecorder() *recorder { return &recorder{cond: make(chan struct{})} }

func (r *recorder) Publish(ctx context.Context, m bus.Message) error {
	if r.down.Load() {
		return errors.New("not connected")
	}
	m.Payload = bytes.Clone(m.Payload)
	r.mu.Lock()
	r.msgs = append(r.msgs, m)
	r.at = append(r.at, time.Now())
	close(r.cond)
	r.cond = make(chan struct{})
	ack := r.ack
	r.mu.Unlock()
	r.published.Add(1)
	if ack != nil && r.autoAck.Load() && strings.Contains(m.Topic, "/data/") {
		var d dataMsg
		if json.Unmarshal(m.Payload, &d) == nil {
			ack(fmt.Appendf(nil, `{"run":%q,"seq":%d}`, d.Run, d.Seq))
		}
	}
	return nil
}

func (r *recorder) Connected() bool { return !r.down.Load() }

// wait returns the first message from index *from on whose topic is topic
// and for which match holds, advancing *from past it; it fails the test
// after timeout.
func (r *recorder) wait(t testing.TB, from *int, topic string, timeout time.Duration, what string, match func(bus.Message) bool) bus.Message {
	t.Helper()
	deadline := time.After(timeout)
	for {
		r.mu.Lock()
		for *from < len(r.msgs) {
			m := r.msgs[*from]
			*from++
			if m.Topic == topic && (match == nil || match(m)) {
				r.mu.Unlock()
				return m
			}
		}
		c := r.cond
		r.mu.Unlock()
		select {
		case <-c:
		case <-deadline:
			t.Fatalf("waiting for %s on %s: nothing after %v", what, topic, timeout)
		}
	}
}

// all returns the messages on topic so far.
func (r *recorder) all(topic string) []bus.Message {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []bus.Message
	for _, m := range r.msgs {
		if m.Topic == topic {
			out = append(out, m)
		}
	}
	return out
}

// dataMsg is a data message as the logger reads it; values keep their
// JSON text.
type dataMsg struct {
	Run string                     `json:"run"`
	Seq uint64                     `json:"seq"`
	T   int64                      `json:"t"`
	M   int64                      `json:"m"`
	B   string                     `json:"b"`
	V   map[string]json.RawMessage `json:"v"`
	Bad map[string]string          `json:"bad"`
}

func parseData(t testing.TB, m bus.Message) dataMsg {
	t.Helper()
	var d dataMsg
	dec := json.NewDecoder(bytes.NewReader(m.Payload))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("data message %s: %v", m.Payload, err)
	}
	return d
}

type stateMsg struct {
	State string `json:"state"`
	Since int64  `json:"since"`
	Error string `json:"error"`
}

func parseState(t testing.TB, m bus.Message) stateMsg {
	t.Helper()
	var s stateMsg
	if err := json.Unmarshal(m.Payload, &s); err != nil {
		t.Fatalf("state message %s: %v", m.Payload, err)
	}
	return s
}

func isState(state string) func(bus.Message) bool {
	return func(m bus.Message) bool { return strings.Contains(string(m.Payload), `"state":"`+state+`"`) }
}

func allGood(m bus.Message) bool { return !strings.Contains(string(m.Payload), `"bad"`) }

func simLink(t testing.TB, dir string) string { return filepath.Join(dir, "sim-tty") }

type configPoint = config.PollerPoint

func itoa(n int) string { return fmt.Sprint(n) }
