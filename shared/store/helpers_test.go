package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"log/slog"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/shared/clock"
)

// producer is the role whose messages the tests write, as the logger's.
const producer = "poller"

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
func openTest(t testing.TB, mod func(*Options)) *Store {
	t.Helper()
	o := Options{
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
	s, err := Open(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// msg is a data message as the poller writes it, given as the logger
// decodes it: the store never sees payloads.
type msg struct {
	dev  string
	run  string
	seq  uint64
	at   clock.Stamp
	vals string // the inside of "v": "name":value,...
	bad  string // the inside of "bad" ("name":"why",...), or ""
}

func (m msg) item() Item {
	return Item{Device: m.dev, Msg: Message{
		Run: []byte(m.run), Seq: m.seq, Wall: m.at.Wall.UnixMilli(), Mono: int64(m.at.Mono), Boot: []byte(m.at.Boot),
		Values: values(m.vals), Bad: bads(m.bad), HasID: true,
	}}
}

// members calls f with the name and value of every member of the JSON
// object {inside}, in order. It panics on bad JSON: the tests write it.
func members(inside string, f func(name string, v any)) {
	dec := json.NewDecoder(strings.NewReader("{" + inside + "}"))
	dec.UseNumber()
	next := func() json.Token {
		tok, err := dec.Token()
		if err != nil {
			panic(fmt.Sprintf("test data {%s}: %v", inside, err))
		}
		return tok
	}
	next() // {
	for dec.More() {
		name := next().(string)
		f(name, next())
	}
}

// values reads the inside of "v" as the logger's decoder does: true/false
// are bools, numbers with a fraction or exponent floats, integers above
// 2⁶³-1 text.
func values(inside string) []Value {
	var vs []Value
	members(inside, func(name string, v any) {
		val := Value{Name: []byte(name)}
		switch x := v.(type) {
		case bool:
			val.Kind = KindBool
			if x {
				val.I = 1
			}
		case json.Number:
			if i, err := strconv.ParseInt(string(x), 10, 64); err == nil {
				val.Kind, val.I = KindInt, i
			} else if _, err := strconv.ParseUint(string(x), 10, 64); err == nil {
				val.Kind, val.Text = KindText, []byte(x)
			} else if f, err := x.Float64(); err == nil {
				val.Kind, val.F = KindFloat, f
			} else {
				panic(fmt.Sprintf("test value %s: %v", x, err))
			}
		default:
			panic(fmt.Sprintf("test value %v of %s: not a number or bool", v, name))
		}
		vs = append(vs, val)
	})
	return vs
}

func bads(inside string) []Bad {
	var bs []Bad
	members(inside, func(name string, v any) {
		bs = append(bs, Bad{Name: []byte(name), Why: []byte(v.(string))})
	})
	return bs
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

func items(ms ...msg) []Item {
	its := make([]Item, len(ms))
	for i, m := range ms {
		its[i] = m.item()
	}
	return its
}

func write(t testing.TB, s *Store, ms ...msg) Result {
	t.Helper()
	res, err := s.Write(context.Background(), producer, items(ms...))
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func ackOf(res Result, run string) uint64 {
	for _, a := range res.Acks {
		if a.Run == run {
			return a.Seq
		}
	}
	return 0
}

// roDB opens a second connection to the store's file, as another process
// would.
func roDB(t testing.TB, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", DSN(path, time.Second, "normal", false))
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
