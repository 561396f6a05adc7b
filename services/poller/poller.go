// Package poller is the poller role: it owns the configured serial ports,
// polls the Modbus RTU devices on them on schedule (or reads the records
// of line-protocol devices), and publishes each device's poll round on the
// bus, keeping it in a bounded outbox until the logger acknowledges it.
package poller

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/tinyscada/tinyscada/shared/bus"
	"github.com/tinyscada/tinyscada/shared/clock"
	"github.com/tinyscada/tinyscada/shared/config"
	"github.com/tinyscada/tinyscada/shared/lograte"
	"github.com/tinyscada/tinyscada/shared/modbus"
	"github.com/tinyscada/tinyscada/shared/service"
	"github.com/tinyscada/tinyscada/shared/topics"
)

// Options configure a Poller.
type Options struct {
	// Log receives the poller's logs; nil discards them.
	Log *slog.Logger
	// Clock stamps readings; nil means clock.System().
	Clock clock.Clock
	// OnRound is called after every completed poll round of a device;
	// nil does nothing.
	OnRound func()
	// Watch returns the watch of one port's loop (service.Service.Loop):
	// each port's scheduler says, before each step, how long it may take or
	// wait, so that a slow schedule or a silent device is not taken for a
	// hang while a stuck read or a deadlock is. nil: unwatched.
	Watch func(name string) *service.Loop
	// RunID names this run of the producer in data messages and
	// acknowledgements; "" makes a random one.
	RunID string
	// Locks are the ports LockPorts locked: they are opened through them
	// the first time. nil: each port is locked when it is opened.
	Locks *Locks
}

// Poller polls every configured device and publishes the readings. Create
// it with New, start it with Run.
type Poller struct {
	cfg    *config.Poller
	plan   *Plan
	topics topics.Tree
	clock  clock.Clock
	log    *slog.Logger
	run    string
	out    *Outbox

	runFile string
	prev    *RunRecord // what the previous run noted, or nil
	onRound func()
	watch   func(name string) *service.Loop
	limiter *lograte.Limiter

	ports   []*portRun
	devices []*device

	tick        time.Duration  // the idle ticks' period: the heartbeat interval, at least 1 s
	wake        chan struct{}  // publish after a linger (wakeSender)
	flush       chan struct{}  // publish now (flushSender)
	lingerSleep modbus.Sleeper // the sender's (linger)
	portsMoved  chan struct{}  // a port opened or closed (reportPorts)
	started     chan struct{}
	toStart     atomic.Int32
	skipped     atomic.Uint64 // samples not taken: outbox full
	resent      atomic.Uint64 // data messages published again
	badRecords  atomic.Uint64 // line records that could not be parsed
	pressured   atomic.Int64  // unix ms of the last back-pressure, 0 never
	loggerPID   atomic.Int64  // the logger process last seen ready (HandleLoggerState)
	// waiting is the unix ns at which the oldest RTU round not yet handed
	// to the sender was added (0: none), waitingN how many such rounds
	// there are: what the port goroutines decide on (sendDue).
	waiting  atomic.Int64
	waitingN atomic.Int32
}

