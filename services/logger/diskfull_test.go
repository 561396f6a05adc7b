package logger

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/internal/testpeer"
	"github.com/tinyscada/tinyscada/shared/config"
	"github.com/tinyscada/tinyscada/shared/store"
)

// bigSeries (as in shared/store's tests) returns n messages of run with 40 float readings each.
func bigSeries(run string, from, n int, at func(i int) time.Duration) []msg {
	ms := make([]msg, n)
	for i := range ms {
		seq := from + i
		var v strings.Builder
		for p := range 40 {
			if p > 0 {
				v.WriteByte(',')
			}
			fmt.Fprintf(&v, `"p%02d":%g`, p, 1000.123+float64(seq*40+p)*0.37)
		}
		ms[i] = msg{dev: "dev", run: run, seq: uint64(seq), at: good(at(seq)), vals: v.String()}
	}
	return ms
}

func perSecond(i int) time.Duration { return time.Duration(i) * time.Second }

// The logger role with its database on a 4 MiB tmpfs, fed through the
// broker three times what fits, with another file filling the disk half
// way: every acknowledged message is stored or named by a gap record, and
// the database is intact.
//
// Whether it keeps acknowledging once the other file is there depends on
// when the file came (docs/logger.md, "A disk filled by someone else"):
// in the space a prune had just freed, it leaves the database below its
// capacity, and the logger holds what it has and stops acknowledging (as
// TestStrangerFillsTmpfs shows on purpose); otherwise the database stays at
// its capacity and goes on as a ring buffer. When it holds, the file is
// removed (space returns) and it must go on by itself.
func TestLoggerOnFullTmpfs(t *testing.T) {
	t.Parallel()
	dir := testpeer.Tmpfs(t, "4m")
	st := newStack(t, func(cfg *config.Config) {
		cfg.Logger.DB = filepath.Join(dir, "readings.db")
		cfg.Logger.BatchReadings = 1000
	})
	const n, window = 12000, 400
	ms := bigSeries("run1", 1, n, perSecond)
	filler := ""
	for i, m := range ms {
		acked := func() bool { return uint64(i) < st.ack("run1")+window }
		if filler != "" && !testpeer.Until(10*time.Second, acked) {
			hb := st.logger.HeartbeatFields()
			if d, _ := hb["degraded"].(string); !strings.Contains(d, "disk full") {
				t.Fatalf("acknowledged up to %d of %d published for 10 s, not for a full disk; heartbeat %v", st.ack("run1"), i, hb)
			}
			t.Logf("holding for the other file (%s): removed", hb["degraded"])
			if err := os.Remove(filler); err != nil {
				t.Fatal(err)
			}
			filler = ""
		}
		if !testpeer.Until(30*time.Second, acked) {
			t.Fatalf("acknowledged up to %d of %d published for 30 s; heartbeat %v", st.ack("run1"), i, st.logger.HeartbeatFields())
		}
		if i == n/2 {
			filler = testpeer.FillDisk(t, dir)
		}
		st.publish(m)
	}
	st.waitAck("run1", n, 30*time.Second)
	db := roDB(t, st.dbPath())
	if err := store.IntegrityCheck(context.Background(), db); err != nil {
		t.Fatal(err)
	}
	last := queryInt(t, db, `SELECT max(id) FROM sample`)
	dropped := testpeer.MissingCovered(t, db, last, 0)
	stored := queryInt(t, db, `SELECT count(*) FROM sample`)
	if last != n || stored+dropped != n || dropped == 0 {
		t.Errorf("%d messages acknowledged: last row %d, %d stored + %d dropped with gap records", n, last, stored, dropped)
	}
	hb := st.logger.HeartbeatFields()
	t.Logf("%d stored, %d dropped; heartbeat: disk_full %v, degraded %v", stored, dropped, hb["disk_full"], hb["degraded"])
}

