package logger

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/shared/bus"
	"github.com/tinyscada/tinyscada/shared/clock"
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

// demoRound is a poll round shaped like the demo's meter: three floats, a
// growing counter, a scaled frequency, a constant and two booleans.
type demoRound struct {
	rng *rand.Rand
	n   int
	v   [3]float64
}

func newDemoRound(seed uint64) *demoRound {
	return &demoRound{rng: rand.New(rand.NewPCG(seed, 1)), v: [3]float64{230, 12, 2768}}
}

// vals returns the inside of "v" of the next round.
func (d *demoRound) vals(dst []byte) []byte {
	d.n++
	for i := range d.v {
		d.v[i] += (d.rng.Float64() - 0.5) * d.v[i] / 1000
	}
	// float32 values printed as the poller prints them (shortest form).
	dst = append(dst, `"voltage":`...)
	dst = strconv.AppendFloat(dst, float64(float32(d.v[0])), 'g', -1, 32)
	dst = append(dst, `,"current":`...)
	dst = strconv.AppendFloat(dst, float64(float32(d.v[1])), 'g', -1, 32)
	dst = append(dst, `,"power":`...)
	dst = strconv.AppendFloat(dst, float64(float32(d.v[2])), 'g', -1, 32)
	dst = append(dst, `,"energy":`...)
	dst = strconv.AppendInt(dst, 123400+int64(d.n/4), 10)
	dst = append(dst, `,"frequency":`...)
	dst = strconv.AppendFloat(dst, float64(4990+d.rng.IntN(20))*0.01, 'g', -1, 64)
	dst = append(dst, `,"ct_ratio":100,"breaker_closed":true,"alarm":`...)
	dst = strconv.AppendBool(dst, d.rng.IntN(50) == 0)
	return dst
}

const pointsPerRound = 8

// roundPayload is one data message of the demo shape.
func roundPayload(d *demoRound, run string, seq uint64, at clock.Stamp) []byte {
	b := fmt.Appendf(nil, `{"run":%q,"seq":%d,"t":%d,"m":%d,"b":%q,"v":{`, run, seq, at.Wall.UnixMilli(), int64(at.Mono), at.Boot)
	b = d.vals(b)
	return append(b, "}}"...)
}

// stampAt is the stamp of round i (one every 100 ms).
func stampAt(i int) clock.Stamp {
	d := time.Duration(i) * 100 * time.Millisecond
	return clock.Stamp{Wall: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).Add(d), Mono: time.Hour + d, Boot: "7d9c3ab4-6a1e-4f55-9a57-3c1f0c5e2b11"}
}

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
			d := newDemoRound(1)
			const rounds = 1024
			msgs := make([]Message, rounds)
			for i := range msgs {
				if err := Decode(roundPayload(d, "r", uint64(i+1), stampAt(i)), &msgs[i]); err != nil {
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
			d := newDemoRound(2)
			rounds := b.N/pointsPerRound + 1
			payloads := make([][]byte, rounds)
			for i := range payloads {
				payloads[i] = roundPayload(d, "r", uint64(i+1), stampAt(i))
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
			})
			rounds := b.N/pointsPerRound + 1
			d := newDemoRound(3)
			run := fmt.Sprint("bench", mode, b.N)
			payloads := make([][]byte, rounds)
			for i := range payloads {
				payloads[i] = roundPayload(d, run, uint64(i+1), stampAt(i))
			}
			publishAll(b, st, run, payloads)
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
		d := newDemoRound(4)
		const readings = 1_000_000
		rounds := readings / pointsPerRound
		batch := make([]Item, 1000/pointsPerRound)
		ctx := context.Background()
		for i := 0; i < rounds; i += len(batch) {
			for k := range batch {
				var p []byte
				if shape == "demo" {
					p = roundPayload(d, "r", uint64(i+k+1), stampAt(i+k))
				} else {
					at := stampAt(i + k)
					var v strings.Builder
					for j := range pointsPerRound {
						if j > 0 {
							v.WriteByte(',')
						}
						fmt.Fprintf(&v, `"f%d":%v`, j, math.Float32frombits(uint32(d.rng.Uint64())>>2|0x3f000000))
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
	d := newDemoRound(5)
	payloads := make([][]byte, rounds)
	for i := range payloads {
		payloads[i] = roundPayload(d, run, uint64(i+1), stampAt(i))
	}
	publishAll(b, st, run, payloads)
}

// publishAll times the publication of payloads (data messages of run) on
// the poller's connection, 8 publishers in parallel, until the last one is
// acknowledged, and reports readings/s and msgs/s. Like the poller's outbox,
// at most window messages wait for their acknowledgement (the broker queues
// up to max_pending for a client and drops beyond).
func publishAll(b *testing.B, st *stack, run string, payloads [][]byte) {
	topic := st.poller.Topics.Data("meter")
	b.ResetTimer()
	const publishers, window = 8, 1000
	next := make(chan int, publishers)
	var wg sync.WaitGroup
	for range publishers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := st.poller.Bus.Publish(st.ctx, bus.Message{Topic: topic, QoS: 1, Payload: payloads[i]}); err != nil {
					b.Error(err)
				}
			}
		}()
	}
	for i := range payloads {
		for uint64(i) >= st.ack(run)+window {
			time.Sleep(100 * time.Microsecond)
		}
		next <- i
	}
	close(next)
	wg.Wait()
	st.waitAck(run, uint64(len(payloads)), time.Minute)
	b.StopTimer()
	b.ReportMetric(float64(len(payloads)*pointsPerRound)/b.Elapsed().Seconds(), "readings/s")
	b.ReportMetric(float64(len(payloads))/b.Elapsed().Seconds(), "msgs/s")
	b.ReportMetric(0, "ns/op")
}