// New compiles the configuration's poller section into a plan and returns
// a Poller ready to Run. It fails when no run id can be made or the plan
// cannot be compiled (see MakePlan).
func New(cfg *config.Config, opts Options) (*Poller, error) {
	plan, err := MakePlan(&cfg.Poller, cfg.StateDir)
	if err != nil {
		return nil, err
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.Clock == nil {
		opts.Clock = clock.System()
	}
	if opts.OnRound == nil {
		opts.OnRound = func() {}
	}
	if opts.Watch == nil {
		opts.Watch = func(string) *service.Loop { return nil }
	}
	if opts.RunID == "" {
		var b [8]byte
		if _, err := rand.Read(b[:]); err != nil {
			return nil, fmt.Errorf("poller: run id: %w", err)
		}
		opts.RunID = hex.EncodeToString(b[:])
	}
	p := &Poller{
		tick:       max(cfg.Bus.HeartbeatInterval.Duration, time.Second),
		cfg:        &cfg.Poller,
		plan:       plan,
		topics:     topics.Tree{Prefix: cfg.TopicPrefix},
		clock:      opts.Clock,
		log:        opts.Log,
		run:        opts.RunID,
		out:        NewOutbox(cfg.Poller.Outbox),
		onRound:    opts.OnRound,
		watch:      opts.Watch,
		limiter:    lograte.New(cfg.Poller.LogInterval.Duration, 0),
		wake:       make(chan struct{}, 1),
		flush:      make(chan struct{}, 1),
		portsMoved: make(chan struct{}, 1),
		started:    make(chan struct{}),

		runFile: filepath.Join(cfg.StateDir, RunFileName),
	}
	prev, err := ReadRunRecord(p.runFile)
	switch {
	case err != nil:
		opts.Log.Warn("run file of the previous run unreadable; ignored", "err", err)
	case prev != nil && prev.Run != p.run:
		p.prev = prev
	}
	for _, pp := range plan.Ports {
		pr := &portRun{plan: pp, log: opts.Log.With("port", pp.Config.Name)}
		if opts.Locks != nil {
			pr.pre = opts.Locks.nodes[pp.Config.Name]
		}
		for _, dp := range pp.Devices {
			d := newDevice(p, dp)
			pr.devices = append(pr.devices, d)
			p.devices = append(p.devices, d)
		}
		p.ports = append(p.ports, pr)
	}
	p.toStart.Store(int32(len(p.ports)))
	if len(p.ports) == 0 {
		close(p.started)
	}
	return p, nil
}

// Plan returns the request plan.
func (p *Poller) Plan() *Plan { return p.plan }

// RunID returns the run id of the data messages.
func (p *Poller) RunID() string { return p.run }

// Outbox returns the outbox (for inspection).
func (p *Poller) Outbox() *Outbox { return p.out }

// Started is closed once every port has been tried once (opened or not).
func (p *Poller) Started() <-chan struct{} { return p.started }

// portMoved tells reportPorts that a port opened or closed.
func (p *Poller) portMoved() {
	select {
	case p.portsMoved <- struct{}{}:
	default:
	}
}

func (p *Poller) portTried() {
	if p.toStart.Add(-1) == 0 {
		close(p.started)
	}
}

// Run polls until ctx ends, publishing through pub, and returns nil then.
// Whenever pub's connection comes back up, the whole outbox and the device
// states are published again: the broker kept nothing. (The value topics
// are the broker's: it derives them from the data messages.)
// A port that cannot be opened or vanishes is retried with backoff while
// the other ports carry on; nothing a device does ends Run. What is still
// unacknowledged when it returns is noted in the run file (RunFileName).
func (p *Poller) Run(ctx context.Context, pub bus.Conn) error {
	g, ctx := errgroup.WithContext(ctx)
	for _, pr := range p.ports {
		g.Go(func() error {
			if pr.plan.Config.Mode == config.ModeLine {
				p.runLine(ctx, pr)
			} else {
				p.runRTU(ctx, pr)
			}
			return nil
		})
	}
	g.Go(func() error { p.send(ctx, pub); return nil })
	g.Go(func() error { p.noteRun(ctx); return nil })
	err := g.Wait()
	p.noteRunAtExit()
	return err
}

// ack is the payload of <prefix>/ack/poller.
type ack struct {
	Run string `json:"run"`
	Seq uint64 `json:"seq"`
}

// HandleAck takes an acknowledgement {"run":…,"seq":N}: every message of
// this run up to seq is committed and leaves the outbox. Acknowledgements
// of other runs and malformed ones are ignored (the latter logged).
func (p *Poller) HandleAck(payload []byte) {
	var a ack
	if err := json.Unmarshal(payload, &a); err != nil {
		if p.limiter.Allow("bad ack", time.Now()) {
			p.log.Warn("malformed acknowledgement ignored", "payload", string(payload), "err", err)
		}
		return
	}
	if a.Run != p.run {
		return
	}
	p.out.Ack(a.Seq)
}

// HandleLoggerState takes the logger's retained state
// (<prefix>/svc/logger/state). When a logger process other than the one
// seen before is ready, the one before may have died with an open batch
// it had taken but not committed: everything unacknowledged is published
// again now, not after ack_timeout (40 s by default), so that a poller
// stopped meanwhile does not leave those readings to a gap record. The
// logger stores each (run, seq) once.
func (p *Poller) HandleLoggerState(payload []byte) {
	var st service.State
	if json.Unmarshal(payload, &st) != nil || st.State != service.Ready || st.PID == 0 {
		return
	}
	if prev := p.loggerPID.Swap(int64(st.PID)); prev == 0 || prev == int64(st.PID) {
		return
	}
	p.out.Unsent()
	p.wakeSender()
}

func (p *Poller) wakeSender() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// flushSender makes the sender publish what waits now, without a linger.
func (p *Poller) flushSender() {
	select {
	case p.flush <- struct{}{}:
	default:
	}
}

// roundWaits notes that an RTU round was added to the outbox and waits
// for its port's goroutine to hand it to the sender (see sendDue).
func (p *Poller) roundWaits(now time.Time) {
	p.waiting.CompareAndSwap(0, now.UnixNano())
	p.waitingN.Add(1)
}

// sendDue hands the waiting RTU rounds to the sender when they should
// not wait longer: a burst's worth waits, the oldest has waited
// sendLinger, or (idle) no round of the port that calls it is due within
// sendLinger. The port goroutines call it at the end of each round (idle
// says whether their line now rests) and before each request, which is
// when they are awake anyway: the sender then publishes in the same
// wake-up of the process, instead of being woken by a timer for it (the
// linger), and the rounds of a pass over a line go out as one burst (the
// demo's two devices: one write to the broker and one batch of
// acknowledgements a second instead of two). A round then waits for the
// sender at most sendLinger, or until the request in progress on its
// line when that comes due ends (a device that times out).
func (p *Poller) sendDue(now time.Time, idle bool) {
	since := p.waiting.Load()
	if since == 0 {
		return
	}
	burst := min(max(p.cfg.Outbox/8, 1), 64)
	if idle || int(p.waitingN.Load()) >= burst || now.UnixNano()-since >= int64(sendLinger) {
		p.flushSender()
	}
}

// lineRests reports whether no device of pr is due within sendLinger of
// now: the port's goroutine will wait before its next round.
func lineRests(pr *portRun, now time.Time) bool {
	for _, d := range pr.devices {
		if d.due.Sub(now) < sendLinger {
			return false
		}
	}
	return true
}

// Stats is a snapshot of the poller for the heartbeat.
type Stats struct {
	Outbox         OutboxStats
	Skipped        uint64 // samples not taken because the outbox was full
	Resent         uint64 // data messages published again
	BadRecords     uint64 // line records that could not be parsed
	Backpressure   bool   // a sample was not taken in the last 10s
	DevicesOnline  int
	DevicesOffline int // devices not yet tried are neither

	PortsOpen int
	Ports     int
}

// Stats returns the poller's counters now.
func (p *Poller) Stats() Stats {
	now := time.Now()
	s := Stats{
		Outbox:     p.out.Stats(now),
		Skipped:    p.skipped.Load(),
		Resent:     p.resent.Load(),
		BadRecords: p.badRecords.Load(),
		Ports:      len(p.ports),
	}
	if t := p.pressured.Load(); t != 0 && now.UnixMilli()-t < 10_000 {
		s.Backpressure = true
	}
	for _, d := range p.devices {
		d.mu.Lock()
		switch {
		case d.online:
			s.DevicesOnline++
		case d.known:
			s.DevicesOffline++
		}
		d.mu.Unlock()
	}
	for _, pr := range p.ports {
		if pr.open.Load() {
			s.PortsOpen++
		}
	}
	return s
}

// HeartbeatFields returns the poller's part of the heartbeat (for
// service.SetExtra).
func (p *Poller) HeartbeatFields() map[string]any {
	s := p.Stats()
	m := map[string]any{
		"run":             p.run,
		"outbox":          s.Outbox.Depth,
		"outbox_oldest_s": s.Outbox.Oldest.Truncate(time.Millisecond).Seconds(),
		"data_seq":        s.Outbox.Seq,
		"acked":           s.Outbox.Acked,
		"backpressure":    s.Backpressure,
		"skipped":         s.Skipped,
		"resent":          s.Resent,
		"bad_records":     s.BadRecords,
		"devices_online":  s.DevicesOnline,
		"devices_offline": s.DevicesOffline,
		"ports_open":      s.PortsOpen,
		"ports":           s.Ports,
		"port_errors":     p.PortLine(),
	}
	if p.prev != nil {
		// How far the previous run got while the logger was not
		// acknowledging (see RunFileName).
		m["prev_run"], m["prev_data_seq"] = p.prev.Run, p.prev.DataSeq
	}
	return m
}

// Status is a one-line summary for systemd's STATUS=.
func (p *Poller) Status() string {
	s := p.Stats()
	st := fmt.Sprintf("%d/%d ports open, %d devices online, %d offline, outbox %d",
		s.PortsOpen, s.Ports, s.DevicesOnline, s.DevicesOffline, s.Outbox.Depth)
	if s.Backpressure {
		st += " (full: back-pressure)"
	}
	return st
}

// noteBackpressure records that d's sample was not taken.
func (p *Poller) noteBackpressure(d *device) {
	p.skipped.Add(1)
	d.skipped.Add(1)
	now := time.Now()
	p.pressured.Store(now.UnixMilli())
	if ok, n := p.limiter.Check("backpressure", now); ok {
		st := p.out.Stats(now)
		p.log.Warn("outbox full: samples not taken until the logger acknowledges (back-pressure)",
			"device", d.name, "outbox", st.Depth, "oldest", st.Oldest.Round(time.Millisecond),
			"skipped_total", p.skipped.Load(), "suppressed", n)
	}
}

// portRun is one port at run time.
type portRun struct {
	plan    *PortPlan
	pre     *nodeLock // the node LockPorts locked, until the first open takes it
	log     *slog.Logger
	devices []*device
	open    atomic.Bool
	tried   bool
	loop    *service.Loop // the watch of the port's goroutine; nil unwatched
}

// device is one device at run time.
type device struct {
	plan       *DevicePlan
	name       string
	dataTopic  string
	stateTopic string
	log        *slog.Logger

	// Used by the port's goroutine only.
	due     time.Time
	backoff time.Duration
	res     []result
	text    []byte
	msg     message
	fields  []field
	maxLate time.Duration

	skipped atomic.Uint64
	rounds  atomic.Uint64
	late    atomic.Int64 // the largest lateness of a round start, ns
	line    lineStats    // the line's trouble in this device's transactions
	logged  LineCounts   // what the last "line errors" log line said (port goroutine)

	mu         sync.Mutex // guards the fields below, shared with the sender
	known      bool       // the state was determined once
	online     bool
	since      int64 // unix ms of the last state change
	lastErr    string
	stateDirty bool
	// The counters the retained state last carried, and when (sender).
	pubLine   LineCounts
	pubLineAt time.Time
}

// LineCounts counts the line's trouble of a device's transactions, or of
// a port's (the sum of its devices'): the master's counters for each
// request, attributed to the device it was for. In line mode only
// Discarded moves (the bytes of dropped records).
type LineCounts struct {
	CRCErrors  uint64 `json:"crc_errors"`      // replies with a wrong CRC
	Timeouts   uint64 `json:"timeouts"`        // attempts without a reply in time
	Exceptions uint64 `json:"exceptions"`      // exception replies
	Discarded  uint64 `json:"discarded_bytes"` // received bytes that were no reply (noise, late replies) or no record
}

func (c LineCounts) add(o LineCounts) LineCounts {
	return LineCounts{c.CRCErrors + o.CRCErrors, c.Timeouts + o.Timeouts, c.Exceptions + o.Exceptions, c.Discarded + o.Discarded}
}

func (c LineCounts) sub(o LineCounts) LineCounts {
	return LineCounts{c.CRCErrors - o.CRCErrors, c.Timeouts - o.Timeouts, c.Exceptions - o.Exceptions, c.Discarded - o.Discarded}
}

// lineStats is LineCounts shared between the port goroutine (writer) and
// the heartbeat and sender (readers).
type lineStats struct {
	crc, timeouts, exceptions, discarded atomic.Uint64
}

func (l *lineStats) load() LineCounts {
	return LineCounts{l.crc.Load(), l.timeouts.Load(), l.exceptions.Load(), l.discarded.Load()}
}

func (l *lineStats) addCounts(c LineCounts) {
	l.crc.Add(c.CRCErrors)
	l.timeouts.Add(c.Timeouts)
	l.exceptions.Add(c.Exceptions)
	l.discarded.Add(c.Discarded)
}

// noteLine adds delta to d's line counters and, when they moved, logs the
// line's trouble since the last such line (rate-limited per device): noise
// on a bus shows in the journal, not only in the counters.
func (p *Poller) noteLine(d *device, delta LineCounts) {
	if delta == (LineCounts{}) {
		return
	}
	d.line.addCounts(delta)
	ok, n := p.limiter.Check("line "+d.name, time.Now())
	if !ok {
		return
	}
	cur := d.line.load()
	since := cur.sub(d.logged)
	d.logged = cur
	d.log.Warn("line errors", "crc_errors", since.CRCErrors, "timeouts", since.Timeouts,
		"exceptions", since.Exceptions, "discarded_bytes", since.Discarded,
		"crc_errors_total", cur.CRCErrors, "timeouts_total", cur.Timeouts,
		"exceptions_total", cur.Exceptions, "discarded_bytes_total", cur.Discarded, "suppressed", n)
}

// PortLine returns the line counters of each port (the sum of its
// devices'), by port name.
func (p *Poller) PortLine() map[string]LineCounts {
	m := make(map[string]LineCounts, len(p.ports))
	for _, pr := range p.ports {
		var c LineCounts
		for _, d := range pr.devices {
			c = c.add(d.line.load())
		}
		m[pr.plan.Config.Name] = c
	}
	return m
}

// result is one point's outcome in a round: text[start:end] or why.
type result struct {
	start, end int
	why        string
}

func newDevice(p *Poller, dp *DevicePlan) *device {
	d := &device{
		plan:       dp,
		name:       dp.Config.Name,
		dataTopic:  p.topics.Data(dp.Config.Name),
		stateTopic: p.topics.DeviceState(dp.Config.Name),
		log:        p.log.With("device", dp.Config.Name),
		res:        make([]result, len(dp.Points)),
	}
	return d
}

// setState records the device online (err == nil) or offline with err;
// it logs a change (and, rate-limited, a repeated error).
func (p *Poller) setState(d *device, err error) {
	now := p.clock.Now().Wall.UnixMilli()
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	d.mu.Lock()
	changed := !d.known || d.online != (err == nil)
	if changed {
		d.since = now
	}
	if changed || d.lastErr != msg {
		d.stateDirty = true
	}
	wasKnown, dirty := d.known, d.stateDirty
	d.known, d.online, d.lastErr = true, err == nil, msg
	d.mu.Unlock()
	switch {
	case err == nil && changed && wasKnown:
		d.log.Info("device back online")
	case err == nil && changed:
		d.log.Info("device online")
	case err != nil && changed:
		// A new episode: its repeats are counted from here (lograte.Start),
		// not together with an earlier episode's.
		d.log.Warn("device offline", "err", msg)
		p.limiter.Start("device "+d.name, time.Now())
	case err != nil:
		if ok, n := p.limiter.Check("device "+d.name, time.Now()); ok {
			d.log.Warn("device still offline", "err", msg, "suppressed", n)
		}
	}
	if dirty {
		p.wakeSender()
	}
}

// sendLinger is how long the sender waits, once woken by a new round or
// state, for more before publishing: the latency it adds to the data and
// device state topics.
const sendLinger = 100 * time.Millisecond

// send publishes data messages from the outbox and device states until
// ctx ends. It publishes everything again after a reconnect, and
// re-sends data messages not acknowledged within ack_timeout.
func (p *Poller) send(ctx context.Context, pub bus.Conn) {
	ackTimeout := p.cfg.AckTimeout.Duration
	// The tick notices a reconnect while no round wakes the sender, and
	// what waited ack_timeout: a quarter of ack_timeout, at most p.tick,
	// is soon enough for both (rounds wake the sender sooner), and each
	// tick is a wake-up of an otherwise idle poller.
	tick := time.NewTicker(max(min(ackTimeout/4, p.tick), 10*time.Millisecond))
	defer tick.Stop()
	connected := false
	var due []Pending
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.wake:
			if !p.linger(ctx) {
				return
			}
		case <-p.flush:
		case <-tick.C:
		}
		// What this pass publishes no longer waits (sendDue).
		p.waiting.Store(0)
		p.waitingN.Store(0)
		up := pub.Connected()
		if up && !connected {
			p.out.Unsent()
			for _, d := range p.devices {
				d.mu.Lock()
				d.stateDirty = d.known
				d.mu.Unlock()
			}
		}
		connected = up
		if !up {
			continue
		}
		p.publishStates(ctx, pub)
		for {
			due = p.out.Due(time.Now(), ackTimeout, 64, due[:0])
			if len(due) == 0 {
				break
			}
			if !p.publishData(ctx, pub, due) {
				break
			}
		}
	}
}

