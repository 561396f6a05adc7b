package lograte

import (
	"fmt"
	"testing"
	"time"
)

func TestLimiter(t *testing.T) {
	t0 := time.Now()
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	l := New(time.Minute, 3)
	steps := []struct {
		key        string
		at         time.Duration
		allow      bool
		suppressed int
	}{
		{"a", 0, true, 0},
		{"a", time.Second, false, 0},
		{"a", 59 * time.Second, false, 0},
		{"b", 59 * time.Second, true, 0}, // keys are independent
		{"a", time.Minute, true, 2},      // interval passed; 2 were denied
		{"a", time.Minute + time.Second, false, 0},
		{"c", 120 * time.Second, true, 0}, // {a@60s, b@59s, c@120s}
		// Full: a and b have expired and are forgotten to make room.
		{"d", 121 * time.Second, true, 0},
		{"b", 121500 * time.Millisecond, true, 0}, // {c@120s, d@121s, b@121.5s}
		// Full, nothing expired: the oldest (c) is forgotten for e.
		{"e", 122 * time.Second, true, 0},
		{"c", 123 * time.Second, true, 0},  // early, since c was forgotten; d goes
		{"b", 124 * time.Second, false, 0}, // b is still remembered
		{"d", 125 * time.Second, true, 0},  // d was forgotten
	}
	for i, s := range steps {
		allow, suppressed := l.Check(s.key, at(s.at))
		if allow != s.allow || suppressed != s.suppressed {
			t.Errorf("step %d: Check(%q, +%v) = %v, %d; want %v, %d", i, s.key, s.at, allow, suppressed, s.allow, s.suppressed)
		}
		if n := len(l.keys); n > 3 {
			t.Fatalf("step %d: %d keys remembered, bound is 3", i, n)
		}
	}
}

func TestLimiterBounded(t *testing.T) {
	l := New(time.Hour, 0)
	now := time.Now()
	for i := range 3 * DefaultMaxKeys {
		if !l.Allow(fmt.Sprint("key", i), now) {
			t.Fatalf("new key %d denied", i)
		}
	}
	if n := len(l.keys); n != DefaultMaxKeys {
		t.Errorf("%d keys remembered, want %d", n, DefaultMaxKeys)
	}
}

func TestLimiterNoInterval(t *testing.T) {
	l := New(0, 1)
	now := time.Now()
	for range 3 {
		if !l.Allow("k", now) {
			t.Fatal("denied with interval 0")
		}
	}
}

func BenchmarkLimiterAllow(b *testing.B) {
	l := New(time.Minute, 0)
	now := time.Now()
	for b.Loop() {
		l.Allow("meter1: timeout", now)
	}
}
