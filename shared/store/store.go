// Package store is tinyscada's database of readings: the SQLite schema and
// its migrations, the writer that stores data messages with their gaps and
// judges their timestamps, the bounded-storage policy, and the read-only
// export. The logger role writes it; others (the export command) only read
// it. See docs/logger.md.
package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	sqlite "modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// Errors of a write that is worth retrying; test with errors.Is.
var (
	// ErrLocked: another process holds the database's write lock longer
	// than the busy timeout.
	ErrLocked = errors.New("database locked by another process")
	// ErrDiskFull: the disk (or the database's file size limit) is full.
	ErrDiskFull = errors.New("disk full")
	// ErrNoRoom (which wraps ErrDiskFull) from MakeRoom: the disk is full
	// and nothing may be deleted to make room (the database is below its
	// capacity and holds no uploaded rows), so new readings cannot be
	// kept until space returns.
	ErrNoRoom = fmt.Errorf("%w: no room for new readings and none may be deleted for them (the file system is full, the database below its capacity)", ErrDiskFull)
)

// Options configure a Store.
type Options struct {
	// Path is the database file; its directory is created if missing.
	Path string
	// Synchronous is "full" or "normal" (SQLite's synchronous pragma).
	Synchronous string
	// BusyTimeout is how long one attempt waits for a lock.
	BusyTimeout time.Duration
	// MaxSize caps the main file plus the write-ahead log, in bytes.
	MaxSize int64
	// Reserve is the size of the spare file (Path + ".reserve"); 0: none.
	Reserve int64
	// Retention: rows older than this, judged from the newest trusted
	// reading, are deleted; 0 keeps them.
	Retention time.Duration
	// ClockStep is the change of wall minus monotonic time that counts as
	// a clock step.
	ClockStep time.Duration
	// GapAfter is how long a hole in a run's sequence numbers may stay open
	// while the writer ingests before it is recorded as a gap.
	GapAfter time.Duration
	// MaxAhead bounds how far beyond what is known of a run a seq can be:
	// the producer's outbox size (poller.outbox). A seq above the run's
	// highest known seq (committed, stored, or what its heartbeats said it
	// made) plus MaxAhead cannot have been produced: it is rejected as
	// malformed, not believed. 0: 1<<20 (the largest outbox).
	MaxAhead uint64
	// Synced reports whether the kernel considers the clock synchronised;
	// nil: always.
	Synced func() bool
	// Now is the writer's own wall clock (for when gaps and events were
	// recorded); nil: time.Now.
	Now func() time.Time
	Log *slog.Logger
}

// Item is one received data message, decoded.
type Item struct {
	// Device is the last level(s) of the data topic.
	Device string
	Msg    Message
	// Err says why the message could not be decoded; Msg then holds what
	// could be read (Msg.HasID: its run and seq).
	Err error
}

// Ack is the acknowledgement of one producer run: every seq ≤ Seq is
// committed (stored, or recorded as a gap).
type Ack struct {
	Producer string
	Run      string
	Seq      uint64
}

// Result says what a Write did.
type Result struct {
	Samples    int // messages stored
	Readings   int // values stored
	Duplicates int // messages already stored (re-sent)
	Malformed  int // payloads that are not data messages
	// Deferred counts messages with a seq beyond MaxAhead of a run the
	// store knows nothing of yet (no row, no heartbeat): neither stored
	// nor acknowledged, so the producer sends them again, by when its
	// heartbeat says how far it got.
	Deferred int
	// Acks holds the acknowledgement of every run the batch touched.
	Acks []Ack
	// LastRow is the highest sample id handed out after the write.
	LastRow int64
}

// pointInfo is a known point. Its kind is fixed by its first value
// (kindUnknown while only failures of it were stored).
type pointInfo struct {
	id   int64
	kind string
}

// Point kinds (column point.kind).
const (
	kindNumber  = "number"
	kindBool    = "bool"
	kindUnknown = "unknown" // no value stored yet, only failures
)

// kindOf returns the point kind that values of k belong to.
func kindOf(k Kind) string {
	if k == KindBool {
		return kindBool
	}
	return kindNumber
}

type segment struct {
	m       int64 // mono ns of its first sample
	offset  int64 // wall - mono, ns
	trusted bool
}

type bootState struct {
	id       int64
	name     string
	firstRow int64
	lastT    int64 // newest trusted (or corrected) time, Unix ms
	lastM    int64 // newest monotonic time of any sample, ns
	segs     []segment
	good     int64 // offset of the latest trusted segment
	hasGood  bool
	judged   int64 // mono ns when an untrusted clock was last judged again
	dirty    bool
}

type runState struct {
	id        int64
	producer  string
	name      string
	committed uint64
	above     map[uint64]struct{} // stored seqs above committed
	// produced is the highest seq the producer said it made (its
	// heartbeats' data_seq), saved with the run; ended says another run
	// of the producer took over (or it said it was stopping), so seqs up
	// to produced that never arrive were lost with its outbox.
	produced      uint64
	producedSaved uint64
	top           uint64 // highest seq stored (or given up)
	ended         bool
	holeSince     time.Time
	dirty         bool
	touched       bool
}

// hole reports whether seqs of the run are missing: below a stored one, or
// below what an ended run said it produced.
func (r *runState) hole() bool {
	return len(r.above) > 0 || r.ended && r.produced > r.committed
}

