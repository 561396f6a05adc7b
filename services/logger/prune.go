package logger

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"time"
)

// Bounded storage
//
// The database may take Budget bytes: max_db_size, or less when the file
// system has less room (what the database takes now plus the free space,
// less a margin and the spare file). Maintain deletes the oldest samples
// once the pages in use plus a full write-ahead log pass 90% of the
// budget, down to 80%. Row ids grow with time, so the oldest rows are the
// ones the uplink delivered first (ids up to its cursor): they go first and
// silently. Rows beyond the cursor go only when nothing uploaded is left,
// and a gap record of kind 'dropped' names them (first and last row, how
// many samples and readings, their time span, why). Deletes run in chunks
// no bigger than half the write-ahead log, each in its own transaction,
// then incremental vacuum and a TRUNCATE checkpoint give the space back to
// the file system.
//
// When a write fails because the disk is full, MakeRoom deletes the spare
// file (so that the deletes themselves have room) and shrinks the database
// below what it takes now; the logger retries the batch, and recreates the
// spare file once the disk has room again.

// EnsureReserve creates the spare file (Path + ".reserve", Reserve bytes of
// zeros, fsynced) unless it exists or the disk has less than twice its size
// free. It reports whether the spare file is in place (true when Reserve is
// 0).
func (s *Store) EnsureReserve() bool {
	n := s.opts.Reserve
	if n <= 0 {
		return true
	}
	if fi, err := os.Stat(s.reservePath); err == nil && fi.Size() >= n {
		return true
	}
	if free, ok := s.diskFree(); ok && free < 2*n {
		return false
	}
	f, err := os.OpenFile(s.reservePath, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return false
	}
	buf := make([]byte, 64<<10)
	for left := n; left > 0 && err == nil; left -= int64(len(buf)) {
		_, err = f.Write(buf[:min(left, int64(len(buf)))])
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(s.reservePath)
		return false
	}
	return true
}

// hasReserve reports whether the spare file is in place.
func (s *Store) hasReserve() bool {
	if s.opts.Reserve <= 0 {
		return true
	}
	fi, err := os.Stat(s.reservePath)
	return err == nil && fi.Size() >= s.opts.Reserve
}

// Budget returns how many bytes the database may take now (see above).
func (s *Store) Budget(z Size) int64 {
	b := s.opts.MaxSize
	if free, ok := s.diskFree(); ok {
		keep := int64(128 << 10)
		if !s.hasReserve() {
			keep += s.opts.Reserve
		}
		b = min(b, z.File+z.WAL+free-keep)
	}
	return b
}

func (s *Store) walMax() int64 { return int64(s.walPages) * 4096 }

// Maintain applies the retention and keeps the database within its
// budget. It returns how many samples it deleted. Errors as for Write.
func (s *Store) Maintain(ctx context.Context) (int64, error) {
	var n int64
	if s.opts.Retention > 0 {
		k, err := s.expire(ctx)
		n += k
		if err != nil {
			return n, err
		}
	}
	z, err := s.Size(ctx)
	if err != nil {
		return n, err
	}
	budget := s.Budget(z)
	if z.Used+s.walMax() <= budget*9/10 {
		if n > 0 {
			return n, s.vacuum(ctx)
		}
		return n, nil
	}
	k, err := s.shrink(ctx, budget*8/10-s.walMax(), "max_db_size")
	return n + k, err
}

// MakeRoom frees space after ErrDiskFull: it deletes the spare file,
// deletes the oldest rows until the database uses at most 80% of what the
// file system gives it (and less than now), and gives the space back. It
// returns how many samples it deleted; an error when even that failed.
func (s *Store) MakeRoom(ctx context.Context) (int64, error) {
	if s.opts.Reserve > 0 {
		_ = os.Remove(s.reservePath)
	}
	z, err := s.Size(ctx)
	if err != nil {
		return 0, err
	}
	target := min(s.Budget(z)*8/10-s.walMax(), z.Used*9/10)
	return s.shrink(ctx, target, "disk full")
}

// shrink deletes the oldest samples until the pages in use are at most
// target bytes, then vacuums.
func (s *Store) shrink(ctx context.Context, target int64, reason string) (int64, error) {
	var deleted int64
	target = max(target, 64<<10)
	for range 1000 {
		z, err := s.Size(ctx)
		if err != nil {
			return deleted, err
		}
		if z.Used <= target || s.samples <= 0 {
			break
		}
		per := max(z.Used/s.samples, 1)
		k := (z.Used-target)/per + 1
		k = min(k, max(s.walMax()/2/per, 1))
		n, err := s.deleteOldest(ctx, k, reason)
		deleted += n
		if err != nil {
			return deleted, err
		}
		if n == 0 {
			break
		}
		s.checkpoint(ctx, "PASSIVE")
	}
	if deleted > 0 {
		s.log.Warn("deleted the oldest readings to stay within the space the database may take",
			"samples", deleted, "reason", reason, "uploaded_up_to", s.uploaded)
	}
	return deleted, s.vacuum(ctx)
}

// deleteOldest deletes up to k of the oldest samples with their readings,
// recording the ones not yet uploaded as a gap.
func (s *Store) deleteOldest(ctx context.Context, k int64, reason string) (int64, error) {
	var last sql.NullInt64
	err := s.conn.QueryRowContext(ctx, `SELECT max(id) FROM (SELECT id FROM sample ORDER BY id LIMIT ?)`, k).Scan(&last)
	if err != nil || !last.Valid {
		return 0, err
	}
	return s.deleteUpTo(ctx, last.Int64, reason)
}

