package main

import (
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/internal/testpeer"
	"github.com/tinyscada/tinyscada/shared/store"
)

// stopTail is a stack of broker, poller and logger with the demo's two
// simulated devices polled every 200 ms and a batch delay of 500 ms, so
// that a stop soon after a data message finds it in the logger's open
// batch. The roles are listed producer first, as a user may
// write them: the stack starts and stops them in its own order anyway.
const stopTail = `roles = ["broker", "poller", "logger"]
[logger]
batch_delay = "500ms"
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
interval = "200ms"
[[poller.device.point]]
name = "voltage"
table = "input"
address = 0
type = "f32"
[[poller.device]]
name = "climate"
port = "sim"
unit = 2
interval = "200ms"
[[poller.device.point]]
name = "temperature"
table = "input"
address = 0
type = "s16"
scale = 0.1
`

// stopTries is how many clean stops TestCleanStopLosesNothingSilently
// makes, stopStacks how many stacks of its own (own port, own state) make
// them side by side: the test mostly waits.
const stopTries, stopStacks = 20, 2

// A clean stop of `tinyscada run` (SIGTERM) within half a second of a data
// message, 20 times over: every message the poller published on the bus is
// stored or in a gap record, never both; that is, each run's committed
// mark reaches past every seq seen on the bus, and below it each seq is
// stored or in a gap, not both. The stack stops the producer first, the
// logger commits its open batch before it exits, and what is still
// unacknowledged when the poller exits is in its run file, from which the
// next start records the gap. It takes about 10 s: skipped with -short.
func TestCleanStopLosesNothingSilently(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("20 starts and stops of the stack: not with -short")
	}
	testpeer.Need(t, "mosquitto_sub")
	for i := range stopStacks {
		t.Run(fmt.Sprintf("stack%d", i+1), func(t *testing.T) {
			t.Parallel()
			cleanStops(t, stopTries/stopStacks)
		})
	}
}

// cleanStops starts and stops a stack of its own tries times, then checks
// its store.
func cleanStops(t *testing.T, tries int) {
	port := testpeer.FreePort(t)
	cfgPath, stateDir := writeConfig(t, port, stopTail)
	addr := fmt.Sprintf("127.0.0.1:%d", port)

	seen := map[string]uint64{} // run → highest seq seen on the bus
	var runs []string
	began := time.Now()
	for try := range tries {
		cmd := startRun(t, cfgPath)
		if err := testpeer.WaitPort(addr, 15*time.Second); err != nil {
			t.Fatal(err)
		}
		data := testpeer.Sub(t, port, "-v", "-t", "tinyscada/data/#")
		run := ""
		note := func(l string) {
			_, payload, _ := strings.Cut(l, " ")
			var m struct {
				Run string `json:"run"`
				Seq uint64 `json:"seq"`
			}
			if err := json.Unmarshal([]byte(payload), &m); err != nil || m.Run == "" || m.Seq == 0 {
				t.Fatalf("bad data message %q: %v", l, err)
			}
			if _, ok := seen[m.Run]; !ok {
				runs = append(runs, m.Run)
			}
			seen[m.Run] = max(seen[m.Run], m.Seq)
			run = m.Run
		}
		// A few rounds, so that the logger has committed some, then a stop
		// at a random moment of the next half second.
		for range 4 {
			note(testpeer.Expect(t, data, 20*time.Second, fmt.Sprintf("a data message (start %d)", try+1), func(string) bool { return true }))
		}
		stopAt := time.After(time.Duration(rand.IntN(500)) * time.Millisecond)
	wait:
		for {
			select {
			case l, ok := <-data:
				if !ok {
					t.Fatal("the data subscriber ended before the stop")
				}
				note(l)
			case <-stopAt:
				break wait
			}
		}
		if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		// What the poller still publishes while it stops counts too; the
		// subscriber ends with the broker.
		closed := time.After(30 * time.Second)
	drain:
		for {
			select {
			case l, ok := <-data:
				if !ok {
					break drain
				}
				note(l)
			case <-closed:
				t.Fatalf("start %d: the data subscriber did not end after the stop", try+1)
			}
		}
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("start %d: tinyscada run after SIGTERM: %v", try+1, err)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("start %d: tinyscada run did not stop after SIGTERM", try+1)
		}
		if run == "" {
			t.Fatalf("start %d: no data message", try+1)
		}
	}
	t.Logf("figure: %d starts and clean stops of tinyscada run in %v", tries, time.Since(began).Round(time.Millisecond))

	// One more start: the last run's poller run file is read, and every
	// dead run's end is recorded once gap_after (3 × ack_timeout) passed.
	cmd := startRun(t, cfgPath)
	if err := testpeer.WaitPort(addr, 15*time.Second); err != nil {
		t.Fatal(err)
	}
	dbPath := filepath.Join(stateDir, "readings.db")
	db, err := store.OpenReadOnly(dbPath)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	committed := map[string]int64{}
	deadline := time.Now().Add(20 * time.Second)
	for {
		behind := ""
		for _, run := range runs {
			var c int64
			err := db.QueryRow(`SELECT committed FROM run WHERE run = ?`, run).Scan(&c)
			if err != nil && !errors.Is(err, sql.ErrNoRows) {
				t.Fatal(err)
			}
			committed[run] = c
			if c < int64(seen[run]) && behind == "" {
				behind = fmt.Sprintf("run %s is committed to %d, but seq %d was on the bus", run, c, seen[run])
			}
		}
		if behind == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("messages lost without a gap record: %s", behind)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()

	var stored, lost, gapRuns int64
	for _, run := range runs {
		var n, maxSeq, gaps, gapSeqs, last, overlap int64
		if err := db.QueryRow(`SELECT count(DISTINCT s.seq), coalesce(max(s.seq), 0) FROM sample s JOIN run r ON r.id = s.run WHERE r.run = ?`, run).
			Scan(&n, &maxSeq); err != nil {
			t.Fatal(err)
		}
		if err := db.QueryRow(`SELECT count(*), coalesce(sum(g.last_seq - g.first_seq + 1), 0), coalesce(max(g.last_seq), 0)
			FROM gap g JOIN run r ON r.id = g.run WHERE r.run = ?`, run).Scan(&gaps, &gapSeqs, &last); err != nil {
			t.Fatal(err)
		}
		if err := db.QueryRow(`SELECT count(*) FROM sample s JOIN run r ON r.id = s.run JOIN gap g ON g.run = s.run
			WHERE r.run = ? AND s.seq BETWEEN g.first_seq AND g.last_seq`, run).Scan(&overlap); err != nil {
			t.Fatal(err)
		}
		c := committed[run]
		if overlap != 0 || n+gapSeqs != c || maxSeq > c || last > c {
			t.Errorf("run %s: %d seqs stored (highest %d); %d gap record(s) of %d seqs (highest %d); %d stored inside a gap; committed %d; seen on the bus up to %d",
				run, n, maxSeq, gaps, gapSeqs, last, overlap, c, seen[run])
		}
		stored += n
		lost += gapSeqs
		if gaps > 0 {
			gapRuns++
		}
	}
	t.Logf("figure: %d runs stopped cleanly: %d messages stored, %d recorded as lost in gap records (%d runs with a gap)",
		len(runs), stored, lost, gapRuns)
}
