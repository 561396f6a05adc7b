package store

import (
	"database/sql"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/shared/clock"
)

// clockRow is one stored sample's clock fields.
type clockRow struct {
	seq   int64
	t     int64
	m     int64
	clock int64
	tc    sql.NullInt64
}

func clockRows(t *testing.T, db *sql.DB, run string) map[int64]clockRow {
	t.Helper()
	rows, err := db.Query(`SELECT s.seq, s.t, s.m, s.clock, s.tc FROM sample s JOIN run r ON r.id = s.run WHERE r.run = ?`, run)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[int64]clockRow{}
	for rows.Next() {
		var c clockRow
		if err := rows.Scan(&c.seq, &c.t, &c.m, &c.clock, &c.tc); err != nil {
			t.Fatal(err)
		}
		out[c.seq] = c
	}
	return out
}

type event struct {
	kind      string
	trusted   bool
	delta     sql.NullInt64
	corrected sql.NullInt64
	reason    sql.NullString
}

func clockEvents(t *testing.T, db *sql.DB) []event {
	t.Helper()
	rows, err := db.Query(`SELECT kind, trusted, delta_ns, corrected, reason FROM clock ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []event
	for rows.Next() {
		var e event
		if err := rows.Scan(&e.kind, &e.trusted, &e.delta, &e.corrected, &e.reason); err != nil {
			t.Fatal(err)
		}
		out = append(out, e)
	}
	return out
}

// clockScenario drives a store with messages stamped by a fake clock.
type clockScenario struct {
	t      *testing.T
	s      *Store
	f      *clock.Fake
	synced atomic.Bool
	run    string
	seq    uint64
	// truth maps seq to the true wall time (ms) of its sample.
	truth map[uint64]int64
	// trueOffset is true wall minus monotonic time of the current boot.
	trueOffset time.Duration
}

func newClockScenario(t *testing.T, start clock.Stamp, trueWall time.Time) *clockScenario {
	c := &clockScenario{t: t, f: clock.NewFake(start), run: "run-" + start.Boot, truth: map[uint64]int64{}}
	c.trueOffset = trueWall.Sub(time.Unix(0, 0)) - start.Mono
	c.s = openTest(t, func(o *Options) { o.Synced = c.synced.Load })
	return c
}

// sample takes n samples one second apart (with a sub-millisecond part, to
// show the rounding) and returns them.
func (c *clockScenario) sample(n int) []msg {
	var ms []msg
	for range n {
		c.f.Advance(time.Second + 123457*time.Nanosecond)
		c.seq++
		at := c.f.Now()
		c.truth[c.seq] = (time.Duration(at.Mono) + c.trueOffset).Milliseconds()
		ms = append(ms, msg{dev: "meter", run: c.run, seq: c.seq, at: at, vals: `"v":1`})
	}
	return ms
}

func (c *clockScenario) write(ms ...msg) { write(c.t, c.s, ms...) }

// check asserts the clock state of seqs from..to and, for trusted and
// corrected ones, that the time is the true time within 1 ms.
func (c *clockScenario) check(rows map[int64]clockRow, from, to uint64, wantClock int64) {
	c.t.Helper()
	for seq := from; seq <= to; seq++ {
		r, ok := rows[int64(seq)]
		if !ok {
			c.t.Errorf("seq %d not stored", seq)
			continue
		}
		if r.clock != wantClock {
			c.t.Errorf("seq %d: clock %d, want %d", seq, r.clock, wantClock)
			continue
		}
		var got int64
		switch wantClock {
		case clockTrusted:
			got = r.t
		case clockCorrected:
			if !r.tc.Valid {
				c.t.Errorf("seq %d: corrected without tc", seq)
				continue
			}
			got = r.tc.Int64
		default:
			if r.tc.Valid {
				c.t.Errorf("seq %d: untrusted with tc %d", seq, r.tc.Int64)
			}
			continue
		}
		if d := got - c.truth[seq]; d < -1 || d > 1 {
			c.t.Errorf("seq %d: time %d, true %d (off by %d ms)", seq, got, c.truth[seq], d)
		}
	}
}

var may2024 = time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)

// No RTC: the clock starts at 1970; NTP steps it later and the kernel says
// synchronised. Every earlier reading of the boot gets the true time, and
// one that arrives late (re-sent) after the step is corrected at once.
func TestClockBootAt1970ThenSync(t *testing.T) {
	t.Parallel()
	c := newClockScenario(t, clock.Stamp{Wall: time.Unix(30, 0), Mono: 30 * time.Second, Boot: "A"}, may2024)
	early := c.sample(5)
	c.write(early[0], early[1], early[3], early[4]) // 3 comes late
	c.f.Step(c.trueOffset - (c.f.Now().Wall.Sub(time.Unix(0, 0)) - c.f.Now().Mono))
	c.synced.Store(true)
	c.write(c.sample(3)...)
	c.write(early[2])

	db := roDB(t, c.s.opts.Path)
	rows := clockRows(t, db, c.run)
	c.check(rows, 1, 5, clockCorrected)
	c.check(rows, 6, 8, clockTrusted)
	ev := clockEvents(t, db)
	if len(ev) != 2 || ev[0].kind != "boot" || ev[0].trusted || ev[0].reason.String != "wall clock before 2020" ||
		ev[1].kind != "step" || !ev[1].trusted || ev[1].corrected.Int64 != 4 {
		t.Errorf("events %+v", ev)
	}
	// The view shows the corrected time and says so.
	var q string
	var ms int64
	if err := db.QueryRow(`SELECT quality, time_ms FROM readings WHERE seq = 2`).Scan(&q, &ms); err != nil {
		t.Fatal(err)
	}
	if q != "clock_corrected" || ms != rows[2].tc.Int64 {
		t.Errorf("view: %s %d", q, ms)
	}
}

// A trusted clock steps forward, then back: both are recorded; readings
// keep their own times since both clocks were believed.
func TestClockStepsWhileTrusted(t *testing.T) {
	t.Parallel()
	c := newClockScenario(t, clock.Stamp{Wall: may2024, Mono: time.Minute, Boot: "A"}, may2024)
	c.synced.Store(true)
	c.write(c.sample(3)...)
	c.f.Step(time.Hour)
	c.trueOffset += time.Hour // the new clock is believed
	c.write(c.sample(3)...)
	c.f.Step(-30 * time.Minute)
	c.trueOffset -= 30 * time.Minute
	c.write(c.sample(3)...)
	rows := clockRows(t, roDB(t, c.s.opts.Path), c.run)
	c.check(rows, 1, 9, clockTrusted)
	ev := clockEvents(t, roDB(t, c.s.opts.Path))
	near := func(got int64, want time.Duration) bool { return abs64(got-int64(want)) <= int64(time.Millisecond) }
	if len(ev) != 3 || ev[1].kind != "step" || !near(ev[1].delta.Int64, time.Hour) || !near(ev[2].delta.Int64, -30*time.Minute) {
		t.Errorf("events %+v", ev)
	}
}

// Someone sets a wrong date (the kernel then says unsynchronised): the
// readings after the step get the time the good clock would have shown.
func TestClockStepToUntrusted(t *testing.T) {
	t.Parallel()
	c := newClockScenario(t, clock.Stamp{Wall: may2024, Mono: time.Minute, Boot: "A"}, may2024)
	c.synced.Store(true)
	c.write(c.sample(3)...)
	c.synced.Store(false)
	c.f.Step(-3 * time.Hour) // wrong; the true offset stays
	c.write(c.sample(3)...)
	rows := clockRows(t, roDB(t, c.s.opts.Path), c.run)
	c.check(rows, 1, 3, clockTrusted)
	c.check(rows, 4, 6, clockCorrected)
	for seq := int64(4); seq <= 6; seq++ {
		if d := rows[seq].tc.Int64 - rows[seq].t - 3*3600*1000; d < -1 || d > 1 {
			t.Errorf("seq %d: original time %d not kept beside %d", seq, rows[seq].t, rows[seq].tc.Int64)
		}
	}
}

// A reboot with a clock earlier than the last stored reading (a drifting
// RTC) is untrusted even though the kernel says synchronised; when NTP
// steps it, the boot's readings are corrected.
func TestClockRebootEarlierThanLastReading(t *testing.T) {
	t.Parallel()
	c := newClockScenario(t, clock.Stamp{Wall: may2024, Mono: time.Minute, Boot: "A"}, may2024)
	c.synced.Store(true)
	c.write(c.sample(5)...)

	// Reboot 10 minutes later (real time); the RTC says 2 hours earlier.
	trueNow := c.f.Now().Wall.Add(10 * time.Minute)
	c.f.Reboot("B", 5*time.Second)
	c.f.Set(clock.Stamp{Wall: trueNow.Add(-2 * time.Hour), Mono: 5 * time.Second, Boot: "B"})
	c.trueOffset = trueNow.Sub(time.Unix(0, 0)) - 5*time.Second
	c.run, c.seq = "run-B", 0
	c.write(c.sample(3)...)
	db := roDB(t, c.s.opts.Path)
	c.check(clockRows(t, db, "run-B"), 1, 3, clockUntrusted)

	c.f.Step(2 * time.Hour)
	c.write(c.sample(2)...)
	rows := clockRows(t, db, "run-B")
	c.check(rows, 1, 3, clockCorrected)
	c.check(rows, 4, 5, clockTrusted)
	ev := clockEvents(t, db)
	if len(ev) != 3 || ev[1].kind != "boot" || ev[1].trusted || ev[2].kind != "step" || ev[2].corrected.Int64 != 3 {
		t.Errorf("events %+v", ev)
	}
	// The first boot's readings are untouched.
	c.run = "run-A"
	for seq, r := range clockRows(t, db, "run-A") {
		if r.clock != clockTrusted {
			t.Errorf("boot A seq %d: clock %d", seq, r.clock)
		}
	}
}

// An unsynchronised kernel clock that turns out right is confirmed
// without a step once the kernel says synchronised ('sync').
func TestClockSyncWithoutStep(t *testing.T) {
	t.Parallel()
	c := newClockScenario(t, clock.Stamp{Wall: may2024, Mono: time.Minute, Boot: "A"}, may2024)
	c.write(c.sample(3)...)
	c.synced.Store(true)
	c.write(c.sample(2)...)
	rows := clockRows(t, roDB(t, c.s.opts.Path), c.run)
	c.check(rows, 1, 3, clockCorrected)
	c.check(rows, 4, 5, clockTrusted)
	ev := clockEvents(t, roDB(t, c.s.opts.Path))
	if len(ev) != 2 || ev[1].kind != "sync" || ev[1].corrected.Int64 != 3 {
		t.Errorf("events %+v", ev)
	}
}

// The clock state survives a restart of the logger.
func TestClockStateReloaded(t *testing.T) {
	t.Parallel()
	c := newClockScenario(t, clock.Stamp{Wall: time.Unix(30, 0), Mono: 30 * time.Second, Boot: "A"}, may2024)
	c.write(c.sample(2)...)
	path := c.s.opts.Path
	c.s.Close()
	c.s = openTest(t, func(o *Options) { o.Path = path; o.Synced = c.synced.Load })
	c.write(c.sample(1)...) // same segment: no new event
	c.f.Step(c.trueOffset - (c.f.Now().Wall.Sub(time.Unix(0, 0)) - c.f.Now().Mono))
	c.synced.Store(true)
	c.write(c.sample(1)...)
	rows := clockRows(t, roDB(t, path), c.run)
	c.check(rows, 1, 3, clockCorrected)
	c.check(rows, 4, 4, clockTrusted)
	if ev := clockEvents(t, roDB(t, path)); len(ev) != 2 {
		t.Errorf("events %+v", ev)
	}
}
