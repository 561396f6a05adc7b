package logger

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/internal/testpeer"
	"github.com/tinyscada/tinyscada/shared/clock"
	"github.com/tinyscada/tinyscada/shared/store"
)

// TestMain runs up to 8 tests at once: most of them wait on a broker, a
// lock or a full disk rather than compute.
func TestMain(m *testing.M) { os.Exit(testpeer.Main(m, 8)) }

// testLog returns a logger that writes to the test log when -v.
func testLog(t testing.TB) *slog.Logger {
	if !testing.Verbose() {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

// openTest opens a store in a temporary directory.
func openTest(t testing.TB, mod func(*store.Options)) *store.Store {
	t.Helper()
	o := store.Options{
		Path:        filepath.Join(t.TempDir(), "readings.db"),
		Synchronous: "normal",
		BusyTimeout: 100 * time.Millisecond,
		ClockStep:   2 * time.Second,
		GapAfter:    time.Hour,
		Log:         testLog(t),
	}
	if mod != nil {
		mod(&o)
	}
	s, err := store.Open(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// msg is a data message as the poller writes it.
type msg struct {
	dev  string
	run  string
	seq  uint64
	at   clock.Stamp
	vals string // the inside of "v"
	bad  string // the inside of "bad", or ""
}

func (m msg) payload() []byte {
	b := fmt.Appendf(nil, `{"run":%q,"seq":%d,"t":%d,"m":%d,"b":%q,"v":{%s}`, m.run, m.seq, m.at.Wall.UnixMilli(), int64(m.at.Mono), m.at.Boot, m.vals)
	if m.bad != "" {
		b = fmt.Appendf(b, `,"bad":{%s}`, m.bad)
	}
	return append(b, '}')
}

// good is a stamp of a trusted clock at 2024-01-01 plus d, boot "b1".
func good(d time.Duration) clock.Stamp {
	return clock.Stamp{Wall: time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC).Add(d), Mono: time.Hour + d, Boot: "b1"}
}

// series returns messages seq from..to of run, one a second.
func series(run string, from, to uint64) []msg {
	var ms []msg
	for seq := from; seq <= to; seq++ {
		ms = append(ms, msg{dev: "meter", run: run, seq: seq, at: good(time.Duration(seq) * time.Second),
			vals: `"voltage":` + strconv.FormatFloat(230+float64(seq)/10, 'g', -1, 64) + `,"energy":` + strconv.FormatUint(1000+seq, 10) + `,"alarm":false`})
	}
	return ms
}

// roDB opens a second connection to the store's file, as another process
// would.
func roDB(t testing.TB, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", store.DSN(path, time.Second, "normal", false))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func queryInt(t testing.TB, db interface {
	QueryRow(string, ...any) *sql.Row
}, q string, args ...any) int64 {
	t.Helper()
	var n sql.NullInt64
	if err := db.QueryRow(q, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return n.Int64
}

func queryText(t *testing.T, db *sql.DB, q string) string {
	t.Helper()
	var s string
	if err := db.QueryRow(q).Scan(&s); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return s
}

// seqsOf returns the seqs stored for run, in order.
func seqsOf(t testing.TB, db *sql.DB, run string) []int64 {
	t.Helper()
	rows, err := db.Query(`SELECT s.seq FROM sample s JOIN run r ON r.id = s.run WHERE r.run = ? ORDER BY s.seq`, run)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var seqs []int64
	for rows.Next() {
		var n int64
		if err := rows.Scan(&n); err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, n)
	}
	return seqs
}
