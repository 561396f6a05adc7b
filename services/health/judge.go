package health

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/tinyscada/tinyscada/shared/topics"
)

// Levels of a service and of the gateway, worst last.
const (
	OK       = "ok"
	Degraded = "degraded"
	Failed   = "failed"
)

func worse(a, b string) string {
	rank := map[string]int{OK: 0, Degraded: 1, Failed: 2}
	if rank[b] > rank[a] {
		return b
	}
	return a
}

// heartbeat is what health reads of a tinyscada/svc/<svc>/heartbeat payload.
type heartbeat struct {
	PID      int    `json:"pid"`
	Seq      uint64 `json:"seq"`
	Progress uint64 `json:"progress"`
	Idle     bool   `json:"idle"`
	Failing  string `json:"failing"`
	// Hung says which of the service's watched loops overran its promise
	// (shared/service, Loop).
	Hung string `json:"hung"`
}

// stateMsg is what health reads of a retained tinyscada/svc/<svc>/state.
type stateMsg struct {
	State  string `json:"state"`
	PID    int    `json:"pid"`
	Status string `json:"status"`
}

func parseHeartbeat(b []byte) (heartbeat, error) {
	var h heartbeat
	if err := json.Unmarshal(b, &h); err != nil {
		return h, fmt.Errorf("heartbeat: %w", err)
	}
	if h.PID <= 0 {
		return h, fmt.Errorf("heartbeat: pid %d is not a process id", h.PID)
	}
	return h, nil
}

func parseState(b []byte) (stateMsg, error) {
	var s stateMsg
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("state: %w", err)
	}
	if s.PID <= 0 {
		return s, fmt.Errorf("state: pid %d is not a process id", s.PID)
	}
	return s, nil
}

// rules are the thresholds of a judgement (from config.Health).
type rules struct {
	stale, stall time.Duration
}

// tracked is what health knows of one service. Every time in it is a
// monotonic reading of the health process's clock (time.Now), never a wall
// time from a payload.
type tracked struct {
	name     string
	expected bool
	// since is when health started watching (expected services) or first
	// heard of the service.
	since time.Time
	// heard is when the last message about the service arrived.
	heard time.Time

	pid     int // current instance, from its heartbeats or state
	state   string
	status  string
	stateAt time.Time // when the state arrived

	lastHB     time.Time // zero: no heartbeat from this pid yet
	seq        uint64
	progress   uint64
	progressAt time.Time // when progress last changed (or the instance appeared)
	idle       bool
	failing    string
	failingAt  time.Time
	hung       string

	// restartPID is the instance health is restarting itself (0: none),
	// until restartUntil: its pings stop, but that is no alarm.
	restartPID   int
	restartUntil time.Time

	// graced: the service was pinged when the broker became unreachable,
	// and has sent no heartbeat since; it is pinged until the grace ends.
	graced bool

	// Results of the last judgement.
	pinged bool
	level  string
	reason string
	unit   string

	instances int         // pids seen; restarts = instances - 1
	restarts  []time.Time // restarts made by health, within the window
}

func newTracked(name string, expected bool, now time.Time) *tracked {
	return &tracked{name: name, expected: expected, since: now, heard: now, progressAt: now}
}

// newInstance switches to process pid: a restart happened (or health saw
// the service for the first time).
func (t *tracked) newInstance(pid int, now time.Time) {
	t.pid = pid
	t.state, t.status = "", ""
	t.lastHB = time.Time{}
	t.seq, t.progress = 0, 0
	t.progressAt = now
	t.idle = false
	t.failing, t.failingAt = "", time.Time{}
	t.hung = ""
	t.graced = false
	t.unit = ""
	t.restartPID, t.restartUntil = 0, time.Time{}
	t.instances++
}

// reorderWindow is how far back a heartbeat's seq may be and still count
// as one overtaken by a newer one (messages may arrive out of order: the bus
// hands each to its own goroutine). Further back, it is a new process that
// got the same pid.
const reorderWindow = 8

// observeHeartbeat records a heartbeat received at now.
func (t *tracked) observeHeartbeat(h heartbeat, now time.Time) {
	switch {
	case h.PID != t.pid:
		t.newInstance(h.PID, now)
	case !t.lastHB.IsZero() && h.Seq <= t.seq && t.seq-h.Seq < reorderWindow:
		return // an older heartbeat overtaken by a newer one
	case !t.lastHB.IsZero() && h.Seq <= t.seq:
		// Far behind: a new process that got the same pid.
		t.newInstance(h.PID, now)
	}
	// Time spent idle is no stall: the stall clock starts again from the
	// last idle heartbeat (a logger that gets a reading after a quiet
	// minute is not "without progress for a minute" until it commits).
	if t.lastHB.IsZero() || h.Progress != t.progress || t.idle {
		t.progressAt = now
	}
	t.lastHB, t.seq, t.progress, t.idle, t.hung = now, h.Seq, h.Progress, h.Idle, h.Hung
	switch {
	case h.Failing == "":
		t.failing, t.failingAt = "", time.Time{}
	case t.failing == "":
		t.failing, t.failingAt = h.Failing, now
	default:
		t.failing = h.Failing // same episode, maybe reworded
	}
	// A heartbeat means the broker works for this service: normal rules.
	t.graced = false
}

