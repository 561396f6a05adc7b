package broker

import (
	"log/slog"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// TestSlowHousekeeping: mochi's sweeps run at the period set, not every
// second. A retained MQTT 5 message that has expired is still retained
// 1.5 s later with the sweeps an hour apart (mochi's own period of one
// second deletes it); with them 100 ms apart it goes at once. It also
// fails if a mochi upgrade moves the tickers.
func TestSlowHousekeeping(t *testing.T) {
	retainedAfter := func(t *testing.T, period, wait time.Duration) bool {
		srv := mqtt.New(&mqtt.Options{Logger: slog.New(slog.DiscardHandler)})
		if err := slowHousekeeping(srv, period); err != nil {
			t.Fatal(err)
		}
		if err := srv.Serve(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { srv.Close() })
		now := time.Now().Unix()
		srv.Topics.RetainMessage(packets.Packet{
			FixedHeader:     packets.FixedHeader{Type: packets.Publish, Retain: true},
			TopicName:       "tinyscada/test/expired",
			Payload:         []byte("1"),
			ProtocolVersion: 5,
			Created:         now - 10,
			Expiry:          now - 5,
		})
		time.Sleep(wait)
		_, ok := srv.Topics.Retained.Get("tinyscada/test/expired")
		return ok
	}
	if !retainedAfter(t, time.Hour, 1500*time.Millisecond) {
		t.Error("sweeps an hour apart: the expired retained message was swept within 1.5 s")
	}
	gone := false
	for range 20 {
		if gone = !retainedAfter(t, 100*time.Millisecond, 250*time.Millisecond); gone {
			break
		}
	}
	if !gone {
		t.Error("sweeps 100 ms apart: the expired retained message was never swept")
	}
}
