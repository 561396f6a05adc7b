package config

import (
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/pelletier/go-toml/v2/unstable"
)

var healthBadCases = []struct {
	name string
	doc  string
	want []want
}{
	{"expect names", doc(
		"version = 1",
		"[health]",
		"expect = ['broker', 'a/b', 'broker', 'health', '']",
	), []want{
		{3, "health.expect[1]", "holds a '/'"},
		{3, "health.expect[2]", `"broker" is listed twice`},
		{3, "health.expect[3]", "watches itself"},
		{3, "health.expect[4]", "must not be empty"},
	}},
	{"stale below two intervals", doc("version = 1", "[health]", "interval = '5s'", "stale_after = '9s'"),
		[]want{{4, "health.stale_after", "shorter than two intervals (10s)"}}},
	{"stall below stale", doc("version = 1", "[health]", "stall_after = '10s'"),
		[]want{{3, "health.stall_after", "shorter than stale_after (15s)"}}},
	{"interval bounds", doc("version = 1", "[health]", "interval = '10ms'", "stale_after = '6s'", "stall_after = '6s'"),
		[]want{{3, "health.interval", "too short"}}},
	{"failing restart below interval", doc("version = 1", "[health]", "failing_restart_after = '1s'"),
		[]want{{3, "health.failing_restart_after", "shorter than interval"}}},
	{"restart limit", doc("version = 1", "[health]", "restart_limit = -1"),
		[]want{{3, "health.restart_limit", "out of range"}}},
	{"restart window", doc("version = 1", "[health]", "restart_window = '0s'"),
		[]want{{3, "health.restart_window", "more than 0s"}}},
	{"run watchdogs", doc("version = 1", "[health]", "run_watchdog = '3s'", "run_self_watchdog = '1s'"), []want{
		{3, "health.run_watchdog", "shorter than two intervals"},
		{4, "health.run_self_watchdog", "shorter than two intervals"},
	}},
	{"unknown key", doc("version = 1", "[health]", "expected = ['x']"),
		[]want{{3, "health.expected", "unknown key"}}},
}

func TestHealthBad(t *testing.T) {
	for _, tc := range healthBadCases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse("h.toml", []byte(tc.doc))
			if err == nil {
				t.Fatalf("no error; parsed %+v", c.Health)
			}
			got := Errors(err)
			if len(got) != len(tc.want) {
				t.Fatalf("got %d errors, want %d:\n%v", len(got), len(tc.want), err)
			}
			for i, w := range tc.want {
				g := got[i]
				if g.Line != w.line || g.Key != w.key || !strings.Contains(g.Msg, w.msg) {
					t.Errorf("error %d = %q\nwant line %d, key %q, message with %q", i, g, w.line, w.key, w.msg)
				}
			}
		})
	}
}

func TestHealthGood(t *testing.T) {
	c, err := Parse("h.toml", []byte(doc(
		"version = 1",
		"[bus]",
		"heartbeat_interval = '1s'", // below stale_after
		"[health]",
		"expect = ['broker', 'my-script']",
		"interval = '500ms'",
		"stale_after = '2s'",
		"stall_after = '5s'",
		"broker_grace = '0s'",
		"failing_restart_after = '0s'",
		"restart_limit = 0",
		"restart_window = '0s'",
		"run_watchdog = '0s'",
		"run_self_watchdog = '3s'",
	)))
	if err != nil {
		t.Fatal(err)
	}
	want := Health{
		Expect:          []string{"broker", "my-script"},
		Interval:        Duration{500 * time.Millisecond},
		StaleAfter:      Duration{2 * time.Second},
		StallAfter:      Duration{5 * time.Second},
		RunSelfWatchdog: Duration{3 * time.Second},
	}
	if !reflect.DeepEqual(c.Health, want) {
		t.Errorf("got %+v\nwant %+v", c.Health, want)
	}
	if u := c.Health.Unit("poller"); u != "tinyscada-poller.service" {
		t.Errorf("Unit(poller) = %q", u)
	}
	// An empty list is nil, so that the effective configuration decodes to
	// itself.
	c, err = Parse("h.toml", []byte(doc("version = 1", "[health]", "expect = []")))
	if err != nil || c.Health.Expect != nil {
		t.Errorf("expect = []: %v, %#v", err, c.Health.Expect)
	}
}

// docs/health.md names every key of the section, and the sample file in
// deploy/ leaves them to their defaults.
func TestHealthDocs(t *testing.T) {
	b, err := os.ReadFile("../../docs/health.md")
	if err != nil {
		t.Fatal(err)
	}
	enc, err := Default().Encode()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range newIndex(enc).entries {
		if e.kind != unstable.KeyValue || !strings.HasPrefix(e.path, "health.") {
			continue
		}
		n++
		if !strings.Contains(string(b), "`"+e.path+"`") {
			t.Errorf("docs/health.md does not document `%s`", e.path)
		}
	}
	if n < 10 {
		t.Errorf("found only %d health keys in the encoded defaults", n)
	}
}