// Store is the database, open for writing. It is not safe for concurrent use:
// one goroutine writes.
type Store struct {
	opts Options
	log  *slog.Logger
	db   *sql.DB
	conn *sql.Conn
	gen  string

	stSample  *sql.Stmt
	stReading map[int]*sql.Stmt // by rows per statement
	stBad     *sql.Stmt
	args      []any
	nrows     int

	devices map[string]int64
	points  map[int64]map[string]pointInfo
	reasons map[string]int64
	runs    map[string]map[string]*runState // producer → run → state
	// announced holds what producers' heartbeats said of runs that have
	// no row yet: producer → run → highest seq made.
	announced map[string]map[string]uint64
	boots     map[string]*bootState

	uploaded, uploadedSaved int64
	lastRow                 int64
	samples, readings       int64
	stallEnd                time.Time
	tight                   bool // the file system is nearly full
	walPages                int
	pageSize                int64
	reservePath             string
	nowMs                   int64 // the logger's trusted clock during a Write (loggerNow)
}

// cacheKiB is the logger connection's page cache (SQLite's default is 2000
// KiB). The logger appends: a commit touches the right edge of each B-tree
// and its path from the root, a few dozen pages; the cache beyond that
// holds pages no later write needs, as memory of a small device.
const cacheKiB = 512

// pageSize is the page size of a new database. A commit of the logger
// rewrites a handful of pages whatever it carries (the right edge of the
// sample, reading and index B-trees, the run and boot rows, the header and
// the pointer map when the file grows), and each goes whole into the
// write-ahead log and again to the file at checkpoint: with SQLite's 4096
// bytes that is 30 KiB or more for the few kilobytes of readings a small
// device stores in a batch. 1024 bytes make those pages a quarter of the
// size (docs/performance.md shows the flash writes of both).
const pageSize = 1024

// readingsPerStmt is how many readings one INSERT statement carries.
const readingsPerStmt = 64

// minSaneWall is 2020-01-01T00:00:00Z: a wall clock before it is wrong.
const minSaneWall = 1577836800000

// DSN returns the modernc.org/sqlite data source name for path.
func DSN(path string, busy time.Duration, sync string, readOnly bool) string {
	q := url.Values{}
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", busy.Milliseconds()))
	if readOnly {
		q.Set("mode", "ro")
	} else {
		// A new database takes its page size only while it is empty and
		// not yet in WAL mode; an existing one keeps its own. The driver
		// runs the _pragma list sorted by name, and _journal_mode after
		// it.
		q.Add("_pragma", fmt.Sprintf("page_size(%d)", pageSize))
		q.Set("_journal_mode", "WAL")
		q.Add("_pragma", "synchronous("+strings.ToUpper(sync)+")")
		q.Set("_txlock", "immediate")
	}
	return "file:" + (&url.URL{Path: path}).EscapedPath() + "?" + q.Encode()
}

// Open opens (creating if needed) and migrates the database, loads what
// the writer keeps in memory, and makes sure the spare file exists when the
// disk has room. Errors name the file; a database that is newer than this
// program or not a tinyscada database is refused. The Store keeps state in
// memory and so must be the database's only writer.
func Open(ctx context.Context, o Options) (*Store, error) {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Synchronous == "" {
		o.Synchronous = "full"
	}
	if o.ClockStep <= 0 {
		o.ClockStep = 2 * time.Second
	}
	if o.GapAfter <= 0 {
		o.GapAfter = 30 * time.Second
	}
	if o.MaxAhead == 0 {
		o.MaxAhead = 1 << 20
	}
	if o.MaxSize <= 0 {
		o.MaxSize = 1 << 40
	}
	if err := os.MkdirAll(filepath.Dir(o.Path), 0o755); err != nil {
		return nil, fmt.Errorf("store: database %s: %w", o.Path, err)
	}
	s, err := open(ctx, o)
	if err != nil {
		return nil, fmt.Errorf("store: database %s: %w", o.Path, err)
	}
	return s, nil
}

func open(ctx context.Context, o Options) (_ *Store, err error) {
	db, err := sql.Open("sqlite", DSN(o.Path, o.BusyTimeout, o.Synchronous, false))
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(1)
	s := &Store{opts: o, log: o.Log, db: db, stReading: map[int]*sql.Stmt{}, reservePath: o.Path + ".reserve"}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	if s.conn, err = db.Conn(ctx); err != nil {
		return nil, err
	}
	var mode string
	if err := s.conn.QueryRowContext(ctx, `PRAGMA journal_mode`).Scan(&mode); err != nil {
		return nil, err
	}
	if mode != "wal" {
		return nil, fmt.Errorf("journal_mode is %q, not wal", mode)
	}
	if err := migrate(ctx, s.conn); err != nil {
		return nil, err
	}
	// A bounded write-ahead log: a checkpoint every 1/32 of the space the
	// database may take (16 to 1000 pages), and the file cut back after.
	budget := o.MaxSize
	var st unix.Statfs_t
	if unix.Statfs(filepath.Dir(o.Path), &st) == nil {
		budget = min(budget, int64(st.Blocks)*int64(st.Bsize))
	}
	if err := s.conn.QueryRowContext(ctx, `PRAGMA page_size`).Scan(&s.pageSize); err != nil {
		return nil, err
	}
	walBytes := min(max(budget/32, 64<<10), 4000<<10)
	s.walPages = int(walBytes / s.pageSize)
	for _, p := range []string{
		fmt.Sprintf(`PRAGMA wal_autocheckpoint = %d`, s.walPages),
		fmt.Sprintf(`PRAGMA journal_size_limit = %d`, walBytes),
		`PRAGMA foreign_keys = OFF`,
		fmt.Sprintf(`PRAGMA cache_size = -%d`, cacheKiB),
	} {
		if _, err := s.conn.ExecContext(ctx, p); err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
	}
	if err := s.conn.QueryRowContext(ctx, `SELECT value FROM meta WHERE key = 'generation'`).Scan(&s.gen); err != nil {
		return nil, fmt.Errorf("read generation: %w", err)
	}
	if s.stSample, err = s.conn.PrepareContext(ctx,
		`INSERT OR IGNORE INTO sample(run, seq, device, t, m, boot, clock, tc) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`); err != nil {
		return nil, err
	}
	if s.stBad, err = s.conn.PrepareContext(ctx, `INSERT OR REPLACE INTO bad(sample, point, reason) VALUES (?, ?, ?)`); err != nil {
		return nil, err
	}
	s.args = make([]any, 0, 2*readingsPerStmt)
	if err := s.load(ctx); err != nil {
		return nil, err
	}
	if err := s.conn.QueryRowContext(ctx, `SELECT count(*) FROM sample`).Scan(&s.samples); err != nil {
		return nil, err
	}
	if err := s.conn.QueryRowContext(ctx, `SELECT count(*) FROM reading`).Scan(&s.readings); err != nil {
		return nil, err
	}
	s.EnsureReserve()
	return s, nil
}

