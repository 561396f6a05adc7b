package broker

import (
	"context"
	"encoding/binary"
	"log/slog"
	"slices"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// BenchmarkPubSubQoS1 routes 100-byte QoS 1 messages from one paho publisher
// (the poller's credential) to one paho subscriber through an in-process
// broker, closed loop with 100 messages in flight. It reports msgs/s and the
// p50/p99 latency; the side-by-side comparison with mosquitto, in separate
// processes, is internal/brokerbench.
func BenchmarkPubSubQoS1(b *testing.B) {
	cfg := testConfig(b)
	cfg.Bus.HeartbeatInterval.Duration = time.Second
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	br, err := start(ctx, cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	go func() { _ = br.run(ctx) }()
	addr := "tcp://" + br.addrs[0]
	connect := func(id, user, pass string) mqtt.Client {
		c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(addr).SetClientID(id).
			SetUsername(user).SetPassword(pass).SetAutoReconnect(false))
		if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			b.Fatalf("connect %s: %v", id, tok.Error())
		}
		b.Cleanup(func() { c.Disconnect(50) })
		return c
	}
	const topic, window = "tinyscada/data/bench", 100
	credit := make(chan struct{}, window)
	lat := make([]time.Duration, 0, b.N)
	done := make(chan struct{})
	sub := connect("bench-sub", "", "")
	tok := sub.Subscribe(topic, 1, func(_ mqtt.Client, m mqtt.Message) {
		lat = append(lat, time.Duration(time.Now().UnixNano()-int64(binary.BigEndian.Uint64(m.Payload()))))
		<-credit
		if len(lat) == b.N {
			close(done)
		}
	})
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		b.Fatal(tok.Error())
	}
	pub := connect("bench-pub", "poller", password(b, cfg, "poller"))
	payload := make([]byte, 100)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		credit <- struct{}{}
		buf := slices.Clone(payload)
		binary.BigEndian.PutUint64(buf, uint64(time.Now().UnixNano()))
		pub.Publish(topic, 1, false, buf)
	}
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		b.Fatalf("received %d of %d", len(lat), b.N)
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}
