package broker

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/internal/testpeer"
	"github.com/tinyscada/tinyscada/shared/bus"
	"github.com/tinyscada/tinyscada/shared/config"
)

// valuesConfig has one device, m1, whose volts point has a unit.
func valuesConfig(t *testing.T) *config.Config {
	cfg := testConfig(t)
	cfg.Poller.Device = []config.PollerDevice{{Name: "m1", Point: []config.PollerPoint{{Name: "volts", Unit: "V"}, {Name: "count"}}}}
	return cfg
}

// publishRound publishes a data message of device as the poller; see
// publishHandled.
func publishRound(t *testing.T, c *bus.Client, device string, seq int, wall int64, values string) {
	t.Helper()
	payload := fmt.Sprintf(`{"run":"r1","seq":%d,"t":%d,"m":1,"b":"boot","v":{%s},"bad":{"gone":"timeout"}}`, seq, wall, values)
	publishHandled(t, c, "tinyscada/data/"+device, payload)
}

// publishHandled publishes payload on topic (QoS 1) and returns once the
// broker has handled it, value hook included. Mochi acknowledges a
// PUBLISH before it delivers it and runs OnPublished, but handles one
// client's packets in order: the acknowledgement of a second message, a
// device state, comes after both for the first.
func publishHandled(t *testing.T, c *bus.Client, topic, payload string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, m := range []bus.Message{
		{Topic: topic, QoS: 1, Payload: []byte(payload)},
		{Topic: "tinyscada/device/barrier/state", QoS: 1, Payload: []byte(`{"online":true}`)},
	} {
		if err := c.Publish(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
}

// retainedValues returns what the broker's retained store holds under
// tinyscada/value/<device>/#, as "topic payload", sorted.
func retainedValues(b *broker, device string) []string {
	var out []string
	for _, pk := range b.srv.Topics.Messages("tinyscada/value/" + device + "/#") {
		out = append(out, pk.TopicName+" "+string(pk.Payload))
	}
	slices.Sort(out)
	return out
}

// The broker derives every point's retained value from the data messages:
// mosquitto_sub sees each point's last value with its unit and the time of
// the reading that first had it; a subscriber sees a change as it happens
// and nothing for a value that did not change; nothing is stored retained
// while nobody could see it; a payload that is no data message changes
// nothing.
func TestValueTopicsFromDataMessages(t *testing.T) {
	t.Parallel()
	testpeer.Need(t, "mosquitto_sub")
	cfg := valuesConfig(t)
	b := startBroker(t, cfg, slog.New(slog.DiscardHandler))
	h, p := hostPort(t, b.addrs[0])
	poller := dial(t, b.addrs[0], "poller", password(t, cfg, "poller"))

	publishRound(t, poller, "m1", 1, 1000, `"volts":230.1,"count":5,"on":true`)
	if got := retainedValues(b, "m1"); len(got) != 0 {
		t.Errorf("values retained before anyone subscribed: %q", got)
	}
	want := []string{
		`tinyscada/value/m1/count {"v":5,"t":1000}`,
		`tinyscada/value/m1/on {"v":true,"t":1000}`,
		`tinyscada/value/m1/volts {"v":230.1,"t":1000,"unit":"V"}`,
	}
	out, err := mosq(t, "mosquitto_sub", "-h", h, "-p", p, "-t", "tinyscada/value/#", "-v", "-C", "3", "-W", "10")
	if err != nil {
		t.Fatalf("mosquitto_sub: %v\n%s", err, out)
	}
	got := strings.Split(strings.TrimSpace(out), "\n")
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("mosquitto_sub saw\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	// Live: only what changed, at once.
	rec := newRecorder(t, b.addrs[0], "tinyscada/value/m1/#")
	testpeer.Eventually(t, 10*time.Second, "the retained values", func() bool { // in any order
		got := rec.all()
		slices.Sort(got)
		return slices.Equal(got, want)
	})
	publishRound(t, poller, "m1", 2, 2000, `"volts":231,"count":5,"on":true`)
	rec.waitFor(t, `tinyscada/value/m1/volts {"v":231,"t":2000,"unit":"V"}`)
	// Not a data message: ignored here (the logger records it).
	publishHandled(t, poller, "tinyscada/data/m1", `{"run":"r1","seq":3,"v":{"volts":`)
	publishRound(t, poller, "m1", 4, 4000, `"volts":231,"count":6,"on":true`)
	rec.waitFor(t, `tinyscada/value/m1/count {"v":6,"t":4000}`)
	if n := len(rec.all()); n != len(want)+2 {
		t.Errorf("the subscriber got %d messages, want %d (3 retained, 2 changes):\n%s", n, len(want)+2, strings.Join(rec.all(), "\n"))
	}

	// Another device's values stay out of the retained store while no
	// subscription matches them, and are there for the first that does.
	publishRound(t, poller, "m2", 5, 5000, `"flow":1.5`)
	if got := retainedValues(b, "m2"); len(got) != 0 {
		t.Errorf("m2's values retained while nobody could see them: %q", got)
	}
	out, err = mosq(t, "mosquitto_sub", "-h", h, "-p", p, "-t", "tinyscada/value/+/flow", "-v", "-C", "1", "-W", "10")
	if err != nil || strings.TrimSpace(out) != `tinyscada/value/m2/flow {"v":1.5,"t":5000}` {
		t.Errorf("mosquitto_sub on m2: %v %q", err, out)
	}
}

// With poller.retain_values off there are no value topics.
func TestValueTopicsOff(t *testing.T) {
	t.Parallel()
	cfg := valuesConfig(t)
	cfg.Poller.RetainValues = false
	b := startBroker(t, cfg, slog.New(slog.DiscardHandler))
	data := newRecorder(t, b.addrs[0], "tinyscada/#")
	poller := dial(t, b.addrs[0], "poller", password(t, cfg, "poller"))
	publishRound(t, poller, "m1", 1, 1000, `"volts":230.1`)
	data.waitFor(t, `tinyscada/data/m1 {"run":"r1","seq":1,"t":1000,"m":1,"b":"boot","v":{"volts":230.1},"bad":{"gone":"timeout"}}`)
	for _, m := range data.all() {
		if strings.HasPrefix(m, "tinyscada/value/") {
			t.Errorf("a value topic with retain_values off: %s", m)
		}
	}
	if got := retainedValues(b, "m1"); len(got) != 0 {
		t.Errorf("values retained with retain_values off: %q", got)
	}
}