// Close closes the database. It is safe to call more than once.
func (s *Store) Close() error {
	var errs []error
	for _, st := range s.stReading {
		errs = append(errs, st.Close())
	}
	s.stReading = map[int]*sql.Stmt{}
	for _, st := range []**sql.Stmt{&s.stSample, &s.stBad} {
		if *st != nil {
			errs = append(errs, (*st).Close())
			*st = nil
		}
	}
	if s.conn != nil {
		errs = append(errs, s.conn.Close())
		s.conn = nil
	}
	if s.db != nil {
		errs = append(errs, s.db.Close())
		s.db = nil
	}
	return errors.Join(errs...)
}

// Generation returns the id the database was created with: a row id is
// only meaningful together with it.
func (s *Store) Generation() string { return s.gen }

// LastRow returns the highest sample id handed out in this generation
// (its row may have been deleted since): ids only grow.
func (s *Store) LastRow() int64 { return s.lastRow }

// load (re)reads the state the writer keeps in memory. It is called at
// open and after every failed transaction, which may have left the memory
// ahead of the database.
func (s *Store) load(ctx context.Context) error {
	s.devices = map[string]int64{}
	s.points = map[int64]map[string]pointInfo{}
	s.reasons = map[string]int64{}
	s.boots = map[string]*bootState{}
	oldRuns := s.runs
	s.runs = map[string]map[string]*runState{}
	s.nrows = 0
	s.args = s.args[:0]

	rows, err := s.conn.QueryContext(ctx, `SELECT id, name FROM device`)
	if err != nil {
		return err
	}
	for rows.Next() {
		var id int64
		var name string
		if err := rows.Scan(&id, &name); err != nil {
			rows.Close()
			return err
		}
		s.devices[name] = id
	}
	if err := closeRows(rows); err != nil {
		return err
	}
	if rows, err = s.conn.QueryContext(ctx, `SELECT id, device, name, kind FROM point`); err != nil {
		return err
	}
	for rows.Next() {
		var id, dev int64
		var name, kind string
		if err := rows.Scan(&id, &dev, &name, &kind); err != nil {
			rows.Close()
			return err
		}
		if s.points[dev] == nil {
			s.points[dev] = map[string]pointInfo{}
		}
		s.points[dev][name] = pointInfo{id: id, kind: kind}
	}
	if err := closeRows(rows); err != nil {
		return err
	}
	if rows, err = s.conn.QueryContext(ctx, `SELECT id, text FROM reason`); err != nil {
		return err
	}
	for rows.Next() {
		var id int64
		var text string
		if err := rows.Scan(&id, &text); err != nil {
			rows.Close()
			return err
		}
		s.reasons[text] = id
	}
	if err := closeRows(rows); err != nil {
		return err
	}
	if rows, err = s.conn.QueryContext(ctx, `SELECT id, boot, coalesce(first_row, 0), coalesce(last_t, 0), coalesce(last_m, 0) FROM boot`); err != nil {
		return err
	}
	byID := map[int64]*bootState{}
	for rows.Next() {
		b := &bootState{}
		if err := rows.Scan(&b.id, &b.name, &b.firstRow, &b.lastT, &b.lastM); err != nil {
			rows.Close()
			return err
		}
		s.boots[b.name] = b
		byID[b.id] = b
	}
	if err := closeRows(rows); err != nil {
		return err
	}
	if rows, err = s.conn.QueryContext(ctx, `SELECT boot, m, offset_ns, trusted FROM clock ORDER BY boot, m, id`); err != nil {
		return err
	}
	for rows.Next() {
		var boot int64
		var sg segment
		if err := rows.Scan(&boot, &sg.m, &sg.offset, &sg.trusted); err != nil {
			rows.Close()
			return err
		}
		if b := byID[boot]; b != nil {
			b.segs = append(b.segs, sg)
			if sg.trusted {
				b.good, b.hasGood = sg.offset, true
			}
		}
	}
	if err := closeRows(rows); err != nil {
		return err
	}
	if rows, err = s.conn.QueryContext(ctx, `SELECT id, producer, run, committed, produced FROM run`); err != nil {
		return err
	}
	var runs []*runState
	for rows.Next() {
		r := &runState{}
		if err := rows.Scan(&r.id, &r.producer, &r.name, &r.committed, &r.produced); err != nil {
			rows.Close()
			return err
		}
		runs = append(runs, r)
	}
	if err := closeRows(rows); err != nil {
		return err
	}
	now := time.Now()
	for _, r := range runs {
		if s.runs[r.producer] == nil {
			s.runs[r.producer] = map[string]*runState{}
		}
		s.runs[r.producer][r.name] = r
		r.holeSince = now
		r.producedSaved = r.produced
		r.produced = max(r.produced, s.announced[r.producer][r.name])
		if old := oldRuns[r.producer][r.name]; old != nil {
			r.holeSince, r.ended = old.holeSince, old.ended
			r.produced = max(r.produced, old.produced)
		}
		rows, err := s.conn.QueryContext(ctx, `SELECT seq FROM sample WHERE run = ?1 AND seq > ?2
			UNION SELECT last_seq FROM gap WHERE run = ?1 AND kind = 'malformed' AND last_seq > ?2`, r.id, int64(r.committed))
		if err != nil {
			return err
		}
		for rows.Next() {
			var seq int64
			if err := rows.Scan(&seq); err != nil {
				rows.Close()
				return err
			}
			if r.above == nil {
				r.above = map[uint64]struct{}{}
			}
			r.above[uint64(seq)] = struct{}{}
			r.top = max(r.top, uint64(seq))
		}
		if err := closeRows(rows); err != nil {
			return err
		}
	}
	// The last id handed out, even when its row was deleted since (ids
	// are AUTOINCREMENT: they are never used again in a generation).
	if err := s.conn.QueryRowContext(ctx, `SELECT max((SELECT coalesce(max(id), 0) FROM sample),
		coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'sample'), 0))`).Scan(&s.lastRow); err != nil {
		return err
	}
	var up sql.NullInt64
	err = s.conn.QueryRowContext(ctx, `SELECT value FROM meta WHERE key = 'uploaded'`).Scan(&up)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return err
	}
	s.uploadedSaved = up.Int64
	s.uploaded = max(s.uploaded, up.Int64)
	return nil
}

