package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Bounded storage
//
// The database's capacity is max_db_size, or the size of its file system
// less a margin and the spare file when that is smaller. It is fixed by
// sizes, not by the free space, so that another process's files never
// shrink it. The live data (pages in use) plus a full write-ahead log may
// take 90% of the capacity; past that, Maintain deletes the oldest samples
// down to 80%. Row ids grow with time, so the oldest rows are the ones the
// uplink delivered first (ids up to its cursor): they go first and
// silently. Rows beyond the cursor go only when nothing uploaded is left,
// and one gap record of kind 'dropped' per series of deletes names them
// (first and last row, how many samples and readings, their time span, and
// why: max_db_size, or disk_size when the file system is the smaller
// limit). Deletes run in chunks no bigger than half the write-ahead log,
// each in its own transaction. This is the one way unuploaded readings are
// deleted to make room (retention is the other way they go).
//
// A full file system while the database is below its capacity (another
// process's files took the space) is different: the readings the database
// holds are not deleted for newer ones. Uploaded rows may go (they are
// upstream) and the spare file is given up, but if that is not enough the
// write fails with ErrDiskFull and the logger stops acknowledging: the
// poller's outbox keeps the newest readings (and back-pressures) until
// space returns.
//
// Incremental vacuum gives the freed pages back to the file system, except
// when it is nearly full (less than a tenth of the budget free): then the
// freed pages stay in the file for the next readings, since handing them
// back would only let another process take them. The write-ahead log is never
// truncated below journal_size_limit, so that its file is room the next
// transaction can always reuse.

// EnsureReserve creates the spare file (Path + ".reserve", Reserve bytes of
// zeros, fsynced) unless it exists or the disk has less than twice its size
// free. It reports whether the spare file is in place (true when Reserve is
// 0).
func (s *Store) EnsureReserve() bool { return s.ensureReserve(2 * s.opts.Reserve) }

