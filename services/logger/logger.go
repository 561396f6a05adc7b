// Package logger is the logger role: it subscribes to the poller's data
// messages, decodes them, stores them in batches in the database
// (shared/store, which records gaps, judges and corrects timestamps and
// keeps within its budget), and acknowledges them end to end only after
// they are committed. It survives a locked database and a full disk. See
// docs/logger.md.
package logger

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tinyscada/tinyscada/shared/bus"
	"github.com/tinyscada/tinyscada/shared/config"
	"github.com/tinyscada/tinyscada/shared/lograte"
	"github.com/tinyscada/tinyscada/shared/service"
	"github.com/tinyscada/tinyscada/shared/store"
	"github.com/tinyscada/tinyscada/shared/topics"
)

// Producer is the role whose data messages the logger stores: with the
// broker's access control only the poller may publish data.
const Producer = string(topics.Poller)

// firstBatchDelay is the most the first batch after a start waits.
const firstBatchDelay = time.Second

// retentionTick is how often the logger applies the retention and checks
// the budget when nothing else made it do so.
const retentionTick = time.Minute

// incoming is a data message as it came from the bus: device is the last
// level(s) of its topic.
type incoming struct {
	device  string
	payload []byte
}

// Options configure a Logger beyond the configuration.
type Options struct {
	Log *slog.Logger
	// Synced overrides the kernel's clock synchronisation status
	// (KernelSynced), for tests; nil uses the kernel's when
	// logger.clock_sync is on.
	Synced func() bool
	// OnProgress is called once per iteration of the write loop that did
	// work (a commit, or a retry of a blocked one).
	OnProgress func()
	// OnIdle is called with true when nothing arrived for a while and with
	// false when messages arrive again.
	OnIdle func(bool)
	// OnFailing is called with the reason when the logger stops
	// acknowledging because the disk is full, and with "" once a batch
	// commits again (service.Service.Failing).
	OnFailing func(reason string)
}

// Logger is the logger role. Create it with New (it opens the database),
// hand its Handle to the bus, then Run it.
type Logger struct {
	cfg    *config.Config
	lc     config.Logger
	opts   Options
	log    *slog.Logger
	store  *store.Store
	topics topics.Tree
	data   string // "<prefix>/data/"

	in      chan incoming
	full    chan struct{} // a batch's worth is queued
	fullAt  atomic.Int64  // how many queued messages make a batch
	done    chan struct{} // closed when Run returns
	limiter *lograte.Limiter

	mu        sync.Mutex
	acks      map[string]store.Ack // producer + "\x00" + run → newest
	ackDirty  map[string]bool
	committed int64 // last row announced
	wake      chan struct{}
	beats     producerBeats

	// Heartbeat figures.
	malformed  atomic.Int64
	duplicates atomic.Int64
	lockWaits  atomic.Int64
	diskFulls  atomic.Int64
	batches    atomic.Int64
	pending    atomic.Int64
	dropped    atomic.Int64
	statMu     sync.Mutex
	degraded   string
	waiting    string
	size       store.Size
	samples    int64
	readings   int64
	lastRow    int64
	uploaded   int64
}

