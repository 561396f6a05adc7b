package logger

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/internal/testpeer"
	"github.com/tinyscada/tinyscada/internal/testpeer/testbroker"
	"github.com/tinyscada/tinyscada/shared/bus"
	"github.com/tinyscada/tinyscada/shared/config"
	"github.com/tinyscada/tinyscada/shared/service"
	"github.com/tinyscada/tinyscada/shared/store"
)

// stack is our broker on a free port, a logger and a stand-in for the
// poller (a client with the poller's credential that publishes data
// messages and collects the acknowledgements).
type stack struct {
	t   testing.TB
	cfg *config.Config
	ctx context.Context

	poller *service.Service
	mu     sync.Mutex
	acked  map[string]uint64

	logger *Logger
	svc    *service.Service
	stop   func()
}

func newStack(t testing.TB, mod func(*config.Config)) *stack {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	cfg := testpeer.Config(t)
	cfg.Logger.BatchDelay.Duration = 20 * time.Millisecond
	cfg.Logger.Synchronous = "normal"
	cfg.Logger.ClockSync = false
	cfg.Logger.RetryMax.Duration = 200 * time.Millisecond
	if mod != nil {
		mod(cfg)
	}
	testbroker.Start(t, cfg, testLog(t).With("role", "broker"))
	st := &stack{t: t, cfg: cfg, ctx: ctx, acked: map[string]uint64{}}
	p, err := service.Start(ctx, "poller", cfg, testLog(t).With("role", "poller"))
	if err != nil {
		t.Fatal(err)
	}
	// Closed before the broker stops (cleanups run last first): else it
	// reconnects, and logs, after the test ended, which panics under -v.
	t.Cleanup(p.Bus.Close)
	st.poller = p
	if err := p.Bus.Subscribe(p.Topics.Ack("poller"), 1, func(_ string, b []byte) {
		var a struct {
			Run string `json:"run"`
			Seq uint64 `json:"seq"`
		}
		if json.Unmarshal(b, &a) == nil {
			st.mu.Lock()
			st.acked[a.Run] = max(st.acked[a.Run], a.Seq)
			st.mu.Unlock()
		}
	}); err != nil {
		t.Fatal(err)
	}
	ready := make(chan struct{}, 100)
	if err := p.Bus.Subscribe(p.Topics.SvcState("logger"), 1, func(_ string, b []byte) {
		var s service.State
		if json.Unmarshal(b, &s) == nil && s.State == service.Ready {
			ready <- struct{}{}
		}
	}); err != nil {
		t.Fatal(err)
	}
	st.startLogger()
	// The logger's first subscription must exist before anything is
	// published: this stand-in for the poller never publishes again.
	select {
	case <-ready:
	case <-time.After(10 * time.Second):
		t.Fatal("logger not ready")
	}
	return st
}

// startLogger starts the logger as `tinyscada logger` does.
func (st *stack) startLogger() {
	t := st.t
	t.Helper()
	ctx, cancel := context.WithCancel(st.ctx)
	log := testLog(t).With("role", "logger")
	l, err := New(ctx, st.cfg, Options{Log: log})
	if err != nil {
		t.Fatal(err)
	}
	svc, err := service.Start(ctx, "logger", st.cfg, log, service.StartOptions{PersistentSession: true, OnMessage: l.Handle})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); svc.Run(ctx) }()
	go func() {
		defer wg.Done()
		if err := l.Serve(ctx, svc); err != nil {
			t.Errorf("logger: %v", err)
		}
	}()
	st.logger, st.svc = l, svc
	st.stop = func() { cancel(); wg.Wait(); l.Close() }
	t.Cleanup(func() {
		if st.logger == l {
			st.stop()
		}
	})
}

func (st *stack) stopLogger() {
	st.stop()
	st.logger = nil
}

func (st *stack) publish(m msg) {
	st.t.Helper()
	err := st.poller.Bus.Publish(st.ctx, bus.Message{Topic: st.poller.Topics.Data(m.dev), QoS: 1, Payload: m.payload()})
	if err != nil {
		st.t.Fatal(err)
	}
}