// ensureReserve is EnsureReserve creating the file only when the disk has
// at least minFree bytes free.
func (s *Store) ensureReserve(minFree int64) bool {
	n := s.opts.Reserve
	if n <= 0 {
		return true
	}
	if fi, err := os.Stat(s.reservePath); err == nil && fi.Size() >= n {
		return true
	}
	if free, ok := s.diskFree(); ok && free < minFree {
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

// Budget returns how many bytes the database may take now (see above),
// and whether the file system is nearly full (less than a tenth of that
// free), so that freed pages are better kept in the file.
func (s *Store) Budget(z Size) (budget int64, tight bool) {
	budget = s.opts.MaxSize
	if free, ok := s.diskFree(); ok {
		keep := int64(128 << 10)
		if !s.hasReserve() {
			keep += s.opts.Reserve
		}
		if fs := z.File + z.WAL + free - keep; fs < budget {
			budget = fs
		}
		tight = free-keep < budget/10
	}
	return budget, tight
}

func (s *Store) walMax() int64 { return int64(s.walPages) * s.pageSize }

// Dropped reasons: why unuploaded rows were deleted (gap.reason).
const (
	reasonMaxSize   = "max_db_size" // the database reached max_db_size
	reasonDiskSize  = "disk_size"   // it filled its file system, which is smaller than max_db_size
	reasonRetention = "retention"
)

// Capacity returns the most the database may take (see above) and the
// reason its deletes record: max_db_size, or the size of the file system
// less 128 KiB and the spare file when that is smaller (disk_size). It
// does not depend on the free space.
func (s *Store) Capacity() (int64, string) {
	var st unix.Statfs_t
	if err := unix.Statfs(filepath.Dir(s.opts.Path), &st); err != nil {
		return s.opts.MaxSize, reasonMaxSize
	}
	// The blocks we may use: all of them less the ones reserved for root
	// (Bfree - Bavail).
	fs := (int64(st.Blocks)-int64(st.Bfree)+int64(st.Bavail))*int64(st.Bsize) - 128<<10 - s.opts.Reserve
	if fs < s.opts.MaxSize {
		return max(fs, 256<<10), reasonDiskSize
	}
	return s.opts.MaxSize, reasonMaxSize
}

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
	capacity, why := s.Capacity()
	budget, tight := s.Budget(z)
	s.tight = tight
	switch {
	case z.Used+s.walMax() > capacity*9/10:
		k, err := s.shrink(ctx, capacity*8/10-s.walMax(), why, 0)
		n += k
		if err != nil {
			return n, err
		}
	case z.Used+s.walMax() > budget*9/10 && s.uploaded > 0:
		// The file system is filling up (with other files): uploaded
		// rows make room early; nothing else is deleted for it.
		k, err := s.shrink(ctx, budget*8/10-s.walMax(), "uploaded rows, to keep room on a filling disk", s.uploaded)
		n += k
		if err != nil {
			return n, err
		}
	}
	// Free pages go back to the file system when it has room, when the
	// database is over its capacity, or to make room for the spare file.
	if (!tight && n > 0) || z.File+z.WAL > capacity*9/10 || (!s.hasReserve() && z.File-z.Used >= 2*s.opts.Reserve) {
		return n, s.vacuum(ctx)
	}
	return n, nil
}

// MakeRoom frees space after the attempt-th consecutive ErrDiskFull of a
// write. The first time it only checkpoints, so that the retry can reuse
// the write-ahead log from its start instead of growing it. After that it
// deletes the spare file, and deletes the oldest rows until the live data
// is 90% of what it was (and at most 80% of the capacity): any of them
// when the database is at its capacity (its live data and a full
// write-ahead log take 80% of it or more: the policy of Maintain, applied
// late), else only uploaded ones (another process filled the disk: the
// readings held are not deleted for newer ones). Then it vacuums, so that
// the write-ahead log has room to grow. It returns how many samples it
// deleted; an error that wraps ErrDiskFull and says so (ErrNoRoom) when
// nothing could be deleted.
func (s *Store) MakeRoom(ctx context.Context, attempt int) (int64, error) {
	s.tight = true
	s.checkpoint(ctx, "PASSIVE")
	if attempt <= 1 {
		return 0, nil
	}
	if s.opts.Reserve > 0 {
		_ = os.Remove(s.reservePath)
	}
	z, err := s.Size(ctx)
	if err != nil {
		return 0, err
	}
	capacity, why := s.Capacity()
	upTo := s.uploaded // below the capacity: uploaded rows only
	if upTo == 0 {
		upTo = -1 // none
	}
	if z.Used+s.walMax() >= capacity*8/10 {
		upTo = 0 // at the capacity: the ring buffer's policy
	}
	n, err := s.shrink(ctx, min(capacity*8/10-s.walMax(), z.Used*9/10), why, upTo)
	if err != nil {
		return n, err
	}
	if n == 0 {
		s.EnsureReserve()
		return 0, ErrNoRoom
	}
	// Give back only what the write-ahead log and the spare file need;
	// the other free pages stay in the file for the next readings.
	if err := s.vacuumPages(ctx, (2*s.walMax()+2*s.opts.Reserve)/s.pageSize); err != nil {
		return n, err
	}
	// The spare file comes back before the readings take the room this
	// made, even with less than twice its size free: without it, a disk
	// that fills again leaves no room for the checkpoint and the delete
	// that would make room, and writes stop until someone frees space.
	s.ensureReserve(s.opts.Reserve + s.opts.Reserve/4)
	return n, nil
}

// shrink deletes the oldest samples until the pages in use are at most
// target bytes; with upTo > 0 only samples with ids up to it (uploaded
// ones), and none when upTo < 0. When a chunk does not fit on the disk it
// tries smaller ones.
func (s *Store) shrink(ctx context.Context, target int64, reason string, upTo int64) (int64, error) {
	if upTo < 0 {
		return 0, nil
	}
	var deleted int64
	target = max(target, 64<<10)
	var g dropGap // one gap record for the whole shrink
	limit := int64(1 << 62)
	var err error
	for range 10000 {
		var z Size
		if z, err = s.Size(ctx); err != nil {
			break
		}
		if z.Used <= target || s.samples <= 0 {
			break
		}
		per := max(z.Used/s.samples, 1)
		k := (z.Used-target)/per*11/10 + 8 // a little more: pages free up only when empty
		k = min(k, max(s.walMax()/2/per, 8), limit)
		// A complete checkpoint lets the next transaction reuse the
		// write-ahead log from its start instead of growing it.
		s.checkpoint(ctx, "PASSIVE")
		var n int64
		n, err = s.deleteOldest(ctx, k, upTo, reason, &g)
		if errors.Is(err, ErrDiskFull) && k > 1 {
			limit, err = k/2, nil // no room for that much write-ahead log
			continue
		}
		deleted += n
		if err != nil || n == 0 {
			break
		}
		s.checkpoint(ctx, "PASSIVE")
	}
	if deleted > 0 {
		s.log.Warn("deleted the oldest readings to stay within the space the database may take",
			"samples", deleted, "reason", reason, "uploaded_up_to", s.uploaded, "gap_record", g.id)
	}
	return deleted, err
}

// deleteOldest deletes up to k of the oldest samples (with ids up to upTo
// when it is > 0) with their readings, recording the ones not yet uploaded
// as a gap.
func (s *Store) deleteOldest(ctx context.Context, k, upTo int64, reason string, g *dropGap) (int64, error) {
	if upTo <= 0 {
		upTo = 1 << 62
	}
	var last sql.NullInt64
	err := s.conn.QueryRowContext(ctx, `SELECT max(id) FROM (SELECT id FROM sample WHERE id <= ? ORDER BY id LIMIT ?)`, upTo, k).Scan(&last)
	if err != nil || !last.Valid {
		return 0, err
	}
	return s.deleteUpTo(ctx, last.Int64, reason, g)
}

// dropGap is the gap record of one series of deletes: chunks that follow
// each other extend it rather than adding records.
type dropGap struct {
	id      int64
	lastRow int64
}

// deleteUpTo deletes every sample with an id up to last, in one
// transaction, and returns how many. The ones not uploaded are recorded in
// g's gap record (extended when it ends right before them) or a new one.
func (s *Store) deleteUpTo(ctx context.Context, last int64, reason string, g *dropGap) (int64, error) {
	saved := *g
	var samples, readings int64
	err := s.tx(ctx, func() error {
		var first sql.NullInt64
		if err := s.conn.QueryRowContext(ctx, `SELECT min(id) FROM sample`).Scan(&first); err != nil {
			return err
		}
		if !first.Valid || first.Int64 > last {
			return nil
		}
		if err := s.conn.QueryRowContext(ctx, `SELECT count(*) FROM reading WHERE id <= ?`, ReadingID(last, MaxPointID)).Scan(&readings); err != nil {
			return err
		}
		if from := max(first.Int64, s.uploaded+1); from <= last {
			var n, nr int64
			var tFrom, tTo sql.NullInt64
			if err := s.conn.QueryRowContext(ctx, `SELECT count(*), min(coalesce(tc, t)), max(coalesce(tc, t)) FROM sample WHERE id BETWEEN ? AND ?`,
				from, last).Scan(&n, &tFrom, &tTo); err != nil {
				return err
			}
			firstID, lastID := readingIDs(from-1, last)
			if err := s.conn.QueryRowContext(ctx, `SELECT count(*) FROM reading WHERE id BETWEEN ? AND ?`, firstID, lastID).Scan(&nr); err != nil {
				return err
			}
			if g.id != 0 && g.lastRow == from-1 {
				if _, err := s.exec(ctx, `UPDATE gap SET last_row = ?, samples = samples + ?, readings = readings + ?,
					t_from = min(t_from, ?), t_to = max(t_to, ?),
					reason = (readings + ?) || ' readings deleted before they were uploaded (' || ? || ')' WHERE id = ?`,
					last, n, nr, tFrom, tTo, nr, reason, g.id); err != nil {
					return err
				}
			} else {
				res, err := s.exec(ctx, `INSERT INTO gap(kind, first_row, last_row, samples, readings, t_from, t_to, at, reason)
					VALUES ('dropped', ?, ?, ?, ?, ?, ?, ?, ?)`, from, last, n, nr, tFrom, tTo, s.opts.Now().UnixMilli(),
					fmt.Sprintf("%d readings deleted before they were uploaded (%s)", nr, reason))
				if err != nil {
					return err
				}
				if g.id, err = res.LastInsertId(); err != nil {
					return err
				}
			}
			g.lastRow = last
			s.log.Debug("deleted readings that were not uploaded; recorded as a gap", "first_row", from, "last_row", last,
				"samples", n, "readings", nr, "reason", reason)
		}
		if _, err := s.exec(ctx, `DELETE FROM reading WHERE id <= ?`, ReadingID(last, MaxPointID)); err != nil {
			return err
		}
		if _, err := s.exec(ctx, `DELETE FROM bad WHERE sample <= ?`, last); err != nil {
			return err
		}
		res, err := s.exec(ctx, `DELETE FROM sample WHERE id <= ?`, last)
		if err != nil {
			return err
		}
		samples, err = res.RowsAffected()
		return err
	})
	if err != nil {
		*g = saved
		return 0, err
	}
	s.samples -= samples
	s.readings -= readings
	return samples, nil
}

// expire deletes the samples older than the retention. Age is judged from
// a time the logger trusts: the newest trusted reading, but never later
// than the logger's own clock when that is trusted (and a reading ahead of
// it is implausible and counts for nothing). Within a boot it is bounded
// by monotonic age too: a sample is old only if it is also Retention of
// CLOCK_BOOTTIME older than the newest sample of its boot, so that no
// wall-clock stamp can make young readings look old. Untrusted and
// implausible samples go by their place.
func (s *Store) expire(ctx context.Context) (int64, error) {
	var newest int64
	lastM := map[int64]int64{}
	for _, b := range s.boots {
		newest = max(newest, b.lastT)
		lastM[b.id] = b.lastM
	}
	if now := s.loggerNow(); now > 0 && now < newest {
		newest = now
	}
	if newest == 0 {
		return 0, nil
	}
	ret := s.opts.Retention
	cutoff := newest - ret.Milliseconds()
	// Scan from the oldest sample to the first trusted one inside the
	// retention: everything before it goes.
	var keep int64 = -1
	after := int64(0)
	for keep < 0 {
		rows, err := s.conn.QueryContext(ctx, `SELECT id, coalesce(tc, t), clock, boot, m FROM sample WHERE id > ? ORDER BY id LIMIT 1000`, after)
		if err != nil {
			return 0, err
		}
		n := 0
		for rows.Next() {
			var id, t, clk, boot, m int64
			if err := rows.Scan(&id, &t, &clk, &boot, &m); err != nil {
				rows.Close()
				return 0, err
			}
			n++
			after = id
			if (clk == clockTrusted || clk == clockCorrected) && (t >= cutoff || lastM[boot]-m < ret.Nanoseconds()) {
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
	var g dropGap
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
		n, err := s.deleteUpTo(ctx, upTo.Int64, reasonRetention, &g)
		total += n
		if err != nil || n == 0 {
			return total, err
		}
		s.checkpoint(ctx, "PASSIVE")
	}
}

// vacuum gives free pages back to the file system: incremental vacuum in
// steps, each followed by a checkpoint.
func (s *Store) vacuum(ctx context.Context) error { return s.vacuumPages(ctx, 1<<62) }

// vacuumPages gives up to n free pages back to the file system.
func (s *Store) vacuumPages(ctx context.Context, n int64) error {
	for n > 0 {
		var free int64
		if err := s.conn.QueryRowContext(ctx, `PRAGMA freelist_count`).Scan(&free); err != nil {
			return err
		}
		if free == 0 {
			break
		}
		step := min(free, max(int64(s.walPages)/2, 8), n)
		n -= step
		if _, err := s.exec(ctx, fmt.Sprintf(`PRAGMA incremental_vacuum(%d)`, step)); err != nil {
			if errors.Is(s.classify(err), ErrLocked) {
				return nil // another time
			}
			return s.classify(err)
		}
		s.checkpoint(ctx, "PASSIVE")
	}
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