// New opens the database of cfg.Logger and returns the role, ready to take
// messages. Errors: the database cannot be opened or migrated.
func New(ctx context.Context, cfg *config.Config, o Options) (*Logger, error) {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	lc := cfg.Logger
	synced := o.Synced
	if synced == nil && lc.ClockSync {
		synced = store.KernelSynced
	}
	// A hole may only be judged permanent once the poller had time to
	// send its messages again.
	gapAfter := max(lc.GapAfter.Duration, 3*cfg.Poller.AckTimeout.Duration)
	st, err := store.Open(ctx, store.Options{
		Path:        lc.Path(cfg.StateDir),
		Synchronous: lc.Synchronous,
		BusyTimeout: lc.BusyTimeout.Duration,
		MaxSize:     int64(lc.MaxDBSize),
		Reserve:     int64(lc.Reserve),
		Retention:   lc.Retention.Duration,
		ClockStep:   lc.ClockStep.Duration,
		GapAfter:    gapAfter,
		// A poller run is at most its outbox ahead of what the logger
		// knows of it (docs/logger.md, "Absurd sequence numbers").
		MaxAhead: uint64(cfg.Poller.Outbox),
		Synced:   synced,
		Log:      o.Log,
	})
	if err != nil {
		return nil, err
	}
	tr := topics.Tree{Prefix: cfg.TopicPrefix}
	l := &Logger{
		cfg:      cfg,
		lc:       lc,
		opts:     o,
		log:      o.Log,
		store:    st,
		topics:   tr,
		data:     strings.TrimSuffix(tr.Sub("data"), "#"),
		in:       make(chan incoming, lc.Pending),
		full:     make(chan struct{}, 1),
		done:     make(chan struct{}),
		limiter:  lograte.New(lc.LogInterval.Duration, 64),
		acks:     map[string]store.Ack{},
		ackDirty: map[string]bool{},
		wake:     make(chan struct{}, 1),
	}
	for _, a := range st.PendingAcks() {
		l.noteAck(a)
	}
	l.committed = st.LastRow() // announced once connected
	l.fullAt.Store(int64(min(max(lc.BatchReadings/8, 1), lc.Pending/2+1)))
	l.updateStats(ctx)
	return l, nil
}

// Store returns the role's database.
func (l *Logger) Store() *store.Store { return l.store }

// Close closes the database.
func (l *Logger) Close() error { return l.store.Close() }

// Handle takes one message from the bus: data messages are queued for the
// writer (blocking while Pending messages wait, so that the broker and the
// poller's outbox hold the rest), the uplink's cursor is noted, anything
// else is ignored.
func (l *Logger) Handle(topic string, payload []byte) {
	if dev, ok := strings.CutPrefix(topic, l.data); ok {
		l.pending.Add(1)
		select {
		case l.in <- incoming{device: dev, payload: payload}:
			if int64(len(l.in)) >= l.fullAt.Load() {
				select {
				case l.full <- struct{}{}:
				default:
				}
			}
		case <-l.done:
			l.pending.Add(-1)
		}
		return
	}
	switch topic {
	case l.topics.UplinkCursor():
		l.handleCursor(payload)
	case l.topics.SvcHeartbeat(Producer):
		l.handleBeat(payload)
	case l.topics.SvcState(Producer):
		l.handleProducerState(payload)
	}
}

// producerBeats is what the producer's heartbeats and state said, for the
// write loop to hand to the store (Store.Produced, Store.EndRuns). Guarded
// by Logger.mu.
type producerBeats struct {
	live     string            // run of the newest heartbeat; "" once it said stopping
	pid      int               // its process
	produced map[string]uint64 // run → data_seq, not yet handed over
	changed  bool              // live changed since handed over
}

// beat is the part of the poller's heartbeat the logger reads.
type beat struct {
	Run     string  `json:"run"`
	DataSeq *uint64 `json:"data_seq"`
	PID     int     `json:"pid"`
	// How far the previous run got while nothing acknowledged it, from
	// the poller's run file (poller.RunFileName).
	PrevRun     string `json:"prev_run"`
	PrevDataSeq uint64 `json:"prev_data_seq"`
}

