package logger

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/tinyscada/tinyscada/internal/benchdata"
	"github.com/tinyscada/tinyscada/shared/bus"
	"github.com/tinyscada/tinyscada/shared/config"
	"github.com/tinyscada/tinyscada/shared/service"
)

// Figures for the closing note of the logger issue. Run:
//
//	go test ./services/logger -run XXX -bench . -benchtime 200000x
//	TINYSCADA_BYTES=1 go test ./services/logger -run TestBytesPerReading -v
//
// BenchmarkRawInsert is the ceiling: plain multi-row INSERTs of the rows a
// batch of data messages becomes (samples and readings), 1000 readings per
// transaction, into the same schema, without decoding or bookkeeping.
// BenchmarkIngestBroker sends data messages through our broker to a
// logger and waits for the last acknowledgement. Both report readings/s;
// their ratio is the overhead of the whole path.

const pointsPerRound = benchdata.PointsPerRound

func benchStore(b *testing.B, mode string) *Store {
	return openTest(b, func(o *StoreOptions) {
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
				if err := Decode(d.Payload("r", uint64(i+1), benchdata.StampAt(i)), &msgs[i]); err != nil {
					b.Fatal(err)
				}
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
						s.args = append(s.args, id, int64(p+1), val)
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

// BenchmarkDecodeInsert: the logger's own path without the broker: decode
// each payload and Write batches of 1000 readings. It reports CPU time and
// allocations per reading.
func BenchmarkDecodeInsert(b *testing.B) {
	for _, mode := range []string{"normal", "full"} {
		b.Run(mode, func(b *testing.B) {
			s := benchStore(b, mode)
			d := benchdata.NewRound(2)
			rounds := b.N/pointsPerRound + 1
			payloads := make([][]byte, rounds)
			for i := range payloads {
				payloads[i] = d.Payload("r", uint64(i+1), benchdata.StampAt(i))
			}
			batch := make([]Item, 1000/pointsPerRound)
			ctx := context.Background()
			var ms0, ms1 runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&ms0)
			b.ResetTimer()
			for i := 0; i < rounds; i += len(batch) {
				n := min(len(batch), rounds-i)
				for k := range n {
					batch[k].Device, batch[k].Payload = "meter", payloads[i+k]
					batch[k].Decode()
				}
				if _, err := s.Write(ctx, batch[:n]); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			runtime.ReadMemStats(&ms1)
			readings := float64(rounds * pointsPerRound)
			b.ReportMetric(readings/b.Elapsed().Seconds(), "readings/s")
			b.ReportMetric(float64(b.Elapsed().Microseconds())/readings, "µs/reading")
			b.ReportMetric(float64(ms1.Mallocs-ms0.Mallocs)/readings, "allocs/reading")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// BenchmarkIngestBroker: data messages published QoS 1 through our broker
// by a client with the poller's credential (8 publishers in parallel, at
// most 1000 messages unacknowledged), to a logger; the clock stops at the
// acknowledgement of the last one. b.N is the number of readings.
func BenchmarkIngestBroker(b *testing.B) {
	for _, mode := range []string{"normal", "full"} {
		b.Run(mode, func(b *testing.B) {
			st := newStack(b, func(cfg *config.Config) {
				cfg.Logger.Synchronous = mode
				cfg.Logger.BatchReadings = 1000
				// Room for every reading of a long run: the size
				// policy is not what is measured.
				cfg.Logger.MaxDBSize = 4 << 30
			})
			rounds := b.N/pointsPerRound + 1
			d := benchdata.NewRound(3)
			run := fmt.Sprint("bench", mode, b.N)
			payloads := make([][]byte, rounds)
			for i := range payloads {
				payloads[i] = d.Payload(run, uint64(i+1), benchdata.StampAt(i))
			}
			benchdata.Publish(b, st.ctx, st.poller.Bus, st.poller.Topics.Data("meter"), payloads, func() uint64 { return st.ack(run) })
			db := roDB(b, st.dbPath())
			if n := queryInt(b, db, `SELECT count(*) FROM sample s JOIN run r ON r.id = s.run WHERE r.run = ?`, run); n != int64(rounds) {
				b.Fatalf("%d messages stored, want %d", n, rounds)
			}
		})
	}
}

// TestBytesPerReading stores a million readings of the demo's shape and
// prints the bytes each takes on disk (behind TINYSCADA_BYTES=1: it takes
// some seconds). It fails above 24 bytes per reading.
func TestBytesPerReading(t *testing.T) {
	if os.Getenv("TINYSCADA_BYTES") == "" {
		t.Skip("set TINYSCADA_BYTES=1 to store a million readings and measure bytes per reading")
	}
	for _, shape := range []string{"demo", "floats"} {
		s := openTest(t, func(o *StoreOptions) { o.Synchronous = "normal"; o.Reserve = 0; o.Log = nil })
		d := benchdata.NewRound(4)
		const readings = 1_000_000
		rounds := readings / pointsPerRound
		batch := make([]Item, 1000/pointsPerRound)
		ctx := context.Background()
		for i := 0; i < rounds; i += len(batch) {
			for k := range batch {
				var p []byte
				if shape == "demo" {
					p = d.Payload("r", uint64(i+k+1), benchdata.StampAt(i+k))
				} else {
					at := benchdata.StampAt(i + k)
					var v strings.Builder
					for j := range pointsPerRound {
						if j > 0 {
							v.WriteByte(',')
						}
						fmt.Fprintf(&v, `"f%d":%v`, j, math.Float32frombits(uint32(d.Rng.Uint64())>>2|0x3f000000))
					}
					p = msg{dev: "meter", run: "r", seq: uint64(i + k + 1), at: at, vals: v.String()}.payload()
				}
				batch[k].Device, batch[k].Payload = "meter", p
				batch[k].Decode()
			}
			if _, err := s.Write(ctx, batch); err != nil {
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

// BenchmarkTransport is BenchmarkIngestBroker with a logger that stores
// nothing: a client with the logger's credential that acknowledges every
// 125th message on arrival. It is the ceiling the bus alone allows.
func BenchmarkTransport(b *testing.B) {
	st := newStack(b, nil)
	st.stopLogger()
	ls, err := service.Start(st.ctx, "logger", st.cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	defer ls.Bus.Close()
	rounds := b.N/pointsPerRound + 1
	run := fmt.Sprint("transport", b.N)
	var mu sync.Mutex
	got := map[uint64]bool{}
	var high uint64
	var m Message
	if err := ls.Bus.Subscribe(ls.Topics.Sub("data"), 1, func(_ string, p []byte) {
		mu.Lock()
		defer mu.Unlock()
		if Decode(p, &m) != nil {
			return
		}
		got[m.Seq] = true
		for got[high+1] {
			delete(got, high+1)
			high++
		}
		if high%125 == 0 || high == uint64(rounds) {
			_ = ls.Bus.Publish(st.ctx, bus.Message{Topic: ls.Topics.Ack("poller"), QoS: 0,
				Payload: fmt.Appendf(nil, `{"run":%q,"seq":%d}`, run, high)})
		}
	}); err != nil {
		b.Fatal(err)
	}
	d := benchdata.NewRound(5)
	payloads := make([][]byte, rounds)
	for i := range payloads {
		payloads[i] = d.Payload(run, uint64(i+1), benchdata.StampAt(i))
	}
	benchdata.Publish(b, st.ctx, st.poller.Bus, st.poller.Topics.Data("meter"), payloads, func() uint64 { return st.ack(run) })
}