func closeRows(rows *sql.Rows) error {
	err := rows.Err()
	if cerr := rows.Close(); err == nil {
		err = cerr
	}
	return err
}

// classify wraps err with ErrLocked or ErrDiskFull when it is one of them.
func (s *Store) classify(err error) error {
	var se *sqlite.Error
	if !errors.As(err, &se) {
		return err
	}
	switch se.Code() & 0xff {
	case sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED:
		return fmt.Errorf("%w: %w", ErrLocked, err)
	case sqlite3.SQLITE_FULL:
		return fmt.Errorf("%w: %w", ErrDiskFull, err)
	case sqlite3.SQLITE_IOERR:
		// A failed write of the WAL index or an fsync on a full disk
		// comes back as an I/O error.
		if free, ok := s.diskFree(); ok && free < 64<<10 {
			return fmt.Errorf("%w: %w", ErrDiskFull, err)
		}
	}
	return err
}

// diskFree returns the bytes available to us on the database's file system.
func (s *Store) diskFree() (int64, bool) {
	var st unix.Statfs_t
	if err := unix.Statfs(filepath.Dir(s.opts.Path), &st); err != nil {
		return 0, false
	}
	return int64(st.Bavail) * int64(st.Bsize), true
}

func (s *Store) exec(ctx context.Context, q string, args ...any) (sql.Result, error) {
	return s.conn.ExecContext(ctx, q, args...)
}

// tx runs fn inside BEGIN IMMEDIATE ... COMMIT. On any failure it rolls
// back and reloads the in-memory state, and returns the error classified.
func (s *Store) tx(ctx context.Context, fn func() error) error {
	if s.tight {
		// On a nearly full disk, a complete checkpoint first lets the
		// transaction reuse the write-ahead log rather than grow it.
		s.checkpoint(ctx, "PASSIVE")
	}
	if _, err := s.exec(ctx, `BEGIN IMMEDIATE`); err != nil {
		return s.classify(err)
	}
	err := fn()
	if err == nil {
		_, err = s.exec(ctx, `COMMIT`)
	}
	if err != nil {
		_, _ = s.exec(context.Background(), `ROLLBACK`)
		if lerr := s.load(context.Background()); lerr != nil {
			return fmt.Errorf("%w (and reloading the state failed: %v)", s.classify(err), lerr)
		}
		return s.classify(err)
	}
	return nil
}