// linger lets the rounds of the next moment join the one that woke the
// sender: a burst is one write, one batch of acknowledgements and one
// wake-up of the broker and the logger, not one per device. It waits
// sendLinger, less once a burst's worth of new rounds waits: an eighth of
// the outbox, at most the 64 messages one publishing pass takes (so that
// lingering never brings the outbox near full, which would stop the
// sampling). It returns false when ctx ended.
//
// With an outbox of 512 messages or more (the default is 4096) the rounds
// of sendLinger (a line takes a millisecond or more a round) do not bring
// it near full, and it sleeps the whole time on a kernel timer instead
// (modbus.Sleeper; a pass of more than 64 is two passes): a Go
// timer wakes the process twice, at the whole millisecond the runtime
// rounds the wait down to and again for the rest, and the linger is most
// of the sender's wake-ups. A stop then waits for the end of the linger.
func (p *Poller) linger(ctx context.Context) bool {
	if p.cfg.Outbox >= 512 {
		p.lingerSleep.Sleep(sendLinger)
		select {
		case <-p.wake: // the rounds that came meanwhile are published now
		default:
		}
		return ctx.Err() == nil
	}
	burst := min(max(p.cfg.Outbox/8, 1), 64)
	t := time.NewTimer(sendLinger)
	defer t.Stop()
	for p.out.Fresh(burst) < burst && p.out.Stats(time.Now()).Depth < p.cfg.Outbox-burst {
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
			return true
		case <-p.wake:
		}
	}
	return true
}

