package service

import (
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tinyscada/tinyscada/shared/sdnotify"
	"github.com/tinyscada/tinyscada/shared/topics"
)

// Progress
//
// A heartbeat's progress must move while the role does what its
// configuration asks, and stand still when it hangs. Counting work done (a
// poll round) is not enough: a device polled every 2 minutes, or a line
// device that is silent, does no work for longer than health.stall_after,
// yet the role is fine. So a role's scheduling loops are watched instead:
// before each step a loop says how long that step may take at most (Busy:
// a request and its retries, a read with its timeout) or how long it will
// wait (Wait: until the next poll is due, a reopen backoff). That is a
// promise. While every watched loop keeps its promises, each heartbeat
// advances the progress; a loop that overran its promise by more than
// health.stale_after is hung, and then the progress stands still and the
// heartbeat says "hung" with the loop and by how much. Health stops pinging
// a hung service at once (as a stale one), so a deadlocked loop or a stuck
// port read is restarted about stale_after + WatchdogSec after the step
// should have ended; a stopped process sends no heartbeat at all.

// Loop is one watched loop of a role (see Service.Loop). Its methods are
// safe for concurrent use, and do nothing on a nil *Loop, so that a role's
// code runs unwatched in tests.
type Loop struct {
	s    *Service
	name string
	// promise is the monotonic time (ns since s.epoch) by which the loop
	// said it takes its next step; kind says what it is doing meanwhile.
	promise atomic.Int64
	since   atomic.Int64
	kind    atomic.Pointer[string]
}

var (
	kindBusy    = "busy"
	kindWaiting = "waiting"
)

// Loop starts watching a loop of the role named name ("port ttyS0"); until
// its first Busy or Wait it is held to have promised a step within
// health.stale_after. Call Stop when the loop ends.
func (s *Service) Loop(name string) *Loop {
	l := &Loop{s: s, name: name}
	l.set(&kindBusy, s.Config.Health.StaleAfter.Duration)
	s.loopsMu.Lock()
	s.loops = append(s.loops, l)
	s.loopsMu.Unlock()
	return l
}

func (l *Loop) set(kind *string, d time.Duration) {
	now := l.s.mono()
	l.since.Store(int64(now))
	l.promise.Store(int64(now + d))
	l.kind.Store(kind)
	l.s.progress.Add(1)
}

// Busy says the loop starts a step that ends within d (a request with its
// retries, a read with its timeout).
func (l *Loop) Busy(d time.Duration) {
	if l != nil {
		l.set(&kindBusy, d)
	}
}

// Wait says the loop now waits for d, as its configuration asks (until the
// next poll is due, a backoff).
func (l *Loop) Wait(d time.Duration) {
	if l != nil {
		l.set(&kindWaiting, max(d, 0))
	}
}

// Stop ends the watch of the loop.
func (l *Loop) Stop() {
	if l == nil {
		return
	}
	s := l.s
	s.loopsMu.Lock()
	defer s.loopsMu.Unlock()
	for i, o := range s.loops {
		if o == l {
			s.loops = append(s.loops[:i], s.loops[i+1:]...)
			break
		}
	}
}

// mono is the time since the service was made, on the monotonic clock.
func (s *Service) mono() time.Duration { return time.Since(s.epoch) }

// hung returns why a watched loop is hung (it overran its promise by more
// than health.stale_after), or "" when none is. With no watched loop it is
// "".
func (s *Service) hung() string {
	now := s.mono()
	slack := s.Config.Health.StaleAfter.Duration
	s.loopsMu.Lock()
	defer s.loopsMu.Unlock()
	for _, l := range s.loops {
		promise := time.Duration(l.promise.Load())
		if now <= promise+slack {
			continue
		}
		since := time.Duration(l.since.Load())
		return fmt.Sprintf("loop %s: %s for %s, promised at most %s", l.name, *l.kind.Load(),
			(now - since).Round(time.Millisecond), (promise - since).Round(time.Millisecond))
	}
	return ""
}

// progressNow returns the heartbeat's progress and, when a loop is hung,
// why. With watched loops each call advances the progress by one while no
// loop is hung, and the progress stands still (at the last value reported
// before) while one is.
func (s *Service) progressNow() (uint64, string) {
	s.loopsMu.Lock()
	watched := len(s.loops) > 0
	s.loopsMu.Unlock()
	if !watched {
		return s.progress.Load(), ""
	}
	s.beatMu.Lock()
	defer s.beatMu.Unlock()
	if why := s.hung(); why != "" {
		return s.lastProgress, why
	}
	s.lastProgress = s.progress.Add(1)
	return s.lastProgress, ""
}

