package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"syscall"
)

// Reader tails the database for the uplink: samples by row id, gap records
// by gap id, on a read-only connection. Each call is one short read
// transaction (WAL: it never blocks the logger, and holds back a
// checkpoint only while it runs). A Reader is not safe for concurrent use.
type Reader struct {
	path     string
	db       *sql.DB
	gen      string
	dev, ino uint64
	v5       bool // the file was seen at schema version 5 (see rowIDReadings)
}

// OpenReader opens the database at path read-only (see OpenReadOnly) and
// reads its generation. A database that does not exist yet is an error
// wrapping fs.ErrNotExist (test with errors.Is).
func OpenReader(path string) (*Reader, error) {
	dev, ino, err := fileID(path)
	if err != nil {
		return nil, fmt.Errorf("database: %w", err)
	}
	db, err := OpenReadOnly(path)
	if err != nil {
		return nil, err
	}
	r := &Reader{path: path, db: db, dev: dev, ino: ino}
	if err := db.QueryRow(`SELECT value FROM meta WHERE key = 'generation'`).Scan(&r.gen); err != nil {
		db.Close()
		return nil, fmt.Errorf("database %s: read generation: %w", path, err)
	}
	return r, nil
}

func fileID(path string) (dev, ino uint64, err error) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, 0, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, 0, errors.New("no inode number")
	}
	return uint64(st.Dev), st.Ino, nil
}

// Generation is the random id the database got when it was created: row
// ids are only comparable within one generation.
func (r *Reader) Generation() string { return r.gen }

// Replaced reports whether the file at the Reader's path is no longer the
// database it opened (deleted, or another file put in its place): the
// caller then opens a new Reader. It only stats the path.
func (r *Reader) Replaced() bool {
	dev, ino, err := fileID(r.path)
	return err != nil || dev != r.dev || ino != r.ino
}

// Close closes the connection.
func (r *Reader) Close() error { return r.db.Close() }

// Tail returns the highest sample id and the highest gap id (0 when there
// are none).
func (r *Reader) Tail(ctx context.Context) (lastRow, lastGap int64, err error) {
	err = r.db.QueryRowContext(ctx, `SELECT coalesce((SELECT max(id) FROM sample), 0), coalesce((SELECT max(id) FROM gap), 0)`).Scan(&lastRow, &lastGap)
	if err != nil {
		return 0, 0, fmt.Errorf("tail: %w", err)
	}
	return lastRow, lastGap, nil
}

// Backlog returns how many samples have an id above after, and the
// (corrected) time of the oldest of them, Unix ms (0 when there are none).
func (r *Reader) Backlog(ctx context.Context, after int64) (rows, oldestMs int64, err error) {
	var oldest sql.NullInt64
	err = r.db.QueryRowContext(ctx, `SELECT count(*), (SELECT coalesce(tc, t) FROM sample WHERE id > ?1 ORDER BY id LIMIT 1) FROM sample WHERE id > ?1`, after).Scan(&rows, &oldest)
	if err != nil {
		return 0, 0, fmt.Errorf("backlog: %w", err)
	}
	return rows, oldest.Int64, nil
}

// Sample is one stored data message (one poll round of one device) as the
// uplink sends it.
type Sample struct {
	Row    int64
	Device string
	// Time is the corrected time where there is one, else the wall time
	// as stamped, Unix ms.
	Time int64
	// Quality is "good", "clock_corrected" (Wall holds the wall time as
	// stamped) or "clock_untrusted", as Export writes it.
	Quality string
	Wall    int64
	Values  []Reading
	Bad     []Failure
}

// Reading is one stored value: Text is a JSON literal (a number, true or
// false).
type Reading struct {
	Point string
	Text  string
}

// Failure is a point that could not be read, and why.
type Failure struct {
	Point  string
	Reason string
}

// Entries is how many readings and bad points s holds.
func (s *Sample) Entries() int { return len(s.Values) + len(s.Bad) }