// publishData publishes msgs in order, all in flight at once (bus.Send),
// then waits for the broker's acknowledgements; on a failure it marks the
// message that failed and every later one unsent and returns false (the
// logger stores each (run, seq) once, so sending one again is harmless).
func (p *Poller) publishData(ctx context.Context, pub bus.Conn, msgs []Pending) bool {
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	sent := make([]bus.Sent, 0, len(msgs))
	var err error
	for _, m := range msgs {
		var s bus.Sent
		if s, err = bus.Send(pctx, pub, bus.Message{Topic: m.Topic, QoS: 1, Payload: m.Payload}); err != nil {
			break
		}
		sent = append(sent, s)
	}
	failed := len(sent) // the first message not known to be delivered
	for i, s := range sent {
		if werr := s.Wait(pctx); werr != nil && failed == len(sent) {
			failed, err = i, werr
		}
	}
	if failed < len(msgs) {
		for _, r := range msgs[failed:] {
			p.out.Retry(r.Seq)
		}
		if ctx.Err() == nil {
			if ok, n := p.limiter.Check("publish", time.Now()); ok {
				p.log.Warn("publishing readings failed; kept in the outbox", "err", err, "suppressed", n)
			}
		}
	}
	for _, m := range msgs[:failed] {
		if m.Resent {
			p.resent.Add(1)
		}
	}
	return failed == len(msgs)
}

