package health

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/tinyscada/tinyscada/shared/bus"
	"github.com/tinyscada/tinyscada/shared/topics"
)

// Report is the payload of the retained <prefix>/health topic.
type Report struct {
	// Status is ok (every expected service up, pinged and not failing),
	// degraded (something is starting, failing by its own report, on grace,
	// or an unexpected service is unwell) or failed (the broker is
	// unreachable, or an expected service is not being pinged).
	Status string `json:"status"`
	// T is the wall time of the report, Unix ms.
	T        int64                    `json:"t"`
	Broker   string                   `json:"broker"` // "reachable" or "unreachable"
	Services map[string]ServiceReport `json:"services"`
}

// ServiceReport is one service in a Report.
type ServiceReport struct {
	Status string `json:"status"`
	State  string `json:"state,omitempty"`
	PID    int    `json:"pid,omitempty"`
	Unit   string `json:"unit,omitempty"`
	// HeartbeatAge is the age of the last heartbeat in seconds (monotonic);
	// absent when none was received from this pid.
	HeartbeatAge *float64 `json:"heartbeat_age_s,omitempty"`
	Progress     uint64   `json:"progress"`
	Idle         bool     `json:"idle,omitempty"`
	// Pinged says whether health pings its watchdog.
	Pinged bool `json:"pinged"`
	// Restarts counts the instances seen after the first one (whoever
	// restarted it).
	Restarts int    `json:"restarts"`
	Expected bool   `json:"expected"`
	Reason   string `json:"reason,omitempty"`
}

// build makes the report of the current picture.
func (h *Health) build(now time.Time) Report {
	r := Report{Status: OK, T: time.Now().UnixMilli(), Broker: "reachable", Services: map[string]ServiceReport{}}
	if !h.brokerUp {
		r.Broker, r.Status = "unreachable", Failed
	}
	for name, t := range h.services {
		s := ServiceReport{
			Status: t.level, State: t.state, PID: t.pid, Unit: t.unit, Progress: t.progress, Idle: t.idle,
			Pinged: t.pinged, Restarts: max(t.instances-1, 0), Expected: t.expected, Reason: t.reason,
		}
		if s.Status == "" {
			s.Status = Degraded
		}
		if !t.lastHB.IsZero() {
			age := now.Sub(t.lastHB).Truncate(time.Millisecond).Seconds()
			s.HeartbeatAge = &age
		}
		r.Services[name] = s
		r.Status = worse(r.Status, s.Status)
	}
	return r
}

// shape is what makes a report worth publishing (or logging) at once:
// everything but the ages, counters and reasons (which hold ages).
func (r Report) shape() string {
	var b strings.Builder
	b.WriteString(r.Status + " " + r.Broker)
	for _, name := range slices.Sorted(maps.Keys(r.Services)) {
		s := r.Services[name]
		fmt.Fprintf(&b, "|%s %s %s %d %t %d", name, s.Status, s.State, s.PID, s.Pinged, s.Restarts)
	}
	return b.String()
}

// StatusLine is the one-line summary for `systemctl status` (STATUS=):
// "ok: broker, logger, poller" or "degraded: poller failing …; 2 ok".
func (r Report) StatusLine() string {
	var ok, bad []string
	for _, name := range slices.Sorted(maps.Keys(r.Services)) {
		s := r.Services[name]
		if s.Status == OK {
			ok = append(ok, name)
			continue
		}
		item := name + " " + s.Status
		if s.Reason != "" {
			item = name + ": " + s.Reason
		}
		bad = append(bad, item)
	}
	if _, listed := r.Services[string(topics.Broker)]; r.Broker != "reachable" && !listed {
		bad = append([]string{"broker unreachable"}, bad...)
	}
	if len(bad) == 0 {
		if len(ok) == 0 {
			return r.Status + ": no services seen yet"
		}
		return r.Status + ": " + strings.Join(ok, ", ")
	}
	return fmt.Sprintf("%s: %s; %d ok", r.Status, strings.Join(slices.Compact(bad), "; "), len(ok))
}

// report publishes the aggregate (retained) when its shape changed or a
// heartbeat interval passed, and the status line when it changed.
func (h *Health) report(ctx context.Context, now time.Time) {
	r := h.build(now)
	shape := r.shape()
	if line := r.StatusLine(); line != h.lastStatus {
		h.lastStatus = line
		h.svc.Status("%s", line)
		if shape != h.loggedShape {
			h.loggedShape = shape
			h.log.Info("health", "status", line)
		}
	}
	if shape == h.lastShape && now.Sub(h.lastReport) < h.svc.Config.Bus.HeartbeatInterval.Duration {
		return
	}
	b, err := json.Marshal(r)
	if err != nil {
		h.log.Error("health report encode", "err", err)
		return
	}
	pctx, cancel := context.WithTimeout(ctx, h.cfg.Interval.Duration)
	defer cancel()
	if !h.svc.Bus.Connected() {
		return // published again once the broker is back
	}
	if err := h.svc.Bus.Publish(pctx, bus.Message{Topic: h.svc.Topics.Health(), QoS: 1, Retain: true, Payload: b}); err != nil {
		h.log.Debug("health report not published", "err", err)
		return
	}
	h.lastShape, h.lastReport = shape, now
}