// deleteUpTo deletes every sample with an id up to last, in one
// transaction, and returns how many.
func (s *Store) deleteUpTo(ctx context.Context, last int64, reason string) (int64, error) {
	var samples, readings int64
	err := s.tx(ctx, func() error {
		var first sql.NullInt64
		if err := s.conn.QueryRowContext(ctx, `SELECT min(id) FROM sample`).Scan(&first); err != nil {
			return err
		}
		if !first.Valid || first.Int64 > last {
			return nil
		}
		if err := s.conn.QueryRowContext(ctx, `SELECT count(*) FROM reading WHERE sample <= ?`, last).Scan(&readings); err != nil {
			return err
		}
		if from := max(first.Int64, s.uploaded+1); from <= last {
			var n, nr int64
			var tFrom, tTo sql.NullInt64
			if err := s.conn.QueryRowContext(ctx, `SELECT count(*), min(coalesce(tc, t)), max(coalesce(tc, t)) FROM sample WHERE id BETWEEN ? AND ?`,
				from, last).Scan(&n, &tFrom, &tTo); err != nil {
				return err
			}
			if err := s.conn.QueryRowContext(ctx, `SELECT count(*) FROM reading WHERE sample BETWEEN ? AND ?`, from, last).Scan(&nr); err != nil {
				return err
			}
			if _, err := s.exec(ctx, `INSERT INTO gap(kind, first_row, last_row, samples, readings, t_from, t_to, at, reason)
				VALUES ('dropped', ?, ?, ?, ?, ?, ?, ?, ?)`, from, last, n, nr, tFrom, tTo, s.opts.Now().UnixMilli(),
				fmt.Sprintf("%d readings deleted before they were uploaded (%s)", nr, reason)); err != nil {
				return err
			}
			s.log.Warn("deleted readings that were not uploaded; recorded as a gap", "first_row", from, "last_row", last,
				"samples", n, "readings", nr, "reason", reason)
		}
		for _, q := range []string{
			`DELETE FROM reading WHERE sample <= ?`,
			`DELETE FROM bad WHERE sample <= ?`,
		} {
			if _, err := s.exec(ctx, q, last); err != nil {
				return err
			}
		}
		res, err := s.exec(ctx, `DELETE FROM sample WHERE id <= ?`, last)
		if err != nil {
			return err
		}
		samples, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return 0, err
	}
	s.samples -= samples
	s.readings -= readings
	return samples, nil
}

// expire deletes the samples older than the retention, judged from the
// newest trusted reading; untrusted samples are judged by their place.
func (s *Store) expire(ctx context.Context) (int64, error) {
	var newest int64
	for _, b := range s.boots {
		newest = max(newest, b.lastT)
	}
	if newest == 0 {
		return 0, nil
	}
	cutoff := newest - s.opts.Retention.Milliseconds()
	// Scan from the oldest sample to the first trusted one inside the
	// retention: everything before it goes.
	var keep int64 = -1
	after := int64(0)
	for keep < 0 {
		rows, err := s.conn.QueryContext(ctx, `SELECT id, coalesce(tc, t), clock FROM sample WHERE id > ? ORDER BY id LIMIT 1000`, after)
		if err != nil {
			return 0, err
		}
		n := 0
		for rows.Next() {
			var id, t, clk int64
			if err := rows.Scan(&id, &t, &clk); err != nil {
				rows.Close()
				return 0, err
			}
			n++
			after = id
			if clk != clockUntrusted && t >= cutoff {
				keep = id
				break
			}
		}
		if err := closeRows(rows); err != nil {
			return 0, err
		}
		if n == 0 {
			break
		}
	}
	last := keep - 1
	if keep < 0 {
		last = after
	}
	if last <= 0 {
		return 0, nil
	}
	var total int64
	for {
		// In chunks that keep the write-ahead log bounded.
		var upTo sql.NullInt64
		err := s.conn.QueryRowContext(ctx, `SELECT max(id) FROM (SELECT id FROM sample WHERE id <= ? ORDER BY id LIMIT 5000)`, last).Scan(&upTo)
		if err != nil {
			return total, err
		}
		if !upTo.Valid {
			return total, nil
		}
		n, err := s.deleteUpTo(ctx, upTo.Int64, "retention")
		total += n
		if err != nil || n == 0 {
			return total, err
		}
		s.checkpoint(ctx, "PASSIVE")
	}
}

// vacuum gives free pages back to the file system: incremental vacuum in
// steps, each followed by a checkpoint, then a TRUNCATE checkpoint.
func (s *Store) vacuum(ctx context.Context) error {
	for range 10000 {
		var free int64
		if err := s.conn.QueryRowContext(ctx, `PRAGMA freelist_count`).Scan(&free); err != nil {
			return err
		}
		if free == 0 {
			break
		}
		step := min(free, max(int64(s.walPages)/2, 8))
		if _, err := s.exec(ctx, fmt.Sprintf(`PRAGMA incremental_vacuum(%d)`, step)); err != nil {
			if errors.Is(s.classify(err), ErrLocked) {
				return nil // another time
			}
			return s.classify(err)
		}
		s.checkpoint(ctx, "PASSIVE")
	}
	s.checkpoint(ctx, "TRUNCATE")
	return nil
}

// checkpoint runs a WAL checkpoint; one that cannot complete (a reader
// holds an old snapshot) is left for later.
func (s *Store) checkpoint(ctx context.Context, mode string) {
	var busy, logPages, done int
	err := s.conn.QueryRowContext(ctx, `PRAGMA wal_checkpoint(`+mode+`)`).Scan(&busy, &logPages, &done)
	if err != nil {
		s.log.Debug("checkpoint failed", "mode", mode, "err", err)
	}
}

// retentionTick is how often the logger applies the retention and checks
// the budget when nothing else made it do so.
const retentionTick = time.Minute
