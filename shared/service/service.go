// Package service is the runtime every tinyscada role shares: crash capture,
// stack dumps, the broker connection, the retained state topic, heartbeats
// and sd_notify readiness.
package service

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tinyscada/tinyscada/shared/bus"
	"github.com/tinyscada/tinyscada/shared/clock"
	"github.com/tinyscada/tinyscada/shared/config"
	"github.com/tinyscada/tinyscada/shared/crash"
	"github.com/tinyscada/tinyscada/shared/credentials"
	"github.com/tinyscada/tinyscada/shared/lograte"
	"github.com/tinyscada/tinyscada/shared/sdnotify"
	"github.com/tinyscada/tinyscada/shared/topics"
	"github.com/tinyscada/tinyscada/shared/version"
)

// States a service goes through. Lost is the broker's last will for it.
const (
	Starting = "starting"
	Ready    = "ready"
	Stopping = "stopping"
	Lost     = "lost"
)

// State is the payload of the retained tinyscada/svc/<svc>/state topic.
type State struct {
	State   string `json:"state"`
	PID     int    `json:"pid"`
	Boot    string `json:"boot,omitempty"`
	Version string `json:"version,omitempty"`
	// Since is the wall time (Unix ms) the service entered this state.
	Since  int64  `json:"since"`
	Status string `json:"status,omitempty"`
}

// Heartbeat is the payload of tinyscada/svc/<svc>/heartbeat. Extra holds
// role-specific fields, flattened into the JSON object.
type Heartbeat struct {
	PID      int
	Seq      uint64
	Progress uint64
	Uptime   time.Duration
	Idle     bool
	// Failing is the reason the service gave for being up but not doing
	// its job (see Service.Failing); empty when it is not failing.
	Failing string
	// Hung says which watched loop overran its promise, and by how much
	// (see Service.Loop); empty when none did.
	Hung  string
	Extra map[string]any
}

// MarshalJSON writes the heartbeat as one flat object.
func (h Heartbeat) MarshalJSON() ([]byte, error) {
	m := make(map[string]any, len(h.Extra)+5)
	for k, v := range h.Extra {
		m[k] = v
	}
	m["pid"] = h.PID
	m["seq"] = h.Seq
	m["progress"] = h.Progress
	m["uptime_s"] = h.Uptime.Truncate(time.Millisecond).Seconds()
	if h.Idle {
		m["idle"] = true
	}
	if h.Failing != "" {
		m["failing"] = h.Failing
	}
	if h.Hung != "" {
		m["hung"] = h.Hung
	}
	return json.Marshal(m)
}

// Service is one role's runtime. Create it with New (the broker, which has
// no client connection) or Start (every other role).
type Service struct {
	Name   string
	Config *config.Config
	Log    *slog.Logger
	Topics topics.Tree
	// Bus is the role's broker connection; nil for the broker itself.
	Bus *bus.Client

	clock    clock.Clock
	started  clock.Stamp
	progress atomic.Uint64
	idle     atomic.Bool
	failing  atomic.Pointer[string]
	beatNow  chan struct{} // Run sends a heartbeat at once (Failing)

	mu     sync.Mutex
	pub    bus.Publisher
	state  State
	extra  func() map[string]any
	hbSeq  uint64
	status string
	// statusSent is when the last STATUS= went out; statusDirty says the
	// status changed since the retained state (or STATUS=) was last sent.
	statusSent  time.Time
	statusDirty bool
	notified    string // the last STATUS= sent

	// Watched loops and the progress they make (watch.go).
	epoch        time.Time
	loopsMu      sync.Mutex
	loops        []*Loop
	beatMu       sync.Mutex
	lastProgress uint64

	// Feeding its own watchdog while health is absent (watch.go).
	watchdog time.Duration // WatchdogSec given to this process; 0 none
	self     selfWatch
	limiter  *lograte.Limiter
}