func (st *stack) ack(run string) uint64 {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.acked[run]
}

// waitAck waits until run is acknowledged up to seq.
func (st *stack) waitAck(run string, seq uint64, within time.Duration) {
	st.t.Helper()
	if !testpeer.Until(within, func() bool { return st.ack(run) >= seq }) {
		st.t.Fatalf("run %s acknowledged up to %d after %v, want %d", run, st.ack(run), within, seq)
	}
}

func (st *stack) dbPath() string { return st.cfg.Logger.Path(st.cfg.StateDir) }

// exactlyOnce checks that run's seqs 1..n are stored once each.
func (st *stack) exactlyOnce(run string, n int) {
	st.t.Helper()
	db := roDB(st.t, st.dbPath())
	seqs := seqsOf(st.t, db, run)
	if len(seqs) != n {
		st.t.Fatalf("%d samples of run %s stored, want %d", len(seqs), run, n)
	}
	for i, s := range seqs {
		if s != int64(i+1) {
			st.t.Fatalf("run %s: stored seqs not 1..%d: %v", run, n, seqs)
		}
	}
	if err := store.IntegrityCheck(context.Background(), db); err != nil {
		st.t.Fatal(err)
	}
}

func TestThroughBroker(t *testing.T) {
	t.Parallel()
	st := newStack(t, nil)
	for _, m := range series("run1", 1, 300) {
		st.publish(m)
	}
	st.waitAck("run1", 300, 10*time.Second)
	st.exactlyOnce("run1", 300)
	// The committed row is announced, retained, with the generation. The
	// retained message a new subscriber gets first may be of an earlier
	// commit: the announcement follows the acknowledgements.
	sub := make(chan []byte, 10)
	if err := st.poller.Bus.Subscribe(st.poller.Topics.Committed(), 1, func(_ string, b []byte) { sub <- b }); err != nil {
		t.Fatal(err)
	}
	timeout := time.After(5 * time.Second)
	for done := false; !done; {
		select {
		case b := <-sub:
			var c struct {
				Gen string `json:"gen"`
				Row int64  `json:"row"`
			}
			if err := json.Unmarshal(b, &c); err != nil || c.Gen != st.logger.Store().Generation() || c.Row > 300 {
				t.Fatalf("committed = %s (%v)", b, err)
			}
			done = c.Row == 300
		case <-timeout:
			t.Fatal("no retained committed message of row 300")
		}
	}
	hb := st.logger.HeartbeatFields()
	if hb["samples"] != int64(300) || hb["readings"] != int64(900) {
		t.Errorf("heartbeat %v", hb)
	}
}

// Malformed payloads of every kind, between good ones, never stop
// ingestion; those with a run and seq are acknowledged past.
func TestMalformedThroughBroker(t *testing.T) {
	t.Parallel()
	// A few of each kind (store's decoder tests have them all): not JSON,
	// not an object, no id, a bad value with an id of another run.
	malformed := []string{``, "\xff{", `[1,2]`, `{"seq":3}`, `{"run":"other","seq":1,"t":1,"m":1,"v":{"a":null}}`}
	st := newStack(t, nil)
	good := series("run1", 1, 20)
	for i, m := range good {
		if i%4 == 2 {
			bad := malformed[i%len(malformed)]
			if err := st.poller.Bus.Publish(st.ctx, bus.Message{Topic: st.poller.Topics.Data("meter"), QoS: 1, Payload: []byte(bad)}); err != nil {
				t.Fatal(err)
			}
		}
		st.publish(m)
	}
	// A malformed message that carries run1's seq 21.
	if err := st.poller.Bus.Publish(st.ctx, bus.Message{Topic: st.poller.Topics.Data("meter"), QoS: 1,
		Payload: []byte(`{"run":"run1","seq":21,"t":1,"m":1,"v":{"x":"oops"}}`)}); err != nil {
		t.Fatal(err)
	}
	st.publish(series("run1", 22, 22)[0])
	st.waitAck("run1", 22, 10*time.Second)
	db := roDB(t, st.dbPath())
	if n := queryInt(t, db, `SELECT count(*) FROM sample`); n != 21 {
		t.Errorf("%d samples stored, want 21", n)
	}
	if hb := st.logger.HeartbeatFields(); hb["malformed"].(int64) != 6 {
		t.Errorf("malformed count %v, want 6", hb["malformed"])
	}
}