// Write stores a batch of decoded data messages of producer (the role
// that published them) in one transaction. Items already stored (same
// producer run and seq) are skipped; malformed ones are
// counted, and when their run and seq could be read they are recorded as
// a gap of kind 'malformed' so that the run's acknowledgement can move
// past them. After the commit, Result.Acks holds for every run the batch
// touched the highest contiguous committed seq. Errors wrap ErrLocked or
// ErrDiskFull when retrying later can succeed (nothing was written then);
// any other error is a broken database.
func (s *Store) Write(ctx context.Context, producer string, items []Item) (Result, error) {
	var res Result
	var touched []*runState
	s.nowMs = s.loggerNow()
	err := s.tx(ctx, func() error {
		res, touched = Result{}, touched[:0]
		for i := range items {
			it := &items[i]
			if it.Err != nil {
				res.Malformed++
				if !it.Msg.HasID {
					continue
				}
			}
			if limit, known := s.seqLimit(producer, it.Msg.Run); it.Msg.Seq > limit {
				if !known {
					res.Deferred++
					continue
				}
				if it.Err == nil {
					res.Malformed++
				}
				r, err := s.recordBeyond(ctx, producer, it, limit)
				if err != nil {
					return err
				}
				if !r.touched {
					r.touched = true
					touched = append(touched, r)
				}
				continue
			}
			r, err := s.run(ctx, producer, it.Msg.Run)
			if err != nil {
				return err
			}
			if !r.touched {
				r.touched = true
				touched = append(touched, r)
			}
			if r.has(it.Msg.Seq) {
				res.Duplicates++
				continue
			}
			if it.Err != nil {
				if err := s.recordMalformed(ctx, r, it); err != nil {
					return err
				}
			} else {
				n, err := s.insert(ctx, r, it)
				if err != nil {
					return err
				}
				if n < 0 {
					res.Duplicates++
					continue
				}
				res.Samples++
				res.Readings += n
			}
			r.store(it.Msg.Seq)
		}
		if err := s.flushReadings(ctx); err != nil {
			return err
		}
		return s.saveState(ctx, touched)
	})
	for _, r := range touched {
		r.touched = false
	}
	if err != nil {
		return Result{}, err
	}
	s.samples += int64(res.Samples)
	s.readings += int64(res.Readings)
	for _, r := range touched {
		if r.committed > 0 {
			res.Acks = append(res.Acks, Ack{Producer: r.producer, Run: r.name, Seq: r.committed})
		}
	}
	res.LastRow = s.lastRow
	return res, nil
}

// seqLimit returns the highest seq that run of producer can have made by
// now (see Options.MaxAhead), and whether anything is known of the run (a
// stored or given-up seq, or a heartbeat's data_seq).
func (s *Store) seqLimit(producer string, run []byte) (uint64, bool) {
	var high uint64
	if r := s.runs[producer][string(run)]; r != nil {
		high = max(r.committed, r.top, r.produced)
	}
	high = max(high, s.announced[producer][string(run)])
	return high + s.opts.MaxAhead, high > 0
}

// recordBeyond records a message whose seq is beyond what its run can
// have made (limit) as a malformed gap without a seq, so that the
// absurd seq neither opens a hole nor moves the acknowledgement.
func (s *Store) recordBeyond(ctx context.Context, producer string, it *Item, limit uint64) (*runState, error) {
	r, err := s.run(ctx, producer, it.Msg.Run)
	if err != nil {
		return nil, err
	}
	reason := fmt.Sprintf("malformed message on device %q: seq %d is beyond what run %s can have made (at most %d: its highest known seq and the outbox of %d)",
		it.Device, it.Msg.Seq, r.name, limit, s.opts.MaxAhead)
	_, err = s.exec(ctx, `INSERT INTO gap(kind, run, first_row, samples, at, reason) VALUES ('malformed', ?, ?, 1, ?, ?)`,
		r.id, s.lastRow, s.opts.Now().UnixMilli(), strings.ToValidUTF8(reason, "?"))
	return r, err
}

// has reports whether seq of the run is committed.
func (r *runState) has(seq uint64) bool {
	if seq <= r.committed {
		return true
	}
	_, ok := r.above[seq]
	return ok
}

// store marks seq as committed (within the transaction) and advances the
// contiguous mark.
func (r *runState) store(seq uint64) {
	r.dirty = true
	r.top = max(r.top, seq)
	if seq != r.committed+1 {
		if r.above == nil {
			r.above = map[uint64]struct{}{}
		}
		if len(r.above) == 0 {
			r.holeSince = time.Now()
		}
		r.above[seq] = struct{}{}
		return
	}
	r.committed = seq
	r.advance()
}

// advance moves the contiguous mark over stored seqs. A hole that remains
// is timed from now.
func (r *runState) advance() {
	for len(r.above) > 0 {
		if _, ok := r.above[r.committed+1]; !ok {
			break
		}
		delete(r.above, r.committed+1)
		r.committed++
	}
	r.holeSince = time.Now()
}

// saveState writes the runs' marks, the boots' newest times and the
// uploaded cursor.
func (s *Store) saveState(ctx context.Context, runs []*runState) error {
	for _, r := range runs {
		if !r.dirty && r.produced == r.producedSaved {
			continue
		}
		if _, err := s.exec(ctx, `UPDATE run SET committed = ?, produced = ? WHERE id = ?`, int64(r.committed), int64(r.produced), r.id); err != nil {
			return err
		}
		r.dirty, r.producedSaved = false, r.produced
	}
	for _, b := range s.boots {
		if !b.dirty {
			continue
		}
		if _, err := s.exec(ctx, `UPDATE boot SET last_t = ?, last_m = ?, first_row = ? WHERE id = ?`, b.lastT, b.lastM, b.firstRow, b.id); err != nil {
			return err
		}
		b.dirty = false
	}
	if s.uploaded != s.uploadedSaved {
		if _, err := s.exec(ctx, `INSERT OR REPLACE INTO meta(key, value) VALUES ('uploaded', ?)`, s.uploaded); err != nil {
			return err
		}
		s.uploadedSaved = s.uploaded
	}
	return nil
}

func (s *Store) run(ctx context.Context, producer string, name []byte) (*runState, error) {
	if r := s.runs[producer][string(name)]; r != nil {
		return r, nil
	}
	res, err := s.exec(ctx, `INSERT INTO run(producer, run) VALUES (?, ?)`, producer, string(name))
	if err != nil {
		return nil, err
	}
	id, err := res.LastInsertId()
	if err != nil {
		return nil, err
	}
	r := &runState{id: id, producer: producer, name: string(name), holeSince: time.Now()}
	r.produced = s.announced[producer][r.name]
	if s.runs[producer] == nil {
		s.runs[producer] = map[string]*runState{}
	}
	s.runs[producer][r.name] = r
	return r, nil
}