func (l *Logger) handleBeat(payload []byte) {
	var b beat
	err := json.Unmarshal(payload, &b)
	if err == nil && b.Run == "" && b.DataSeq == nil {
		// A heartbeat without the poller's fields: the service publishes
		// its first heartbeat as soon as it runs (service.RunWith starts
		// the heartbeats and the role side by side), before the poller
		// has made its plan and added its fields. Nothing to learn.
		l.log.Debug("producer heartbeat without the poller's fields (its first, before the poller started) ignored",
			"topic", l.topics.SvcHeartbeat(Producer))
		return
	}
	if err != nil || b.Run == "" || b.DataSeq == nil {
		if ok, n := l.limiter.Check("beat", time.Now()); ok {
			l.log.Warn("producer heartbeat without run and data_seq ignored", "topic", l.topics.SvcHeartbeat(Producer),
				"payload", string(payload), "err", err, "suppressed", n)
		}
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	pb := &l.beats
	if pb.produced == nil {
		pb.produced = map[string]uint64{}
	}
	pb.produced[b.Run] = max(pb.produced[b.Run], *b.DataSeq)
	if b.PrevRun != "" && b.PrevRun != b.Run {
		pb.produced[b.PrevRun] = max(pb.produced[b.PrevRun], b.PrevDataSeq)
	}
	if b.Run != pb.live {
		pb.changed = true
	}
	pb.live, pb.pid = b.Run, b.PID
}

// handleProducerState ends the producer's run when it says it is stopping
// (its outbox goes with it).
func (l *Logger) handleProducerState(payload []byte) {
	var st service.State
	if json.Unmarshal(payload, &st) != nil || st.State != service.Stopping {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if pb := &l.beats; pb.live != "" && st.PID == pb.pid {
		pb.live, pb.changed = "", true
	}
}

// handBeats gives the store what the producer's heartbeats said since the
// last call; it runs on the write loop (the store's goroutine).
func (l *Logger) handBeats(ctx context.Context) error {
	l.mu.Lock()
	pb := &l.beats
	produced, changed, live := pb.produced, pb.changed, pb.live
	pb.produced, pb.changed = nil, false
	l.mu.Unlock()
	for run, seq := range produced {
		l.store.Produced(Producer, run, seq)
	}
	if !changed {
		return nil
	}
	err := l.store.EndRuns(ctx, Producer, live)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, store.ErrLocked), errors.Is(err, store.ErrDiskFull):
		l.mu.Lock()
		l.beats.changed = true // the next tick tries again
		l.mu.Unlock()
		return nil
	default:
		return fmt.Errorf("logger: recording the end of a producer run: %w", err)
	}
}

// cursor is the payload of <prefix>/uplink/cursor.
type cursor struct {
	Gen string `json:"gen"`
	Row *int64 `json:"row"`
}

func (l *Logger) handleCursor(payload []byte) {
	var c cursor
	if err := json.Unmarshal(payload, &c); err != nil || c.Row == nil {
		if ok, n := l.limiter.Check("cursor", time.Now()); ok {
			l.log.Warn("malformed upload cursor ignored", "payload", string(payload), "err", err, "suppressed", n)
		}
		return
	}
	if c.Gen != l.store.Generation() {
		if ok, _ := l.limiter.Check("cursor-gen", time.Now()); ok {
			l.log.Info("upload cursor of another database generation ignored", "gen", c.Gen, "ours", l.store.Generation())
		}
		return
	}
	l.mu.Lock()
	l.uploaded = max(l.uploaded, *c.Row)
	l.mu.Unlock()
}

// Run ingests until ctx ends. It returns nil when ctx ended, or the error
// of a broken database. pub receives the acknowledgements and commit
// announcements. When ctx ends it commits what it holds and acknowledges
// it before it returns (see flushOnStop).
func (l *Logger) Run(ctx context.Context, pub bus.Conn) error {
	defer close(l.done)
	outer := ctx
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); l.publishLoop(ctx, pub) }()
	err := l.writeLoop(ctx)
	cancel()
	wg.Wait()
	if errors.Is(err, context.Canceled) && outer.Err() != nil {
		l.publishOnStop(outer, pub)
		return nil
	}
	return err
}