// New prepares the runtime of role without connecting anywhere: it
// turns crash leftovers into reports, captures crashes from now on and
// dumps stacks on SIGUSR1 until ctx ends.
func New(ctx context.Context, role topics.Role, cfg *config.Config, log *slog.Logger) (*Service, error) {
	name := string(role)
	clk := clock.System()
	s := &Service{
		Name:    name,
		Config:  cfg,
		Log:     log,
		Topics:  topics.Tree{Prefix: cfg.TopicPrefix},
		clock:   clk,
		started: clk.Now(),
		epoch:   time.Now(),
		limiter: lograte.New(time.Minute, 16),
		beatNow: make(chan struct{}, 1),
	}
	if wd, err := sdnotify.WatchdogInterval(); err != nil {
		log.Warn("watchdog settings unreadable; this role will not feed its own watchdog", "err", err)
	} else {
		s.watchdog = wd
		if hb := cfg.Bus.HeartbeatInterval.Duration; wd > 0 && 2*hb > wd {
			log.Warn("bus.heartbeat_interval is more than half the watchdog timeout: while health is absent this role's own pings may come too late",
				"heartbeat_interval", hb, "watchdog", wd)
		}
	}
	crashDir := filepath.Join(cfg.StateDir, "crash")
	c, err := crash.Capture(crashDir, name, log)
	if err != nil {
		return nil, fmt.Errorf("%s: crash capture: %w", name, err)
	}
	for _, r := range c.Reports {
		log.Warn("previous run crashed; report kept for upload", "report", r)
	}
	go crash.DumpOnSignal(ctx, crashDir, name, log)
	s.state = s.newState(Starting)
	return s, nil
}

// StartOptions are the optional settings of Start.
type StartOptions struct {
	// PersistentSession connects with CleanSession false under the role's
	// stable client id ("tinyscada-<role>"): the broker keeps the role's
	// subscriptions and queues its QoS 1 messages while it is away. The
	// broker's session is in memory (and the client keeps nothing): the
	// queue survives a restart of the role, not of the broker.
	PersistentSession bool
	// OnMessage receives the messages that arrive before Subscribe
	// registered a handler for them (see bus.Options.DefaultHandler); with
	// a persistent session that is what the broker queued.
	OnMessage bus.Handler
}

// Start is New plus the broker connection: it connects with the role's
// credential (waiting for the broker, retrying with backoff, until ctx
// ends), with the retained "lost" state as last will, and publishes
// "starting". On every reconnect the current state is published again, since
// the broker keeps nothing across its restarts. The caller says Ready once
// the role is functional. At most one StartOptions may be given; without
// one the session is clean.
func Start(ctx context.Context, role topics.Role, cfg *config.Config, log *slog.Logger, opts ...StartOptions) (*Service, error) {
	name := string(role)
	var o StartOptions
	switch len(opts) {
	case 0:
	case 1:
		o = opts[0]
	default:
		return nil, fmt.Errorf("%s: service.Start takes at most one StartOptions, got %d", name, len(opts))
	}
	s, err := New(ctx, role, cfg, log)
	if err != nil {
		return nil, err
	}
	_ = sdnotify.Status("connecting to broker at %s", cfg.Bus.Address)
	will, _ := json.Marshal(s.newState(Lost))
	bc, err := bus.Dial(ctx, bus.Options{
		Address:      cfg.Bus.Address,
		ClientID:     "tinyscada-" + name,
		CleanSession: !o.PersistentSession,
		Credentials: func() (string, string, error) {
			p, err := credentials.Read(cfg.StateDir, name)
			return name, p, err
		},
		Will:           &bus.Message{Topic: s.Topics.SvcState(name), QoS: 1, Retain: true, Payload: will},
		KeepAlive:      cfg.Bus.KeepAlive.Duration,
		RetryMax:       cfg.Bus.RetryMax.Duration,
		Log:            log.With("component", "bus"),
		OnConnect:      func(*bus.Client) { s.publishState(context.Background()) },
		DefaultHandler: o.OnMessage,
	})
	if err != nil {
		return nil, fmt.Errorf("%s: connect to broker: %w", name, err)
	}
	s.Bus = bc
	s.Attach(bc)
	if name != string(topics.Health) {
		s.WatchHealth(func(filter string, h func(topic string, payload []byte)) error {
			return bc.Subscribe(filter, 1, h)
		})
	}
	return s, nil
}

