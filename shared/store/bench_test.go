package store

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tinyscada/tinyscada/internal/benchdata"
)

// Figures for the closing note of the logger issue. Run:
//
//	go test ./shared/store -run XXX -bench RawInsert -benchtime 200000x
//	TINYSCADA_BYTES=1 go test ./shared/store -run TestBytesPerReading -v
//
// BenchmarkRawInsert is the ceiling: plain multi-row INSERTs of the rows a
// batch of data messages becomes (samples and readings), 1000 readings per
// transaction, into the same schema, without decoding or bookkeeping.
// services/logger's BenchmarkIngestBroker sends data messages through our
// broker to a logger and waits for the last acknowledgement. Both report
// readings/s; their ratio is the overhead of the whole path.

const pointsPerRound = benchdata.PointsPerRound

func benchStore(b *testing.B, mode string) *Store {
	return openTest(b, func(o *Options) {
		o.Synchronous = mode
		o.Path = filepath.Join(b.TempDir(), "readings.db")
		o.Reserve = 0
		o.Log = nil
	})
}

// BenchmarkRawInsert: the same rows, plain batched INSERTs (the ceiling).
func BenchmarkRawInsert(b *testing.B) {
	for _, mode := range []string{"normal", "full"} {
		b.Run(mode, func(b *testing.B) {
			s := benchStore(b, mode)
			ctx := context.Background()
			// One device, run and boot, eight points, as the store would
			// have made them.
			for _, q := range []string{
				`INSERT INTO device(id, name) VALUES (1, 'meter')`,
				`INSERT INTO run(id, producer, run) VALUES (1, 'poller', 'r')`,
				`INSERT INTO boot(id, boot) VALUES (1, 'b')`,
			} {
				if _, err := s.exec(ctx, q); err != nil {
					b.Fatal(err)
				}
			}
			for p := 1; p <= pointsPerRound; p++ {
				if _, err := s.exec(ctx, `INSERT INTO point(id, device, name, kind) VALUES (?, 1, ?, 'number')`, p, fmt.Sprint("p", p)); err != nil {
					b.Fatal(err)
				}
			}
			// Pre-decoded rounds.
			d := benchdata.NewRound(1)
			const rounds = 1024
			msgs := make([]Message, rounds)
			for i := range msgs {
				msgs[i] = msg{dev: "meter", run: "r", seq: uint64(i + 1), at: benchdata.StampAt(i), vals: string(d.Vals(nil))}.item().Msg
			}
			st, err := s.conn.PrepareContext(ctx, `INSERT INTO sample(id, run, seq, device, t, m, boot) VALUES (?, 1, ?, 1, ?, ?, 1)`)
			if err != nil {
				b.Fatal(err)
			}
			defer st.Close()
			perTx := 1000 / pointsPerRound
			b.ResetTimer()
			b.ReportAllocs()
			readings := 0
			for i := 0; readings < b.N; i += perTx {
				if _, err := s.exec(ctx, `BEGIN IMMEDIATE`); err != nil {
					b.Fatal(err)
				}
				for k := range perTx {
					id := int64(i + k + 1)
					m := &msgs[(i+k)%rounds]
					if _, err := st.ExecContext(ctx, id, id, m.Wall, m.Mono); err != nil {
						b.Fatal(err)
					}
					for p, v := range m.Values {
						var val any
						switch v.Kind {
						case KindFloat:
							val = v.F
						default:
							val = v.I
						}
						s.args = append(s.args, ReadingID(id, int64(p+1)), val)
						s.nrows++
					}
					if s.nrows+pointsPerRound > readingsPerStmt {
						if err := s.flushReadings(ctx); err != nil {
							b.Fatal(err)
						}
					}
				}
				if err := s.flushReadings(ctx); err != nil {
					b.Fatal(err)
				}
				if _, err := s.exec(ctx, `COMMIT`); err != nil {
					b.Fatal(err)
				}
				readings += perTx * pointsPerRound
			}
			b.StopTimer()
			b.ReportMetric(float64(readings)/b.Elapsed().Seconds(), "readings/s")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// TestBytesPerReading stores a million readings of the demo's shape and
// prints the bytes each takes on disk (behind TINYSCADA_BYTES=1: it takes
// some seconds). It fails above 24 bytes per reading.
func TestBytesPerReading(t *testing.T) {
	t.Parallel()
	if os.Getenv("TINYSCADA_BYTES") == "" {
		t.Skip("set TINYSCADA_BYTES=1 to store a million readings and measure bytes per reading")
	}
	for _, shape := range []string{"demo", "floats"} {
		s := openTest(t, func(o *Options) { o.Synchronous = "normal"; o.Reserve = 0; o.Log = nil })
		d := benchdata.NewRound(4)
		const readings = 1_000_000
		rounds := readings / pointsPerRound
		batch := make([]Item, 1000/pointsPerRound)
		ctx := context.Background()
		for i := 0; i < rounds; i += len(batch) {
			for k := range batch {
				m := msg{dev: "meter", run: "r", seq: uint64(i + k + 1), at: benchdata.StampAt(i + k)}
				if shape == "demo" {
					m.vals = string(d.Vals(nil))
				} else {
					var v strings.Builder
					for j := range pointsPerRound {
						if j > 0 {
							v.WriteByte(',')
						}
						fmt.Fprintf(&v, `"f%d":%v`, j, math.Float32frombits(uint32(d.Rng.Uint64())>>2|0x3f000000))
					}
					m.vals = v.String()
				}
				batch[k] = m.item()
			}
			if _, err := s.Write(ctx, producer, batch); err != nil {
				t.Fatal(err)
			}
		}
		s.checkpoint(ctx, "TRUNCATE")
		z, err := s.Size(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var readingBytes int64
		db := roDB(t, s.opts.Path)
		// dbstat is not compiled into every SQLite; estimate the reading
		// table from the others if it is missing.
		err = db.QueryRow(`SELECT sum(pgsize) FROM dbstat WHERE name = 'reading'`).Scan(&readingBytes)
		per := float64(z.File) / readings
		t.Logf("%s: %d readings in %d samples: file %d bytes = %.1f B/reading (reading table alone: %s)",
			shape, readings, rounds, z.File, per, dbstatText(readingBytes, err, readings))
		if shape == "demo" && per > 24 {
			t.Errorf("%.1f bytes per reading, target ≤ 24", per)
		}
		s.Close()
	}
}

func dbstatText(b int64, err error, n int) string {
	if err != nil {
		return "dbstat unavailable: " + err.Error()
	}
	return fmt.Sprintf("%d bytes = %.1f B/reading", b, float64(b)/float64(n))
}
