package main

import (
	"database/sql"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/internal/testpeer"
	"github.com/tinyscada/tinyscada/services/poller"
	"github.com/tinyscada/tinyscada/shared/store"
)

// fastPoller is the configuration tail for a stack of broker, poller (two
// simulated devices polled every 20 ms, about 100 messages a second) and
// logger.
const fastPoller = `roles = ["broker", "poller", "logger"]
[logger]
batch_delay = "50ms"
clock_sync = false
gap_after = "1s"
[poller]
ack_timeout = "1s"
[[poller.port]]
name = "sim"
device = "run/sim-tty"
simulate = true
baud = 115200
[[poller.device]]
name = "meter"
port = "sim"
unit = 1
interval = "20ms"
[[poller.device.point]]
name = "voltage"
table = "input"
address = 0
type = "f32"
[[poller.device.point]]
name = "energy"
table = "input"
address = 6
type = "u32"
[[poller.device]]
name = "climate"
port = "sim"
unit = 2
interval = "20ms"
[[poller.device.point]]
name = "temperature"
table = "input"
address = 0
type = "s16"
scale = 0.1
`

// watcher follows the retained states and the poller's heartbeats.
type watcher struct {
	mu     sync.Mutex
	states map[string]stateMsg
	poller struct {
		Run    string  `json:"run"`
		Seq    uint64  `json:"data_seq"`
		Acked  uint64  `json:"acked"`
		Outbox int     `json:"outbox"`
		Oldest float64 `json:"outbox_oldest_s"`
		Resent uint64  `json:"resent"`
	}
	beats int
}

func watch(t *testing.T, port int) *watcher {
	w := &watcher{states: map[string]stateMsg{}}
	lines := testpeer.Sub(t, port, "-v", "-t", "tinyscada/svc/+/state", "-t", "tinyscada/svc/poller/heartbeat")
	go func() {
		for l := range lines {
			topic, payload, _ := strings.Cut(l, " ")
			w.mu.Lock()
			if role, ok := strings.CutSuffix(strings.TrimPrefix(topic, "tinyscada/svc/"), "/state"); ok {
				var st stateMsg
				if json.Unmarshal([]byte(payload), &st) == nil {
					w.states[role] = st
				}
			} else if json.Unmarshal([]byte(payload), &w.poller) == nil {
				w.beats++
			}
			w.mu.Unlock()
		}
	}()
	return w
}

// waitFor polls cond (under the watcher's lock) until it holds.
func (w *watcher) waitFor(t *testing.T, what string, within time.Duration, cond func() bool) {
	t.Helper()
	if !testpeer.Until(within, func() bool { w.mu.Lock(); defer w.mu.Unlock(); return cond() }) {
		w.mu.Lock()
		defer w.mu.Unlock()
		t.Fatalf("timed out after %v waiting for %s; states %+v, poller %+v", within, what, w.states, w.poller)
	}
}

// readyPID waits until role is ready with a pid other than old.
func (w *watcher) readyPID(t *testing.T, role string, old int) int {
	t.Helper()
	var pid int
	w.waitFor(t, role+" ready (again)", 20*time.Second, func() bool {
		st := w.states[role]
		pid = st.PID
		return st.State == "ready" && st.PID != old && syscall.Kill(st.PID, 0) == nil
	})
	return pid
}

// drained waits until the poller acknowledged at least n more messages
// than now and its outbox holds nothing older than a second.
func (w *watcher) drained(t *testing.T, what string, more uint64) {
	t.Helper()
	w.mu.Lock()
	target := w.poller.Acked + more
	w.mu.Unlock()
	w.waitFor(t, "the poller's outbox to drain after "+what, 30*time.Second, func() bool {
		return w.poller.Acked >= target && w.poller.Oldest < 1
	})
}