func (s *Service) newState(st string) State {
	now := s.clock.Now()
	return State{
		State:   st,
		PID:     os.Getpid(),
		Boot:    now.Boot,
		Version: version.String(),
		Since:   now.Wall.UnixMilli(),
		Status:  s.status,
	}
}

// Attach sets where state and heartbeats go and publishes the current state
// there.
func (s *Service) Attach(p bus.Publisher) {
	s.mu.Lock()
	s.pub = p
	s.mu.Unlock()
	s.publishState(context.Background())
}

func (s *Service) publishState(ctx context.Context) {
	s.mu.Lock()
	p, st := s.pub, s.state
	s.mu.Unlock()
	if p == nil {
		return
	}
	b, _ := json.Marshal(st)
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := p.Publish(ctx, bus.Message{Topic: s.Topics.SvcState(s.Name), QoS: 1, Retain: true, Payload: b}); err != nil {
		s.Log.Warn("publish state failed", "state", st.State, "err", err)
	}
}

func (s *Service) setState(st string) {
	s.mu.Lock()
	s.state = s.newState(st)
	s.mu.Unlock()
	s.publishState(context.Background())
}

// Ready marks the service functional: retained state "ready", READY=1 and
// STATUS=status to systemd (or the run supervisor).
func (s *Service) Ready(status string) {
	s.mu.Lock()
	s.status, s.notified, s.statusSent, s.statusDirty = status, status, time.Now(), false
	s.mu.Unlock()
	s.setState(Ready)
	if _, err := sdnotify.Notify("READY=1\nSTATUS=" + status); err != nil {
		s.Log.Warn("sd_notify READY failed", "err", err)
	}
	s.Log.Info("ready", "status", status)
}

// statusEvery is the least time between two STATUS= lines: a role may call
// Status as often as its figures change; what is held back goes out with a
// later call or the next heartbeat.
const statusEvery = time.Second

// Status sets the role's one-line status: the STATUS= line of `systemctl
// status` and the "status" of the retained state topic. A changed status
// goes to systemd at once if the last STATUS= is at least a second old (or
// else with the next heartbeat), and into the retained state with the next
// heartbeat; so both follow what they describe, at most once a second and
// once a heartbeat interval.
func (s *Service) Status(format string, args ...any) {
	st := fmt.Sprintf(format, args...)
	s.mu.Lock()
	if st != s.status {
		s.status, s.statusDirty = st, true
	}
	s.mu.Unlock()
	s.flushStatus(false)
}

// flushStatus sends a changed status as STATUS= (if a second passed since
// the last one, or always with force) and, with force, republishes the
// retained state with it.
func (s *Service) flushStatus(force bool) {
	now := time.Now()
	s.mu.Lock()
	st, notify := s.status, s.status != s.notified && (force || now.Sub(s.statusSent) >= statusEvery)
	if notify {
		s.notified, s.statusSent = st, now
	}
	republish := force && s.statusDirty && s.state.State != Stopping && s.state.State != Lost
	if republish {
		s.statusDirty = false
		s.state.Status = st
	}
	s.mu.Unlock()
	if notify {
		_, _ = sdnotify.Notify("STATUS=" + st)
	}
	if republish {
		s.publishState(context.Background())
	}
}

// Advance counts one unit of progress of the role's main loop (a poll round,
// a committed batch, ...). Health takes a heartbeat whose progress does not
// advance as a hung service, unless SetIdle(true).
func (s *Service) Advance() { s.progress.Add(1) }

// SetIdle declares that the service has nothing to do by design, so an
// unchanged progress counter is not a hang.
func (s *Service) SetIdle(idle bool) { s.idle.Store(idle) }