// A fresh database on a 3 MiB tmpfs, then a stranger's file fills the
// disk. The logger deletes no reading it acknowledged to make room for
// newer ones (nothing is uploaded and the database is far below its
// capacity): it stops acknowledging and reports degraded with the reason,
// while the publisher, standing in for the poller, keeps its unacknowledged
// messages and sends them again. When the stranger's file goes, the logger
// resumes by itself and stores every message the outbox held, once. The
// database is intact at every step.
func TestStrangerFillsTmpfs(t *testing.T) {
	t.Parallel()
	dir := testpeer.Tmpfs(t, "3m")
	st := newStack(t, func(cfg *config.Config) {
		cfg.Logger.DB = filepath.Join(dir, "state", "readings.db")
		cfg.Logger.BatchReadings = 1000
	})
	ctx := context.Background()
	const n, window = 1500, 100
	ms := bigSeries("run1", 1, n, perSecond)
	sent := make([]time.Time, n+1)
	// drive publishes as the poller's outbox does: at most window
	// unacknowledged messages, each sent again after a second without
	// acknowledgement; it returns once done() or fails after within (or
	// just returns then if what is "").
	drive := func(limit int, done func() bool, within time.Duration, what string) {
		t.Helper()
		deadline := time.Now().Add(within)
		for !done() {
			if time.Now().After(deadline) {
				if what == "" {
					return
				}
				t.Fatalf("%s: not within %s (acknowledged up to %d; heartbeat %v)", what, within, st.ack("run1"), st.logger.HeartbeatFields())
			}
			a := int(st.ack("run1"))
			for seq := a + 1; seq <= min(a+window, limit); seq++ {
				if time.Since(sent[seq]) > time.Second {
					st.publish(ms[seq-1])
					sent[seq] = time.Now()
				}
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	db := roDB(t, st.dbPath())
	// acknowledgedStored checks that every acknowledged seq is stored and
	// nothing was dropped, and that the database is intact.
	acknowledgedStored := func(step string) {
		t.Helper()
		if err := store.IntegrityCheck(ctx, db); err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		a := st.ack("run1")
		if got := queryInt(t, db, `SELECT count(*) FROM sample WHERE seq <= ?`, a); got != int64(a) {
			t.Fatalf("%s: acknowledged up to %d but %d of them stored", step, a, got)
		}
		if g := queryInt(t, db, `SELECT count(*) FROM gap`); g != 0 {
			t.Fatalf("%s: %d gap records (%s)", step, g, queryText(t, db, `SELECT reason FROM gap LIMIT 1`))
		}
	}
	drive(200, func() bool { return st.ack("run1") >= 200 }, 30*time.Second, "first 200")
	acknowledgedStored("before the stranger")

	filler := testpeer.FillDisk(t, dir)
	degraded := func() string { s, _ := st.logger.HeartbeatFields()["degraded"].(string); return s }
	drive(n, func() bool { return strings.Contains(degraded(), "disk full") }, 60*time.Second, "degraded")
	t.Logf("degraded: %s", degraded())
	acknowledgedStored("degraded")
	// While the disk stays full, acknowledgements stop; whatever was
	// acknowledged stays stored. Three rounds, each until the logger has
	// met the full disk four more times (its heartbeat's disk_full count:
	// each a commit it tried and kept for the next try).
	diskFulls := func() int64 { return st.logger.HeartbeatFields()["disk_full"].(int64) }
	stuck := st.ack("run1")
	for range 3 {
		from := diskFulls()
		drive(n, func() bool { return st.ack("run1") >= n || diskFulls() >= from+4 }, 30*time.Second, "four more commits that met the full disk")
		acknowledgedStored("while full")
	}
	if st.ack("run1") >= n {
		t.Fatal("everything acknowledged on a full disk")
	}
	t.Logf("acknowledged %d before the disk filled up, %d while full", stuck, st.ack("run1"))

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	drive(n, func() bool { return st.ack("run1") >= n }, 60*time.Second, "after the stranger's file went")
	acknowledgedStored("after")
	st.exactlyOnce("run1", n)
	testpeer.Eventually(t, 30*time.Second, "degraded cleared", func() bool { return !strings.Contains(degraded(), "disk full") })
}
