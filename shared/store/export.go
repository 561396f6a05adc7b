package store

import (
	"bufio"
	"context"
	"database/sql"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
	"time"
)

// ExportFilter selects what Export writes. Zero values select everything.
type ExportFilter struct {
	Devices []string
	Points  []string
	// From and To bound the (corrected) time, inclusive.
	From, To time.Time
	// NoGaps leaves the gap records out.
	NoGaps bool
}

// Export formats.
const (
	FormatCSV   = "csv"
	FormatJSONL = "jsonl"
)

// OpenReadOnly opens the database at path for reading, without creating or
// changing it (a missing file is an error that names it).
func OpenReadOnly(path string) (*sql.DB, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("database: %w", err)
	}
	db, err := sql.Open("sqlite", DSN(path, 5*time.Second, "", true))
	if err != nil {
		return nil, fmt.Errorf("database %s: %w", path, err)
	}
	db.SetMaxOpenConns(1)
	var v int
	if err := db.QueryRow(`PRAGMA user_version`).Scan(&v); err != nil {
		db.Close()
		return nil, fmt.Errorf("database %s: %w", path, err)
	}
	if v < 1 || v > SchemaVersion {
		db.Close()
		return nil, fmt.Errorf("database %s: schema version %d (this program reads 1 to %d)", path, v, SchemaVersion)
	}
	return db, nil
}

// exportRow is one line of output: a reading, a failed point or a gap.
type exportRow struct {
	row     int64
	timeMs  sql.NullInt64
	wallMs  int64
	clock   int64
	device  string
	point   string
	kind    string // point kind; "gap" for a gap record
	value   any
	reason  sql.NullString
	gapKind string
	toMs    sql.NullInt64
	samples sql.NullInt64
	count   sql.NullInt64
}

// Export writes the readings selected by f, in row order, as CSV (with a
// header) or JSON lines, with their corrected time and quality:
//
//	good             the wall time was trusted
//	clock_corrected  the time is monotonic time + the boot's good offset;
//	                 the original is in wall_time
//	clock_untrusted  the wall time is not trusted and could not be corrected
//	clock_implausible the wall time (in wall_time) was ahead of the logger's
//	                 own clock; the time is the corrected one where known
//	bad              the point could not be read (note says why)
//	gap              readings known to be missing (note says which and why)
//
// It returns how many lines (besides the header) it wrote. Errors: an
// unknown format, a query or write error.
func Export(ctx context.Context, db *sql.DB, f ExportFilter, format string, w io.Writer) (int, error) {
	if format != FormatCSV && format != FormatJSONL {
		return 0, fmt.Errorf("export: unknown format %q (want csv or jsonl)", format)
	}
	var where []string
	var args []any
	if len(f.Devices) > 0 {
		where = append(where, "d.name IN ("+placeholders(len(f.Devices))+")")
		for _, d := range f.Devices {
			args = append(args, d)
		}
	}
	if len(f.Points) > 0 {
		where = append(where, "p.name IN ("+placeholders(len(f.Points))+")")
		for _, p := range f.Points {
			args = append(args, p)
		}
	}
	if !f.From.IsZero() {
		where = append(where, "coalesce(s.tc, s.t) >= ?")
		args = append(args, f.From.UnixMilli())
	}
	if !f.To.IsZero() {
		where = append(where, "coalesce(s.tc, s.t) <= ?")
		args = append(args, f.To.UnixMilli())
	}
	cond := ""
	if len(where) > 0 {
		cond = " WHERE " + strings.Join(where, " AND ")
	}
	// A sample's readings: by row id (version 5) or by the (sample,
	// point) key (before; an old file can be exported as it is).
	v5, err := rowIDReadings(ctx, db)
	if err != nil {
		return 0, fmt.Errorf("export: %w", err)
	}
	join, point := "r.sample = s.id", "r.point"
	if v5 {
		join, point = readingsOf("r", "s.id"), pointOf("r")
	}
	q := `SELECT row, tm, wall, clock, device, point, kind, v, reason FROM (
		SELECT s.id AS row, coalesce(s.tc, s.t) AS tm, s.t AS wall, s.clock AS clock, d.name AS device, p.name AS point, p.kind AS kind, r.v AS v, NULL AS reason, r.point AS pid
		FROM sample s JOIN reading r ON ` + join + ` JOIN point p ON p.id = ` + point + ` JOIN device d ON d.id = p.device` + cond + `
		UNION ALL
		SELECT s.id, coalesce(s.tc, s.t), s.t, s.clock, d.name, p.name, 'bad', NULL, x.text, b.point
		FROM bad b JOIN sample s ON s.id = b.sample JOIN point p ON p.id = b.point JOIN device d ON d.id = p.device JOIN reason x ON x.id = b.reason` + cond + `
	) ORDER BY row, pid`
	// The gaps first: the database may allow one connection only.
	var gaps []exportRow
	if !f.NoGaps {
		var err error
		if gaps, err = exportGaps(ctx, db, f); err != nil {
			return 0, err
		}
	}
	rows, err := db.QueryContext(ctx, q, append(args, args...)...)
	if err != nil {
		return 0, fmt.Errorf("export: %w", err)
	}
	defer rows.Close()

	bw := bufio.NewWriterSize(w, 64<<10)
	out := newExportWriter(format, bw)
	n := 0
	emitGapsUpTo := func(row int64) error {
		for len(gaps) > 0 && gaps[0].row <= row {
			if err := out.write(&gaps[0]); err != nil {
				return err
			}
			gaps = gaps[1:]
			n++
		}
		return nil
	}
	for rows.Next() {
		var r exportRow
		var tm int64
		if err := rows.Scan(&r.row, &tm, &r.wallMs, &r.clock, &r.device, &r.point, &r.kind, &r.value, &r.reason); err != nil {
			return n, fmt.Errorf("export: %w", err)
		}
		r.timeMs = sql.NullInt64{Int64: tm, Valid: true}
		if err := emitGapsUpTo(r.row - 1); err != nil {
			return n, err
		}
		if err := out.write(&r); err != nil {
			return n, err
		}
		n++
	}
	if err := rows.Err(); err != nil {
		return n, fmt.Errorf("export: %w", err)
	}
	if err := emitGapsUpTo(math.MaxInt64); err != nil {
		return n, err
	}
	if err := out.flush(); err != nil {
		return n, err
	}
	return n, bw.Flush()
}