// Feeding its own watchdog
//
// Health pings every role's watchdog on its behalf. While health is absent
// (its retained state is "lost" or "stopping", or its heartbeats are older
// than health.stale_after), each role pings its own watchdog (WATCHDOG=1
// from its own process, which NotifyAccess=main allows) at each of its
// heartbeats, on the same rules health would apply: not hung, progress
// moved within health.stall_after or idle. Once health's heartbeats are
// fresh again, the role stops and health takes over. A role never pings
// itself while health is present, not even when health withholds its pings:
// that is health's judgement.

// selfWatch is what a role knows about health, for feeding its own
// watchdog.
type selfWatch struct {
	mu         sync.Mutex
	state      string    // health's retained state, "" none seen
	seen       time.Time // last health heartbeat (or state saying it is up)
	grace      time.Time // until then, no word of health is not absence
	feeding    bool      // the role pings its own watchdog
	progress   uint64    // the last progress of the role's heartbeats
	progressAt time.Time // when it changed
}

// HealthTopics are the topics a role follows to know whether health is
// there: health's retained state and its heartbeats. Start subscribes to
// them; the broker, which has no client, subscribes to them inline and
// hands the messages to ObserveHealth.
func (s *Service) HealthTopics() []string {
	return []string{s.Topics.SvcState(string(topics.Health)), s.Topics.SvcHeartbeat(string(topics.Health))}
}

// WatchHealth subscribes to HealthTopics with subscribe, handing the
// messages to ObserveHealth. Until health.stale_after has passed, a health
// the role has heard nothing of yet (its retained state arrives just after
// the subscription) counts as present. Start calls it for every role but
// health.
func (s *Service) WatchHealth(subscribe func(filter string, h func(topic string, payload []byte)) error) {
	s.self.mu.Lock()
	s.self.grace = time.Now().Add(s.Config.Health.StaleAfter.Duration)
	s.self.mu.Unlock()
	for _, f := range s.HealthTopics() {
		if err := subscribe(f, s.ObserveHealth); err != nil {
			s.Log.Warn("subscribe failed; retried on reconnect", "filter", f, "err", err)
		}
	}
}

// ObserveHealth takes a message of one of HealthTopics.
func (s *Service) ObserveHealth(topic string, payload []byte) {
	now := time.Now()
	w := &s.self
	w.mu.Lock()
	defer w.mu.Unlock()
	switch topic {
	case s.Topics.SvcHeartbeat(string(topics.Health)):
		w.seen = now
	case s.Topics.SvcState(string(topics.Health)):
		var st State
		if len(payload) == 0 || json.Unmarshal(payload, &st) != nil {
			w.state = ""
			return
		}
		w.state = st.State
		if st.State == Starting || st.State == Ready {
			// Its heartbeats follow within an interval.
			w.seen = now
		}
	}
}

// healthPresent reports whether health is up and heartbeating.
func (w *selfWatch) healthPresent(now time.Time, stale time.Duration) bool {
	switch w.state {
	case Starting, Ready:
		return now.Sub(w.seen) <= stale
	case "":
		return now.Before(w.grace)
	}
	return false // lost, stopping
}

// feedSelf pings the role's own watchdog after heartbeat h when health is
// absent and h shows a working role (see above). It does nothing for
// health itself, or when systemd (or the run supervisor) gave this process
// no watchdog.
func (s *Service) feedSelf(h Heartbeat) {
	if s.Name == string(topics.Health) || s.watchdog <= 0 {
		return
	}
	now := time.Now()
	hc := s.Config.Health
	w := &s.self
	w.mu.Lock()
	if w.progressAt.IsZero() || h.Progress != w.progress || h.Idle {
		w.progress, w.progressAt = h.Progress, now
	}
	present := w.healthPresent(now, hc.StaleAfter.Duration)
	working := h.Hung == "" && (h.Idle || now.Sub(w.progressAt) <= hc.StallAfter.Duration)
	was := w.feeding
	w.feeding = !present
	w.mu.Unlock()
	switch {
	case !present && !was:
		s.Log.Warn("health is absent: this role feeds its own watchdog until health is back")
	case present && was:
		s.Log.Info("health is back: it pings this role's watchdog again")
	}
	if present {
		return
	}
	if !working {
		if ok, _ := s.limiter.Check("self-watchdog", now); ok {
			s.Log.Error("own watchdog not fed: the role is not working", "hung", h.Hung, "progress", h.Progress, "progress_age", now.Sub(w.progressAt).Round(time.Millisecond))
		}
		return
	}
	if err := sdnotify.Watchdog(); err != nil {
		if ok, _ := s.limiter.Check("self-watchdog-err", now); ok {
			s.Log.Warn("own watchdog ping failed", "err", err)
		}
	}
}

// FeedsOwnWatchdog reports whether the role pings its own watchdog now
// (health is absent); for the heartbeat and tests.
func (s *Service) FeedsOwnWatchdog() bool {
	s.self.mu.Lock()
	defer s.self.mu.Unlock()
	return s.self.feeding
}
