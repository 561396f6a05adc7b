package store

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/csv"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/shared/clock"
)

func TestWriteIdempotentAndAcks(t *testing.T) {
	t.Parallel()
	s := openTest(t, nil)
	all := series("r1", 1, 10)
	res := write(t, s, all[:6]...)
	if res.Samples != 6 || res.Readings != 18 || res.Duplicates != 0 || ackOf(res, "r1") != 6 {
		t.Fatalf("first batch: %+v", res)
	}
	// The poller re-sends 4..10 after an ack timeout: 4..6 are duplicates,
	// one of them twice in the same batch.
	res = write(t, s, append(all[3:], all[4])...)
	if res.Samples != 4 || res.Duplicates != 4 || ackOf(res, "r1") != 10 {
		t.Fatalf("re-sent batch: %+v", res)
	}
	// Only duplicates: still acknowledged (the earlier ack may be lost).
	res = write(t, s, all[0])
	if res.Samples != 0 || res.Duplicates != 1 || ackOf(res, "r1") != 10 {
		t.Fatalf("duplicate batch: %+v", res)
	}
	db := roDB(t, s.opts.Path)
	if got := seqsOf(t, db, "r1"); !reflect.DeepEqual(got, []int64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}) {
		t.Errorf("stored seqs %v", got)
	}
	if n := queryInt(t, db, `SELECT count(*) FROM reading`); n != 30 {
		t.Errorf("%d readings, want 30", n)
	}
	// The view gives the values back with their types.
	var ts, dev, pt, q string
	var v any
	if err := db.QueryRow(`SELECT time, device, point, value, quality FROM readings WHERE point = 'voltage' AND seq = 3`).Scan(&ts, &dev, &pt, &v, &q); err != nil {
		t.Fatal(err)
	}
	if ts != "2024-01-01T00:00:03.000Z" || dev != "meter" || v != 230.3 || q != "good" {
		t.Errorf("view row: %s %s %s %v %s", ts, dev, pt, v, q)
	}
	if err := s.Check(context.Background()); err != nil {
		t.Error(err)
	}
}

// The gap tests judge holes by the time they give CloseGaps: a GapAfter
// of an hour, and CloseGaps told now (nothing is due: the test does not
// take an hour) or after (hours later than any hole opened, which is
// timed by the real clock).
const testGapAfter = time.Hour

// after is a time at which a hole opened by now is older than GapAfter.
func after() time.Time { return time.Now().Add(testGapAfter + time.Minute) }

func TestHolesFillOrBecomeGaps(t *testing.T) {
	t.Parallel()
	s := openTest(t, func(o *Options) { o.GapAfter = testGapAfter })
	all := series("r1", 1, 8)
	res := write(t, s, all[0], all[1], all[3], all[4])
	if ackOf(res, "r1") != 2 {
		t.Fatalf("ack with a hole at 3: %+v", res.Acks)
	}
	res = write(t, s, all[2])
	if ackOf(res, "r1") != 5 {
		t.Fatalf("ack after the hole filled: %+v", res.Acks)
	}
	// 6 and 7 never come (the producer died with them in its outbox).
	write(t, s, all[7])
	if acks, err := s.CloseGaps(context.Background(), time.Now()); err != nil || len(acks) != 0 {
		t.Fatalf("gap closed too early: %v %v", acks, err)
	}
	// A stall (locked database) restarts the clock of the hole: at its
	// end the hole is older than GapAfter, yet not due until GapAfter
	// after it.
	stall := after()
	s.Stalled(stall)
	if acks, _ := s.CloseGaps(context.Background(), stall); len(acks) != 0 {
		t.Fatalf("gap closed right after a stall: %v", acks)
	}
	if acks, _ := s.CloseGaps(context.Background(), stall.Add(testGapAfter-time.Second)); len(acks) != 0 {
		t.Fatalf("gap closed within GapAfter of a stall's end: %v", acks)
	}
	acks, err := s.CloseGaps(context.Background(), stall.Add(testGapAfter))
	if err != nil || len(acks) != 1 || acks[0].Seq != 8 {
		t.Fatalf("CloseGaps = %v, %v", acks, err)
	}
	db := roDB(t, s.opts.Path)
	var kind, reason string
	var first, last, n, row, from, to int64
	if err := db.QueryRow(`SELECT kind, first_seq, last_seq, samples, first_row, t_from, t_to, reason FROM gap`).Scan(&kind, &first, &last, &n, &row, &from, &to, &reason); err != nil {
		t.Fatal(err)
	}
	if kind != "seq" || first != 6 || last != 7 || n != 2 || to-from != 3000 || !strings.Contains(reason, "never arrived") {
		t.Errorf("gap = %s %d..%d n=%d row=%d %d..%d %q", kind, first, last, n, row, from, to, reason)
	}
	// The mark survives a restart, and late copies are still duplicates.
	path := s.opts.Path
	s.Close()
	s2 := openTest(t, func(o *Options) { o.Path = path })
	res = write(t, s2, all[5], all[6])
	if res.Duplicates != 2 || ackOf(res, "r1") != 8 {
		t.Errorf("after reopen: %+v", res)
	}
}

