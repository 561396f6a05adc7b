package store

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/internal/testpeer"
	"github.com/tinyscada/tinyscada/shared/clock"
)

// bigSeries returns n messages of run with 40 float readings each.
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

func TestMaxSizeDropsOldestWithGaps(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const limit = 1 << 20
	s := openTest(t, func(o *Options) { o.MaxSize = limit; o.Reserve = 0 })
	db := roDB(t, s.opts.Path)
	seq := 1
	fill := func(rounds int) {
		for range rounds {
			write(t, s, bigSeries("r", seq, 50, perSecond)...)
			seq += 50
			if _, err := s.Maintain(ctx); err != nil {
				t.Fatal(err)
			}
			z, err := s.Size(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if z.File+z.WAL > limit {
				t.Fatalf("database takes %d + %d bytes, more than %d", z.File, z.WAL, limit)
			}
		}
		if err := s.Check(ctx); err != nil {
			t.Fatal(err)
		}
	}
	fill(40) // 2000 samples, 80000 readings: several times the limit
	if n := queryInt(t, db, `SELECT count(*) FROM gap WHERE kind = 'dropped'`); n == 0 {
		t.Fatal("nothing uploaded, rows deleted, but no gap record")
	}
	if !strings.Contains(queryText(t, db, `SELECT reason FROM gap WHERE kind = 'dropped' LIMIT 1`), "max_db_size") {
		t.Error("gap reason does not name max_db_size")
	}
	testpeer.MissingCovered(t, db, s.LastRow(), 0)

	// Now the uplink has delivered everything but the last 100 samples:
	// those rows go first, without new gap records.
	gaps := queryInt(t, db, `SELECT count(*) FROM gap`)
	up := s.LastRow() - 100
	s.SetUploaded(up)
	fill(4)
	if n := queryInt(t, db, `SELECT count(*) FROM gap`); n != gaps {
		t.Errorf("%d gap records after deleting uploaded rows, want %d", n, gaps)
	}
	if min := queryInt(t, db, `SELECT min(id) FROM sample`); min > up+1 {
		t.Errorf("oldest sample %d: rows not uploaded were deleted while uploaded ones (≤ %d) were there", min, up)
	}
	testpeer.MissingCovered(t, db, s.LastRow(), up)
	if v := queryInt(t, db, `SELECT value FROM meta WHERE key = 'uploaded'`); v != up {
		t.Errorf("uploaded cursor saved as %d, want %d", v, up)
	}
}

func queryText(t *testing.T, db *sql.DB, q string) string {
	t.Helper()
	var s string
	if err := db.QueryRow(q).Scan(&s); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return s
}

func TestRetention(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := openTest(t, func(o *Options) { o.Retention = time.Hour })
	// Three hours of samples, one a minute.
	write(t, s, bigSeries("r", 1, 180, func(i int) time.Duration { return time.Duration(i) * time.Minute })...)
	s.SetUploaded(30)
	n, err := s.Maintain(ctx)
	if err != nil {
		t.Fatal(err)
	}
	db := roDB(t, s.opts.Path)
	if min := queryInt(t, db, `SELECT min(seq) FROM sample`); min != 120 || n != 119 {
		t.Errorf("kept from seq %d, deleted %d; want from 120 (the newest is 180 minutes), 119 deleted", min, n)
	}
	var first, last, samples int64
	var reason string
	if err := db.QueryRow(`SELECT first_row, last_row, samples, reason FROM gap WHERE kind = 'dropped'`).Scan(&first, &last, &samples, &reason); err != nil {
		t.Fatal(err)
	}
	if first != 31 || last != 119 || samples != 89 || !strings.Contains(reason, "retention") {
		t.Errorf("gap %d..%d (%d) %q", first, last, samples, reason)
	}
	if err := s.Check(ctx); err != nil {
		t.Error(err)
	}
	if fl := queryInt(t, db, `PRAGMA freelist_count`); fl != 0 {
		t.Errorf("%d free pages left after vacuum", fl)
	}
}

func TestOneGapRecordPerShrink(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := openTest(t, func(o *Options) { o.MaxSize = 4 << 20; o.Reserve = 0 })
	write(t, s, bigSeries("r", 1, 6000, perSecond)...)
	z, _ := s.Size(ctx)
	if _, err := s.Maintain(ctx); err != nil {
		t.Fatal(err)
	}
	db := roDB(t, s.opts.Path)
	if n := queryInt(t, db, `SELECT count(*) FROM gap`); n != 1 {
		t.Errorf("%d gap records for one shrink (from %d bytes), want 1", n, z.Used)
	}
	if d := testpeer.MissingCovered(t, db, s.LastRow(), 0); d != queryInt(t, db, `SELECT 6000 - count(*) FROM sample`) {
		t.Errorf("gap says %d samples dropped", d)
	}
	var readings, want int64
	db.QueryRow(`SELECT readings FROM gap`).Scan(&readings)
	want = 40 * queryInt(t, db, `SELECT samples FROM gap`)
	if readings != want || !strings.HasPrefix(queryText(t, db, `SELECT reason FROM gap`), fmt.Sprint(want, " readings")) {
		t.Errorf("gap readings %d, want %d; reason %q", readings, want, queryText(t, db, `SELECT reason FROM gap`))
	}
}

// One reading stamped 2038 (with the real boot id, the clock trusted)
// moves nothing: with the logger's clock trusted, retention measures from
// a time no later than it, nothing inside the retention is deleted, and
// the reading is stored flagged clock_implausible with its corrected time.
// With the logger's clock untrusted (so the stamp itself is believed), the
// monotonic age within the boot still keeps every young reading.
func TestFutureStampDoesNotMoveRetention(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	y2038 := time.Date(2038, 1, 19, 3, 14, 7, 0, time.UTC)
	for _, tc := range []struct {
		name       string
		loggerNow  time.Time
		wantFlag   string
		wantTimeOf func(clock.Stamp) time.Time // the 2038 reading's exported time
	}{
		{"logger clock trusted", good(2 * time.Hour).Wall, "clock_implausible", func(s clock.Stamp) time.Time { return good(time.Hour).Wall }},
		{"logger clock at 1970", time.Unix(1000, 0), "good", func(clock.Stamp) time.Time { return y2038 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := openTest(t, func(o *Options) {
				o.Retention = time.Hour
				o.Now = func() time.Time { return tc.loggerNow }
			})
			// 50 minutes of readings, one a minute: all inside the retention.
			write(t, s, bigSeries("r", 10, 50, func(i int) time.Duration { return time.Duration(i) * time.Minute })...)
			future := good(time.Hour) // the next minute's monotonic time and boot...
			future.Wall = y2038       // ...stamped 2038
			write(t, s, msg{dev: "dev", run: "r", seq: 60, at: future, vals: `"p00":1`})
			n, err := s.Maintain(ctx)
			if err != nil {
				t.Fatal(err)
			}
			db := roDB(t, s.opts.Path)
			if left := queryInt(t, db, `SELECT count(*) FROM sample`); n != 0 || left != 51 {
				t.Errorf("retention deleted %d samples, %d left; want 0 deleted, 51 left", n, left)
			}
			if g := queryInt(t, db, `SELECT count(*) FROM gap`); g != 0 {
				t.Errorf("%d gap records", g)
			}
			var buf bytes.Buffer
			if _, err := Export(ctx, db, ExportFilter{Points: []string{"p00"}}, FormatJSONL, &buf); err != nil {
				t.Fatal(err)
			}
			lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
			var last struct{ Time, Quality string }
			var m map[string]any
			if err := json.Unmarshal([]byte(lines[len(lines)-1]), &m); err != nil {
				t.Fatal(err)
			}
			last.Time, last.Quality = m["time"].(string), m["quality"].(string)
			if last.Quality != tc.wantFlag || last.Time != fmtTime(tc.wantTimeOf(future).UnixMilli()) {
				t.Errorf("the 2038 reading exports as %s", lines[len(lines)-1])
			}
			if tc.wantFlag == "clock_implausible" && m["wall_time"] != fmtTime(y2038.UnixMilli()) {
				t.Errorf("the 2038 reading exports without its stamped time: %s", lines[len(lines)-1])
			}
			if q := queryText(t, db, `SELECT quality FROM readings ORDER BY row DESC LIMIT 1`); q != tc.wantFlag {
				t.Errorf("readings view: quality %q, want %q", q, tc.wantFlag)
			}
			// The next reading at the right time is trusted again, and a
			// later Maintain still keeps everything young.
			write(t, s, msg{dev: "dev", run: "r", seq: 61, at: good(61 * time.Minute), vals: `"p00":2`})
			if q := queryText(t, db, `SELECT quality FROM readings ORDER BY row DESC LIMIT 1`); q != "good" {
				t.Errorf("the reading after: quality %q", q)
			}
			if n, err := s.Maintain(ctx); err != nil || n != 0 {
				t.Errorf("second Maintain deleted %d (%v)", n, err)
			}
		})
	}
}
