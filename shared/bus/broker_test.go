package bus_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/internal/testpeer"
	"github.com/tinyscada/tinyscada/internal/testpeer/testbroker"
	"github.com/tinyscada/tinyscada/services/broker"
	"github.com/tinyscada/tinyscada/shared/bus"
	"github.com/tinyscada/tinyscada/shared/config"
	"github.com/tinyscada/tinyscada/shared/credentials"
	"github.com/tinyscada/tinyscada/shared/service"
)

// ourBroker runs services/broker in-process until the test ends.
func ourBroker(t *testing.T) *config.Config {
	t.Helper()
	cfg := testpeer.Config(t)
	testbroker.Start(t, cfg, nil)
	return cfg
}

func role(cfg *config.Config, name, pass string) bus.Options {
	return bus.Options{
		Address:      cfg.Bus.Address,
		ClientID:     "tinyscada-" + name + "-bustest",
		CleanSession: true,
		RetryMax:     100 * time.Millisecond,
		Credentials:  func() (string, string, error) { return name, pass, nil },
	}
}

// Through our broker: the poller's data reaches the logger's subscription
// and the logger's acknowledgement the poller's, both QoS 1, as the roles
// do it; the roles' service runtime connects with its will and state.
func TestOurBroker(t *testing.T) {
	t.Parallel()
	cfg := ourBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	poller, err := service.Start(ctx, "poller", cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer poller.Bus.Close()
	pass, err := credentials.Read(cfg.StateDir, "logger")
	if err != nil {
		t.Fatal(err)
	}
	lc, err := bus.Dial(ctx, role(cfg, "logger", pass))
	if err != nil {
		t.Fatal(err)
	}
	defer lc.Close()

	data := make(chan string, 100)
	if err := lc.Subscribe(poller.Topics.Sub("data"), 1, func(topic string, p []byte) {
		data <- topic + " " + string(p)
		_ = lc.Publish(ctx, bus.Message{Topic: poller.Topics.Ack("poller"), QoS: 1, Payload: p})
	}); err != nil {
		t.Fatal(err)
	}
	states := make(chan service.State, 100)
	if err := lc.Subscribe(poller.Topics.SvcState("poller"), 1, func(_ string, p []byte) {
		var st service.State
		if json.Unmarshal(p, &st) == nil {
			states <- st
		}
	}); err != nil {
		t.Fatal(err)
	}
	acks := make(chan string, 100)
	if err := poller.Bus.Subscribe(poller.Topics.Ack("poller"), 1, func(_ string, p []byte) { acks <- string(p) }); err != nil {
		t.Fatal(err)
	}
	for i := range 100 {
		if err := poller.Bus.Publish(ctx, bus.Message{Topic: poller.Topics.Data("meter"), QoS: 1, Payload: fmt.Append(nil, i)}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 100 {
		want := fmt.Sprint(i)
		if got := next(t, data); got != poller.Topics.Data("meter")+" "+want {
			t.Fatalf("logger got %q; want message %s", got, want)
		}
		if got := next(t, acks); got != want {
			t.Fatalf("poller got ack %q; want %s", got, want)
		}
	}
	if st := next(t, states); st.State != service.Starting {
		t.Errorf("retained state %+v; want starting", st)
	}

	// The will: the poller's connection breaks without DISCONNECT.
	// Through the public API that is a broker-side close: a second client
	// with the poller's id takes the session over.
	ppass, err := credentials.Read(cfg.StateDir, "poller")
	if err != nil {
		t.Fatal(err)
	}
	o := role(cfg, "poller", ppass)
	o.ClientID = "tinyscada-poller"
	taker, err := bus.Dial(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	taker.Close()
	for next(t, states).State != service.Lost {
	}
}

func next[T any](t *testing.T, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(15 * time.Second):
		t.Fatal("nothing came in 15s")
		panic("unreachable")
	}
}

// Our broker refuses a wrong password; Dial names the refusal.
func TestOurBrokerRefuses(t *testing.T) {
	t.Parallel()
	cfg := ourBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err := bus.Dial(ctx, role(cfg, "poller", "wrong"))
	if err == nil || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("Dial with a wrong password: %v; want the refusal named", err)
	}
	t.Logf("Dial: %v", err)
}

// Over a unix socket to our broker: Dial waits for the socket, and data
// goes both ways.
func TestOurBrokerUnixSocket(t *testing.T) {
	t.Parallel()
	cfg := config.Default()
	cfg.StateDir = t.TempDir()
	sock := filepath.Join(t.TempDir(), "bus.sock")
	cfg.Bus.Address = "unix:" + sock
	cfg.Broker.Listen, cfg.Broker.UnixSocket = nil, sock
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	bctx, bcancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = broker.Run(bctx, cfg, slog.New(slog.DiscardHandler)) }()
	t.Cleanup(func() { bcancel(); <-done })

	o := role(cfg, "logger", "")
	o.Credentials = func() (string, string, error) {
		p, err := credentials.Read(cfg.StateDir, "logger")
		return "logger", p, err
	}
	c, err := bus.Dial(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got := make(chan string, 1)
	topic := "tinyscada/ack/poller"
	if err := c.Subscribe(topic, 1, func(_ string, p []byte) { got <- string(p) }); err != nil {
		t.Fatal(err)
	}
	if err := c.Publish(ctx, bus.Message{Topic: topic, QoS: 1, Payload: []byte("over unix")}); err != nil {
		t.Fatal(err)
	}
	if p := next(t, got); p != "over unix" {
		t.Fatalf("got %q", p)
	}
}
