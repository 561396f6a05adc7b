package poller

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/services/simulate"
)

// TestPassIsOneBurst: the demo's two devices share a line at 9600 baud
// and are due together every second; the meter's round ends about a
// tenth of a second before the climate sensor's. The port's goroutine
// hands the meter's round to the sender only when the line rests, after
// the climate sensor's round (sendDue), so both go to the broker in one
// publishing pass: one write and one batch of acknowledgements a second,
// not one each, which a sender lingering a fixed sendLinger after each
// round cannot give when the next round takes longer than that.
func TestPassIsOneBurst(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "run"), 0o700); err != nil {
		t.Fatal(err)
	}
	m := simulate.Demo()
	m.Baud, m.ByteTiming = 9600, true
	ctx, cancel := context.WithCancel(context.Background())
	sim, err := simulate.Start(ctx, m, filepath.Join(dir, "run", "sim-tty"), nil)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); sim.Wait() })
	cfg := testConfig(t, dir, "")
	if n := len(cfg.Poller.Device); n != 2 || cfg.Poller.Device[0].Port != cfg.Poller.Device[1].Port {
		t.Fatalf("want the demo's two devices on one port, have %d", n)
	}
	rec := newRecorder()
	runAckedPoller(t, cfg, rec)

	// The first pass also publishes the devices' first states (with a
	// linger): judge the three passes after it.
	meter, climate := "tinyscada/data/meter", "tinyscada/data/climate"
	mfrom, cfrom := 0, 0
	for pass := range 4 {
		mm := rec.wait(t, &mfrom, meter, 10*time.Second, "a round of the meter", allGood)
		cm := rec.wait(t, &cfrom, climate, 10*time.Second, "a round of the climate sensor", allGood)
		if pass == 0 {
			continue
		}
		md, cd := parseData(t, mm), parseData(t, cm)
		rec.mu.Lock()
		mAt, cAt := rec.at[mfrom-1], rec.at[cfrom-1]
		rec.mu.Unlock()
		rounds := time.Duration(cd.T-md.T) * time.Millisecond // between the rounds' first replies
		published := cAt.Sub(mAt)
		t.Logf("pass %d: the climate sensor's round came %v after the meter's, was published %v after it", pass, rounds, published)
		if rounds < 50*time.Millisecond {
			t.Fatalf("pass %d: the rounds came %v apart; the test needs the meter's round to end well before the climate sensor's", pass, rounds)
		}
		if published > rounds/2 {
			t.Errorf("pass %d: the meter's round was published %v before the climate sensor's, whose round came %v later: not one burst", pass, published, rounds)
		}
	}
}
