// Package health is the health role: it turns the services' state and
// heartbeat topics into systemd watchdog pings on their behalf, restarts
// units that are alive but failing (or on an authorised command), and
// publishes the gateway's aggregate health.
//
// For each service whose heartbeat is fresh and whose progress advances (or
// which says it is idle), health sends WATCHDOG=1 with the service's pid in
// SCM_CREDENTIALS, after checking that the pid is the main process of the
// service's unit. A service that stops heartbeating or stops making progress
// is simply no longer pinged, and its supervisor (systemd, or `tinyscada
// run`) kills and restarts it. While the broker cannot be reached, the broker
// is not pinged but the others are, on their last good heartbeat, for
// health.broker_grace. Health pings its own watchdog only while its loop runs
// and a message it publishes comes back through the broker (or during that
// grace). Every age is measured on the monotonic clock.
package health

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/tinyscada/tinyscada/shared/bus"
	"github.com/tinyscada/tinyscada/shared/config"
	"github.com/tinyscada/tinyscada/shared/sdnotify"
	"github.com/tinyscada/tinyscada/shared/service"
	"github.com/tinyscada/tinyscada/shared/topics"
)

// Options configure Serve beyond the configuration.
type Options struct {
	// Supervisor is what pings and restarts go to (required).
	Supervisor Supervisor
	// SelfPing pings health's own watchdog; default sdnotify.Watchdog.
	SelfPing func() error
	// Now is the clock; default time.Now (whose readings are monotonic).
	Now func() time.Time
}

// message is one MQTT message handed from a bus callback to the loop.
type message struct {
	topic   string
	payload []byte
}

// restartDone is the outcome of a restart run on its own goroutine.
type restartDone struct {
	svc, unit, reason string
	pid               int
	err               error
}

// Health is the running role. Create it with New; Serve runs it.
type Health struct {
	svc  *service.Service
	cfg  config.Health
	sup  Supervisor
	log  *slog.Logger
	now  func() time.Time
	self func() error
	r    rules

	in       chan message
	restarts chan restartDone

	services map[string]*tracked
	count    atomic.Int64 // len(services), for the heartbeat

	echoSeq    uint64
	lastEcho   time.Time
	brokerUp   bool
	graceUntil time.Time

	selfRestart bool // a restart command for health came

	lastReport  time.Time
	lastShape   string
	loggedShape string
	lastStatus  string
	selfPingErr string
	pingErrs    map[string]string
}

// ErrRestartRequested is what Serve returns after a restart command for
// health itself (<prefix>/cmd/restart/health): the process exits and its
// supervisor starts it again. Test with errors.Is.
var ErrRestartRequested = errors.New("health: restart requested by command")