func (s *Store) device(ctx context.Context, name string) (int64, error) {
	if id, ok := s.devices[name]; ok {
		return id, nil
	}
	res, err := s.exec(ctx, `INSERT INTO device(name) VALUES (?)`, name)
	if err != nil {
		return 0, err
	}
	id, err := res.LastInsertId()
	if err != nil {
		return 0, err
	}
	s.devices[name] = id
	s.points[id] = map[string]pointInfo{}
	return id, nil
}

// point returns device dev's point name. A point not seen before gets
// kind (kindUnknown when it is created for a failure); a point of kind
// unknown takes the kind of its first value. The kind never changes after
// that: it is what the point's stored values mean (an integer 1 of a
// number point is not a true).
func (s *Store) point(ctx context.Context, dev int64, name []byte, kind string) (pointInfo, error) {
	pts := s.points[dev]
	if p, ok := pts[string(name)]; ok {
		if p.kind == kindUnknown && kind != kindUnknown {
			if _, err := s.exec(ctx, `UPDATE point SET kind = ? WHERE id = ?`, kind, p.id); err != nil {
				return pointInfo{}, err
			}
			p.kind = kind
			pts[string(name)] = p
		}
		return p, nil
	}
	res, err := s.exec(ctx, `INSERT INTO point(device, name, kind) VALUES (?, ?, ?)`, dev, string(name), kind)
	if err != nil {
		return pointInfo{}, err
	}
	id, err := res.LastInsertId()
	if err != nil {
		return pointInfo{}, err
	}
	if id > MaxPointID {
		// A reading's row id holds the point id in its low bits. The
		// transaction is rolled back with the point.
		return pointInfo{}, fmt.Errorf("point %q: id %d is above %d, the most points a database holds", name, id, MaxPointID)
	}
	p := pointInfo{id: id, kind: kind}
	pts[string(name)] = p
	return p, nil
}

// wrongKind is the failure stored instead of a value v of another kind
// than its point's.
func wrongKind(v *Value, kind string) []byte {
	val := "false"
	switch {
	case v.Kind == KindBool && v.I != 0:
		val = "true"
	case v.Kind == KindInt:
		val = strconv.FormatInt(v.I, 10)
	case v.Kind == KindFloat:
		val = strconv.FormatFloat(v.F, 'g', -1, 64)
	case v.Kind == KindText:
		val = string(v.Text)
	}
	return []byte(fmt.Sprintf("value %s is a %s, but the point holds %ss (a point's kind is fixed by its first value)",
		val, kindOf(v.Kind), kind))
}

func (s *Store) reason(ctx context.Context, text []byte) (int64, error) {
	if id, ok := s.reasons[string(text)]; ok {
		return id, nil
	}
	res, err := s.exec(ctx, `INSERT INTO reason(text) VALUES (?)`, string(text))
	if err != nil {
		return 0, err
	}
	id, err := res.LastInsertId()
	if err != nil {
		return 0, err
	}
	s.reasons[string(text)] = id
	return id, nil
}

func (s *Store) boot(ctx context.Context, name []byte) (*bootState, error) {
	if b := s.boots[string(name)]; b != nil {
		return b, nil
	}
	res, err := s.exec(ctx, `INSERT INTO boot(boot) VALUES (?)`, string(name))
	if err != nil {
		return nil, err
	}
	id, err := res.LastInsertId()
	if err != nil {
		return nil, err
	}
	b := &bootState{id: id, name: string(name)}
	s.boots[b.name] = b
	return b, nil
}

// insert stores one decoded message and returns how many readings it
// added, or -1 if the sample was there already.
func (s *Store) insert(ctx context.Context, r *runState, it *Item) (int, error) {
	m := &it.Msg
	dev, err := s.device(ctx, it.Device)
	if err != nil {
		return 0, err
	}
	b, err := s.boot(ctx, m.Boot)
	if err != nil {
		return 0, err
	}
	clk, tc, err := s.clockOf(ctx, b, m)
	if err != nil {
		return 0, err
	}
	var tcArg any
	if clk == clockCorrected || clk == clockImplausible && tc != 0 {
		tcArg = tc
	}
	res, err := s.stSample.ExecContext(ctx, r.id, int64(m.Seq), dev, m.Wall, m.Mono, b.id, clk, tcArg)
	if err != nil {
		return 0, err
	}
	if n, err := res.RowsAffected(); err != nil {
		return 0, err
	} else if n == 0 {
		return -1, nil
	}
	id, err := res.LastInsertId()
	if err != nil {
		return 0, err
	}
	s.lastRow = max(s.lastRow, id)
	if b.firstRow == 0 {
		b.firstRow, b.dirty = id, true
	}
	if m.Mono > b.lastM {
		b.lastM, b.dirty = m.Mono, true
	}
	switch clk {
	case clockTrusted:
		if m.Wall > b.lastT {
			b.lastT, b.dirty = m.Wall, true
		}
	case clockCorrected:
		if tc > b.lastT {
			b.lastT, b.dirty = tc, true
		}
	}
	var sid any = id
	stored := 0
	for i := range m.Values {
		v := &m.Values[i]
		p, err := s.point(ctx, dev, v.Name, kindOf(v.Kind))
		if err != nil {
			return 0, err
		}
		if p.kind != kindOf(v.Kind) {
			// Never retype the point's history: the value is a failure.
			if err := s.storeBad(ctx, sid, p.id, wrongKind(v, p.kind)); err != nil {
				return 0, err
			}
			continue
		}
		rid := ReadingID(id, p.id)
		stored++
		var val any
		switch v.Kind {
		case KindInt, KindBool:
			val = v.I
		case KindFloat:
			val = v.F
		case KindText:
			val = string(v.Text)
		}
		s.args = append(s.args, rid, val)
		s.nrows++
		if s.nrows == readingsPerStmt {
			if err := s.flushReadings(ctx); err != nil {
				return 0, err
			}
		}
	}
	for i := range m.Bad {
		bd := &m.Bad[i]
		p, err := s.point(ctx, dev, bd.Name, kindUnknown)
		if err != nil {
			return 0, err
		}
		if err := s.storeBad(ctx, sid, p.id, bd.Why); err != nil {
			return 0, err
		}
	}
	return stored, nil
}