func (p *Poller) publishStates(ctx context.Context, pub bus.Conn) {
	now := time.Now()
	lineEvery := min(5*time.Second, p.cfg.LogInterval.Duration)
	for _, d := range p.devices {
		line := d.line.load()
		d.mu.Lock()
		// The state is published on a change, and when the line counters
		// moved, at most every lineEvery.
		if !d.stateDirty && (!d.known || line == d.pubLine || now.Sub(d.pubLineAt) < lineEvery) {
			d.mu.Unlock()
			continue
		}
		d.stateDirty = false
		d.pubLine, d.pubLineAt = line, now
		b := make([]byte, 0, 160+len(d.lastErr))
		b = append(b, `{"state":"`...)
		if d.online {
			b = append(b, "online"...)
		} else {
			b = append(b, "offline"...)
		}
		b = append(b, `","since":`...)
		b = strconv.AppendInt(b, d.since, 10)
		if d.lastErr != "" {
			b = append(b, `,"error":`...)
			b = appendJSONString(b, d.lastErr)
		}
		b = append(b, `,"crc_errors":`...)
		b = strconv.AppendUint(b, line.CRCErrors, 10)
		b = append(b, `,"timeouts":`...)
		b = strconv.AppendUint(b, line.Timeouts, 10)
		b = append(b, `,"exceptions":`...)
		b = strconv.AppendUint(b, line.Exceptions, 10)
		b = append(b, `,"discarded_bytes":`...)
		b = strconv.AppendUint(b, line.Discarded, 10)
		b = append(b, '}')
		d.mu.Unlock()
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := pub.Publish(pctx, bus.Message{Topic: d.stateTopic, QoS: 1, Retain: true, Payload: b})
		cancel()
		if err != nil {
			d.mu.Lock()
			d.stateDirty = true
			d.mu.Unlock()
			return
		}
	}
}