// Failing declares that the service is up but failing by its own report
// (its port is gone, its disk is full, ...), for reason; Failing("")
// withdraws the report. Every heartbeat carries the reason as "failing" while
// it stands: health then reports the service degraded and restarts its unit
// once the report has stood for health.failing_restart_after. Progress and
// watchdog pings go on as usual: the service is alive.
//
// A changed report goes out at once in a heartbeat of its own, not with
// the next one: health must not judge the service ok meanwhile (a remote
// configuration that left a port unopenable would pass its check on a
// heartbeat sent before the poller knew).
func (s *Service) Failing(reason string) {
	var next *string
	if reason != "" {
		next = &reason
	}
	prev := s.failing.Swap(next)
	if (prev == nil) == (next == nil) && (prev == nil || *prev == reason) {
		return
	}
	select {
	case s.beatNow <- struct{}{}:
	default:
	}
}

// SetExtra sets a function whose fields are added to every heartbeat.
func (s *Service) SetExtra(f func() map[string]any) {
	s.mu.Lock()
	s.extra = f
	s.mu.Unlock()
}

// Heartbeat returns the next heartbeat (advancing its sequence number).
func (s *Service) Heartbeat() Heartbeat {
	s.mu.Lock()
	s.hbSeq++
	seq, extra := s.hbSeq, s.extra
	s.mu.Unlock()
	progress, hung := s.progressNow()
	h := Heartbeat{
		PID:      os.Getpid(),
		Seq:      seq,
		Progress: progress,
		Uptime:   s.clock.Since(s.started),
		Idle:     s.idle.Load(),
		Hung:     hung,
	}
	if r := s.failing.Load(); r != nil {
		h.Failing = *r
	}
	if extra != nil {
		h.Extra = extra()
	}
	return h
}

// RunWith runs the role's main loop serve and Run (the heartbeats) side by
// side until serve returns, with or without an error, which it must do once
// ctx ends; the heartbeats are then stopped (the last one, "stopping", the
// bus closed) and waited for. So a loop that ends leaves no heartbeats
// behind claiming it lives, and a loop that finishes its work when ctx ends
// still has the bus meanwhile: the logger acknowledges what it commits on
// the way out, and the poller's last heartbeat carries its final data_seq.
// It returns serve's error: nil when it returned nil, as after ctx ended.
func (s *Service) RunWith(ctx context.Context, serve func(context.Context) error) error {
	beats, stop := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() { defer close(done); _ = s.Run(beats) }()
	err := serve(ctx)
	stop()
	<-done
	return err
}

// Run publishes a heartbeat every heartbeat_interval until ctx ends, then
// sends STOPPING=1, publishes a last heartbeat and "stopping", and
// disconnects. It returns nil.
func (s *Service) Run(ctx context.Context) error {
	t := time.NewTicker(s.Config.Bus.HeartbeatInterval.Duration)
	defer t.Stop()
	s.beat(ctx)
	for {
		select {
		case <-ctx.Done():
			_ = sdnotify.Stopping()
			// A last heartbeat with the final figures (the poller's
			// data_seq tells the logger where its run ended).
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
			s.beat(fctx)
			cancel()
			s.setState(Stopping)
			if s.Bus != nil {
				s.Bus.Close()
			}
			return nil
		case <-t.C:
			s.beat(ctx)
			s.flushStatus(true)
		case <-s.beatNow:
			s.beat(ctx)
		}
	}
}

func (s *Service) beat(ctx context.Context) {
	s.mu.Lock()
	p := s.pub
	s.mu.Unlock()
	if p == nil {
		return
	}
	h := s.Heartbeat()
	s.feedSelf(h)
	b, err := json.Marshal(h)
	if err != nil {
		s.Log.Error("heartbeat encode", "err", err)
		return
	}
	err = p.Publish(ctx, bus.Message{Topic: s.Topics.SvcHeartbeat(s.Name), QoS: 0, Payload: b})
	if err != nil && !errors.Is(err, context.Canceled) {
		s.Log.Warn("heartbeat publish failed", "err", err)
	}
}