// storeBad stores a failure of point pid in sample sid.
func (s *Store) storeBad(ctx context.Context, sid any, pid int64, why []byte) error {
	rid, err := s.reason(ctx, why)
	if err != nil {
		return err
	}
	_, err = s.stBad.ExecContext(ctx, sid, pid, rid)
	return err
}

func (s *Store) flushReadings(ctx context.Context) error {
	if s.nrows == 0 {
		return nil
	}
	st := s.stReading[s.nrows]
	if st == nil {
		var b strings.Builder
		b.WriteString(`INSERT OR REPLACE INTO reading(id, v) VALUES `)
		for i := range s.nrows {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString("(?,?)")
		}
		var err error
		if st, err = s.conn.PrepareContext(ctx, b.String()); err != nil {
			return err
		}
		s.stReading[s.nrows] = st
	}
	_, err := st.ExecContext(ctx, s.args...)
	clear(s.args)
	s.args, s.nrows = s.args[:0], 0
	return err
}

// recordMalformed records a message that has a run and seq but could not
// be decoded otherwise.
func (s *Store) recordMalformed(ctx context.Context, r *runState, it *Item) error {
	why := it.Err.Error()
	if len(why) > 200 {
		why = why[:200]
	}
	// %q: the device comes from the topic and may hold anything.
	reason := strings.ToValidUTF8(fmt.Sprintf("malformed message on device %q: %s", it.Device, why), "?")
	_, err := s.exec(ctx, `INSERT INTO gap(kind, run, first_seq, last_seq, samples, at, reason) VALUES ('malformed', ?, ?, ?, 1, ?, ?)`,
		r.id, int64(it.Msg.Seq), int64(it.Msg.Seq), s.opts.Now().UnixMilli(), reason)
	return err
}

// SetUploaded records the uplink's cursor: every sample with an id up to
// row has been delivered upstream. It is saved with the next write; a
// smaller value than known is ignored.
func (s *Store) SetUploaded(row int64) {
	if row > s.uploaded {
		s.uploaded = row
	}
}

// PendingAcks returns the acknowledgement of the newest run of every
// producer (to publish again after a reconnect).
func (s *Store) PendingAcks() []Ack {
	var acks []Ack
	for prod, runs := range s.runs {
		var best *runState
		for _, r := range runs {
			if best == nil || r.id > best.id {
				best = r
			}
		}
		if best != nil && best.committed > 0 {
			acks = append(acks, Ack{Producer: prod, Run: best.name, Seq: best.committed})
		}
	}
	return acks
}

// Produced notes that producer's run has made seqs up to seq (its
// heartbeat's data_seq). It is kept in memory and saved with the run's next
// transaction, so that what a run made is known even after a restart of the
// logger or a power cut.
func (s *Store) Produced(producer, run string, seq uint64) {
	if r := s.runs[producer][run]; r != nil {
		if seq > r.produced {
			// A hole this opens (an ended run said it made more) is
			// timed from now, like any other.
			if !r.hole() {
				r.holeSince = time.Now()
			}
			r.produced = seq
		}
		delete(s.announced[producer], run)
		return
	}
	if s.announced == nil {
		s.announced = map[string]map[string]uint64{}
	}
	if s.announced[producer] == nil {
		s.announced[producer] = map[string]uint64{}
	}
	s.announced[producer][run] = max(s.announced[producer][run], seq)
}

// EndRuns says that every run of producer other than live has ended (live
// is the run its heartbeats come from now; "" when it said it is
// stopping): whatever of those runs' produced seqs never arrives is lost
// with the dead process's outbox and becomes a gap record after GapAfter
// (CloseGaps). A run known only from heartbeats gets its row now. Errors as
// for Write; the call can be repeated.
func (s *Store) EndRuns(ctx context.Context, producer, live string) error {
	now := time.Now()
	for name, r := range s.runs[producer] {
		if name == live || r.ended {
			continue
		}
		wasHole := r.hole()
		r.ended = true
		if !wasHole && r.hole() {
			r.holeSince = now // the end it never sent is timed from now
		}
	}
	var unknown []string
	for name, seq := range s.announced[producer] {
		if name != live && seq > 0 && s.runs[producer][name] == nil {
			unknown = append(unknown, name)
		}
	}
	if len(unknown) == 0 {
		return nil
	}
	var made []*runState
	err := s.tx(ctx, func() error {
		made = made[:0]
		for _, name := range unknown {
			r, err := s.run(ctx, producer, []byte(name))
			if err != nil {
				return err
			}
			r.ended = true
			made = append(made, r)
		}
		return s.saveState(ctx, made)
	})
	if err != nil {
		return err
	}
	for _, name := range unknown {
		delete(s.announced[producer], name)
	}
	return nil
}