// startWatched starts `tinyscada run` with cfgTail on a free port and
// waits until every role of it is ready and the poller's outbox drained
// once; it returns the run, the watcher, the state directory and the
// configuration file.
func startWatched(t *testing.T, cfgTail string) (cmd *exec.Cmd, w *watcher, stateDir, cfgPath string) {
	t.Helper()
	testpeer.Need(t, "mosquitto_sub")
	port := testpeer.FreePort(t)
	cfgPath, stateDir = writeConfig(t, port, cfgTail)
	cmd = startRun(t, cfgPath)
	if err := testpeer.WaitPort(fmt.Sprintf("127.0.0.1:%d", port), 15*time.Second); err != nil {
		t.Fatal(err)
	}
	w = watch(t, port)
	for _, role := range []string{"broker", "logger", "poller"} {
		w.readyPID(t, role, 0)
	}
	w.drained(t, "start", 30)
	return cmd, w, stateDir, cfgPath
}

// pids returns the ready pids of roles, in order.
func (w *watcher) pids(roles ...string) []int {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]int, len(roles))
	for i, r := range roles {
		out[i] = w.states[r].PID
	}
	return out
}

// Poller → broker → logger, as `tinyscada run` starts them, through kill -9
// of the logger (three times, at random moments of its batches), of the
// broker, and of both at once: every message the poller got acknowledged
// is in the database exactly once, there is no gap, and the poller's outbox
// drains after each kill. Then kill -9 of the poller: its run's seqs up to
// the last data_seq its heartbeats showed are all accounted for, stored or
// in a gap record, never both, and the new run drains.
func TestLoggerSurvivesKillNine(t *testing.T) {
	t.Parallel()
	cmd, w, stateDir, cfgPath := startWatched(t, fastPoller)
	p := w.pids("logger", "broker", "poller")
	loggerPID, brokerPID, pollerPID := p[0], p[1], p[2]
	w.mu.Lock()
	run := w.poller.Run
	w.mu.Unlock()

	for i := range 3 {
		time.Sleep(time.Duration(17+i*23) * time.Millisecond)
		if err := syscall.Kill(loggerPID, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		loggerPID = w.readyPID(t, "logger", loggerPID)
		w.drained(t, "kill -9 of the logger", 30)
	}

	if err := syscall.Kill(brokerPID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	brokerPID = w.readyPID(t, "broker", brokerPID)
	w.drained(t, "kill -9 of the broker", 30)

	if err := syscall.Kill(loggerPID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(brokerPID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	w.readyPID(t, "broker", brokerPID)
	w.readyPID(t, "logger", loggerPID)
	w.drained(t, "kill -9 of both", 30)

	w.mu.Lock()
	acked, resent := w.poller.Acked, w.poller.Resent
	if w.poller.Run != run {
		t.Fatalf("the poller restarted (run %s, then %s): the test assumes one run", run, w.poller.Run)
	}
	w.mu.Unlock()

	// kill -9 of the poller, the last heartbeat of its run noted.
	if err := syscall.Kill(pollerPID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	w.mu.Lock()
	made := w.poller.Seq
	w.mu.Unlock()
	w.readyPID(t, "poller", pollerPID)
	w.waitFor(t, "a heartbeat of the new poller run", 10*time.Second, func() bool { return w.poller.Run != run })
	w.drained(t, "kill -9 of the poller", 30)

	db, err := store.OpenReadOnly(filepath.Join(stateDir, "readings.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	// The dead run is closed once gap_after (3 × ack_timeout here) has
	// passed: its mark reaches what its heartbeats said it made.
	committed := waitCommitted(t, db, run, made)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()

	var n, distinct, maxSeq, upToAcked, gapSeqs, overlap, lowGaps int64
	if err := db.QueryRow(`SELECT count(*), count(DISTINCT s.seq), coalesce(max(s.seq), 0), count(DISTINCT s.seq) FILTER (WHERE s.seq <= ?2)
		FROM sample s JOIN run r ON r.id = s.run WHERE r.run = ?1`, run, acked).
		Scan(&n, &distinct, &maxSeq, &upToAcked); err != nil {
		t.Fatal(err)
	}
	if err := db.QueryRow(`SELECT coalesce(sum(g.last_seq - g.first_seq + 1), 0), count(*) FILTER (WHERE g.first_seq <= ?2)
		FROM gap g JOIN run r ON r.id = g.run WHERE r.run = ?1`, run, acked).Scan(&gapSeqs, &lowGaps); err != nil {
		t.Fatal(err)
	}
	if err := db.QueryRow(`SELECT count(*) FROM sample s JOIN run r ON r.id = s.run JOIN gap g ON g.run = s.run
		WHERE r.run = ? AND s.seq BETWEEN g.first_seq AND g.last_seq`, run).Scan(&overlap); err != nil {
		t.Fatal(err)
	}
	// Every acknowledged message is stored once: seqs 1..acked with no
	// hole among them, and no gap there. What the dead run made after
	// that is stored or in a gap record, never both, and the two add up
	// to its end. (The gaps are not only at its end: a message the poller
	// would have sent again after ack_timeout, because the broker dropped
	// it for the busy logger or the connection broke, can leave a hole
	// below a later one that arrived before the kill; CI-like load showed
	// one.)
	if n != distinct || upToAcked != int64(acked) || lowGaps != 0 || overlap != 0 || n+gapSeqs != committed {
		t.Errorf("run %s: %d samples, %d distinct seqs, highest %d, %d of them up to the %d acknowledged; gaps: %d seqs, %d at or below the acknowledged, %d overlapping; committed %d",
			run, n, distinct, maxSeq, upToAcked, acked, gapSeqs, lowGaps, overlap, committed)
	}
	var bad string
	if err := db.QueryRow(`PRAGMA integrity_check`).Scan(&bad); err != nil || bad != "ok" {
		t.Errorf("integrity_check: %s %v", bad, err)
	}
	t.Logf("run %s: %d messages stored once each; the poller re-sent %d; killed at data_seq %d, %d of its messages never arrived (gap record)",
		run, n, resent, made, gapSeqs)

	// `tinyscada export` finds the database through the configuration.
	out, err := exec.Command(binary(t), "export", "-config", cfgPath, "-device", "climate", "-format", "csv").Output()
	if err != nil {
		t.Fatalf("export: %v", err)
	}
	recs, err := csv.NewReader(strings.NewReader(string(out))).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	// A record for every reading and every point that could not be read
	// (the poller killed mid-transaction may leave one).
	var climate, failed int64
	if err := db.QueryRow(`SELECT count(*) FROM reading r JOIN point p ON p.id = r.point JOIN device d ON d.id = p.device WHERE d.name = 'climate'`).Scan(&climate); err != nil {
		t.Fatal(err)
	}
	if err := db.QueryRow(`SELECT count(*) FROM bad b JOIN point p ON p.id = b.point JOIN device d ON d.id = p.device WHERE d.name = 'climate'`).Scan(&failed); err != nil {
		t.Fatal(err)
	}
	// And the gaps (the dead run's lost messages), which name no device.
	var gaps int64
	for _, r := range recs[1:] {
		if r[4] == "gap" {
			gaps++
		}
	}
	if n := int64(len(recs) - 1); n-gaps != climate+failed || climate == 0 || recs[1][1] != "climate" || recs[1][2] != "temperature" {
		t.Errorf("export gave %d records (%d gaps) for %d climate readings and %d failed points; first %q", n, gaps, climate, failed, recs[1])
	}
}

// waitCommitted waits until the logger closed the dead run up to seq
// (gap_after after the run's end) and returns its committed mark.
func waitCommitted(t *testing.T, db *sql.DB, run string, seq uint64) int64 {
	t.Helper()
	var committed int64
	var err error
	if !testpeer.Until(20*time.Second, func() bool {
		err = db.QueryRow(`SELECT committed FROM run WHERE run = ?`, run).Scan(&committed)
		return err != nil || committed >= int64(seq)
	}) || err != nil {
		t.Fatalf("the killed poller's run %s is committed to %d (%v), it said it made %d", run, committed, err, seq)
	}
	return committed
}

// A real loss: a technician's sqlite3 holds the database, so nothing is
// acknowledged and the poller notes its run's progress in its run file;
// then the logger and the poller are killed together (the logger's pending
// messages and the poller's outbox go with them). After the restart, the
// new poller's heartbeats carry the old run's progress and the logger
// records what the old run lost as gap records: every seq up to what the
// run file said is stored or in a gap, never both.
func TestKilledPollerLossIsRecorded(t *testing.T) {
	t.Parallel()
	cmd, w, stateDir, _ := startWatched(t, fastPoller)
	p := w.pids("logger", "poller")
	loggerPID, pollerPID := p[0], p[1]
	w.mu.Lock()
	run := w.poller.Run
	w.mu.Unlock()

	dbPath := filepath.Join(stateDir, "readings.db")
	release := testpeer.LockSQLite(t, dbPath)

	// ack_timeout is 1 s: within a few the poller notes its run.
	runFile := filepath.Join(stateDir, poller.RunFileName)
	var noted *poller.RunRecord
	var readErr error
	if !testpeer.Until(15*time.Second, func() bool {
		noted, readErr = poller.ReadRunRecord(runFile)
		return readErr != nil || noted != nil && noted.Run == run && noted.DataSeq > 20
	}) || readErr != nil {
		t.Fatalf("no run file for run %s: %+v %v", run, noted, readErr)
	}
	for _, pid := range []int{loggerPID, pollerPID} {
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
	}
	release()
	w.readyPID(t, "logger", loggerPID)
	w.readyPID(t, "poller", pollerPID)
	w.waitFor(t, "a heartbeat of the new poller run", 10*time.Second, func() bool { return w.poller.Run != run })
	w.drained(t, "the restart", 50)

	db, err := store.OpenReadOnly(dbPath)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	committed := waitCommitted(t, db, run, noted.DataSeq)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()

	var n, maxSeq, gaps, gapSeqs, first, last, overlap int64
	if err := db.QueryRow(`SELECT count(DISTINCT s.seq), coalesce(max(s.seq), 0) FROM sample s JOIN run r ON r.id = s.run WHERE r.run = ?`, run).
		Scan(&n, &maxSeq); err != nil {
		t.Fatal(err)
	}
	if err := db.QueryRow(`SELECT count(*), coalesce(sum(g.last_seq - g.first_seq + 1), 0), coalesce(min(g.first_seq), 0), coalesce(max(g.last_seq), 0)
		FROM gap g JOIN run r ON r.id = g.run WHERE r.run = ?`, run).Scan(&gaps, &gapSeqs, &first, &last); err != nil {
		t.Fatal(err)
	}
	if err := db.QueryRow(`SELECT count(*) FROM sample s JOIN run r ON r.id = s.run JOIN gap g ON g.run = s.run
		WHERE r.run = ? AND s.seq BETWEEN g.first_seq AND g.last_seq`, run).Scan(&overlap); err != nil {
		t.Fatal(err)
	}
	// Every seq up to the committed mark is stored or in a gap record,
	// never both, and the loss is recorded (messages the poller sent after
	// its last note may still have arrived: then part of the loss is a
	// hole below them, not the run's end).
	if gaps == 0 || overlap != 0 || n+gapSeqs != committed || maxSeq > committed || last > committed {
		t.Errorf("run %s: %d seqs stored (highest %d); %d gap record(s), %d seqs, %d..%d; %d overlapping; committed %d; run file said %d",
			run, n, maxSeq, gaps, gapSeqs, first, last, overlap, committed, noted.DataSeq)
	}
	t.Logf("run %s: %d messages stored, %d recorded as lost in %d gap record(s) within %d..%d (run file: data_seq %d)",
		run, n, gapSeqs, gaps, first, last, noted.DataSeq)
}
