package store

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"strconv"
	"time"
)

// The schema is designed for small disks: names live once in their own
// tables (device, point, run, boot, reason) and a reading is a value in a
// table whose row id packs its sample and point (version 5, see
// migrateV4), about 12 to 17 bytes on disk. A sample is one data message
// (one poll round of one device) with its timestamps; its id is the row id
// the uplink tails. docs/logger.md describes every column and gives
// example queries.
//
// PRAGMA user_version is the schema version. migrations[i] takes a
// database from version i to i+1; version 0 is an empty file. Each runs in
// its own transaction together with the new user_version, so a kill -9
// during a migration leaves the old version intact.

// schemaV1 creates version 1 from an empty database.
const schemaV1 = `
CREATE TABLE meta (
	key   TEXT PRIMARY KEY,
	value
) WITHOUT ROWID;

CREATE TABLE device (
	id   INTEGER PRIMARY KEY,
	name TEXT NOT NULL UNIQUE
);

CREATE TABLE point (
	id     INTEGER PRIMARY KEY,
	device INTEGER NOT NULL REFERENCES device(id),
	name   TEXT NOT NULL,
	kind   TEXT NOT NULL,          -- 'number' or 'bool'
	UNIQUE (device, name)
);

CREATE TABLE run (
	id        INTEGER PRIMARY KEY,
	producer  TEXT NOT NULL,       -- the role that published: 'poller'
	run       TEXT NOT NULL,       -- the producer's run id
	committed INTEGER NOT NULL DEFAULT 0, -- highest contiguous seq stored or given up as a gap
	UNIQUE (producer, run)
);

CREATE TABLE boot (
	id     INTEGER PRIMARY KEY,
	boot      TEXT NOT NULL UNIQUE,   -- /proc/sys/kernel/random/boot_id
	first_row INTEGER,                -- the first sample of this boot
	last_t    INTEGER                 -- newest trusted time of this boot, Unix ms
);

-- One data message. clock: 0 trusted, 1 untrusted, 2 corrected (tc set).
CREATE TABLE sample (
	id     INTEGER PRIMARY KEY,
	run    INTEGER NOT NULL,
	seq    INTEGER NOT NULL,
	device INTEGER NOT NULL,
	t      INTEGER NOT NULL,       -- wall time as stamped, Unix ms
	m      INTEGER NOT NULL,       -- CLOCK_BOOTTIME, ns
	boot   INTEGER NOT NULL,
	clock  INTEGER NOT NULL DEFAULT 0,
	tc     INTEGER,                -- corrected wall time, Unix ms
	UNIQUE (run, seq)
);

CREATE TABLE reading (
	sample INTEGER NOT NULL,
	point  INTEGER NOT NULL,
	v,                             -- integer, real, 0/1 for bool, text for u64 > 2^63-1
	PRIMARY KEY (sample, point)
) WITHOUT ROWID;

CREATE TABLE reason (
	id   INTEGER PRIMARY KEY,
	text TEXT NOT NULL UNIQUE
);

-- Points of a sample that could not be read.
CREATE TABLE bad (
	sample INTEGER NOT NULL,
	point  INTEGER NOT NULL,
	reason INTEGER NOT NULL,
	PRIMARY KEY (sample, point)
) WITHOUT ROWID;

-- What is known to be missing. kind: 'seq' (a producer's messages that
-- never arrived), 'malformed' (a message that could not be decoded),
-- 'dropped' (rows deleted before they were uploaded).
CREATE TABLE gap (
	id        INTEGER PRIMARY KEY,
	kind      TEXT NOT NULL,
	run       INTEGER,
	first_seq INTEGER,
	last_seq  INTEGER,
	first_row INTEGER,             -- dropped: the first sample id deleted; else the sample before the gap
	last_row  INTEGER,             -- dropped: the last sample id deleted
	samples   INTEGER,
	readings  INTEGER,
	t_from    INTEGER,             -- Unix ms (corrected where known)
	t_to      INTEGER,
	at        INTEGER NOT NULL,    -- when it was recorded, logger wall time, Unix ms
	reason    TEXT NOT NULL
);

-- Clock events; each starts a segment of a boot with one offset.
-- kind: 'boot', 'step' (the offset moved), 'sync' (became trusted without a step).
CREATE TABLE clock (
	id        INTEGER PRIMARY KEY,
	boot      INTEGER NOT NULL,
	kind      TEXT NOT NULL,
	m         INTEGER NOT NULL,    -- monotonic time of the first sample of the segment, ns
	t         INTEGER NOT NULL,    -- its wall time, Unix ms
	offset_ns INTEGER NOT NULL,    -- wall - monotonic, ns
	trusted   INTEGER NOT NULL,
	delta_ns  INTEGER,             -- step: change of the offset
	corrected INTEGER,             -- sync: samples given a corrected time
	reason    TEXT,
	at        INTEGER NOT NULL
);
` + viewsV1