// Samples returns the samples with ids in (after, upTo], in row order,
// with their readings and bad points, read in one transaction. With
// maxEntries > 0 it returns whole samples holding at most maxEntries
// readings and bad points together, except that a sample larger than that
// comes alone. upTo < 0 means no upper bound.
func (r *Reader) Samples(ctx context.Context, after, upTo int64, maxEntries int) ([]Sample, error) {
	if upTo < 0 {
		upTo = 1<<63 - 1
	}
	if maxEntries <= 0 {
		out, _, err := r.samples(ctx, after, upTo, -1)
		return out, err
	}
	// One entry more than wanted shows whether the last sample was cut.
	out, complete, err := r.samples(ctx, after, upTo, maxEntries+1)
	switch {
	case err != nil || complete:
		return out, err
	case len(out) > 1:
		return out[:len(out)-1], nil
	}
	// One sample with more than maxEntries entries: read it whole.
	out, _, err = r.samples(ctx, after, out[0].Row, -1)
	return out, err
}

// samplesSQL returns the queries of samples: bound, the sample of the
// ?3+1-th reading in (?1, ?2], and the entries of the samples in (?1, ?2],
// at most ?3 (-1: all). ?4 and ?5 are the row ids of the range's readings
// (readingIDs): version 5 finds a sample's readings by row id; a database
// of version 4 or before (one the logger has not migrated yet) by its
// (sample, point) key, and ?4 and ?5 are then unused (the driver binds
// the parameters a statement has, and ignores further arguments).
func samplesSQL(v5 bool) (bound, entries string) {
	bound = `SELECT id >> ` + pointBits + ` FROM reading WHERE id BETWEEN ?4 AND ?5 ORDER BY id LIMIT 1 OFFSET ?3`
	readings := `FROM reading r JOIN sample s ON s.id = r.id >> ` + pointBits + `
		JOIN point p ON p.id = ` + pointOf("r") + ` JOIN device d ON d.id = p.device
		WHERE r.id BETWEEN ?4 AND ?5`
	has := readingsOf("r", "s.id")
	if !v5 {
		bound = `SELECT sample FROM reading WHERE sample > ?1 AND sample <= ?2 ORDER BY sample, point LIMIT 1 OFFSET ?3`
		readings = `FROM reading r JOIN sample s ON s.id = r.sample JOIN point p ON p.id = r.point JOIN device d ON d.id = p.device
		WHERE r.sample > ?1 AND r.sample <= ?2`
		has = "r.sample = s.id"
	}
	entries = `SELECT row, tm, wall, clock, device, point, kind, v, reason FROM (
		SELECT s.id AS row, coalesce(s.tc, s.t) AS tm, s.t AS wall, s.clock AS clock, d.name AS device, p.name AS point, p.kind AS kind, r.v AS v, NULL AS reason, r.point AS pid
		` + readings + `
		UNION ALL
		SELECT s.id, coalesce(s.tc, s.t), s.t, s.clock, d.name, p.name, 'bad', NULL, x.text, b.point
		FROM bad b JOIN sample s ON s.id = b.sample JOIN point p ON p.id = b.point JOIN device d ON d.id = p.device JOIN reason x ON x.id = b.reason
		WHERE b.sample > ?1 AND b.sample <= ?2
		UNION ALL
		SELECT s.id, coalesce(s.tc, s.t), s.t, s.clock, d.name, NULL, 'empty', NULL, NULL, -1
		FROM sample s JOIN device d ON d.id = s.device
		WHERE s.id > ?1 AND s.id <= ?2
			AND NOT EXISTS (SELECT 1 FROM reading r WHERE ` + has + `) AND NOT EXISTS (SELECT 1 FROM bad WHERE sample = s.id)
	) ORDER BY row, pid LIMIT ?3`
	return bound, entries
}

