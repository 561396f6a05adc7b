package store

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tinyscada/tinyscada/internal/testpeer"
)

// The database alone on a 4 MiB tmpfs, filled to the brim by readings and
// then by another file: writes fail with ErrDiskFull and nothing is
// acknowledged. While the database is at its capacity (it filled its own
// disk), MakeRoom deletes the oldest rows by the ring buffer's policy with
// gap records saying disk_size, and the batch then commits. Once another
// file has squeezed it below its capacity, MakeRoom deletes nothing that
// is not uploaded (ErrNoRoom): the batches wait (the poller's outbox) and
// commit once the other file goes. The database is intact after every step.
func TestDiskFullOnTmpfs(t *testing.T) {
	t.Parallel()
	dir := testpeer.Tmpfs(t, "4m")
	ctx := context.Background()
	s := openTest(t, func(o *Options) {
		o.Path = filepath.Join(dir, "readings.db")
		o.MaxSize = 64 << 20 // the disk is the limit
		o.Reserve = 256 << 10
	})
	if !s.hasReserve() {
		t.Fatal("no spare file")
	}
	if _, why := s.Capacity(); why != reasonDiskSize {
		t.Fatalf("capacity limited by %s, want %s", why, reasonDiskSize)
	}
	db := roDB(t, s.opts.Path)
	// check runs SQLite's full integrity_check at the end of each phase
	// and its quick_check (every page and b-tree, not whether the indexes
	// match their tables: O(N) instead of O(N log N)) after every step in
	// between, which took two thirds of the test's time with the full one.
	check := func(step string) {
		t.Helper()
		if strings.HasPrefix(step, "phase") {
			if err := IntegrityCheck(ctx, db); err != nil {
				t.Fatalf("%s: %v", step, err)
			}
			return
		}
		var ok string
		if err := db.QueryRowContext(ctx, `PRAGMA quick_check(1)`).Scan(&ok); err != nil || ok != "ok" {
			t.Fatalf("%s: quick_check: %q %v", step, ok, err)
		}
	}
	dropped := func() int64 {
		return queryInt(t, db, `SELECT coalesce(sum(samples), 0) FROM gap WHERE kind = 'dropped'`)
	}

	seq, fulls, noRoom, acked := 1, 0, 0, uint64(0)
	// commit mirrors the logger's loop: retry after MakeRoom; after
	// ErrNoRoom the batch waits (false).
	commit := func(its []Item) bool {
		t.Helper()
		for try := 0; ; try++ {
			res, err := s.Write(ctx, producer, its)
			if err == nil {
				acked = ackOf(res, "r")
				s.EnsureReserve() // as the logger does after each commit
				return true
			}
			if !errors.Is(err, ErrDiskFull) || try > 20 {
				t.Fatalf("write: %v", err)
			}
			fulls++
			check("after a failed write")
			before := dropped()
			n, err := s.MakeRoom(ctx, try+1)
			z, _ := s.Size(ctx)
			free, _ := s.diskFree()
			t.Logf("disk full: MakeRoom deleted %d samples (%v); now file %d wal %d used %d, free %d", n, err, z.File, z.WAL, z.Used, free)
			check("after MakeRoom")
			if errors.Is(err, ErrNoRoom) {
				if d := dropped(); d != before {
					t.Fatalf("MakeRoom said no room but dropped %d unuploaded samples", d-before)
				}
				noRoom++
				return false
			}
			if err != nil && !errors.Is(err, ErrDiskFull) {
				t.Fatalf("MakeRoom: %v", err)
			}
		}
	}
	// Phase 1: readings alone fill the disk (no Maintain: the hard way).
	for fulls == 0 && seq < 200000 {
		if !commit(items(bigSeries("r", seq, 50, perSecond)...)) {
			t.Fatal("no room while the database fills its own disk")
		}
		seq += 50
	}
	if fulls == 0 {
		t.Fatal("the disk never filled")
	}
	check("phase 1")
	if !s.hasReserve() {
		t.Error("spare file not recreated after making room")
	}
	if g := queryText(t, db, `SELECT reason FROM gap WHERE kind = 'dropped' LIMIT 1`); !strings.Contains(g, "(disk_size)") {
		t.Errorf("dropped gap: %q, want the reason disk_size", g)
	}
	// Phase 2: another file takes the rest of the disk, and then every
	// byte freed before each write. The waiting batches are kept in order,
	// as the poller's outbox does.
	filler := testpeer.FillDisk(t, dir)
	var waiting [][]Item
	for i := range 50 {
		if i >= 40 {
			testpeer.FillDisk(t, dir)
		}
		its := items(bigSeries("r", seq, 50, perSecond)...)
		seq += 50
		if len(waiting) > 0 || !commit(its) {
			waiting = append(waiting, its)
			continue
		}
		if _, err := s.Maintain(ctx); err != nil && !errors.Is(err, ErrDiskFull) {
			t.Fatal(err)
		}
		check("in phase 2")
	}
	check("phase 2")
	if noRoom == 0 {
		t.Error("the other file never squeezed the database below its capacity")
	}
	squeezed := dropped()
	stored := queryInt(t, db, `SELECT count(*) FROM sample`)
	t.Logf("%d batches wait; %d samples stored, %d dropped", len(waiting), stored, squeezed)
	// Phase 3: the filler goes; the waiting batches commit, nothing more
	// is dropped, the spare file comes back.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	for _, its := range waiting {
		if !commit(its) {
			t.Fatal("no room after the other file went")
		}
	}
	if acked != uint64(seq-1) {
		t.Fatalf("acknowledged up to %d, sent up to %d", acked, seq-1)
	}
	if _, err := s.Maintain(ctx); err != nil {
		t.Fatal(err)
	}
	if !s.EnsureReserve() {
		t.Error("spare file not recreated once there was room")
	}
	check("phase 3")
	if d := dropped(); d != squeezed {
		t.Errorf("%d more samples dropped after the other file went", d-squeezed)
	}
	all := testpeer.MissingCovered(t, db, s.LastRow(), 0)
	stored = queryInt(t, db, `SELECT count(*) FROM sample`)
	if stored+all != s.LastRow() || int(s.LastRow()) != seq-1 {
		t.Errorf("%d stored + %d dropped != %d written (%d sent)", stored, all, s.LastRow(), seq-1)
	}
	t.Logf("%d samples written, %d kept, %d dropped with gap records", s.LastRow(), stored, all)
}