// Stalled tells the store that writes were impossible until now (locked
// database, full disk), so that holes in sequence numbers are not judged
// by time the logger could not ingest.
func (s *Store) Stalled(until time.Time) { s.stallEnd = until }

// CloseGaps records as gaps the holes in sequence numbers that have been
// open for GapAfter of ingest time, and moves those runs' marks past them.
// It returns the acknowledgements that moved. Errors as for Write.
func (s *Store) CloseGaps(ctx context.Context, now time.Time) ([]Ack, error) {
	var due []*runState
	for _, runs := range s.runs {
		for _, r := range runs {
			if !r.hole() {
				continue
			}
			since := r.holeSince
			if s.stallEnd.After(since) {
				since = s.stallEnd
			}
			if now.Sub(since) >= s.opts.GapAfter {
				due = append(due, r)
			}
		}
	}
	if len(due) == 0 {
		return nil, nil
	}
	var acks []Ack
	err := s.tx(ctx, func() error {
		acks = acks[:0]
		for _, r := range due {
			for len(r.above) > 0 {
				next := uint64(0)
				for seq := range r.above {
					if next == 0 || seq < next {
						next = seq
					}
				}
				if err := s.recordSeqGap(ctx, r, r.committed+1, next-1, false); err != nil {
					return err
				}
				r.committed = next - 1
				r.advance()
			}
			if r.ended && r.produced > r.committed {
				if err := s.recordSeqGap(ctx, r, r.committed+1, r.produced, true); err != nil {
					return err
				}
				r.committed = r.produced
			}
			r.dirty = true
			acks = append(acks, Ack{Producer: r.producer, Run: r.name, Seq: r.committed})
		}
		return s.saveState(ctx, due)
	})
	if err != nil {
		return nil, err
	}
	return acks, nil
}

// recordSeqGap records seqs first..last of r as missing; tail says they are
// the end of an ended run (no later seq of it was stored).
func (s *Store) recordSeqGap(ctx context.Context, r *runState, first, last uint64, tail bool) error {
	var before, after sql.NullInt64
	var row sql.NullInt64
	if first > 1 {
		err := s.conn.QueryRowContext(ctx, `SELECT id, coalesce(tc, t) FROM sample WHERE run = ? AND seq = ?`, r.id, int64(first-1)).Scan(&row, &before)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return err
		}
	}
	err := s.conn.QueryRowContext(ctx, `SELECT coalesce(tc, t) FROM sample WHERE run = ? AND seq = ?`, r.id, int64(last+1)).Scan(&after)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return err
	}
	n := last - first + 1
	reason := fmt.Sprintf("%d message(s) of %s run %s never arrived", n, r.producer, r.name)
	if tail {
		reason += fmt.Sprintf(": the run ended (its heartbeats said it had made %d) with them unacknowledged", r.produced)
	}
	s.log.Warn("gap in a producer's messages: they never arrived", "producer", r.producer, "run", r.name,
		"first_seq", first, "last_seq", last, "messages", n, "end_of_run", tail)
	_, err = s.exec(ctx, `INSERT INTO gap(kind, run, first_seq, last_seq, first_row, samples, t_from, t_to, at, reason)
		VALUES ('seq', ?, ?, ?, ?, ?, ?, ?, ?, ?)`, r.id, int64(first), int64(last), row, int64(n), before, after,
		s.opts.Now().UnixMilli(), reason)
	return err
}

// Size is the space the database takes.
type Size struct {
	File, WAL int64 // bytes of the main file and the write-ahead log
	Used      int64 // bytes of pages in use (the file less its free pages)
}

// Size measures the database.
func (s *Store) Size(ctx context.Context) (Size, error) {
	var z Size
	if fi, err := os.Stat(s.opts.Path); err == nil {
		z.File = fi.Size()
	}
	if fi, err := os.Stat(s.opts.Path + "-wal"); err == nil {
		z.WAL = fi.Size()
	}
	var pages, free int64
	if err := s.conn.QueryRowContext(ctx, `PRAGMA page_count`).Scan(&pages); err != nil {
		return z, err
	}
	if err := s.conn.QueryRowContext(ctx, `PRAGMA freelist_count`).Scan(&free); err != nil {
		return z, err
	}
	z.Used = (pages - free) * s.pageSize
	return z, nil
}

// Counts returns the samples and readings stored.
func (s *Store) Counts() (samples, readings int64) { return s.samples, s.readings }

// Check runs PRAGMA integrity_check and returns nil when it says "ok".
func (s *Store) Check(ctx context.Context) error {
	return IntegrityCheck(ctx, s.conn)
}

type queryer interface {
	QueryContext(ctx context.Context, q string, args ...any) (*sql.Rows, error)
}

// IntegrityCheck runs PRAGMA integrity_check on q (a database, such as one
// OpenReadOnly opened, or a connection) and returns nil when it says "ok",
// else an error with what it found.
func IntegrityCheck(ctx context.Context, q queryer) error {
	rows, err := q.QueryContext(ctx, `PRAGMA integrity_check`)
	if err != nil {
		return err
	}
	var msgs []string
	for rows.Next() {
		var m string
		if err := rows.Scan(&m); err != nil {
			rows.Close()
			return err
		}
		msgs = append(msgs, m)
	}
	if err := closeRows(rows); err != nil {
		return err
	}
	if len(msgs) == 1 && msgs[0] == "ok" {
		return nil
	}
	return fmt.Errorf("integrity_check: %s", strings.Join(msgs, "; "))
}
