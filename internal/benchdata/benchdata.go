// Package benchdata makes the data messages the ingest benchmarks send (a
// poll round shaped like the demo's meter) and publishes them the way the
// poller does: QoS 1, in pipelined batches, a bounded window of messages
// waiting for the logger's acknowledgement.
package benchdata

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/shared/bus"
	"github.com/tinyscada/tinyscada/shared/clock"
)

// PointsPerRound is the number of readings in one demo round.
const PointsPerRound = 8

// Round makes poll rounds shaped like the demo's meter: three floats, a
// growing counter, a scaled frequency, a constant and two booleans.
type Round struct {
	Rng *rand.Rand
	n   int
	v   [3]float64
}

// NewRound returns a generator seeded with seed.
func NewRound(seed uint64) *Round {
	return &Round{Rng: rand.New(rand.NewPCG(seed, 1)), v: [3]float64{230, 12, 2768}}
}

// Vals appends the inside of "v" of the next round to dst.
func (d *Round) Vals(dst []byte) []byte {
	d.n++
	for i := range d.v {
		d.v[i] += (d.Rng.Float64() - 0.5) * d.v[i] / 1000
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
	dst = strconv.AppendFloat(dst, float64(4990+d.Rng.IntN(20))*0.01, 'g', -1, 64)
	dst = append(dst, `,"ct_ratio":100,"breaker_closed":true,"alarm":`...)
	dst = strconv.AppendBool(dst, d.Rng.IntN(50) == 0)
	return dst
}

// Payload is one data message of the demo shape.
func (d *Round) Payload(run string, seq uint64, at clock.Stamp) []byte {
	b := fmt.Appendf(nil, `{"run":%q,"seq":%d,"t":%d,"m":%d,"b":%q,"v":{`, run, seq, at.Wall.UnixMilli(), int64(at.Mono), at.Boot)
	b = d.Vals(b)
	return append(b, "}}"...)
}

// Payloads returns n data messages of run, seq 1..n.
func (d *Round) Payloads(run string, n int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		out[i] = d.Payload(run, uint64(i+1), StampAt(i))
	}
	return out
}

// StampAt is the stamp of round i (one every 100 ms).
func StampAt(i int) clock.Stamp {
	d := time.Duration(i) * 100 * time.Millisecond
	return clock.Stamp{Wall: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).Add(d), Mono: time.Hour + d, Boot: "7d9c3ab4-6a1e-4f55-9a57-3c1f0c5e2b11"}
}

// Publish times the publication of payloads on topic through pub, as the
// poller publishes its outbox (services/poller publishData): batches of up
// to 64 messages sent back to back with bus.Send, then their broker
// acknowledgements awaited; at most 1000 messages wait for the logger's
// acknowledgement (the poller's outbox; the broker queues up to max_pending
// for a client and drops beyond). The clock stops when acked (the highest
// acknowledged seq of the run) reaches the last one. It reports readings/s
// and msgs/s.
func Publish(b *testing.B, ctx context.Context, pub bus.Publisher, topic string, payloads [][]byte, acked func() uint64) {
	b.ResetTimer()
	const batch, window = 64, 1000
	sent := make([]bus.Sent, 0, batch)
	for i := 0; i < len(payloads); {
		for uint64(i) >= acked()+window {
			time.Sleep(100 * time.Microsecond)
		}
		n := min(batch, len(payloads)-i, int(acked()+window)-i)
		sent = sent[:0]
		for _, p := range payloads[i : i+n] {
			s, err := bus.Send(ctx, pub, bus.Message{Topic: topic, QoS: 1, Payload: p})
			if err != nil {
				b.Fatal(err)
			}
			sent = append(sent, s)
		}
		for _, s := range sent {
			if err := s.Wait(ctx); err != nil {
				b.Fatal(err)
			}
		}
		i += n
	}
	deadline := time.Now().Add(time.Minute)
	for acked() < uint64(len(payloads)) {
		if time.Now().After(deadline) {
			b.Fatalf("acknowledged %d of %d messages after a minute", acked(), len(payloads))
		}
		time.Sleep(100 * time.Microsecond)
	}
	b.StopTimer()
	b.ReportMetric(float64(len(payloads)*PointsPerRound)/b.Elapsed().Seconds(), "readings/s")
	b.ReportMetric(float64(len(payloads))/b.Elapsed().Seconds(), "msgs/s")
	b.ReportMetric(0, "ns/op")
}