// writeLoop collects batches and commits them.
func (l *Logger) writeLoop(ctx context.Context) error {
	batch := make([]store.Item, 0, 64)
	readings := 0
	// The tick hands over what the poller's heartbeats said, closes gaps
	// and refreshes the heartbeat's figures: once per heartbeat interval
	// (at least a second) is as often as those change, and each tick is a
	// wake-up.
	tick := time.NewTicker(l.idleTick())
	defer tick.Stop()
	lastMaint := time.Now()
	lastMsg := time.Now()
	idle := false
	setIdle := func(v bool) {
		if v != idle && l.opts.OnIdle != nil {
			l.opts.OnIdle(v)
		}
		idle = v
	}
	var timer *time.Timer
	var timerC <-chan time.Time
	committed := false // a batch was committed since the start
	add := func(m incoming) {
		// Decoded into the memory of the item that was in this slot
		// before.
		if len(batch) < cap(batch) {
			batch = batch[:len(batch)+1]
		} else {
			batch = append(batch, store.Item{})
		}
		slot := &batch[len(batch)-1]
		store.DecodeItem(slot, m.device, m.payload)
		readings += len(slot.Msg.Values)
		lastMsg = time.Now()
		setIdle(false)
	}
	// drain takes what is queued, without waiting, up to a full batch.
	drain := func() {
		for readings < l.lc.BatchReadings {
			select {
			case it := <-l.in:
				add(it)
				continue
			default:
			}
			break
		}
	}
	// in is nil while a batch is open: the loop then wakes for the batch
	// delay or when Handle says a batch's worth is queued, not for every
	// message.
	in := l.in
	// stop commits the open batch and what is queued now, on the way out.
	stop := func() error {
		sctx, cancel := stopContext(ctx)
		defer cancel()
		l.beatsOnStop(sctx)
		for left := len(l.in); len(batch) > 0 || left > 0; {
			for ; left > 0 && readings < l.lc.BatchReadings; left-- {
				add(<-l.in)
			}
			if !l.flushOnStop(sctx, batch) {
				break
			}
			l.pending.Add(-int64(len(batch)))
			batch, readings = batch[:0], 0
		}
		return ctx.Err()
	}
	for {
		flush := false
		select {
		case <-ctx.Done():
			return stop()
		case it := <-in:
			add(it)
			drain()
		case <-l.full:
			drain()
		case <-timerC:
			drain()
			flush = true
		case <-tick.C:
			if len(batch) == 0 && time.Since(lastMsg) > 2*l.cfg.Bus.HeartbeatInterval.Duration {
				setIdle(true)
			}
			// A batch waiting out batch_delay is the loop at work, not
			// a hang: health's stall_after may be shorter than the delay.
			l.progress()
			if err := l.handBeats(ctx); err != nil {
				return err
			}
			if err := l.closeGaps(ctx); err != nil {
				return err
			}
			if time.Since(lastMaint) >= retentionTick {
				lastMaint = time.Now()
				if err := l.maintain(ctx); err != nil {
					return err
				}
			}
			l.updateStats(ctx)
		}
		if len(batch) > 0 && timer == nil {
			// A batch is open: it is committed after the batch delay;
			// the first one after a start within a second, so that the
			// database shows a stack that just started (or came back)
			// at once, for one commit more a start.
			delay := l.lc.BatchDelay.Duration
			if !committed {
				delay = min(delay, firstBatchDelay)
			}
			timer = time.NewTimer(delay)
			timerC, in = timer.C, nil
		}
		if !flush && readings < l.lc.BatchReadings || len(batch) == 0 {
			continue
		}
		if timer != nil {
			timer.Stop()
			timer, timerC = nil, nil
		}
		if err := l.handBeats(ctx); err != nil {
			return err
		}
		if err := l.commit(ctx, batch); err != nil {
			if ctx.Err() != nil {
				return stop()
			}
			return err
		}
		// Wake early next time once a batch's worth of messages like
		// these is queued.
		perMsg := max(readings/len(batch), 1)
		l.fullAt.Store(int64(min(max(l.lc.BatchReadings/perMsg, 1), cap(l.in)/2+1)))
		in = l.in
		committed = true
		l.pending.Add(-int64(len(batch)))
		batch, readings = batch[:0], 0
		if err := l.maintain(ctx); err != nil {
			return err
		}
		l.updateStats(ctx)
	}
}