// viewsV1 are the views of version 1 (still current). A migration that
// rebuilds a table they name drops and recreates them.
const viewsV1 = `
CREATE VIEW readings AS
SELECT s.id AS row,
       strftime('%Y-%m-%dT%H:%M:%fZ', coalesce(s.tc, s.t) / 1000.0, 'unixepoch') AS time,
       coalesce(s.tc, s.t) AS time_ms,
       d.name AS device,
       p.name AS point,
       r.v AS value,
       CASE s.clock WHEN 0 THEN 'good' WHEN 1 THEN 'clock_untrusted' ELSE 'clock_corrected' END AS quality,
       s.t AS wall_ms,
       s.m AS mono_ns,
       b.boot AS boot,
       u.run AS run,
       s.seq AS seq
FROM reading r
JOIN sample s ON s.id = r.sample
JOIN point p ON p.id = r.point
JOIN device d ON d.id = p.device
JOIN boot b ON b.id = s.boot
JOIN run u ON u.id = s.run;

CREATE VIEW failures AS
SELECT s.id AS row,
       strftime('%Y-%m-%dT%H:%M:%fZ', coalesce(s.tc, s.t) / 1000.0, 'unixepoch') AS time,
       d.name AS device,
       p.name AS point,
       x.text AS reason
FROM bad f
JOIN sample s ON s.id = f.sample
JOIN point p ON p.id = f.point
JOIN device d ON d.id = p.device
JOIN reason x ON x.id = f.reason;
`

// SchemaVersion is the schema version this program writes.
const SchemaVersion = 5

// migrations[i] migrates a database from version i to i+1 inside tx.
var migrations = []func(ctx context.Context, tx *sql.Conn) error{
	migrateV0,
	migrateV1,
	migrateV2,
	migrateV3,
	migrateV4,
}

// PointBits is how many low bits of a reading's row id hold its point id;
// the bits above hold its sample id (see migrateV4). Point ids go up to
// MaxPointID, sample ids up to 2⁴³−1 (maxSampleID).
const (
	PointBits  = 20
	MaxPointID = 1<<PointBits - 1
)

// ReadingID is the row id of the reading of point in sample.
func ReadingID(sample, point int64) int64 { return sample<<PointBits | point }

// pointBits and pointMask are PointBits and MaxPointID for SQL text.
var pointBits, pointMask = strconv.Itoa(PointBits), strconv.Itoa(MaxPointID)

// maxSampleID is the highest sample id a reading row id holds.
const maxSampleID = 1<<(63-PointBits) - 1

// readingIDs returns the row ids of the readings of the samples in
// (after, upTo]: first ≤ id ≤ last (first > last when there are none).
func readingIDs(after, upTo int64) (first, last int64) {
	after, upTo = min(max(after, -1), maxSampleID), min(max(upTo, 0), maxSampleID)
	return ReadingID(after+1, 0), ReadingID(upTo, MaxPointID)
}

// migrateV4 rebuilds reading as a table of row id and value, the row id
// being ReadingID(sample, point); sample and point stay readable as
// virtual columns, which take no space. As a WITHOUT ROWID table keyed by
// (sample, point) its leaves were 88% full: each time the last one
// split, SQLite shared its cells with its left siblings, and a commit
// wrote those again. Rows appended to a row id table fill their pages
// (SQLite starts a new right-most leaf with the new row), and the key
// takes about the bytes the two integers took: the table is a twentieth
// to a tenth smaller, and so are the write-ahead log and the checkpoints at field
// rate (docs/performance.md). Copying in key order appends; the database
// needs free space of about the size of the readings while it runs.
func migrateV4(ctx context.Context, c *sql.Conn) error {
	var maxPoint int64
	if err := c.QueryRowContext(ctx, `SELECT coalesce(max(id), 0) FROM point`).Scan(&maxPoint); err != nil {
		return err
	}
	if maxPoint > MaxPointID {
		return fmt.Errorf("point id %d is above %d, the most a reading row id holds", maxPoint, MaxPointID)
	}
	for _, q := range []string{
		`DROP VIEW readings`,
		createReadingV5,
		`INSERT INTO reading_new(id, v) SELECT sample << ` + pointBits + ` | point, v FROM reading ORDER BY sample, point`,
		`DROP TABLE reading`,
		`ALTER TABLE reading_new RENAME TO reading`,
		viewReadingsV5,
	} {
		if _, err := c.ExecContext(ctx, q); err != nil {
			return err
		}
	}
	return nil
}

