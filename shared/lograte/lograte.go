// Package lograte limits how often a repeating message is logged, so that a
// broken device, a misbehaving client or a bad payload that recurs every
// cycle cannot flood the journal.
package lograte

import (
	"sync"
	"time"
)

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

// DefaultMaxKeys is the key bound New uses when given max <= 0.
const DefaultMaxKeys = 1024

// New returns a Limiter that allows each key once per interval
// (every call if interval <= 0) and remembers at most max keys
// (DefaultMaxKeys if max <= 0). When full, expired keys are forgotten
// first, then the least recently allowed one, which can let that key
// through early.
func New(interval time.Duration, max int) *Limiter {
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

// Start begins a new episode of key at now (a device went offline again,
// a port failed again): the message that opens it goes out regardless, so
// Start records it as allowed at now and forgets the repeats denied
// before. The next Check for key is allowed one interval from now, with a
// count of the repeats of this episode only, never of an earlier one.
func (l *Limiter) Start(key string, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if e, ok := l.keys[key]; ok {
		e.last, e.suppressed = now, 0
		return
	}
	if len(l.keys) >= l.max {
		l.evict(now)
	}
	l.keys[key] = &entry{last: now}
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