func placeholders(n int) string { return strings.TrimSuffix(strings.Repeat("?,", n), ",") }

// exportGaps reads the gap records that overlap the time range, each at
// the row position where it belongs.
func exportGaps(ctx context.Context, db *sql.DB, f ExportFilter) ([]exportRow, error) {
	q := `SELECT coalesce(g.first_row,
			(SELECT max(id) FROM sample WHERE run = g.run AND seq < g.first_seq), 0),
		g.t_from, g.t_to, g.kind, g.reason, g.samples, g.readings
		FROM gap g WHERE 1`
	var args []any
	if !f.From.IsZero() {
		q += ` AND (g.t_to IS NULL OR g.t_to >= ?)`
		args = append(args, f.From.UnixMilli())
	}
	if !f.To.IsZero() {
		q += ` AND (g.t_from IS NULL OR g.t_from <= ?)`
		args = append(args, f.To.UnixMilli())
	}
	rows, err := db.QueryContext(ctx, q+` ORDER BY 1, g.id`, args...)
	if err != nil {
		return nil, fmt.Errorf("export gaps: %w", err)
	}
	defer rows.Close()
	var out []exportRow
	for rows.Next() {
		r := exportRow{kind: "gap"}
		if err := rows.Scan(&r.row, &r.timeMs, &r.toMs, &r.gapKind, &r.reason, &r.samples, &r.count); err != nil {
			return nil, fmt.Errorf("export gaps: %w", err)
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

type exportWriter struct {
	format string
	w      *bufio.Writer
	c      *csv.Writer
	rec    []string
	buf    []byte
}

func newExportWriter(format string, w *bufio.Writer) *exportWriter {
	e := &exportWriter{format: format, w: w, rec: make([]string, 8)}
	if format == FormatCSV {
		e.c = csv.NewWriter(w)
		_ = e.c.Write([]string{"time", "device", "point", "value", "quality", "note", "row", "wall_time"})
	}
	return e
}

func fmtTime(ms int64) string {
	return time.UnixMilli(ms).UTC().Format("2006-01-02T15:04:05.000Z")
}

func quality(r *exportRow) string {
	switch {
	case r.kind == "gap":
		return "gap"
	case r.kind == "bad":
		return "bad"
	case r.clock == clockCorrected:
		return "clock_corrected"
	case r.clock == clockUntrusted:
		return "clock_untrusted"
	case r.clock == clockImplausible:
		return "clock_implausible"
	}
	return "good"
}

// valueText formats a stored value: booleans as true/false, numbers in
// their shortest exact form.
func valueText(kind string, v any) string {
	switch x := v.(type) {
	case nil:
		return ""
	case int64:
		if kind == "bool" {
			return strconv.FormatBool(x != 0)
		}
		return strconv.FormatInt(x, 10)
	case float64:
		return strconv.FormatFloat(x, 'g', -1, 64)
	case string:
		return x
	case []byte:
		return string(x)
	}
	return fmt.Sprint(v)
}

func (e *exportWriter) write(r *exportRow) error {
	q := quality(r)
	t := ""
	if r.timeMs.Valid {
		t = fmtTime(r.timeMs.Int64)
	}
	note := r.reason.String
	if r.kind == "gap" {
		note = r.gapKind + ": " + note
	}
	wall := ""
	if r.kind != "gap" && (r.clock == clockCorrected || r.clock == clockImplausible) {
		wall = fmtTime(r.wallMs)
	}
	if e.c != nil {
		e.rec[0], e.rec[1], e.rec[2] = t, r.device, r.point
		e.rec[3] = valueText(r.kind, r.value)
		e.rec[4], e.rec[5] = q, note
		e.rec[6], e.rec[7] = strconv.FormatInt(r.row, 10), wall
		if r.kind == "gap" {
			e.rec[6] = ""
		}
		return e.c.Write(e.rec)
	}
	b := e.buf[:0]
	if r.kind == "gap" {
		b = append(b, `{"gap":`...)
		b, _ = appendJSON(b, r.gapKind)
		if t != "" {
			b = append(b, `,"time":"`...)
			b = append(b, t...)
			b = append(b, '"')
		}
		if r.toMs.Valid {
			b = append(b, `,"to":"`...)
			b = append(b, fmtTime(r.toMs.Int64)...)
			b = append(b, '"')
		}
		if r.samples.Valid {
			b = fmt.Appendf(b, `,"samples":%d`, r.samples.Int64)
		}
		if r.count.Valid {
			b = fmt.Appendf(b, `,"readings":%d`, r.count.Int64)
		}
		b = append(b, `,"note":`...)
		b, _ = appendJSON(b, r.reason.String)
	} else {
		b = append(b, `{"time":"`...)
		b = append(b, t...)
		b = fmt.Appendf(b, `","time_ms":%d,"device":`, r.timeMs.Int64)
		b, _ = appendJSON(b, r.device)
		b = append(b, `,"point":`...)
		b, _ = appendJSON(b, r.point)
		if r.value != nil {
			b = append(b, `,"value":`...)
			b = append(b, valueText(r.kind, r.value)...)
		}
		b = append(b, `,"quality":"`...)
		b = append(b, q...)
		b = append(b, '"')
		if r.reason.Valid {
			b = append(b, `,"note":`...)
			b, _ = appendJSON(b, r.reason.String)
		}
		if wall != "" {
			b = append(b, `,"wall_time":"`...)
			b = append(b, wall...)
			b = append(b, '"')
		}
		b = fmt.Appendf(b, `,"row":%d`, r.row)
	}
	b = append(b, '}', '\n')
	e.buf = b
	_, err := e.w.Write(b)
	return err
}

func appendJSON(b []byte, s string) ([]byte, error) {
	j, err := json.Marshal(s)
	return append(b, j...), err
}

func (e *exportWriter) flush() error {
	if e.c != nil {
		e.c.Flush()
		return e.c.Error()
	}
	return nil
}
