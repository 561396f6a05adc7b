package store

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/shared/clock"
)

// The Reader returns whole samples within the entry limit (a larger one
// alone), by row id, with bad points and gap records, and notices a
// replaced file.
func TestReader(t *testing.T) {
	t.Parallel()
	s := openTest(t, nil)
	if _, err := OpenReader(filepath.Join(t.TempDir(), "none.db")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("OpenReader of a missing file: %v, want fs.ErrNotExist", err)
	}
	// Stamped in the past: a reading stamped ahead of the store's own
	// clock would be flagged clock_implausible.
	at := clock.Stamp{Wall: time.Now().Add(-time.Minute), Mono: time.Second, Boot: "b1"}
	var items []Item
	for i := 1; i <= 6; i++ {
		m := msg{dev: "d1", run: "r1", seq: uint64(i), at: at, vals: `"a":1,"b":2.5,"c":true`}
		if i == 4 {
			m.vals = `"a":1,"b":2,"c":true,"d":4,"e":5`
			m.bad = `"x":"timeout"`
		}
		items = append(items, m.item())
		at.Mono += time.Second
		at.Wall = at.Wall.Add(time.Second)
	}
	if _, err := s.Write(context.Background(), producer, items); err != nil {
		t.Fatal(err)
	}
	r, err := OpenReader(s.opts.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if r.Generation() != s.Generation() {
		t.Errorf("generation %q, want %q", r.Generation(), s.Generation())
	}
	ctx := context.Background()
	rows := func(ss []Sample) string {
		out := ""
		for _, x := range ss {
			out += fmt.Sprintf("%d:%d ", x.Row, x.Entries())
		}
		return out
	}
	for _, tc := range []struct {
		after int64
		max   int
		want  string
	}{
		{0, 0, "1:3 2:3 3:3 4:6 5:3 6:3 "},
		{0, 6, "1:3 2:3 "},
		{0, 7, "1:3 2:3 "},
		{0, 9, "1:3 2:3 3:3 "},
		{3, 3, "4:6 "}, // larger than the limit: alone
		{3, 9, "4:6 5:3 "},
		{6, 9, ""},
	} {
		got, err := r.Samples(ctx, tc.after, -1, tc.max)
		if err != nil {
			t.Fatal(err)
		}
		if rows(got) != tc.want {
			t.Errorf("Samples(after %d, max %d) = %s, want %s", tc.after, tc.max, rows(got), tc.want)
		}
	}
	got, err := r.Samples(ctx, 3, 4, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || len(got[0].Bad) != 1 || got[0].Bad[0].Reason != "timeout" || got[0].Values[2].Text != "true" || got[0].Quality != "good" {
		t.Errorf("row 4 = %+v", got)
	}
	last, lastGap, err := r.Tail(ctx)
	if err != nil || last != 6 || lastGap != 0 {
		t.Errorf("Tail = %d, %d, %v; want 6, 0", last, lastGap, err)
	}
	n, oldest, err := r.Backlog(ctx, 2)
	if err != nil || n != 4 || oldest != got[0].Time-1000 {
		t.Errorf("Backlog(2) = %d, %d, %v; want 4, %d", n, oldest, err, got[0].Time-1000)
	}

	// A malformed message makes a gap record.
	bad := Item{Device: "d1", Msg: Message{Run: []byte("r1"), Seq: 7, HasID: true}, Err: errors.New("junk")}
	if _, err := s.Write(ctx, producer, []Item{bad}); err != nil {
		t.Fatal(err)
	}
	gaps, err := r.Gaps(ctx, 0, -1, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(gaps) != 1 || gaps[0].Kind != "malformed" || gaps[0].Run != "r1" || gaps[0].FirstSeq != 7 || gaps[0].Row != 6 {
		t.Errorf("gaps = %+v", gaps)
	}
	if r.Replaced() {
		t.Error("Replaced before the file was replaced")
	}
	if err := os.Rename(s.opts.Path, s.opts.Path+".old"); err != nil {
		t.Fatal(err)
	}
	if !r.Replaced() {
		t.Error("not Replaced after the file was moved away")
	}
}