// commit writes one batch, retrying with backoff while the database is
// locked or the disk is full; nothing is acknowledged until it commits.
func (l *Logger) commit(ctx context.Context, batch []store.Item) error {
	backoff := 50 * time.Millisecond
	var stalled time.Time
	fulls := 0
	for {
		l.mu.Lock()
		l.store.SetUploaded(l.uploaded)
		l.mu.Unlock()
		res, err := l.store.Write(ctx, Producer, batch)
		l.progress()
		if err == nil {
			if !stalled.IsZero() {
				l.store.Stalled(time.Now())
				l.log.Info("database writable again; batch committed", "waited", time.Since(stalled).Round(time.Millisecond))
			}
			l.setWaiting("")
			if fulls > 0 {
				l.setDegraded("") // maintain says if the spare file is still missing
				if l.opts.OnFailing != nil {
					l.opts.OnFailing("")
				}
			}
			l.committedBatch(res, batch)
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if stalled.IsZero() {
			stalled = time.Now()
		}
		switch {
		case errors.Is(err, store.ErrLocked):
			l.lockWaits.Add(1)
			l.setWaiting(fmt.Sprintf("waiting for the database lock held by another process (%s)", time.Since(stalled).Round(time.Second)))
			if ok, n := l.limiter.Check("locked", time.Now()); ok {
				l.log.Warn("database locked by another process; readings stay unacknowledged until it is free",
					"err", err, "waiting", time.Since(stalled).Round(time.Millisecond), "suppressed", n)
			}
		case errors.Is(err, store.ErrDiskFull):
			l.diskFulls.Add(1)
			fulls++
			if ok, n := l.limiter.Check("disk full", time.Now()); ok {
				l.log.Error("disk full; freeing space by the storage policy, readings stay unacknowledged", "err", err, "suppressed", n)
			}
			reason := "disk full: readings wait unacknowledged in the poller's outbox until space is freed"
			n, err := l.store.MakeRoom(ctx, fulls)
			switch {
			case errors.Is(err, store.ErrNoRoom):
				reason = "disk full: the file system is full and the database below its capacity, so nothing it holds is deleted for new readings; they wait unacknowledged in the poller's outbox until space returns"
				if ok, n := l.limiter.Check("no room", time.Now()); ok {
					l.log.Error("no room for new readings: the file system is full (not by the database); acknowledging nothing until space returns",
						"suppressed", n)
				}
			case err != nil && !errors.Is(err, store.ErrDiskFull) && !errors.Is(err, store.ErrLocked):
				return fmt.Errorf("logger: freeing space: %w", err)
			case err != nil:
				l.log.Warn("freeing space failed; retrying", "deleted", n, "err", err)
			}
			l.setDegraded(reason)
			if l.opts.OnFailing != nil {
				l.opts.OnFailing(reason)
			}
		default:
			return fmt.Errorf("logger: write: %w", err)
		}
		l.updateStats(ctx)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		backoff = min(backoff*2, l.lc.RetryMax.Duration)
	}
}

func (l *Logger) committedBatch(res store.Result, batch []store.Item) {
	l.batches.Add(1)
	l.duplicates.Add(int64(res.Duplicates))
	if res.Malformed > 0 {
		l.malformed.Add(int64(res.Malformed))
		for i := range batch {
			it := &batch[i]
			if it.Err == nil {
				continue
			}
			if ok, n := l.limiter.Check("malformed", time.Now()); ok {
				l.log.Warn("malformed data message", "topic", l.data+it.Device, "err", it.Err,
					"recorded_as_gap", it.Msg.HasID, "suppressed", n)
			}
		}
	}
	if res.Deferred > 0 {
		if ok, n := l.limiter.Check("deferred", time.Now()); ok {
			l.log.Warn("data messages with a seq far beyond anything known of their run left unacknowledged until its heartbeat says how far it got",
				"messages", res.Deferred, "outbox", l.cfg.Poller.Outbox, "suppressed", n)
		}
	}
	for _, a := range res.Acks {
		l.noteAck(a)
	}
	l.mu.Lock()
	if res.LastRow != l.committed {
		l.committed = res.LastRow
	}
	l.mu.Unlock()
	l.kick()
}

func (l *Logger) closeGaps(ctx context.Context) error {
	acks, err := l.store.CloseGaps(ctx, time.Now())
	switch {
	case err == nil:
	case errors.Is(err, store.ErrLocked), errors.Is(err, store.ErrDiskFull):
		return nil // the next tick tries again
	default:
		return fmt.Errorf("logger: recording gaps: %w", err)
	}
	for _, a := range acks {
		l.noteAck(a)
	}
	if len(acks) > 0 {
		l.kick()
	}
	return nil
}

func (l *Logger) maintain(ctx context.Context) error {
	l.mu.Lock()
	l.store.SetUploaded(l.uploaded)
	l.mu.Unlock()
	_, err := l.store.Maintain(ctx)
	switch {
	case err == nil:
	case errors.Is(err, store.ErrLocked):
		return nil
	case errors.Is(err, store.ErrDiskFull):
		if _, err := l.store.MakeRoom(ctx, 2); err != nil && !errors.Is(err, store.ErrDiskFull) && !errors.Is(err, store.ErrLocked) {
			return fmt.Errorf("logger: freeing space: %w", err)
		}
	default:
		return fmt.Errorf("logger: keeping the database within its budget: %w", err)
	}
	if l.store.EnsureReserve() {
		l.setDegraded("")
	} else if l.degradedReason() == "" {
		l.setDegraded("disk nearly full: no room for the spare file")
	}
	return nil
}

func (l *Logger) progress() {
	if l.opts.OnProgress != nil {
		l.opts.OnProgress()
	}
}

func (l *Logger) setWaiting(s string) {
	l.statMu.Lock()
	l.waiting = s
	l.statMu.Unlock()
}

func (l *Logger) setDegraded(s string) {
	l.statMu.Lock()
	was := l.degraded
	l.degraded = s
	l.statMu.Unlock()
	if was != "" && s == "" {
		l.log.Info("no longer degraded", "was", was)
	}
}

func (l *Logger) degradedReason() string {
	l.statMu.Lock()
	defer l.statMu.Unlock()
	return l.degraded
}

func (l *Logger) noteAck(a store.Ack) {
	k := a.Producer + "\x00" + a.Run
	l.mu.Lock()
	if old, ok := l.acks[k]; !ok || a.Seq > old.Seq {
		l.acks[k] = a
	}
	l.ackDirty[k] = true
	l.mu.Unlock()
}

// idleTick is the period of the loops' ticks: the heartbeat interval, at
// least a second.
func (l *Logger) idleTick() time.Duration {
	return max(l.cfg.Bus.HeartbeatInterval.Duration, time.Second)
}

func (l *Logger) kick() {
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// publishLoop publishes acknowledgements and the committed row whenever
// they change (a commit kicks it), and all of them again after a
// reconnect, which its tick notices: once per heartbeat interval (at
// least a second), so that an idle logger does not wake for it more often
// (docs/performance.md); the poller waits poller.ack_timeout (40 s) before
// it sends again.
func (l *Logger) publishLoop(ctx context.Context, pub bus.Conn) {
	tick := time.NewTicker(l.idleTick())
	defer tick.Stop()
	connected := false
	announced := int64(-1)
	for {
		select {
		case <-ctx.Done():
			return
		case <-l.wake:
		case <-tick.C:
		}
		up := pub.Connected()
		if up && !connected {
			l.mu.Lock()
			for k := range l.acks {
				l.ackDirty[k] = true
			}
			l.mu.Unlock()
			announced = -1
		}
		connected = up
		if !up {
			continue
		}
		announced = l.publishAcks(ctx, pub, announced)
	}
}

// publishAcks publishes the acknowledgements not yet published (those that
// fail stay to publish) and the committed row unless it is announced; it
// returns the row announced now.
func (l *Logger) publishAcks(ctx context.Context, pub bus.Conn, announced int64) int64 {
	l.mu.Lock()
	var acks []store.Ack
	for k := range l.ackDirty {
		acks = append(acks, l.acks[k])
		delete(l.ackDirty, k)
	}
	row := l.committed
	l.mu.Unlock()
	for i, a := range acks {
		b, _ := json.Marshal(struct {
			Run string `json:"run"`
			Seq uint64 `json:"seq"`
		}{a.Run, a.Seq})
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := pub.Publish(pctx, bus.Message{Topic: l.topics.Ack(a.Producer), QoS: 1, Payload: b})
		cancel()
		if err != nil {
			l.mu.Lock()
			for _, a := range acks[i:] {
				l.ackDirty[a.Producer+"\x00"+a.Run] = true
			}
			l.mu.Unlock()
			break
		}
	}
	if row >= 0 && row != announced {
		b := []byte(`{"gen":"` + l.store.Generation() + `","row":` + strconv.FormatInt(row, 10) + `}`)
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := pub.Publish(pctx, bus.Message{Topic: l.topics.Committed(), QoS: 1, Retain: true, Payload: b})
		cancel()
		if err == nil {
			announced = row
		}
	}
	return announced
}

func (l *Logger) updateStats(ctx context.Context) {
	z, _ := l.store.Size(ctx)
	samples, readings := l.store.Counts()
	l.statMu.Lock()
	l.size = z
	l.samples, l.readings = samples, readings
	l.lastRow = l.store.LastRow()
	l.statMu.Unlock()
}

// HeartbeatFields returns the logger's heartbeat fields.
func (l *Logger) HeartbeatFields() map[string]any {
	l.statMu.Lock()
	defer l.statMu.Unlock()
	l.mu.Lock()
	uploaded := l.uploaded
	l.mu.Unlock()
	m := map[string]any{
		"samples":      l.samples,
		"readings":     l.readings,
		"db_bytes":     l.size.File,
		"wal_bytes":    l.size.WAL,
		"used_bytes":   l.size.Used,
		"pending":      l.pending.Load(),
		"batches":      l.batches.Load(),
		"duplicates":   l.duplicates.Load(),
		"malformed":    l.malformed.Load(),
		"lock_waits":   l.lockWaits.Load(),
		"disk_full":    l.diskFulls.Load(),
		"last_row":     l.lastRow,
		"uploaded_row": uploaded,
		"generation":   l.store.Generation(),
	}
	if l.degraded != "" {
		m["degraded"] = l.degraded
	}
	if l.waiting != "" {
		m["waiting"] = l.waiting
	}
	return m
}

// Status is the one-line state for systemd's STATUS=.
func (l *Logger) Status() string {
	l.statMu.Lock()
	defer l.statMu.Unlock()
	s := fmt.Sprintf("%d readings in %d samples, %.1f MiB", l.readings, l.samples, float64(l.size.File+l.size.WAL)/(1<<20))
	if l.degraded != "" {
		s += "; degraded: " + l.degraded
	}
	if l.waiting != "" {
		s += "; " + l.waiting
	}
	return s
}

// Serve runs the logger role on svc, which was started with
// service.StartOptions{PersistentSession: true, OnMessage: l.Handle}: it
// subscribes to the data and the upload cursor, says READY, and ingests
// until ctx ends (then it returns nil). Errors: no bus, a broken database.
func (l *Logger) Serve(ctx context.Context, svc *service.Service) error {
	if svc.Bus == nil {
		return errors.New("logger: no bus connection")
	}
	l.opts.OnProgress = svc.Advance
	l.opts.OnIdle = svc.SetIdle
	l.opts.OnFailing = svc.Failing
	svc.SetExtra(l.HeartbeatFields)
	for _, f := range []string{l.topics.Sub("data"), l.topics.UplinkCursor(), l.topics.SvcHeartbeat(Producer), l.topics.SvcState(Producer)} {
		if err := svc.Bus.Subscribe(f, 1, l.Handle); err != nil {
			svc.Log.Warn("subscribe failed; retried on reconnect", "filter", f, "err", err)
		}
	}
	svc.Ready(l.Status())
	go func() {
		t := time.NewTicker(svc.Config.Bus.HeartbeatInterval.Duration)
		defer t.Stop()
		last := ""
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if s := l.Status(); s != last {
					svc.Status("%s", s)
					last = s
				}
			}
		}
	}()
	return l.Run(ctx, svc.Bus)
}
