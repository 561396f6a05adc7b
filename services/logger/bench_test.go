package logger

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"runtime"
	"sync"
	"testing"

	"github.com/tinyscada/tinyscada/internal/benchdata"
	"github.com/tinyscada/tinyscada/shared/bus"
	"github.com/tinyscada/tinyscada/shared/config"
	"github.com/tinyscada/tinyscada/shared/service"
	"github.com/tinyscada/tinyscada/shared/store"
)

// Figures for the closing note of the logger issue. Run:
//
//	go test ./services/logger -run XXX -bench . -benchtime 200000x
//	go test ./shared/store -run XXX -bench RawInsert -benchtime 200000x
//
// BenchmarkRawInsert (shared/store) is the ceiling: plain multi-row
// INSERTs of the rows a batch of data messages becomes, without decoding
// or bookkeeping. BenchmarkIngestBroker sends data messages through our
// broker to a logger and waits for the last acknowledgement. Both report
// readings/s; their ratio is the overhead of the whole path.

const pointsPerRound = benchdata.PointsPerRound

func benchStore(b *testing.B, mode string) *store.Store {
	return openTest(b, func(o *store.Options) {
		o.Synchronous = mode
		o.Path = filepath.Join(b.TempDir(), "readings.db")
		o.Reserve = 0
		o.Log = nil
	})
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
			batch := make([]store.Item, 1000/pointsPerRound)
			ctx := context.Background()
			var ms0, ms1 runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&ms0)
			b.ResetTimer()
			for i := 0; i < rounds; i += len(batch) {
				n := min(len(batch), rounds-i)
				for k := range n {
					store.DecodeItem(&batch[k], "meter", payloads[i+k])
				}
				if _, err := s.Write(ctx, Producer, batch[:n]); err != nil {
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
	var m store.Message
	if err := ls.Bus.Subscribe(ls.Topics.Sub("data"), 1, func(_ string, p []byte) {
		mu.Lock()
		defer mu.Unlock()
		if store.Decode(p, &m) != nil {
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
