package poller

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/internal/testpeer"
	"github.com/tinyscada/tinyscada/shared/bus"
)

// portClosed reports whether every point of the data message is bad with a
// "port_closed: " reason.
func portClosed(points ...string) func(bus.Message) bool {
	return func(m bus.Message) bool {
		if strings.Contains(string(m.Payload), `"v":{"`) {
			return false // a good value
		}
		for _, pt := range points {
			if !strings.Contains(string(m.Payload), `"`+pt+`":"port_closed: `) {
				return false
			}
		}
		return true
	}
}

// TestClosedPortLeavesRounds: when the port vanishes (the simulator and
// its pseudo-terminal go away, the link with them), its devices keep
// their rounds as dead devices do: a data message per due round with
// every point bad, reason "port_closed: <error>", with the sequence
// numbers going on without a gap and acknowledged; when a port comes
// back at the path, good rounds follow.
func TestClosedPortLeavesRounds(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	link := simLink(t, dir)
	_, stop := startSim(t, twoUnits, link)
	rec := newRecorder()
	p := runAckedPoller(t, testConfig(t, dir, twoDevices("100ms", "50ms", "50ms")), rec)

	good, victim := "tinyscada/data/good", "tinyscada/data/victim"
	gfrom, vfrom := 0, 0
	rec.wait(t, &gfrom, good, 5*time.Second, "a good round", allGood)
	rec.wait(t, &vfrom, victim, 5*time.Second, "a good round", allGood)

	stop()
	var last bus.Message
	for range 3 {
		last = rec.wait(t, &gfrom, good, 10*time.Second, "a port_closed round of good", portClosed("x"))
		rec.wait(t, &vfrom, victim, 10*time.Second, "a port_closed round of victim", portClosed("a", "b", "c"))
	}
	t.Logf("while the port is gone: %s", last.Payload)
	lastSeq := parseData(t, last).Seq
	waitFor(t, 10*time.Second, "the closed rounds to be acknowledged", func() bool {
		return p.Outbox().Stats(time.Now()).Acked >= lastSeq
	})
	if s := parseState(t, rec.all("tinyscada/device/good/state")[len(rec.all("tinyscada/device/good/state"))-1]); s.State != "offline" {
		t.Errorf("good device %+v while its port is gone, want offline", s)
	}

	startSim(t, twoUnits, link)
	rec.wait(t, &gfrom, good, 10*time.Second, "a good round on the new line", allGood)
	rec.wait(t, &vfrom, victim, 10*time.Second, "a good round on the new line", allGood)

	// One sequence, no gaps, across the outage. The rounds of the two
	// devices' goroutines reach the sender in bursts: a seq below the
	// newest may come with the next one, so wait for the bursts to settle.
	var missing []uint64
	var top uint64
	settled := func() bool {
		seen := map[uint64]bool{}
		top = 0
		for _, topic := range []string{good, victim} {
			for _, m := range rec.all(topic) {
				s := parseData(t, m).Seq
				seen[s] = true
				top = max(top, s)
			}
		}
		missing = missing[:0]
		for s := uint64(1); s <= top; s++ {
			if !seen[s] {
				missing = append(missing, s)
			}
		}
		return len(missing) == 0
	}
	if !testpeer.Until(5*time.Second, settled) {
		t.Errorf("seqs %v never published (last %d)", missing, top)
	}
}

// runTestPoller runs p, publishing to pub, until the test ends.
func runTestPoller(t *testing.T, p *Poller, pub bus.Conn) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx, pub) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}
