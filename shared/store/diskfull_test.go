package store

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/tinyscada/tinyscada/internal/testpeer"
)

// tmpfs mounts a tmpfs of size (e.g. "4m") on a temporary directory and
// unmounts it when the test ends. Without the right to mount it skips,
// unless CI=true.
func tmpfs(t *testing.T, size string) string {
	t.Helper()
	dir := t.TempDir()
	out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size+",mode=0700", "tmpfs", dir).CombinedOutput()
	if err != nil {
		msg := "cannot mount a tmpfs (needs root or CAP_SYS_ADMIN): " + err.Error() + ": " + string(out)
		testpeer.Missing(t, msg)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	return dir
}

// fillDisk writes a file into dir until the file system is full and
// returns its path.
func fillDisk(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "filler")
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	for {
		if _, err := f.Write(buf); err != nil {
			return p
		}
	}
}

// The database alone on a 4 MiB tmpfs, filled to the brim by readings and
// then by another file: writes fail with ErrDiskFull and nothing is
// acknowledged; MakeRoom frees space by the policy (with gap records) and
// the batch then commits; the database is intact after every step.
func TestDiskFullOnTmpfs(t *testing.T) {
	dir := tmpfs(t, "4m")
	ctx := context.Background()
	s := openTest(t, func(o *Options) {
		o.Path = filepath.Join(dir, "readings.db")
		o.MaxSize = 64 << 20 // the disk is the limit
		o.Reserve = 256 << 10
	})
	if !s.hasReserve() {
		t.Fatal("no spare file")
	}
	db := roDB(t, s.opts.Path)
	check := func(step string) {
		t.Helper()
		if err := integrityCheck(ctx, db); err != nil {
			t.Fatalf("%s: %v", step, err)
		}
	}

	seq, fulls, acked := 1, 0, uint64(0)
	// commit mirrors the logger's loop: retry after MakeRoom.
	commit := func(its []Item) {
		t.Helper()
		for try := 0; ; try++ {
			res, err := s.Write(ctx, producer, its)
			if err == nil {
				acked = ackOf(res, "r")
				s.EnsureReserve() // as the logger does after each commit
				return
			}
			if !errors.Is(err, ErrDiskFull) || try > 20 {
				t.Fatalf("write: %v", err)
			}
			fulls++
			check("after a failed write")
			n, err := s.MakeRoom(ctx, try+1)
			if err != nil && !errors.Is(err, ErrDiskFull) {
				t.Fatalf("MakeRoom: %v", err)
			}
			z, _ := s.Size(ctx)
			free, _ := s.diskFree()
			t.Logf("disk full: MakeRoom deleted %d samples (%v); now file %d wal %d used %d, free %d", n, err, z.File, z.WAL, z.Used, free)
			check("after MakeRoom")
		}
	}
	// Phase 1: readings alone fill the disk (no Maintain: the hard way).
	for fulls == 0 && seq < 200000 {
		commit(items(bigSeries("r", seq, 50, perSecond)...))
		seq += 50
	}
	if fulls == 0 {
		t.Fatal("the disk never filled")
	}
	check("phase 1")
	if !s.hasReserve() {
		t.Error("spare file not recreated after making room")
	}
	// Phase 2: another file takes the rest of the disk.
	filler := fillDisk(t, dir)
	before := fulls
	for range 40 {
		commit(items(bigSeries("r", seq, 50, perSecond)...))
		seq += 50
		if _, err := s.Maintain(ctx); err != nil && !errors.Is(err, ErrDiskFull) {
			t.Fatal(err)
		}
	}
	check("phase 2")
	// Phase 2b: the filler takes every byte freed before each write.
	for range 10 {
		fillDisk(t, dir)
		commit(items(bigSeries("r", seq, 50, perSecond)...))
		seq += 50
		if _, err := s.Maintain(ctx); err != nil && !errors.Is(err, ErrDiskFull) {
			t.Fatal(err)
		}
		check("phase 2b")
	}
	if acked != uint64(seq-1) {
		t.Fatalf("acknowledged up to %d, sent up to %d", acked, seq-1)
	}
	t.Logf("disk full %d times before the filler, %d after", before, fulls-before)
	// Phase 3: the filler goes; the spare file comes back.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	commit(items(bigSeries("r", seq, 50, perSecond)...))
	if _, err := s.Maintain(ctx); err != nil {
		t.Fatal(err)
	}
	if !s.EnsureReserve() {
		t.Error("spare file not recreated once there was room")
	}
	check("phase 3")
	dropped := missingCovered(t, db, s.LastRow(), 0)
	if dropped == 0 {
		t.Error("no gap record for the dropped rows")
	}
	stored := queryInt(t, db, `SELECT count(*) FROM sample`)
	if stored+dropped != s.LastRow() {
		t.Errorf("%d stored + %d dropped != %d written", stored, dropped, s.LastRow())
	}
	t.Logf("%d samples written, %d kept, %d dropped with gap records", s.LastRow(), stored, dropped)
}
