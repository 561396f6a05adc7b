package store

import (
	"context"
	"testing"
)

// A new database gets 1 KiB pages (a small batch's commit rewrites a
// handful of pages whatever it carries), and the write-ahead log's bound
// is counted in them.
func TestPageSize(t *testing.T) {
	t.Parallel()
	s := openTest(t, nil)
	var ps int64
	if err := s.conn.QueryRowContext(context.Background(), `PRAGMA page_size`).Scan(&ps); err != nil {
		t.Fatal(err)
	}
	if ps != pageSize || s.pageSize != ps {
		t.Errorf("new database: page_size %d (store %d), want %d", ps, s.pageSize, pageSize)
	}
	if got := s.walMax(); got != int64(s.walPages)*ps || got > 4000<<10 {
		t.Errorf("walMax %d for %d pages of %d", got, s.walPages, ps)
	}
}
