package delayed

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"
)

var errTimeout = errors.New("timeout")

func badDevice() error {
	var m map[string]int
	m["x"]++ // panics: assignment to entry in nil map
	return nil
}

func TestRound(t *testing.T) {
	type step struct {
		name string
		fn   func() error
	}
	ok := func() error { return nil }
	tests := []struct {
		name     string
		steps    []step
		failed   int
		wantErrs []string // substrings, in order, of Err's lines
		is       []error
	}{
		{"empty", nil, 0, nil, nil},
		{"all fine", []step{{"a", ok}, {"b", ok}}, 0, nil, nil},
		{"one fails", []step{{"a", ok}, {"meter1", func() error { return errTimeout }}, {"c", ok}}, 1,
			[]string{"meter1: timeout"}, []error{errTimeout}},
		{"two fail, order kept", []step{
			{"m1", func() error { return fmt.Errorf("read: %w", io.ErrUnexpectedEOF) }},
			{"m2", ok},
			{"m3", func() error { return errTimeout }},
		}, 2, []string{"m1: read: unexpected EOF", "m3: timeout"}, []error{io.ErrUnexpectedEOF, errTimeout}},
		{"panic recovered", []step{{"m1", badDevice}, {"m2", ok}}, 1,
			[]string{"m1: panic: assignment to entry in nil map", "delayed.badDevice"}, nil},
		{"panic with an error", []step{{"m1", func() error { panic(errTimeout) }}}, 1,
			[]string{"m1: panic: timeout"}, []error{errTimeout}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var r Round
			for _, s := range tt.steps {
				r.Do(s.name, s.fn)
			}
			if r.Len() != len(tt.steps) || r.Failed() != tt.failed {
				t.Errorf("Len, Failed = %d, %d; want %d, %d", r.Len(), r.Failed(), len(tt.steps), tt.failed)
			}
			err := r.Err()
			if (err != nil) != (tt.failed > 0) {
				t.Fatalf("Err() = %v, want an error: %v", err, tt.failed > 0)
			}
			if err == nil {
				return
			}
			text := err.Error()
			for _, want := range tt.wantErrs {
				i := strings.Index(text, want)
				if i < 0 {
					t.Fatalf("Err() = %q, want %q in it (in order)", err, want)
				}
				text = text[i+len(want):]
			}
			for _, target := range tt.is {
				if !errors.Is(err, target) {
					t.Errorf("errors.Is(Err(), %v) = false", target)
				}
			}
		})
	}
}

func TestPanicError(t *testing.T) {
	var r Round
	r.Do("m1", badDevice)
	var pe *PanicError
	if !errors.As(r.Err(), &pe) {
		t.Fatalf("Err() = %v, want a *PanicError inside", r.Err())
	}
	stack := string(pe.Stack)
	if !strings.HasPrefix(stack, "runtime.") && !strings.HasPrefix(stack, "github.com/tinyscada/tinyscada/shared/delayed.badDevice") {
		t.Errorf("stack does not start at the panic:\n%s", stack)
	}
	if !strings.Contains(stack, "delayed.badDevice") {
		t.Errorf("stack lacks the panicking function:\n%s", stack)
	}
	if strings.Contains(stack, "debug.Stack") || strings.Contains(stack, "[running]") {
		t.Errorf("stack was not trimmed:\n%s", stack)
	}
	if n := strings.Count(stack, "\n") + 1; n > 2*stackFrames {
		t.Errorf("stack has %d lines, want at most %d", n, 2*stackFrames)
	}
}

func TestRoundConcurrent(t *testing.T) {
	var r Round
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.Do(fmt.Sprint("dev", i), func() error {
				if i%5 == 0 {
					return errTimeout
				}
				return nil
			})
		}()
	}
	wg.Wait()
	if r.Len() != 50 || r.Failed() != 10 {
		t.Errorf("Len, Failed = %d, %d; want 50, 10", r.Len(), r.Failed())
	}
}

func TestLimiter(t *testing.T) {
	t0 := time.Now()
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	l := NewLimiter(time.Minute, 3)
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
	l := NewLimiter(time.Hour, 0)
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
	l := NewLimiter(0, 1)
	now := time.Now()
	for range 3 {
		if !l.Allow("k", now) {
			t.Fatal("denied with interval 0")
		}
	}
}

func BenchmarkLimiterAllow(b *testing.B) {
	l := NewLimiter(time.Minute, 0)
	now := time.Now()
	for b.Loop() {
		l.Allow("meter1: timeout", now)
	}
}