// samples reads up to limit entries (-1: all) of the samples in (after,
// upTo]; complete is false when the limit stopped it.
func (r *Reader) samples(ctx context.Context, after, upTo int64, limit int) (out []Sample, complete bool, err error) {
	// A version only grows: once the logger has migrated the file, no
	// need to ask again.
	if !r.v5 {
		if r.v5, err = rowIDReadings(ctx, r.db); err != nil {
			return nil, false, fmt.Errorf("read samples after row %d: %w", after, err)
		}
	}
	bound, q := samplesSQL(r.v5)
	firstID, lastID := readingIDs(after, upTo)
	if limit > 0 {
		// Bound the range first, by the sample of the limit-th reading
		// (the primary key's order): the query below sorts what is in
		// its range, which must not be the whole backlog.
		var last sql.NullInt64
		err := r.db.QueryRowContext(ctx, bound, after, upTo, limit-1, firstID, lastID).Scan(&last)
		switch {
		case errors.Is(err, sql.ErrNoRows):
		case err != nil:
			return nil, false, fmt.Errorf("read samples after row %d: %w", after, err)
		case last.Valid:
			upTo = min(upTo, last.Int64)
			firstID, lastID = readingIDs(after, upTo)
		}
	}
	args := []any{after, upTo, limit, firstID, lastID}
	rows, err := r.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, false, fmt.Errorf("read samples after row %d: %w", after, err)
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		var e exportRow
		var tm int64
		var point sql.NullString
		if err := rows.Scan(&e.row, &tm, &e.wallMs, &e.clock, &e.device, &point, &e.kind, &e.value, &e.reason); err != nil {
			return nil, false, fmt.Errorf("read samples after row %d: %w", after, err)
		}
		n++
		if len(out) == 0 || out[len(out)-1].Row != e.row {
			out = append(out, Sample{Row: e.row, Device: e.device, Time: tm, Wall: e.wallMs, Quality: quality(&e)})
		}
		s := &out[len(out)-1]
		switch e.kind {
		case "empty":
		case "bad":
			s.Bad = append(s.Bad, Failure{Point: point.String, Reason: e.reason.String})
		default:
			s.Values = append(s.Values, Reading{Point: point.String, Text: valueText(e.kind, e.value)})
		}
	}
	if err := rows.Err(); err != nil {
		return nil, false, fmt.Errorf("read samples after row %d: %w", after, err)
	}
	return out, limit < 0 || n < limit, nil
}

// Gap is a gap record (see docs/logger.md): readings known to be missing.
type Gap struct {
	ID   int64
	Kind string // seq, malformed, dropped (and any kind a newer logger records)
	// Row is where the gap stands in row order: the sample before it
	// (seq, malformed) or the first sample deleted (dropped); 0 when not
	// known. LastRow is the last sample deleted (dropped only).
	Row, LastRow int64
	// Run, FirstSeq and LastSeq name a producer run's missing messages
	// (seq, malformed); empty and 0 otherwise.
	Run               string
	FirstSeq, LastSeq int64
	// Samples and Readings count what is missing, where known (else -1).
	Samples, Readings int64
	// From and To bound its time, Unix ms (0 when not known).
	From, To int64
	// At is when the logger recorded it, Unix ms (its own wall clock).
	At     int64
	Reason string
}

// Gaps returns the gap records with ids in (after, upTo], in id order
// (upTo < 0: no upper bound), at most limit of them when limit > 0.
func (r *Reader) Gaps(ctx context.Context, after, upTo int64, limit int) ([]Gap, error) {
	if upTo < 0 {
		upTo = 1<<63 - 1
	}
	if limit <= 0 {
		limit = -1
	}
	rows, err := r.db.QueryContext(ctx, `SELECT g.id, g.kind,
			coalesce(g.first_row, (SELECT max(id) FROM sample WHERE run = g.run AND seq < g.first_seq), 0),
			coalesce(g.last_row, 0), coalesce(u.run, ''), coalesce(g.first_seq, 0), coalesce(g.last_seq, 0),
			coalesce(g.samples, -1), coalesce(g.readings, -1), coalesce(g.t_from, 0), coalesce(g.t_to, 0), g.at, g.reason
		FROM gap g LEFT JOIN run u ON u.id = g.run
		WHERE g.id > ? AND g.id <= ? ORDER BY g.id LIMIT ?`, after, upTo, limit)
	if err != nil {
		return nil, fmt.Errorf("read gaps after %d: %w", after, err)
	}
	defer rows.Close()
	var out []Gap
	for rows.Next() {
		var g Gap
		if err := rows.Scan(&g.ID, &g.Kind, &g.Row, &g.LastRow, &g.Run, &g.FirstSeq, &g.LastSeq,
			&g.Samples, &g.Readings, &g.From, &g.To, &g.At, &g.Reason); err != nil {
			return nil, fmt.Errorf("read gaps after %d: %w", after, err)
		}
		out = append(out, g)
	}
	return out, rows.Err()
}