// With a persistent session, messages published while the logger is down
// are queued by the broker and stored when it comes back, without the
// poller publishing anything again.
func TestPersistentSessionKeepsMessages(t *testing.T) {
	t.Parallel()
	st := newStack(t, nil)
	all := series("run1", 1, 60)
	for _, m := range all[:10] {
		st.publish(m)
	}
	st.waitAck("run1", 10, 10*time.Second)
	st.stopLogger()
	for _, m := range all[10:] {
		st.publish(m)
	}
	st.startLogger()
	st.waitAck("run1", 60, 10*time.Second)
	st.exactlyOnce("run1", 60)
}

// A technician's sqlite3 shell holds a write transaction: the logger waits
// and retries, acknowledges nothing meanwhile, shows it in its heartbeat,
// and catches up without loss afterwards. The lock is held until the
// logger has waited out its busy timeout and retried several times.
func TestSqlite3ShellHoldsLock(t *testing.T) {
	t.Parallel()
	st := newStack(t, nil)
	all := series("run1", 1, 200)
	for _, m := range all[:50] {
		st.publish(m)
	}
	st.waitAck("run1", 50, 10*time.Second)

	lockWaits := func() int64 { return st.logger.HeartbeatFields()["lock_waits"].(int64) }
	before := lockWaits()
	release := testpeer.LockSQLite(t, st.dbPath(), "INSERT INTO meta VALUES ('technician', 1);")
	for _, m := range all[50:] {
		st.publish(m)
	}
	for _, waits := range []int64{2, 6} {
		testpeer.Eventually(t, 30*time.Second, fmt.Sprintf("%d attempts that met the lock", waits), func() bool {
			return lockWaits()-before >= waits
		})
		if a := st.ack("run1"); a != 50 {
			t.Errorf("acknowledged up to %d while the database was locked (before: 50)", a)
		}
		if hb := st.logger.HeartbeatFields(); hb["waiting"] == nil {
			t.Errorf("heartbeat does not show the wait: %v", hb)
		}
	}
	release()
	st.waitAck("run1", 200, 15*time.Second)
	st.exactlyOnce("run1", 200)
	if hb := st.logger.HeartbeatFields(); hb["waiting"] != nil {
		t.Errorf("still waiting after the lock went: %v", hb["waiting"])
	}
}