// The end of a run that died with messages in its outbox: what its
// heartbeats said it made, less what arrived, becomes a gap once another
// run of the producer took over; that knowledge survives a restart of the
// logger. A run known only from heartbeats gets its row and its gap; a run
// whose tail still arrives, or that ended with everything stored, gets none.
func TestEndOfDeadRunBecomesGap(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := openTest(t, func(o *Options) { o.GapAfter = testGapAfter })
	s.Produced(producer, "a", 4)
	write(t, s, series("a", 1, 4)...)
	s.Produced(producer, "a", 10) // 5..10 made, then the poller died
	write(t, s, series("a", 5, 6)...)
	if acks, err := s.CloseGaps(ctx, after()); err != nil || len(acks) != 0 {
		t.Fatalf("a live run's unsent messages became a gap: %v %v", acks, err)
	}
	path := s.opts.Path
	s.Close()
	if n := queryInt(t, roDB(t, path), `SELECT produced FROM run WHERE run = 'a'`); n != 10 {
		t.Fatalf("run a saved with produced %d, want 10", n)
	}

	s = openTest(t, func(o *Options) { o.Path = path; o.GapAfter = testGapAfter })
	s.Produced(producer, "f", 5) // ends with its tail still on the way
	write(t, s, series("f", 1, 3)...)
	s.Produced(producer, "d", 2) // ends with everything stored
	write(t, s, series("d", 1, 2)...)
	s.Produced(producer, "b", 3) // the new run: a's heartbeats stopped
	if err := s.EndRuns(ctx, producer, "b"); err != nil {
		t.Fatal(err)
	}
	write(t, s, series("f", 4, 5)...)
	if acks, _ := s.CloseGaps(ctx, time.Now()); len(acks) != 0 {
		t.Fatalf("gap closed before GapAfter: %v", acks)
	}
	acks, err := s.CloseGaps(ctx, after())
	if err != nil || len(acks) != 1 || acks[0].Run != "a" || acks[0].Seq != 10 {
		t.Fatalf("CloseGaps = %v, %v; want run a acknowledged to 10", acks, err)
	}
	// b dies before any of its messages arrived; c is the next run.
	s.Produced(producer, "c", 1)
	if err := s.EndRuns(ctx, producer, "c"); err != nil {
		t.Fatal(err)
	}
	if acks, _ := s.CloseGaps(ctx, time.Now()); len(acks) != 0 {
		t.Fatalf("b's gap closed before GapAfter: %v", acks)
	}
	if acks, err := s.CloseGaps(ctx, after()); err != nil || len(acks) != 1 || acks[0].Run != "b" || acks[0].Seq != 3 {
		t.Fatalf("CloseGaps = %v, %v; want run b acknowledged to 3", acks, err)
	}
	db := roDB(t, path)
	rows, err := db.Query(`SELECT r.run, g.first_seq, g.last_seq, g.samples, g.reason FROM gap g JOIN run r ON r.id = g.run ORDER BY g.id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var got []string
	for rows.Next() {
		var run, reason string
		var first, last, n int64
		if err := rows.Scan(&run, &first, &last, &n, &reason); err != nil {
			t.Fatal(err)
		}
		got = append(got, fmt.Sprintf("%s %d..%d (%d)", run, first, last, n))
		if !strings.Contains(reason, "the run ended") {
			t.Errorf("gap reason %q does not say the run ended", reason)
		}
	}
	if want := []string{"a 7..10 (4)", "b 1..3 (3)"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("gaps %v, want %v", got, want)
	}
}

func TestReopenKeepsHoles(t *testing.T) {
	t.Parallel()
	s := openTest(t, nil)
	all := series("r1", 1, 5)
	write(t, s, all[0], all[2], all[4])
	path := s.opts.Path
	s.Close()
	s2 := openTest(t, func(o *Options) { o.Path = path })
	res := write(t, s2, all[1], all[2])
	if res.Samples != 1 || res.Duplicates != 1 || ackOf(res, "r1") != 3 {
		t.Errorf("after reopen: %+v", res)
	}
	res = write(t, s2, all[3])
	if ackOf(res, "r1") != 5 {
		t.Errorf("after the last hole: %+v", res)
	}
}

func TestMalformedNeverPoisonsABatch(t *testing.T) {
	t.Parallel()
	s := openTest(t, nil)
	all := series("r1", 1, 5)
	// As the logger's decoder leaves them: one with its run and seq read,
	// two without, and one (seq 4) whose topic named no device.
	decodeErr := errors.New("malformed")
	bad := []Item{
		{Device: "meter", Msg: Message{Run: []byte("r1"), Seq: 2, HasID: true}, Err: decodeErr},
		{Device: "meter", Err: decodeErr},
		{Device: "meter", Msg: Message{Run: []byte("r1")}, Err: decodeErr},
		{Device: "", Msg: all[3].item().Msg, Err: decodeErr},
	}
	batch := []Item{all[0].item(), bad[0], bad[1], all[2].item(), bad[2], bad[3]}
	res, err := s.Write(context.Background(), producer, batch)
	if err != nil {
		t.Fatal(err)
	}
	// 1 and 3 stored; 2 and 4 recorded as malformed: the ack moves past them.
	if res.Samples != 2 || res.Malformed != 4 || ackOf(res, "r1") != 4 {
		t.Fatalf("result %+v", res)
	}
	// The re-sent malformed message is a duplicate, not a second gap.
	res, err = s.Write(context.Background(), producer, []Item{bad[0], all[4].item()})
	if err != nil {
		t.Fatal(err)
	}
	if res.Duplicates != 1 || res.Samples != 1 || ackOf(res, "r1") != 5 {
		t.Fatalf("result %+v", res)
	}
	db := roDB(t, s.opts.Path)
	if n := queryInt(t, db, `SELECT count(*) FROM gap WHERE kind = 'malformed' AND first_seq = 2`); n != 1 {
		t.Errorf("%d malformed gap records, want 1", n)
	}
}

func TestBadPointsStored(t *testing.T) {
	t.Parallel()
	s := openTest(t, nil)
	m := msg{dev: "climate", run: "r", seq: 1, at: good(0), vals: `"t":21.5`, bad: `"h":"timeout","p":"exception 2"`}
	m2 := m
	m2.seq, m2.bad = 2, `"h":"timeout"`
	res := write(t, s, m, m2)
	if res.Samples != 2 || res.Readings != 2 {
		t.Fatalf("%+v", res)
	}
	db := roDB(t, s.opts.Path)
	if n := queryInt(t, db, `SELECT count(*) FROM failures WHERE reason = 'timeout'`); n != 2 {
		t.Errorf("%d timeouts", n)
	}
	if n := queryInt(t, db, `SELECT count(*) FROM reason`); n != 2 {
		t.Errorf("%d reasons stored, want 2 (each text once)", n)
	}
}

func TestValueTypes(t *testing.T) {
	t.Parallel()
	s := openTest(t, nil)
	write(t, s, msg{dev: "d", run: "r", seq: 1, at: good(0), vals: `"b":true,"i":-42,"f":0.5,"u":18446744073709551615,"z":0`})
	db := roDB(t, s.opts.Path)
	rows, err := db.Query(`SELECT p.name, p.kind, typeof(r.v), r.v FROM reading r JOIN point p ON p.id = r.point ORDER BY p.name`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var got []string
	for rows.Next() {
		var name, kind, typ string
		var v any
		if err := rows.Scan(&name, &kind, &typ, &v); err != nil {
			t.Fatal(err)
		}
		got = append(got, strings.Join([]string{name, kind, typ, fmtAny(v)}, " "))
	}
	want := []string{"b bool integer 1", "f number real 0.5", "i number integer -42", "u number text 18446744073709551615", "z number integer 0"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %q\nwant %q", got, want)
	}
}

func fmtAny(v any) string {
	if b, ok := v.([]byte); ok {
		return string(b)
	}
	return fmt.Sprint(v)
}

func TestMigrations(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()

	// Version 0: an empty file (as a crash right after creating it leaves).
	empty := filepath.Join(dir, "empty.db")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	s := openTest(t, func(o *Options) { o.Path = empty })
	gen := s.Generation()
	if len(gen) != 32 {
		t.Errorf("generation %q", gen)
	}
	write(t, s, series("r", 1, 3)...)
	s.Close()
	db := roDB(t, empty)
	if v := queryInt(t, db, `PRAGMA user_version`); v != SchemaVersion {
		t.Errorf("user_version %d", v)
	}
	if v := queryInt(t, db, `PRAGMA auto_vacuum`); v != 2 {
		t.Errorf("auto_vacuum %d, want 2 (incremental)", v)
	}
	db.Close()
	// Reopening the current version changes nothing.
	s = openTest(t, func(o *Options) { o.Path = empty })
	if s.Generation() != gen || s.LastRow() != 3 {
		t.Errorf("reopened: generation %s, last row %d", s.Generation(), s.LastRow())
	}
	s.Close()

	// Every earlier version, each built by the migrations before it and
	// filled, migrates to the current one keeping its rows.
	for v := 0; v < SchemaVersion; v++ {
		p := filepath.Join(dir, fmt.Sprintf("v%d.db", v))
		c := rawConn(t, p)
		if v > 0 {
			if _, err := c.ExecContext(ctx, `PRAGMA auto_vacuum = INCREMENTAL`); err != nil {
				t.Fatal(err)
			}
		}
		for i := 0; i < v; i++ {
			if err := runMigration(ctx, c, i); err != nil {
				t.Fatalf("build version %d: %v", i+1, err)
			}
		}
		if v >= 1 {
			// A run of the old version, part-way through.
			if _, err := c.ExecContext(ctx, `INSERT INTO run(producer, run, committed) VALUES ('poller', 'old', 7)`); err != nil {
				t.Fatal(err)
			}
			// Rows up to 50 were used and deleted (a dropped gap names
			// them): new ids must start above.
			if _, err := c.ExecContext(ctx, `INSERT INTO gap(kind, first_row, last_row, samples, readings, at, reason)
				VALUES ('dropped', 41, 50, 10, 30, 0, 'test')`); err != nil {
				t.Fatal(err)
			}
			if v >= 3 {
				// Since version 3 the ids were handed out by AUTOINCREMENT.
				if _, err := c.ExecContext(ctx, `UPDATE sqlite_sequence SET seq = 50 WHERE name = 'sample'`); err != nil {
					t.Fatal(err)
				}
			}
		}
		c.Close()
		s := openTest(t, func(o *Options) { o.Path = p })
		write(t, s, series("r", 1, 2)...)
		if v >= 1 {
			// Its seq 8 still fills the run where it left off.
			write(t, s, series("old", 8, 8)...)
		}
		s.Close()
		db := roDB(t, p)
		if n := queryInt(t, db, `PRAGMA user_version`); n != SchemaVersion {
			t.Errorf("from version %d: user_version %d", v, n)
		}
		if v >= 1 {
			if first := queryInt(t, db, `SELECT min(id) FROM sample`); first <= 50 {
				t.Errorf("from version %d: a new sample got id %d, at or below the deleted rows up to 50", v, first)
			}
			if c, pr := queryInt(t, db, `SELECT committed FROM run WHERE run = 'old'`), queryInt(t, db, `SELECT produced FROM run WHERE run = 'old'`); c != 8 || pr != 0 {
				t.Errorf("from version %d: the old run has committed %d, produced %d; want 8, 0", v, c, pr)
			}
		}
	}

	// A newer schema and a foreign database are refused.
	newer := filepath.Join(dir, "newer.db")
	c := rawConn(t, newer)
	if _, err := c.ExecContext(ctx, `PRAGMA user_version = 99`); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if _, err := Open(ctx, Options{Path: newer}); err == nil || !strings.Contains(err.Error(), "newer than this program") {
		t.Errorf("newer schema: %v", err)
	}
	foreign := filepath.Join(dir, "foreign.db")
	c = rawConn(t, foreign)
	if _, err := c.ExecContext(ctx, `CREATE TABLE x(a)`); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if _, err := Open(ctx, Options{Path: foreign}); err == nil || !strings.Contains(err.Error(), "not a tinyscada database") {
		t.Errorf("foreign database: %v", err)
	}
	if n := queryInt(t, roDB(t, foreign), `SELECT count(*) FROM sqlite_schema`); n != 1 {
		t.Errorf("the foreign database was changed: %d objects", n)
	}
}

func rawConn(t testing.TB, path string) *sql.Conn {
	t.Helper()
	db, err := sql.Open("sqlite", DSN(path, time.Second, "normal", false))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	c, err := db.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestLockedDatabase(t *testing.T) {
	t.Parallel()
	s := openTest(t, nil)
	write(t, s, series("r", 1, 1)...)
	// Another connection (as another process would) holds the write lock.
	other := rawConn(t, s.opts.Path)
	if _, err := other.ExecContext(context.Background(), `BEGIN IMMEDIATE`); err != nil {
		t.Fatal(err)
	}
	_, err := s.Write(context.Background(), producer, items(series("r", 2, 3)...))
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("write under a lock: %v", err)
	}
	if _, err := other.ExecContext(context.Background(), `COMMIT`); err != nil {
		t.Fatal(err)
	}
	res := write(t, s, series("r", 2, 3)...)
	if res.Samples != 2 || ackOf(res, "r") != 3 {
		t.Errorf("after the lock: %+v", res)
	}
}

// Row ids only grow within a generation: not after everything was pruned,
// not after a restart (the uplink's cursor and dedup key rely on it).
func TestRowIDsNeverReused(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := openTest(t, nil)
	path := s.opts.Path
	last := int64(0)
	check := func(step string) {
		t.Helper()
		db := roDB(t, path)
		rows, err := db.Query(`SELECT id FROM sample ORDER BY id`)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		n := 0
		for rows.Next() {
			var id int64
			if err := rows.Scan(&id); err != nil {
				t.Fatal(err)
			}
			if id <= last {
				t.Fatalf("%s: sample id %d, but ids up to %d were used before", step, id, last)
			}
			last = id
			n++
		}
		if n == 0 {
			t.Fatalf("%s: no samples", step)
		}
		if s.LastRow() != last {
			t.Errorf("%s: LastRow %d, highest id %d", step, s.LastRow(), last)
		}
	}
	pruneAll := func() {
		t.Helper()
		s.SetUploaded(s.LastRow())
		var g dropGap
		if _, err := s.deleteUpTo(ctx, s.LastRow(), "test", &g); err != nil {
			t.Fatal(err)
		}
		if n := queryInt(t, roDB(t, path), `SELECT count(*) FROM sample`); n != 0 {
			t.Fatalf("%d samples left after pruning everything", n)
		}
		if s.LastRow() != last {
			t.Errorf("after pruning: LastRow %d, want %d", s.LastRow(), last)
		}
	}
	write(t, s, series("r", 1, 10)...)
	check("first write")
	pruneAll()
	write(t, s, series("r", 11, 20)...)
	check("after pruning everything")
	pruneAll()
	s.Close()
	s = openTest(t, func(o *Options) { o.Path = path })
	if s.LastRow() != last {
		t.Errorf("reopened: LastRow %d, want %d", s.LastRow(), last)
	}
	write(t, s, series("r", 21, 30)...)
	check("after pruning everything and a restart")
}

// A point's kind is fixed by its first value: a value of another kind is
// stored as a failure with the reason and never retypes the history.
// Integers and floats are both numbers. A point first seen failing takes
// the kind of its first value.
func TestPointKindFixed(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := openTest(t, nil)
	at := func(i int) clock.Stamp { return good(time.Duration(i) * time.Second) }
	write(t, s,
		msg{dev: "d", run: "r", seq: 1, at: at(1), vals: `"x":1`, bad: `"y":"timeout"`},
		msg{dev: "d", run: "r", seq: 2, at: at(2), vals: `"x":true,"y":true`},
		msg{dev: "d", run: "r", seq: 3, at: at(3), vals: `"x":2.5,"y":1`},
	)
	db, err := OpenReadOnly(s.opts.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var buf bytes.Buffer
	if _, err := Export(ctx, db, ExportFilter{}, FormatCSV, &buf); err != nil {
		t.Fatal(err)
	}
	recs, err := csv.NewReader(&buf).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range recs[1:] {
		got = append(got, strings.Join([]string{r[6], r[2], r[3], r[4], r[5]}, " "))
	}
	want := []string{
		"1 x 1 good ",
		"1 y  bad timeout",
		"2 x  bad value true is a bool, but the point holds numbers (a point's kind is fixed by its first value)",
		"2 y true good ",
		"3 x 2.5 good ",
		"3 y  bad value 1 is a number, but the point holds bools (a point's kind is fixed by its first value)",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("export:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if k := queryText(t, roDB(t, s.opts.Path), `SELECT kind FROM point WHERE name = 'x'`); k != "number" {
		t.Errorf("point x has kind %q", k)
	}
	// The kinds survive a restart.
	path := s.opts.Path
	s.Close()
	s = openTest(t, func(o *Options) { o.Path = path })
	res := write(t, s, msg{dev: "d", run: "r", seq: 4, at: at(4), vals: `"x":false,"y":false`})
	if res.Readings != 1 {
		t.Errorf("after a restart: %d readings stored, want 1 (y)", res.Readings)
	}
}

// A seq far beyond what its run can have made (its highest known seq plus
// the outbox) is rejected as malformed, not believed: it opens no hole and
// makes no absurd gap. A run known from its heartbeats may be that far
// ahead; a run nothing is known of is deferred (not stored, not
// acknowledged) until its heartbeat says how far it got.
func TestAbsurdSeqRejected(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := openTest(t, func(o *Options) { o.GapAfter = testGapAfter; o.MaxAhead = 100 })
	write(t, s, series("r", 1, 3)...)
	absurd := series("r", 4, 4)[0]
	absurd.seq = 1<<63 - 1
	res := write(t, s, absurd)
	if res.Malformed != 1 || res.Samples != 0 || ackOf(res, "r") != 3 {
		t.Errorf("absurd seq: %+v", res)
	}
	// Within the bound is believed (a hole the poller may fill).
	res = write(t, s, series("r", 103, 103)...)
	if res.Samples != 1 {
		t.Errorf("seq 103 (3 + outbox 100): %+v", res)
	}
	res = write(t, s, series("r", 4, 102)...)
	if res.Samples != 99 || ackOf(res, "r") != 103 {
		t.Errorf("the rest: %+v", res)
	}
	// A run whose heartbeat said it made 10⁶ may send seq 10⁶.
	s.Produced(producer, "h", 1_000_000)
	if res := write(t, s, series("h", 1_000_000, 1_000_000)...); res.Samples != 1 {
		t.Errorf("seq 10⁶ of a run that said it made 10⁶: %+v", res)
	}
	// A run nothing is known of: deferred, then taken once its heartbeat
	// arrived.
	late := series("new", 500_000, 500_000)
	if res := write(t, s, late...); res.Deferred != 1 || res.Samples != 0 || len(res.Acks) != 0 {
		t.Errorf("seq 500000 of an unknown run: %+v", res)
	}
	s.Produced(producer, "new", 500_000)
	if res := write(t, s, late...); res.Samples != 1 {
		t.Errorf("seq 500000 after its heartbeat: %+v", res)
	}
	if _, err := s.CloseGaps(ctx, after()); err != nil {
		t.Fatal(err)
	}
	db := roDB(t, s.opts.Path)
	if n := queryInt(t, db, `SELECT max(samples) FROM gap WHERE run = (SELECT id FROM run WHERE run = 'r')`); n > 1 {
		t.Errorf("a gap of %d messages in run r", n)
	}
	var reason string
	if err := db.QueryRow(`SELECT reason FROM gap WHERE kind = 'malformed'`).Scan(&reason); err != nil || !strings.Contains(reason, "seq 9223372036854775807 is beyond") {
		t.Errorf("malformed gap: %q %v", reason, err)
	}
	// The rejection survives a restart: no hole is reloaded from it.
	path := s.opts.Path
	s.Close()
	s = openTest(t, func(o *Options) { o.Path = path; o.GapAfter = testGapAfter; o.MaxAhead = 100 })
	acks, err := s.CloseGaps(ctx, after())
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range acks { // h and new have holes below their first seq; r has none
		if a.Run == "r" {
			t.Errorf("after a restart, run r had a hole: %v", acks)
		}
	}
}