// createReadingV5 creates version 5's reading table as reading_new.
var createReadingV5 = `CREATE TABLE reading_new (
	id     INTEGER PRIMARY KEY,    -- sample id << ` + pointBits + ` | point id (ReadingID)
	v,                             -- integer, real, 0/1 for bool, text for u64 > 2^63-1
	sample INTEGER GENERATED ALWAYS AS (id >> ` + pointBits + `) VIRTUAL,
	point  INTEGER GENERATED ALWAYS AS (` + pointOf("") + `) VIRTUAL
)`

// viewReadingsV5 is the readings view of version 5: as version 4's, the
// readings of a sample found by their row ids, their points by the
// point bits of it.
var viewReadingsV5 = fmt.Sprintf(`
CREATE VIEW readings AS
SELECT s.id AS row,
       strftime('%%Y-%%m-%%dT%%H:%%M:%%fZ', coalesce(s.tc, s.t) / 1000.0, 'unixepoch') AS time,
       coalesce(s.tc, s.t) AS time_ms,
       d.name AS device,
       p.name AS point,
       r.v AS value,
       CASE s.clock WHEN 0 THEN 'good' WHEN 1 THEN 'clock_untrusted' WHEN 2 THEN 'clock_corrected' ELSE 'clock_implausible' END AS quality,
       s.t AS wall_ms,
       s.m AS mono_ns,
       b.boot AS boot,
       u.run AS run,
       s.seq AS seq
FROM sample s
JOIN reading r ON %s
JOIN point p ON p.id = %s
JOIN device d ON d.id = p.device
JOIN boot b ON b.id = s.boot
JOIN run u ON u.id = s.run`, readingsOf("r", "s.id"), pointOf("r"))

// rowIDReadings reports whether the database db has version 5's
// reading table (row ids), not the (sample, point) key of before: a
// reader may open a database that the logger migrates later.
func rowIDReadings(ctx context.Context, db *sql.DB) (bool, error) {
	var v int
	if err := db.QueryRowContext(ctx, `PRAGMA user_version`).Scan(&v); err != nil {
		return false, fmt.Errorf("read schema version: %w", err)
	}
	return v >= 5, nil
}

// pointOf is the point id of the readings r, computed from the row id:
// a condition on the virtual column r.point lets SQLite build an
// automatic index of the whole table for the query (a query of one point
// in the view did), one on the expression does not.
// r "" is the table's own id.
func pointOf(r string) string {
	if r == "" {
		return "id & " + pointMask
	}
	return r + ".id & " + pointMask
}

// readingsOf is the condition that the readings r are those of the
// sample with id sample: a range of row ids, which SQLite looks up
// directly (r.sample = sample would read the whole table).
func readingsOf(r, sample string) string {
	first := sample + " << " + pointBits
	return r + ".id BETWEEN " + first + " AND (" + first + ") | " + pointMask
}

// migrateV3 adds boot.last_m, the newest monotonic time of a boot's
// samples (the retention is bounded by monotonic age within a boot), and
// the quality clock_implausible (clock = 3: a wall time ahead of the
// logger's own clock) to the readings view.
func migrateV3(ctx context.Context, c *sql.Conn) error {
	for _, q := range []string{
		`ALTER TABLE boot ADD COLUMN last_m INTEGER`,
		`UPDATE boot SET last_m = (SELECT max(m) FROM sample WHERE sample.boot = boot.id)`,
		`DROP VIEW readings`,
		viewReadingsV4,
	} {
		if _, err := c.ExecContext(ctx, q); err != nil {
			return err
		}
	}
	return nil
}

// viewReadingsV4 is the readings view of version 4.
const viewReadingsV4 = `
CREATE VIEW readings AS
SELECT s.id AS row,
       strftime('%Y-%m-%dT%H:%M:%fZ', coalesce(s.tc, s.t) / 1000.0, 'unixepoch') AS time,
       coalesce(s.tc, s.t) AS time_ms,
       d.name AS device,
       p.name AS point,
       r.v AS value,
       CASE s.clock WHEN 0 THEN 'good' WHEN 1 THEN 'clock_untrusted' WHEN 2 THEN 'clock_corrected' ELSE 'clock_implausible' END AS quality,
       s.t AS wall_ms,
       s.m AS mono_ns,
       b.boot AS boot,
       u.run AS run,
       s.seq AS seq
FROM reading r
JOIN sample s ON s.id = r.sample
JOIN point p ON p.id = r.point
JOIN device d ON d.id = p.device
JOIN boot b ON b.id = s.boot
JOIN run u ON u.id = s.run`