// observeState records a retained state message. A "lost" or "stopping"
// of another pid than the current one is a late word about an instance that
// is gone already, and is ignored; "starting" or "ready" of another pid is a
// new instance. Messages may arrive out of order (the bus hands each to its
// own goroutine): a "starting" after "ready" of the same pid was overtaken
// and is ignored. "lost" is not final: a service whose connection died (or
// whose broker went away) connects again and says its state again.
func (t *tracked) observeState(s stateMsg, now time.Time) {
	if s.PID == t.pid && s.State == "starting" && t.state == "ready" {
		return
	}
	if s.PID != t.pid {
		if s.State != "starting" && s.State != "ready" {
			if t.pid != 0 {
				return
			}
		}
		t.newInstance(s.PID, now)
	}
	t.state, t.status, t.stateAt = s.State, s.Status, now
}

// verdict is the judgement of one service at one moment.
type verdict struct {
	ping   bool
	level  string
	reason string
}

// judge decides whether the service's watchdog may be pinged now, and how
// healthy it is. brokerUp says whether health's broker round trip works;
// graceUntil is the end of the grace period of the current or last broker
// outage.
func (t *tracked) judge(now time.Time, r rules, brokerUp bool, graceUntil time.Time) verdict {
	bad := Failed
	if !t.expected {
		bad = Degraded
	}
	age := now.Sub(t.lastHB)
	switch {
	case t.restartPID != 0 && t.restartPID == t.pid && now.Before(t.restartUntil):
		// Health restarts it: the old pid is no longer the unit's main
		// process, and the new one has not said anything yet.
		return verdict{false, Degraded, "restarting"}
	case t.name == string(topics.Broker) && !brokerUp:
		return verdict{false, Failed, "broker unreachable"}
	case t.pid == 0:
		if now.Sub(t.since) < r.stale {
			return verdict{false, Degraded, "waiting for its first heartbeat"}
		}
		return verdict{false, bad, "never seen"}
	case t.graced && now.Before(graceUntil):
		// Before "lost": a broker that goes down publishes the wills of
		// everyone connected. A service that really died meanwhile fails
		// the MainPID check instead.
		return verdict{true, Degraded, fmt.Sprintf("broker unreachable; pinged on grace for %s more", graceUntil.Sub(now).Round(time.Second))}
	// A heartbeat after "lost" (or "stopping") means the process is back on
	// the bus: the state is old news until the service says it again.
	case t.state == "lost" && !t.lastHB.After(t.stateAt):
		return verdict{false, bad, "lost (its broker connection died)"}
	case t.state == "stopping" && !t.lastHB.After(t.stateAt):
		return verdict{false, bad, "stopping"}
	case t.lastHB.IsZero():
		if now.Sub(t.progressAt) < r.stale {
			return verdict{false, Degraded, "waiting for its first heartbeat"}
		}
		return verdict{false, bad, fmt.Sprintf("no heartbeat for %s", now.Sub(t.progressAt).Round(time.Second))}
	case age > r.stale:
		return verdict{false, bad, fmt.Sprintf("heartbeat stale (%s old)", age.Round(time.Second))}
	case t.hung != "":
		return verdict{false, bad, "hung: " + t.hung}
	case !t.idle && now.Sub(t.progressAt) > r.stall:
		return verdict{false, bad, fmt.Sprintf("no progress for %s", now.Sub(t.progressAt).Round(time.Second))}
	case t.failing != "":
		return verdict{true, Degraded, fmt.Sprintf("failing for %s: %s", now.Sub(t.failingAt).Round(time.Second), t.failing)}
	case t.state == "starting":
		return verdict{true, Degraded, "starting"}
	}
	return verdict{true, OK, ""}
}

// allowRestart reports whether another restart fits in the rate limit
// (limit restarts per window), recording it at now if so.
func (t *tracked) allowRestart(now time.Time, limit int, window time.Duration) bool {
	kept := t.restarts[:0]
	for _, at := range t.restarts {
		if now.Sub(at) < window {
			kept = append(kept, at)
		}
	}
	t.restarts = kept
	if len(t.restarts) >= limit {
		return false
	}
	t.restarts = append(t.restarts, now)
	return true
}