// Serve runs the poller role on svc (started with service.Start): it
// subscribes to the acknowledgements, adds the poller's fields to the
// heartbeat, says READY once every port was tried, and polls until ctx
// ends (then it returns nil). Each port is locked when it is opened.
// Errors: the plan cannot be made.
func Serve(ctx context.Context, svc *service.Service) error {
	return ServeLocked(ctx, svc, nil)
}

// ServeLocked is Serve with the locks LockPorts took before svc was
// started (the role's order: lock every port, then connect): the ports are
// opened through them.
func ServeLocked(ctx context.Context, svc *service.Service, locks *Locks) error {
	if svc.Bus == nil {
		return errors.New("poller: no bus connection")
	}
	p, err := New(svc.Config, Options{Log: svc.Log, OnRound: svc.Advance, Locks: locks, Watch: svc.Loop})
	if err != nil {
		return err
	}
	ackTopic := svc.Topics.Ack(svc.Name)
	if err := svc.Bus.Subscribe(ackTopic, 1, func(_ string, b []byte) { p.HandleAck(b) }); err != nil {
		svc.Log.Warn("subscribe to acknowledgements failed; retried on reconnect", "topic", ackTopic, "err", err)
	}
	loggerState := svc.Topics.SvcState(string(topics.Logger))
	if err := svc.Bus.Subscribe(loggerState, 1, func(_ string, b []byte) { p.HandleLoggerState(b) }); err != nil {
		svc.Log.Warn("subscribe to the logger's state failed; retried on reconnect", "topic", loggerState, "err", err)
	}
	svc.SetExtra(p.HeartbeatFields)
	svc.Log.Info("polling", "run", p.run, "ports", len(p.plan.Ports), "requests_per_round", p.plan.Requests())
	go func() {
		select {
		case <-p.Started():
			// A port down is reported before READY=1, so that no report
			// of health taken after it judges this poller ok.
			reportFailing(p, svc)
			svc.Ready(p.Status())
		case <-ctx.Done():
			return
		}
		reportPorts(ctx, p, svc, p.tick)
	}()
	return p.Run(ctx, svc.Bus)
}

// reportFailing tells health, through svc.Failing, whether a port is not
// open.
func reportFailing(p *Poller, svc *service.Service) {
	if s := p.Stats(); s.PortsOpen < s.Ports {
		svc.Failing(fmt.Sprintf("%d of %d ports not open", s.Ports-s.PortsOpen, s.Ports))
	} else {
		svc.Failing("")
	}
}

// reportPorts tells health, through svc.Failing, while a port is not open
// (an adapter unplugged, a node that cannot be opened): the poller is alive
// and retrying, but failing by its own report, so health shows it degraded
// and, if it lasts, restarts it. It reports as soon as a port opens or
// closes, and keeps the status line (STATUS= and the retained state) on
// the live figures every interval (the heartbeat's, at least a second: a
// tick is a wake-up of the poller, the figures change with every round,
// and each change of the line republishes the retained state at the next
// heartbeat). It returns when ctx ends.
func reportPorts(ctx context.Context, p *Poller, svc *service.Service, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		reportFailing(p, svc)
		svc.Status("%s", p.Status())
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-p.portsMoved:
		}
	}
}
