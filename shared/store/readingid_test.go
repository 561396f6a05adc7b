package store

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/internal/testpeer"
)

// Version 5 keeps a reading in a row id table (ReadingID). A filled
// version 4 database migrates with every value, its type, every failure
// and every empty sample; the reader and the export read it alike before
// (as the uplink may, before the logger has migrated it) and after.
func TestMigrateReadingRowIDs(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	p := filepath.Join(t.TempDir(), "v4.db")
	c := rawConn(t, p)
	if _, err := c.ExecContext(ctx, `PRAGMA auto_vacuum = INCREMENTAL`); err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		if err := runMigration(ctx, c, i); err != nil {
			t.Fatalf("build version %d: %v", i+1, err)
		}
	}
	for _, q := range []string{
		`INSERT INTO device(id, name) VALUES (1, 'meter'), (2, 'door')`,
		`INSERT INTO point(id, device, name, kind) VALUES (1, 1, 'voltage', 'number'), (2, 1, 'energy', 'number'),
			(3, 1, 'alarm', 'bool'), (4, 2, 'open', 'bool'), (300, 1, 'counter', 'number')`,
		`INSERT INTO run(id, producer, run, committed) VALUES (1, 'poller', 'r4', 4)`,
		`INSERT INTO boot(id, boot, first_row) VALUES (1, 'b1', 1)`,
		`INSERT INTO sample(id, run, seq, device, t, m, boot) VALUES (1, 1, 1, 1, 1704067200000, 1, 1),
			(2, 1, 2, 2, 1704067201000, 2, 1), (3, 1, 3, 1, 1704067202000, 3, 1), (4, 1, 4, 2, 1704067203000, 4, 1)`,
		`INSERT INTO reading(sample, point, v) VALUES (1, 1, 230.5), (1, 2, 1000), (1, 3, 0),
			(1, 300, '18446744073709551615'), (3, 1, 231.25), (3, 2, -7), (3, 3, 1)`,
		`INSERT INTO reason(id, text) VALUES (1, 'timeout')`,
		`INSERT INTO bad(sample, point, reason) VALUES (2, 4, 1), (3, 300, 1)`,
	} {
		if _, err := c.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	c.Close()
	before := readEverything(t, p)
	if n := len(before.samples); n != 4 {
		t.Fatalf("version 4: the reader found %d samples, want 4: %+v", n, before.samples)
	}

	s := openTest(t, func(o *Options) { o.Path = p })
	s.Close()
	db := roDB(t, p)
	if v := queryInt(t, db, `PRAGMA user_version`); v != SchemaVersion {
		t.Fatalf("user_version %d, want %d", v, SchemaVersion)
	}
	if wr := queryInt(t, db, `SELECT wr FROM pragma_table_list WHERE name = 'reading'`); wr != 0 {
		t.Error("reading is still a WITHOUT ROWID table")
	}
	var got []string
	rows, err := db.Query(`SELECT id, sample, point, typeof(v), v FROM reading ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id, sample, point int64
		var typ, v string
		if err := rows.Scan(&id, &sample, &point, &typ, &v); err != nil {
			t.Fatal(err)
		}
		if id != ReadingID(sample, point) {
			t.Errorf("row id %d for sample %d, point %d", id, sample, point)
		}
		got = append(got, fmt.Sprintf("%d/%d %s %s", sample, point, typ, v))
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	want := []string{"1/1 real 230.5", "1/2 integer 1000", "1/3 integer 0", "1/300 text 18446744073709551615",
		"3/1 real 231.25", "3/2 integer -7", "3/3 integer 1"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("migrated readings:\n got %q\nwant %q", got, want)
	}
	after := readEverything(t, p)
	if !reflect.DeepEqual(after, before) {
		t.Errorf("read after the migration:\n%+v\nbefore:\n%+v", after, before)
	}

	// The migrated database takes new readings, after the old ones.
	s = openTest(t, func(o *Options) { o.Path = p })
	write(t, s, series("r5", 1, 2)...)
	s.Close()
	more := readEverything(t, p)
	if n := len(more.samples); n != 6 || more.samples[5].Row != 6 || len(more.samples[5].Values) != 3 {
		t.Errorf("after two more samples: %+v", more.samples)
	}
	if !reflect.DeepEqual(more.samples[:4], before.samples) {
		t.Errorf("the old samples changed: %+v", more.samples[:4])
	}
}

// everything is what the readers of a database see.
type everything struct {
	samples []Sample // the uplink's reader, two entries a call
	export  string   // Export as CSV
	view    []string // the readings view
}

func readEverything(t *testing.T, path string) everything {
	t.Helper()
	ctx := context.Background()
	var e everything
	r, err := OpenReader(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for after := int64(0); ; {
		got, err := r.Samples(ctx, after, -1, 2)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) == 0 {
			break
		}
		e.samples = append(e.samples, got...)
		after = got[len(got)-1].Row
	}
	whole, err := r.Samples(ctx, 0, -1, 0)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(whole, e.samples) {
		t.Errorf("in one call:\n%+v\ntwo entries a call:\n%+v", whole, e.samples)
	}
	db, err := OpenReadOnly(path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var b bytes.Buffer
	if _, err := Export(ctx, db, ExportFilter{}, FormatCSV, &b); err != nil {
		t.Fatal(err)
	}
	e.export = b.String()
	rows, err := db.Query(`SELECT row, device, point, typeof(value), value, quality FROM readings ORDER BY row, point`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var row int64
		var dev, point, typ, quality string
		var v any
		if err := rows.Scan(&row, &dev, &point, &typ, &v, &quality); err != nil {
			t.Fatal(err)
		}
		e.view = append(e.view, fmt.Sprintf("%d %s/%s %s %v %s", row, dev, point, typ, v, quality))
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return e
}

// The queries of the readings find them by row id ranges: a full scan of
// the reading table (which the virtual sample and point columns would
// make, or an automatic index SQLite builds of them) is the whole
// history, each time the uplink reads a batch or an operator asks the
// view for one point.
func TestReadingQueriesUseRowIDs(t *testing.T) {
	t.Parallel()
	s := openTest(t, nil)
	write(t, s, series("r", 1, 3)...)
	bound, entries := samplesSQL(true)
	for name, q := range map[string]string{
		"bound":   bound,
		"entries": entries,
		"view":    `SELECT * FROM readings WHERE row > 1`,
		"point":   `SELECT time, value FROM readings WHERE device = 'meter' AND point = 'voltage' AND time_ms > 0`,
		"export":  `SELECT s.id, r.v FROM sample s JOIN reading r ON ` + readingsOf("r", "s.id") + ` JOIN point p ON p.id = ` + pointOf("r"),
		"prune":   `DELETE FROM reading WHERE id <= ?4`,
	} {
		rows, err := s.conn.QueryContext(context.Background(), `EXPLAIN QUERY PLAN `+q, 1, 3, 10, int64(1)<<PointBits, int64(3)<<PointBits)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		var plan []string
		for rows.Next() {
			var id, parent, unused int
			var detail string
			if err := rows.Scan(&id, &parent, &unused, &detail); err != nil {
				t.Fatal(err)
			}
			plan = append(plan, detail)
		}
		rows.Close()
		t.Logf("%s: %q", name, plan)
		for _, d := range plan {
			if strings.HasPrefix(d, "SCAN r") || strings.HasPrefix(d, "SCAN reading") || strings.Contains(d, "AUTOMATIC") {
				t.Errorf("%s scans the reading table: %q", name, plan)
			}
		}
	}
}

// A reading's row id holds at most MaxPointID points: the point after
// that is refused with an error that says so, and its message is not
// stored.
func TestPointIDLimit(t *testing.T) {
	t.Parallel()
	s := openTest(t, nil)
	write(t, s, series("r", 1, 1)...)
	ctx := context.Background()
	if _, err := s.conn.ExecContext(ctx, `INSERT INTO point(id, device, name, kind) VALUES (?, 1, 'last', 'number')`, MaxPointID); err != nil {
		t.Fatal(err)
	}
	_, err := s.Write(ctx, producer, items(msg{dev: "meter", run: "r", seq: 2, at: good(2 * time.Second), vals: `"voltage":1,"one_too_many":2`}))
	if err == nil || !strings.Contains(err.Error(), `"one_too_many"`) || !strings.Contains(err.Error(), "1048575") {
		t.Fatalf("a point id above the limit: %v", err)
	}
	var n int64
	if err := s.conn.QueryRowContext(ctx, `SELECT count(*) FROM sample`).Scan(&n); err != nil || n != 1 {
		t.Errorf("%d samples (%v), want 1: the refused message was stored", n, err)
	}
	var pid sql.NullInt64
	if err := s.conn.QueryRowContext(ctx, `SELECT max(id) FROM point`).Scan(&pid); err != nil || pid.Int64 != MaxPointID {
		t.Errorf("highest point id %d (%v), want %d", pid.Int64, err, MaxPointID)
	}
}

// The migration to version 5 copies every reading in one transaction: on
// a disk without room for the copy it fails with an error that names the
// database and says the disk is full, and the file stays at version 4
// with every reading; with room again, it migrates.
func TestMigrateReadingRowIDsDiskFull(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := testpeer.Tmpfs(t, "2m")
	p := filepath.Join(dir, "readings.db")
	c := rawConn(t, p)
	for _, q := range []string{`PRAGMA auto_vacuum = INCREMENTAL`, `PRAGMA wal_autocheckpoint = 100`} {
		if _, err := c.ExecContext(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 4 {
		if err := runMigration(ctx, c, i); err != nil {
			t.Fatalf("build version %d: %v", i+1, err)
		}
	}
	for _, q := range []string{
		`INSERT INTO device(id, name) VALUES (1, 'meter')`,
		`INSERT INTO run(id, producer, run, committed) VALUES (1, 'poller', 'r4', 2000)`,
		`INSERT INTO boot(id, boot, first_row) VALUES (1, 'b1', 1)`,
		`WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20)
			INSERT INTO point(id, device, name, kind) SELECT i, 1, 'p' || i, 'number' FROM n`,
		`WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
			INSERT INTO sample(id, run, seq, device, t, m, boot) SELECT i, 1, i, 1, 1704067200000 + i * 1000, i, 1 FROM n`,
		`INSERT INTO reading(sample, point, v) SELECT s.id, p.id, (s.id * 7 + p.id) % 1000 FROM sample s, point p`,
		`PRAGMA wal_checkpoint(TRUNCATE)`,
	} {
		if _, err := c.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	c.Close()
	filler := testpeer.FillDisk(t, dir)
	// Some room, for the write-ahead log's first pages, not for the copy.
	if err := os.Truncate(filler, max(fileSize(t, filler)-(128<<10), 0)); err != nil {
		t.Fatal(err)
	}
	_, err := Open(ctx, Options{Path: p, Synchronous: "normal", Reserve: 0})
	if err == nil || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), "version 4 to 5") ||
		!strings.Contains(err.Error(), "full") {
		t.Fatalf("migrating on a full disk: %v", err)
	}
	t.Logf("on a full disk: %v", err)
	db := roDB(t, p)
	if v := queryInt(t, db, `PRAGMA user_version`); v != 4 {
		t.Errorf("after the failed migration: user_version %d, want 4", v)
	}
	if n := queryInt(t, db, `SELECT count(*) FROM reading`); n != 40000 {
		t.Errorf("after the failed migration: %d readings, want 40000", n)
	}
	if err := IntegrityCheck(ctx, db); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	s, err := Open(ctx, Options{Path: p, Synchronous: "normal", Reserve: 0})
	if err != nil {
		t.Fatalf("with room again: %v", err)
	}
	s.Close()
	db = roDB(t, p)
	if v, n := queryInt(t, db, `PRAGMA user_version`), queryInt(t, db, `SELECT count(*) FROM reading`); v != SchemaVersion || n != 40000 {
		t.Errorf("migrated with room: user_version %d, %d readings; want %d, 40000", v, n, SchemaVersion)
	}
	if sum := queryInt(t, db, `SELECT sum(v) FROM reading WHERE sample = 1234`); sum != queryInt(t, db, `SELECT sum((1234 * 7 + id) % 1000) FROM point`) {
		t.Errorf("sample 1234's readings sum to %d after the migration", sum)
	}
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}
