// Package delayed collects errors instead of stopping at the first: a round
// over many devices goes on past failures and reports them all at its end,
// and a limiter keeps a repeating error from flooding the log.
package delayed

import (
	"bytes"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
	"time"
)

// Round runs named steps and remembers their failures. The zero value is an
// empty round, ready to use; it is safe for concurrent use.
type Round struct {
	mu     sync.Mutex
	n      int
	failed []error
}

// Do runs fn and, if it fails, records "name: err" (wrapping err with %w).
// A panic inside fn is recovered and recorded as a *PanicError, so one bad
// device cannot stop the others.
func (r *Round) Do(name string, fn func() error) {
	var err error
	defer func() {
		if v := recover(); v != nil {
			err = &PanicError{Value: v, Stack: trimStack(debug.Stack())}
		}
		if err != nil {
			err = fmt.Errorf("%s: %w", name, err)
		}
		r.mu.Lock()
		r.n++
		if err != nil {
			r.failed = append(r.failed, err)
		}
		r.mu.Unlock()
	}()
	err = fn()
}

// Err returns all recorded errors joined (errors.Join, in the order they
// were recorded; errors.Is and errors.As see each), or nil if none failed.
func (r *Round) Err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return errors.Join(r.failed...)
}

// Len returns how many steps ran.
func (r *Round) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n
}

// Failed returns how many steps failed.
func (r *Round) Failed() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.failed)
}

// PanicError is a panic recovered by Round.Do. Test for it with errors.As.
type PanicError struct {
	// Value is what was passed to panic.
	Value any
	// Stack is the panicking goroutine's stack, starting at the frame that
	// panicked, cut after a few frames.
	Stack []byte
}

// Error returns "panic: <value>" and the first frames of the stack.
func (e *PanicError) Error() string {
	return fmt.Sprintf("panic: %v\n%s", e.Value, e.Stack)
}

// Unwrap returns the panic value if it is an error, so that errors.Is sees
// through a panic(err).
func (e *PanicError) Unwrap() error {
	err, _ := e.Value.(error)
	return err
}

// stackFrames is how many frames of a panic's stack are kept.
const stackFrames = 5

// trimStack cuts a debug.Stack() output down to the frames from the one that
// panicked on: it drops the goroutine header and the frames of debug.Stack,
// the deferred recover and the runtime's panic machinery.
func trimStack(stack []byte) []byte {
	lines := bytes.Split(bytes.TrimSpace(stack), []byte("\n"))
	// lines[0] is "goroutine N [running]:", then pairs of function / file.
	start := 1
	for i := 1; i+1 < len(lines); i += 2 {
		if bytes.HasPrefix(lines[i], []byte("panic(")) {
			start = i + 2
			break
		}
	}
	end := min(start+2*stackFrames, len(lines))
	if start >= end {
		return stack
	}
	return bytes.Join(lines[start:end], []byte("\n"))
}

// Limiter lets the same message through at most once per interval per key,
// for logging an error that a broken device makes repeat every cycle. It
// remembers at most a bounded number of keys. It is safe for concurrent use.
type Limiter struct {
	interval time.Duration
	max      int

	mu   sync.Mutex
	keys map[string]*entry
}

type entry struct {
	last       time.Time // when last allowed
	suppressed int       // denied since then
}

// DefaultMaxKeys is the key bound NewLimiter uses when given max <= 0.
const DefaultMaxKeys = 1024

// NewLimiter returns a Limiter that allows each key once per interval
// (every call if interval <= 0) and remembers at most max keys
// (DefaultMaxKeys if max <= 0). When full, expired keys are forgotten
// first, then the least recently allowed one, which can let that key
// through early.
func NewLimiter(interval time.Duration, max int) *Limiter {
	if max <= 0 {
		max = DefaultMaxKeys
	}
	return &Limiter{interval: interval, max: max, keys: make(map[string]*entry)}
}

// Allow reports whether a message for key may go out at now: true the first
// time and once interval has passed since the last time it was allowed,
// false in between. Pass time.Now(): durations are measured on its
// monotonic reading, so wall clock jumps do not matter.
func (l *Limiter) Allow(key string, now time.Time) bool {
	ok, _ := l.Check(key, now)
	return ok
}

// Check is Allow that also returns, when it allows, how many messages for
// key it denied since it last allowed one (to log "N more suppressed"); when
// it denies, that count is 0.
func (l *Limiter) Check(key string, now time.Time) (allow bool, suppressed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if e, ok := l.keys[key]; ok {
		if l.interval > 0 && now.Sub(e.last) < l.interval {
			e.suppressed++
			return false, 0
		}
		suppressed = e.suppressed
		e.last, e.suppressed = now, 0
		return true, suppressed
	}
	if len(l.keys) >= l.max {
		l.evict(now)
	}
	l.keys[key] = &entry{last: now}
	return true, 0
}

// evict frees room for one key: expired keys go, or else the oldest one.
func (l *Limiter) evict(now time.Time) {
	var oldestKey string
	var oldest time.Time
	found := false
	for k, e := range l.keys {
		if now.Sub(e.last) >= l.interval {
			delete(l.keys, k)
			continue
		}
		if !found || e.last.Before(oldest) {
			oldestKey, oldest, found = k, e.last, true
		}
	}
	if len(l.keys) >= l.max {
		delete(l.keys, oldestKey)
	}
}
