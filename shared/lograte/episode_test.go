package lograte

import (
	"testing"
	"time"
)

// Start begins an episode: the count of repeats and the interval start
// afresh, whatever an earlier episode of the key left.
func TestStartBeginsEpisode(t *testing.T) {
	l := New(time.Second, 0)
	t0 := time.Now()
	l.Start("k", t0)
	for i := 1; i <= 3; i++ {
		if l.Allow("k", t0.Add(time.Duration(i)*100*time.Millisecond)) {
			t.Fatalf("repeat %d allowed within the interval", i)
		}
	}
	// A second episode 500ms after the first began.
	t1 := t0.Add(500 * time.Millisecond)
	l.Start("k", t1)
	if ok, _ := l.Check("k", t0.Add(1100*time.Millisecond)); ok {
		t.Errorf("allowed one interval after the first episode, not after the second")
	}
	ok, n := l.Check("k", t1.Add(time.Second))
	if !ok || n != 1 {
		t.Errorf("Check one interval into the second episode = %v, %d suppressed; want true, 1 (the second episode's only)", ok, n)
	}
	l.Start("new", t0) // a key never seen
	if l.Allow("new", t0.Add(time.Millisecond)) {
		t.Errorf("a started key allowed again within the interval")
	}
}