// New prepares health on a started service runtime. Its configuration was
// validated when it was loaded (config.Load: every rule health relies on,
// bus.heartbeat_interval below health.stale_after among them, is checked
// there, so `tinyscada config check` refuses what health would). It returns
// an error only when no supervisor is given.
func New(svc *service.Service, opts Options) (*Health, error) {
	cfg := svc.Config.Health
	if opts.Supervisor == nil {
		return nil, errors.New("health: no supervisor")
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.SelfPing == nil {
		opts.SelfPing = sdnotify.Watchdog
	}
	h := &Health{
		svc:      svc,
		cfg:      cfg,
		sup:      opts.Supervisor,
		log:      svc.Log,
		now:      opts.Now,
		self:     opts.SelfPing,
		r:        rules{stale: cfg.StaleAfter.Duration, stall: cfg.StallAfter.Duration},
		in:       make(chan message, 256),
		restarts: make(chan restartDone, 16),
		services: map[string]*tracked{},
		pingErrs: map[string]string{},
	}
	now := h.now()
	h.lastEcho, h.brokerUp = now, true
	for _, name := range cfg.Expect {
		h.services[name] = newTracked(name, true, now)
	}
	return h, nil
}

// Serve subscribes to the service topics and the restart commands and runs
// the loop until ctx ends. It returns nil when ctx ends, the subscription
// error when health could not subscribe at start, or ErrRestartRequested
// after a restart command for health itself.
func (h *Health) Serve(ctx context.Context) error {
	put := func(topic string, payload []byte) {
		select {
		case h.in <- message{topic, payload}:
		case <-ctx.Done():
		}
	}
	for _, f := range filters(h.svc.Topics) {
		if err := h.svc.Bus.Subscribe(f, 0, put); err != nil {
			return fmt.Errorf("health: %w", err)
		}
	}
	h.svc.SetExtra(func() map[string]any { return map[string]any{"services": h.count.Load()} })
	h.svc.Ready("watching " + strings.Join(h.cfg.Expect, ", "))

	tick := time.NewTicker(h.cfg.Interval.Duration)
	defer tick.Stop()
	h.step(ctx)
	for {
		select {
		case <-ctx.Done():
			return nil
		case m := <-h.in:
			h.handle(ctx, m)
			if h.selfRestart {
				h.log.Warn("restart of health by command: exiting, to be started again")
				pctx, cancel := context.WithTimeout(ctx, time.Second)
				b, _ := json.Marshal(event{T: time.Now().UnixMilli(), Event: "restart", Service: h.svc.Name, Reason: "command", Result: "exiting"})
				_ = h.svc.Bus.Publish(pctx, bus.Message{Topic: h.svc.Topics.HealthEvent(), QoS: 1, Payload: b})
				cancel()
				return ErrRestartRequested
			}
		case d := <-h.restarts:
			h.restarted(ctx, d)
		case <-tick.C:
			h.step(ctx)
		}
	}
}

// filters are the subscriptions of health: every service's state and
// heartbeats, the restart commands and its own echo.
func filters(t topics.Tree) []string {
	return []string{t.SvcState("+"), t.SvcHeartbeat("+"), t.Restart("+"), t.HealthEcho()}
}

// handle takes one message into the picture.
func (h *Health) handle(ctx context.Context, m message) {
	t := h.svc.Topics
	now := h.now()
	if m.topic == t.HealthEcho() {
		h.lastEcho = now
	} else if name, ok := t.ParseRestart(m.topic); ok && name == h.svc.Name {
		// Health cannot wait for its own restart: crash-only, it exits
		// and its supervisor (systemd's Restart=, or `tinyscada run`)
		// starts it again.
		h.selfRestart = true
	} else if ok {
		h.restart(ctx, name, "command")
	} else if name, ok := t.ParseSvcHeartbeat(m.topic); ok && name != h.svc.Name {
		h.heartbeat(name, m.payload, now)
	} else if name, ok := t.ParseSvcState(m.topic); ok && name != h.svc.Name {
		h.state(name, m.payload, now)
	}
	// Health's own state and heartbeats are not judged: it watches itself
	// through its own watchdog.
}

// heartbeat takes a service's heartbeat into the picture; a heartbeat from
// a service health does not know yet makes it supervise that service.
func (h *Health) heartbeat(name string, payload []byte, now time.Time) {
	t := h.services[name]
	if hb, err := parseHeartbeat(payload); err != nil {
		h.log.Debug("ignored heartbeat", "service", name, "err", err)
	} else {
		if t == nil {
			t = newTracked(name, false, now)
			h.services[name] = t
			h.log.Info("supervising a new service", "service", name, "pid", hb.PID)
		}
		t.observeHeartbeat(hb, now)
	}
	if t != nil {
		t.heard = now
	}
}

// state takes a service's retained state into the picture.
func (h *Health) state(name string, payload []byte, now time.Time) {
	t := h.services[name]
	switch st, err := parseState(payload); {
	case len(payload) == 0: // a retained state cleared
	case err != nil:
		h.log.Debug("ignored state", "service", name, "err", err)
	default:
		if t == nil {
			t = newTracked(name, false, now)
			h.services[name] = t
		}
		t.observeState(st, now)
	}
	if t != nil {
		t.heard = now
	}
}

// step is one turn of the loop: the broker round trip, a judgement and a
// ping for every service, restarts of services that keep failing, health's
// own watchdog, the aggregate and the status line.
func (h *Health) step(ctx context.Context) {
	now := h.now()
	h.svc.Advance()

	// The broker round trip: an echo published every step must come back
	// within three steps.
	up := h.svc.Bus.Connected() && now.Sub(h.lastEcho) <= 3*h.cfg.Interval.Duration
	switch {
	case h.brokerUp && !up:
		h.graceUntil = now.Add(h.cfg.BrokerGrace.Duration)
		for _, t := range h.services {
			t.graced = t.pinged && t.name != string(topics.Broker)
		}
		h.log.Warn("broker unreachable; pinging the others on grace", "grace", h.cfg.BrokerGrace.Duration)
		h.event(ctx, event{Event: "broker-unreachable", Reason: fmt.Sprintf("no round trip for %s", now.Sub(h.lastEcho).Round(time.Millisecond))})
	case !h.brokerUp && up:
		h.log.Info("broker reachable again")
		h.event(ctx, event{Event: "broker-reachable"})
	}
	h.brokerUp = up
	h.echoSeq++
	_ = h.svc.Bus.Publish(ctx, bus.Message{Topic: h.svc.Topics.HealthEcho(), Payload: []byte(fmt.Sprint(h.echoSeq))})

	for _, name := range slices.Sorted(maps.Keys(h.services)) {
		t := h.services[name]
		if !t.expected && !t.pinged && now.Sub(t.heard) > 10*h.r.stale {
			delete(h.services, name) // an unexpected service gone for good
			continue
		}
		h.judgeAndPing(ctx, t, now)
		if f := h.cfg.FailingRestartAfter.Duration; f > 0 && t.failing != "" && t.pinged && now.Sub(t.failingAt) >= f {
			reason := fmt.Sprintf("failing for %s: %s", now.Sub(t.failingAt).Round(time.Second), t.failing)
			t.failingAt = now // the next attempt only after another full period
			h.restart(ctx, name, reason)
		}
	}

	if up || now.Before(h.graceUntil) {
		if err := h.self(); err != nil {
			h.logPingErr(h.svc.Name, err)
		}
	}
	h.count.Store(int64(len(h.services)))
	h.report(ctx, now)
}

// judgeAndPing judges t, verifies its pid and pings its watchdog when the
// verdict allows, and publishes an event when pinging stops or resumes.
func (h *Health) judgeAndPing(ctx context.Context, t *tracked, now time.Time) {
	v := t.judge(now, h.r, h.brokerUp, h.graceUntil)
	if v.ping {
		if err := h.verify(ctx, t); err != nil {
			v = verdict{false, Failed, err.Error()}
			if !t.expected {
				v.level = Degraded
			}
		}
	}
	if v.ping {
		if err := h.sup.Ping(t.pid); err != nil {
			h.logPingErr(t.name, err)
		} else {
			delete(h.pingErrs, t.name)
		}
	}
	switch {
	case t.pinged && !v.ping && t.restartPID == t.pid && t.restartPID != 0:
		// Its own restart: no alarm, no event.
		h.log.Info("watchdog pings end: restarting", "service", t.name, "pid", t.pid)
	case t.pinged && !v.ping:
		h.log.Warn("watchdog pings withheld", "service", t.name, "pid", t.pid, "reason", v.reason)
		h.event(ctx, event{Event: "watchdog-withheld", Service: t.name, Unit: t.unit, PID: t.pid, Reason: v.reason})
	case !t.pinged && v.ping && t.instances > 0:
		h.log.Info("watchdog pings", "service", t.name, "pid", t.pid, "unit", t.unit)
	}
	t.pinged, t.level, t.reason = v.ping, v.level, v.reason
}

// verify finds t's unit (once per instance) and checks that t.pid is its
// main process.
func (h *Health) verify(ctx context.Context, t *tracked) error {
	ctx, cancel := context.WithTimeout(ctx, h.cfg.Interval.Duration)
	defer cancel()
	if t.unit == "" {
		if t.expected {
			t.unit = h.cfg.Unit(t.name)
		} else {
			u, err := h.sup.UnitOf(ctx, t.pid)
			if err != nil {
				return err
			}
			t.unit = u
		}
	}
	return h.sup.Verify(ctx, t.unit, t.pid)
}

func (h *Health) logPingErr(name string, err error) {
	if h.pingErrs[name] == err.Error() {
		return // said once is enough
	}
	h.pingErrs[name] = err.Error()
	h.log.Error("watchdog ping failed", "service", name, "err", err)
}

// restart restarts service name's unit on its own goroutine, if the rate
// limit allows, publishing an event either way.
func (h *Health) restart(ctx context.Context, name, reason string) {
	now := h.now()
	t := h.services[name]
	if t == nil || t.pid == 0 {
		h.log.Warn("restart refused: unknown service", "service", name, "reason", reason)
		h.event(ctx, event{Event: "restart", Service: name, Reason: reason, Result: "refused", Error: "no such service seen"})
		return
	}
	if err := h.verify(ctx, t); err != nil {
		h.log.Warn("restart refused", "service", name, "err", err)
		h.event(ctx, event{Event: "restart", Service: name, Unit: t.unit, PID: t.pid, Reason: reason, Result: "refused", Error: err.Error()})
		return
	}
	if !t.allowRestart(now, h.cfg.RestartLimit, h.cfg.RestartWindow.Duration) {
		msg := fmt.Sprintf("rate limit: %d restarts within %s", h.cfg.RestartLimit, h.cfg.RestartWindow.Duration)
		h.log.Warn("restart refused", "service", name, "reason", reason, "err", msg)
		h.event(ctx, event{Event: "restart", Service: name, Unit: t.unit, PID: t.pid, Reason: reason, Result: "refused", Error: msg})
		return
	}
	h.log.Warn("restarting", "service", name, "unit", t.unit, "pid", t.pid, "reason", reason)
	unit, pid := t.unit, t.pid
	// Until the restart is done (and a while after, for the new instance
	// to speak), the old pid failing its MainPID check is no alarm.
	t.restartPID, t.restartUntil = pid, now.Add(2*time.Minute)
	go func() {
		rctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		err := h.sup.Restart(rctx, unit, pid)
		select {
		case h.restarts <- restartDone{svc: name, unit: unit, reason: reason, pid: pid, err: err}:
		case <-ctx.Done():
		}
	}()
}

func (h *Health) restarted(ctx context.Context, d restartDone) {
	if t := h.services[d.svc]; t != nil && t.restartPID == d.pid {
		if d.err != nil {
			t.restartPID, t.restartUntil = 0, time.Time{}
		} else {
			t.restartUntil = h.now().Add(h.r.stale)
		}
	}
	e := event{Event: "restart", Service: d.svc, Unit: d.unit, PID: d.pid, Reason: d.reason, Result: "done"}
	if d.err != nil {
		e.Result, e.Error = "failed", d.err.Error()
		h.log.Error("restart failed", "service", d.svc, "unit", d.unit, "err", d.err)
	} else {
		h.log.Info("restarted", "service", d.svc, "unit", d.unit)
	}
	h.event(ctx, e)
}

// event is the payload of <prefix>/health/event.
type event struct {
	T       int64  `json:"t"`
	Event   string `json:"event"`
	Service string `json:"service,omitempty"`
	Unit    string `json:"unit,omitempty"`
	PID     int    `json:"pid,omitempty"`
	Reason  string `json:"reason,omitempty"`
	Result  string `json:"result,omitempty"`
	Error   string `json:"error,omitempty"`
}

func (h *Health) event(ctx context.Context, e event) {
	e.T = time.Now().UnixMilli()
	b, _ := json.Marshal(e)
	go func() {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if err := h.svc.Bus.Publish(pctx, bus.Message{Topic: h.svc.Topics.HealthEvent(), QoS: 1, Payload: b}); err != nil && ctx.Err() == nil {
			h.log.Debug("event not published", "event", string(b), "err", err)
		}
	}()
}