// migrateV2 makes sample ids AUTOINCREMENT: SQLite otherwise hands out
// max(id)+1, so after the newest rows were deleted (everything pruned) ids
// were used again within one generation, and the uplink's cursor and dedup
// key rely on ids that only grow. The table is rebuilt (SQLite cannot add
// AUTOINCREMENT to a table), and the sequence starts above every id the
// generation is known to have used: the samples left, the rows named by
// gap records, the upload cursor.
func migrateV2(ctx context.Context, c *sql.Conn) error {
	for _, q := range []string{
		`DROP VIEW readings`,
		`DROP VIEW failures`,
		`CREATE TABLE sample_new (
	id     INTEGER PRIMARY KEY AUTOINCREMENT,
	run    INTEGER NOT NULL,
	seq    INTEGER NOT NULL,
	device INTEGER NOT NULL,
	t      INTEGER NOT NULL,       -- wall time as stamped, Unix ms
	m      INTEGER NOT NULL,       -- CLOCK_BOOTTIME, ns
	boot   INTEGER NOT NULL,
	clock  INTEGER NOT NULL DEFAULT 0,
	tc     INTEGER,                -- corrected wall time, Unix ms
	UNIQUE (run, seq)
)`,
		`INSERT INTO sample_new(id, run, seq, device, t, m, boot, clock, tc)
			SELECT id, run, seq, device, t, m, boot, clock, tc FROM sample ORDER BY id`,
		`DROP TABLE sample`,
		`ALTER TABLE sample_new RENAME TO sample`,
		`DELETE FROM sqlite_sequence WHERE name = 'sample'`,
		`INSERT INTO sqlite_sequence(name, seq) SELECT 'sample', max(
			(SELECT coalesce(max(id), 0) FROM sample),
			(SELECT coalesce(max(max(coalesce(first_row, 0), coalesce(last_row, 0))), 0) FROM gap),
			(SELECT coalesce(max(first_row), 0) FROM boot),
			coalesce((SELECT value FROM meta WHERE key = 'uploaded'), 0))`,
		viewsV1,
	} {
		if _, err := c.ExecContext(ctx, q); err != nil {
			return err
		}
	}
	return nil
}

// migrateV1 adds run.produced: the highest seq the producer's heartbeats
// said the run made, so that the end of a run that died with messages in
// its outbox becomes a gap record.
func migrateV1(ctx context.Context, c *sql.Conn) error {
	_, err := c.ExecContext(ctx, `ALTER TABLE run ADD COLUMN produced INTEGER NOT NULL DEFAULT 0`)
	return err
}

// migrateV0 creates the schema in an empty database with a new
// generation id.
func migrateV0(ctx context.Context, c *sql.Conn) error {
	var n int
	if err := c.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_schema`).Scan(&n); err != nil {
		return err
	}
	if n != 0 {
		return fmt.Errorf("the file holds %d schema objects but no tinyscada version (user_version 0): not a tinyscada database", n)
	}
	if _, err := c.ExecContext(ctx, schemaV1); err != nil {
		return err
	}
	var g [16]byte
	if _, err := rand.Read(g[:]); err != nil {
		return err
	}
	_, err := c.ExecContext(ctx, `INSERT INTO meta(key, value) VALUES ('generation', ?), ('created', ?)`,
		hex.EncodeToString(g[:]), time.Now().UnixMilli())
	return err
}

// migrate brings the database on c to SchemaVersion. Errors: the file is
// newer than this program, not a tinyscada database, or a migration failed
// (the database then stays at the last version that completed).
func migrate(ctx context.Context, c *sql.Conn) error {
	var v int
	if err := c.QueryRowContext(ctx, `PRAGMA user_version`).Scan(&v); err != nil {
		return fmt.Errorf("read schema version: %w", err)
	}
	if v > len(migrations) {
		return fmt.Errorf("schema version %d is newer than this program's %d: use a newer tinyscada", v, len(migrations))
	}
	if v < 0 {
		return fmt.Errorf("schema version %d: not a tinyscada database", v)
	}
	if v == 0 {
		// Incremental auto-vacuum lets deletes give space back. In WAL
		// mode it takes a VACUUM (instant on an empty file) to change it.
		for _, q := range []string{`PRAGMA auto_vacuum = INCREMENTAL`, `VACUUM`} {
			if _, err := c.ExecContext(ctx, q); err != nil {
				return fmt.Errorf("set auto_vacuum: %w", err)
			}
		}
	}
	for ; v < len(migrations); v++ {
		if err := runMigration(ctx, c, v); err != nil {
			return fmt.Errorf("migrate schema from version %d to %d: %w", v, v+1, err)
		}
	}
	return nil
}

func runMigration(ctx context.Context, c *sql.Conn, v int) (err error) {
	if _, err := c.ExecContext(ctx, `BEGIN IMMEDIATE`); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_, _ = c.ExecContext(context.Background(), `ROLLBACK`)
		}
	}()
	if err := migrations[v](ctx, c); err != nil {
		return err
	}
	if _, err := c.ExecContext(ctx, fmt.Sprintf(`PRAGMA user_version = %d`, v+1)); err != nil {
		return err
	}
	_, err = c.ExecContext(ctx, `COMMIT`)
	return err
}
