package poller

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/services/simulate"
)

// TestLineErrorsCounted: CRC errors, timeouts, exceptions and discarded
// bytes on the line show per port in the heartbeat and per device in the
// retained device state, and a log line (rate-limited) says that they
// moved. The simulator on a real pseudo-terminal makes each kind of
// trouble for unit 2 ("victim") a few times.
func TestLineErrorsCounted(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	sim, _ := startSim(t, twoUnits, simLink(t, dir))
	rec := newRecorder()
	p, logs := startLoggedPoller(t, twoDevices("100ms", "30ms", "30ms", `log_interval = "200ms"`), dir, rec)
	<-p.Started()
	rec.wait(t, new(int), "tinyscada/data/victim", 5*time.Second, "a good round", allGood)

	port := func() LineCounts { return p.PortLine()["sim"] }
	steps := []struct {
		fault simulate.Fault
		what  string
		moved func(LineCounts) bool
	}{
		{simulate.Fault{Kind: simulate.BadCRC, Count: 3}, "3 CRC errors", func(c LineCounts) bool { return c.CRCErrors >= 3 }},
		{simulate.Fault{Kind: simulate.Garbage, Count: 3}, "discarded bytes", func(c LineCounts) bool { return c.Discarded >= 3 }},
		{simulate.Fault{Kind: simulate.Exception, Code: 2, Count: 3}, "3 exceptions", func(c LineCounts) bool { return c.Exceptions >= 3 }},
		{simulate.Fault{Kind: simulate.NoAnswer, Count: 3}, "3 timeouts", func(c LineCounts) bool { return c.Timeouts >= 3 }},
	}
	for _, st := range steps {
		if err := sim.Device.SetFault(2, st.fault); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, st.what+" in the port's counters", func() bool { return st.moved(port()) })
	}
	want := port()
	t.Logf("port sim: %+v", want)

	// The heartbeat carries the port's counters.
	hb, err := json.Marshal(p.HeartbeatFields()["port_errors"])
	if err != nil {
		t.Fatal(err)
	}
	var fields map[string]LineCounts
	if err := json.Unmarshal(hb, &fields); err != nil {
		t.Fatal(err)
	}
	if c := fields["sim"]; c.CRCErrors < 3 || c.Exceptions < 3 || c.Timeouts < 3 || c.Discarded < 3 {
		t.Errorf("heartbeat port_errors %s, want at least 3 of each for port sim", hb)
	}

	// The retained state of the victim follows its counters; the good
	// device's shows none of the victim's trouble.
	type state struct {
		State string `json:"state"`
		LineCounts
	}
	last := func(topic string) (s state) {
		all := rec.all(topic)
		if len(all) > 0 {
			json.Unmarshal(all[len(all)-1].Payload, &s)
		}
		return s
	}
	waitFor(t, 10*time.Second, "the victim's retained state to carry its counters", func() bool {
		s := last("tinyscada/device/victim/state")
		return s.CRCErrors >= 3 && s.Exceptions >= 3 && s.Timeouts >= 3 && s.Discarded >= 3
	})
	if s := last("tinyscada/device/good/state"); s.CRCErrors != 0 || s.Exceptions != 0 || s.Discarded != 0 {
		t.Errorf("good device state %+v: the victim's trouble counted against it", s)
	}

	// And the journal says so.
	var victimLines int
	for _, r := range logs.records("line errors") {
		if r["device"] == "victim" {
			victimLines++
		}
	}
	if victimLines == 0 {
		t.Errorf("no \"line errors\" log line for the victim")
	}
}