// The database directory is created, and a second logger on the same
// file fails cleanly rather than corrupting anything.
func TestNewCreatesDirectory(t *testing.T) {
	t.Parallel()
	cfg := config.Default()
	cfg.StateDir = t.TempDir()
	cfg.Logger.DB = filepath.Join("sub", "dir", "r.db")
	l, err := New(context.Background(), cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if s := l.Status(); s == "" {
		t.Error("empty status")
	}
}

// The last message of a burst is committed and acknowledged without any
// further traffic, whatever the size of the burst relative to a batch.
func TestLastMessageOfBurstAcknowledged(t *testing.T) {
	t.Parallel()
	st := newStack(t, func(cfg *config.Config) { cfg.Logger.BatchReadings = 30 })
	seq := uint64(0)
	for burst := range 40 {
		n := uint64(1 + (burst*37)%23)
		for _, m := range series("run1", seq+1, seq+n) {
			st.publish(m)
		}
		seq += n
		st.waitAck("run1", seq, 5*time.Second)
	}
	st.exactlyOnce("run1", int(seq))
}

// A poller that dies with messages in its outbox: its heartbeats said how
// far its run got, and once the next run's heartbeats arrive (or it said it
// is stopping) the part that never arrived becomes a gap record and the
// acknowledgement moves past it, through the real broker; so does what the
// next run's heartbeats say the previous one made (prev_run, from the
// poller's run file).
func TestDeadRunTailThroughBroker(t *testing.T) {
	t.Parallel()
	st := newStack(t, func(cfg *config.Config) {
		cfg.Poller.AckTimeout.Duration = 50 * time.Millisecond
		cfg.Logger.GapAfter.Duration = 150 * time.Millisecond
	})
	p := st.poller
	beat := func(run string, seq uint64, pid int) {
		t.Helper()
		err := p.Bus.Publish(st.ctx, bus.Message{Topic: p.Topics.SvcHeartbeat("poller"), QoS: 0,
			Payload: fmt.Appendf(nil, `{"run":%q,"data_seq":%d,"pid":%d,"seq":1,"progress":1}`, run, seq, pid)})
		if err != nil {
			t.Fatal(err)
		}
	}
	beat("a", 4, 101)
	for _, m := range series("a", 1, 4) {
		st.publish(m)
	}
	beat("a", 10, 101) // 5..10 made; 5 and 6 arrive, then it dies
	for _, m := range series("a", 5, 6) {
		st.publish(m)
	}
	st.waitAck("a", 6, 10*time.Second)
	time.Sleep(300 * time.Millisecond)
	if n := st.ack("a"); n != 6 {
		t.Fatalf("a live run acknowledged to %d past what arrived", n)
	}
	beat("b", 2, 102) // the restarted poller
	st.publish(series("b", 1, 1)[0])
	st.waitAck("a", 10, 10*time.Second)
	// b says it is stopping: its seq 2 went with it.
	err := p.Bus.Publish(st.ctx, bus.Message{Topic: p.Topics.SvcState("poller"), QoS: 1, Retain: true,
		Payload: []byte(`{"state":"stopping","pid":102,"since":1}`)})
	if err != nil {
		t.Fatal(err)
	}
	st.waitAck("b", 2, 10*time.Second)
	// The next run read b's run file: b made up to 5 while nothing
	// acknowledged it (its heartbeats could not say so).
	err = p.Bus.Publish(st.ctx, bus.Message{Topic: p.Topics.SvcHeartbeat("poller"), QoS: 0,
		Payload: []byte(`{"run":"c","data_seq":0,"pid":103,"prev_run":"b","prev_data_seq":5}`)})
	if err != nil {
		t.Fatal(err)
	}
	st.waitAck("b", 5, 10*time.Second)
	db := roDB(t, st.dbPath())
	got := queryText(t, db, `SELECT group_concat(r.run || ' ' || g.first_seq || '..' || g.last_seq, ', ') FROM gap g JOIN run r ON r.id = g.run`)
	if want := "a 7..10, b 2..2, b 3..5"; got != want {
		t.Errorf("gap records %q, want %q", got, want)
	}
	st.exactlyOnce("a", 6)
}

// Poison messages never stall the logger: a payload too big, one that is
// not JSON, one whose point or device name breaks the configuration's name
// rule (a NUL, a control character), one with an absurd seq. Each is
// taken, acknowledged to the broker and recorded (a malformed gap when its
// run and seq are readable, counted otherwise); the logger stays connected
// and stores everything else.
func TestPoisonMessagesThroughBroker(t *testing.T) {
	t.Parallel()
	// The broker refuses packets over max_packet_size at the door; let this
	// one through so that the logger's own limit is what is tried.
	st := newStack(t, func(c *config.Config) { c.Broker.MaxPacketSize = 1 << 20 })
	pub := func(dev string, payload []byte) {
		t.Helper()
		if err := st.poller.Bus.Publish(st.ctx, bus.Message{Topic: st.poller.Topics.Data(dev), QoS: 1, Payload: payload}); err != nil {
			t.Fatal(err)
		}
	}
	good := series("run1", 1, 10)
	for _, m := range good[:5] {
		st.publish(m)
	}
	big := append([]byte(`{"run":"run1","seq":6,"t":1,"m":1,"v":{"pad":"`), bytes.Repeat([]byte("x"), store.MaxPayload)...)
	pub("meter", append(big, `"}}`...))                                           // seq 6: too big
	pub("meter", []byte("\x00\xff\xfe garbage"))                                  // no run, no seq
	pub("meter", []byte(`{"run":"run1","seq":7,"t":1,"m":1,"v":{"a\u0000b":1}}`)) // NUL in a point name
	pub("me\x01ter", series("run1", 8, 8)[0].payload())                           // control character in the device
	pub("meter", []byte(`{"run":"run1","seq":9223372036854775807,"t":1,"m":1,"v":{"a":1}}`))
	st.publish(good[8])
	st.publish(good[9])
	st.waitAck("run1", 10, 15*time.Second)

	db := roDB(t, st.dbPath())
	if got := seqsOf(t, db, "run1"); len(got) != 7 {
		t.Errorf("stored seqs %v, want 1-5, 9, 10", got)
	}
	rows, err := db.Query(`SELECT coalesce(first_seq, 0), reason FROM gap WHERE kind = 'malformed' ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var gaps []string
	for rows.Next() {
		var seq int64
		var reason string
		if err := rows.Scan(&seq, &reason); err != nil {
			t.Fatal(err)
		}
		if strings.ContainsFunc(reason, func(r rune) bool { return r < ' ' }) {
			t.Errorf("gap reason with a control character: %q", reason)
		}
		gaps = append(gaps, fmt.Sprintf("%d %s", seq, reason))
	}
	want := []string{"6 ", "7 ", "8 ", "0 "}
	wantText := []string{"payload of", "bad point name", "bad device name", "is beyond what run run1 can have made"}
	if len(gaps) != len(want) {
		t.Fatalf("malformed gaps:\n%s", strings.Join(gaps, "\n"))
	}
	for i := range want {
		if !strings.HasPrefix(gaps[i], want[i]) || !strings.Contains(gaps[i], wantText[i]) {
			t.Errorf("gap %d: %q, want seq %q and %q", i, gaps[i], want[i], wantText[i])
		}
	}
	if hb := st.logger.HeartbeatFields(); hb["malformed"].(int64) != 5 {
		t.Errorf("malformed count %v, want 5", hb["malformed"])
	}
	if !st.svc.Bus.Connected() {
		t.Error("the logger lost its connection")
	}
	// The CSV export holds no control character from the names.
	var buf bytes.Buffer
	edb, err := store.OpenReadOnly(st.dbPath())
	if err != nil {
		t.Fatal(err)
	}
	defer edb.Close()
	if _, err := store.Export(context.Background(), edb, store.ExportFilter{}, store.FormatCSV, &buf); err != nil {
		t.Fatal(err)
	}
	if i := bytes.IndexFunc(buf.Bytes(), func(r rune) bool { return r < ' ' && r != '\n' }); i >= 0 {
		t.Errorf("control character in the export at byte %d: %q", i, buf.Bytes()[max(i-40, 0):i+1])
	}
}

// The poller's first heartbeat (published before the poller added its
// fields) is not warned about; one with a run but no data_seq is.
func TestFirstProducerHeartbeatQuiet(t *testing.T) {
	t.Parallel()
	cfg := config.Default()
	cfg.StateDir = t.TempDir()
	var rec levelRecorder
	l, err := New(context.Background(), cfg, Options{Log: slog.New(&rec)})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	hb := l.topics.SvcHeartbeat(Producer)
	l.Handle(hb, []byte(`{"pid":42,"seq":1,"progress":0,"boot":"b","version":"dev"}`))
	if n := rec.warnings(); n != 0 {
		t.Errorf("%d warnings for the service's first heartbeat", n)
	}
	l.Handle(hb, []byte(`{"pid":42,"seq":2,"run":"r1"}`))
	if n := rec.warnings(); n != 1 {
		t.Errorf("%d warnings for a heartbeat with a run but no data_seq, want 1", n)
	}
}

// levelRecorder is a slog.Handler that counts warnings and errors.
type levelRecorder struct {
	mu sync.Mutex
	n  int
}

func (r *levelRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *levelRecorder) Handle(_ context.Context, rec slog.Record) error {
	if rec.Level >= slog.LevelWarn {
		r.mu.Lock()
		r.n++
		r.mu.Unlock()
	}
	return nil
}
func (r *levelRecorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *levelRecorder) WithGroup(string) slog.Handler      { return r }
func (r *levelRecorder) warnings() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n
}
