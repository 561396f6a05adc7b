package poller

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/shared/config"
	"github.com/tinyscada/tinyscada/shared/pty"
)

// waitFor polls cond every few milliseconds until it holds, failing the
// test after timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: not after %v", what, timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// linePort opens a pseudo-terminal (closed at the end of the test) and
// returns it with a configuration in dir of one line-mode port "ascii" on
// it, at 115200 baud with timeout, and the devices given (TOML).
func linePort(t *testing.T, dir, timeout, devices string) (*pty.PTY, *config.Config) {
	t.Helper()
	pt, err := pty.Open()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pt.Close() })
	return pt, testConfig(t, dir, fmt.Sprintf(`
[[poller.port]]
name = "ascii"
device = %q
mode = "line"
baud = 115200
timeout = %q
`, pt.SlavePath, timeout)+devices)
}

// TestLineRecordRules drives a line device without points on a real
// pseudo-terminal: a repeated field is published once (the first value);
// a fragment without a newline is dropped after the port's timeout of
// silence instead of being glued onto the next record; a record whose
// field names break the name rule (control bytes, invalid UTF-8, a
// wildcard) is a bad record, counted, and never becomes a point.
func TestLineRecordRules(t *testing.T) {
	t.Parallel()
	pt, cfg := linePort(t, t.TempDir(), "200ms", `
[[poller.device]]
name = "probe"
port = "ascii"
interval = "1s"
`)
	rec := newRecorder()
	p := startPoller(t, cfg, rec)
	<-p.Started()
	write := func(s string) {
		t.Helper()
		if _, err := pt.Master.Write([]byte(s)); err != nil {
			t.Fatal(err)
		}
	}
	topic := "tinyscada/data/probe"
	from := 0
	// The poller skips up to the first newline (it may have started
	// mid-record); a record follows it.
	write("\ntemp=1 temp=2 count=34\n")
	m := rec.wait(t, &from, topic, 5*time.Second, "the record with a repeated field", nil)
	if strings.Count(string(m.Payload), `"temp"`) != 1 {
		t.Errorf("repeated field published %d times: %s", strings.Count(string(m.Payload), `"temp"`), m.Payload)
	}
	if d := parseData(t, m); string(d.V["temp"]) != "1" || string(d.V["count"]) != "34" || d.Bad != nil {
		t.Errorf("record %s, want temp 1 (the first value) and count 34", m.Payload)
	}

	// A fragment, then silence longer than the port's timeout: dropped.
	bad0 := p.Stats().BadRecords
	write("temp=5")
	waitFor(t, 5*time.Second, "the partial record to be dropped", func() bool { return p.Stats().BadRecords > bad0 })
	write("count=7\n")
	m = rec.wait(t, &from, topic, 5*time.Second, "the record after the fragment", nil)
	if d := parseData(t, m); len(d.V) != 1 || string(d.V["count"]) != "7" || d.Bad != nil {
		t.Errorf("record after a dropped fragment %s, want count 7 alone", m.Payload)
	}

	// Line noise: names that are no names. Each such record is bad; the
	// good record after them arrives, and nothing else did.
	bad0 = p.Stats().BadRecords
	noise := []string{"\x01\x02=3 ok=1\n", "\xff\xfe=4\n", "a+b=5\n", "$SYS=6\n", "x/y=7\n"}
	for _, n := range noise {
		write(n)
	}
	write("count=8\n")
	m = rec.wait(t, &from, topic, 5*time.Second, "the good record after the noise", nil)
	if d := parseData(t, m); len(d.V) != 1 || string(d.V["count"]) != "8" {
		t.Errorf("record after the noise %s, want count 8 alone", m.Payload)
	}
	if got := p.Stats().BadRecords - bad0; got != uint64(len(noise)) {
		t.Errorf("%d bad records for %d noisy ones", got, len(noise))
	}
	if got := p.HeartbeatFields()["bad_records"]; got != p.Stats().BadRecords {
		t.Errorf("heartbeat bad_records %v, want %d", got, p.Stats().BadRecords)
	}
	for _, msg := range rec.all(topic) {
		for _, junk := range []string{`\u0001`, `\ufffd`, `a+b`, `$SYS`, `x/y`, `"ok"`} {
			if strings.Contains(string(msg.Payload), junk) {
				t.Errorf("a junk point reached the bus: %s", msg.Payload)
			}
		}
	}
}

// What a line device sends once the poller has started (every port
// tried) is read, however late the port's loop begins to read: the
// input from before the open is flushed at the open, not by the loop.
// The hook holds the loop back; it is a package variable, so the test is
// not parallel.
func TestLineKeepsWhatCameAfterStarted(t *testing.T) {
	pt, cfg := linePort(t, t.TempDir(), "2s", `
[[poller.device]]
name = "probe"
port = "ascii"
interval = "1s"
`)
	release := make(chan struct{})
	testHookServe = func() { <-release }
	t.Cleanup(func() { testHookServe = nil })
	rec := newRecorder()
	p := startPoller(t, cfg, rec)
	<-p.Started()
	if _, err := pt.Master.Write([]byte("\ntemp=1\n")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // the bytes reach the slave's input before the loop runs
	close(release)
	from := 0
	rec.wait(t, &from, "tinyscada/data/probe", 5*time.Second, "the record sent after Started", nil)
}
