package uplink

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/tinyscada/tinyscada/shared/bus"
	"github.com/tinyscada/tinyscada/shared/store"
)

// The data path
//
// The uplink tails the database by row id on a read-only connection and
// sends batches upstream, QoS 1, up to `window` of them waiting for their
// PUBACK at once. Before a new batch is sent its extent (first and last
// row, first and last gap record) is written to the cursor file with the
// others not yet acknowledged; when the oldest batches are acknowledged
// the cursor moves past them and the file is written again. So after any
// reconnect, and after a restart (kill -9 included), exactly the batches
// that may not have arrived are sent again, with the same extents and so
// the same dedup keys: a consumer sees a duplicate only as a whole batch
// whose key it has. The retained local cursor tells the logger what is
// delivered, so that its bounded store drops those rows first.

// batch states
const (
	toSend  = iota // built, not sent on the current connection
	waiting        // sent, its acknowledgement not in yet
	acked
)

type batch struct {
	plan    plan
	payload []byte
	samples int
	entries int
	raw     int // JSON bytes before gzip
	state   int
}

type result struct {
	b     *batch
	epoch int
	err   error
}

// dataPath is the state of the data loop (one goroutine).
type dataPath struct {
	*Uplink
	cur cursorFile
	r   *store.Reader
	c   *bus.Client

	list             []*batch // planned, oldest first, not yet popped
	replay           []plan   // planned before a restart, not rebuilt yet
	nextRow, nextGap int64    // the last row and gap record planned
	epoch            int      // bumped when the list is thrown away
	results          chan result

	pendingSince time.Time // a partial batch waits for batch_delay from here
	sendAfter    time.Time // the bandwidth cap's next slot
	wakeAt       time.Time // when the loop must look again (zero: poll interval)

	published     int64 // the local cursor last published (-1: none)
	publishedGen  string
	localUp       bool
	noDB          bool
	statusChanged bool

	buf, body []byte
	zbuf      bytes.Buffer
	zw        *gzip.Writer
}

func (u *Uplink) dataLoop(ctx context.Context, cur cursorFile) error {
	d := &dataPath{Uplink: u, cur: cur, published: -1, results: make(chan result, 4*u.u.Window+4)}
	defer func() {
		if d.r != nil {
			d.r.Close()
		}
	}()
	tick := time.NewTicker(u.cfg.Bus.HeartbeatInterval.Duration)
	defer tick.Stop()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	d.refreshStatus(ctx)
	for {
		if err := d.step(ctx); err != nil {
			return err
		}
		wait := u.u.PollInterval.Duration
		if !d.wakeAt.IsZero() {
			wait = min(wait, max(time.Until(d.wakeAt), time.Millisecond))
		}
		if d.c != nil && !d.c.Connected() && d.hasWork() {
			wait = min(wait, 500*time.Millisecond)
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return nil
		case c := <-u.dialed:
			d.c = c
		case r := <-d.results:
			d.handle(ctx, r)
		drain:
			for {
				select {
				case r := <-d.results:
					d.handle(ctx, r)
				default:
					break drain
				}
			}
		case <-u.wake:
		case <-tick.C:
			d.refreshStatus(ctx)
		case <-timer.C:
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
	}
}

func (d *dataPath) hasWork() bool { return len(d.list) > 0 || len(d.replay) > 0 }

// handle takes the outcome of one batch's Wait.
func (d *dataPath) handle(ctx context.Context, r result) {
	if r.epoch != d.epoch || r.b.state != waiting {
		return
	}
	if r.err == nil {
		r.b.state = acked
		return
	}
	if ctx.Err() != nil {
		return
	}
	r.b.state = toSend
	if ok, n := d.rate.Check("lost", time.Now()); ok {
		d.log.Info("batch not acknowledged upstream; it is sent again", "first", r.b.plan.First, "last", r.b.plan.Last, "err", r.err, "suppressed", n)
	}
}

// step does what can be done now: (re)open the database, pop the
// acknowledged batches, plan and send new ones, save and publish the cursor.
func (d *dataPath) step(ctx context.Context) error {
	d.wakeAt = time.Time{}
	if err := d.ensureReader(ctx); err != nil {
		return err
	}
	if err := d.pop(); err != nil {
		return err
	}
	if d.r != nil && d.c != nil && d.c.Connected() {
		if err := d.fill(ctx); err != nil {
			return err
		}
		d.send(ctx)
	}
	d.publishLocal(ctx)
	d.svc.SetIdle(!d.connected.Load() || (!d.hasWork() && d.backlog() == 0))
	return nil
}

func (d *dataPath) backlog() int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.status.Backlog
}

// ensureReader opens the database (again, when the file was replaced) and
// resets the cursor when its generation is not the cursor's.
func (d *dataPath) ensureReader(ctx context.Context) error {
	if d.r != nil && !d.r.Replaced() {
		return nil
	}
	if d.r != nil {
		d.r.Close()
		d.r = nil
		d.log.Info("the database file was replaced; opening it again", "db", d.dbPath)
	}
	r, err := store.OpenReader(d.dbPath)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			if !d.noDB {
				d.log.Info("no database yet; waiting for the logger to create it", "db", d.dbPath)
				d.noDB = true
			}
		} else if ok, n := d.rate.Check("open", time.Now()); ok {
			d.log.Warn("cannot open the database; retrying", "db", d.dbPath, "err", err, "suppressed", n)
		}
		d.wakeAt = time.Now().Add(time.Second)
		return nil
	}
	d.noDB = false
	d.r = r
	switch {
	case r.Generation() == d.cur.Gen && d.epoch == 0:
		// The first open: batches planned before a restart go again.
		d.replay = d.cur.Sent
		d.nextRow, d.nextGap = d.cur.Row, d.cur.Gap
		for _, p := range d.cur.Sent {
			d.nextRow, d.nextGap = max(d.nextRow, p.Last), max(d.nextGap, p.GapLast)
		}
		d.epoch++
		d.log.Info("database opened", "gen", r.Generation(), "cursor", d.cur.Row, "gap_cursor", d.cur.Gap, "batches_to_resend", len(d.replay))
	case r.Generation() == d.cur.Gen:
	default:
		if d.cur.Gen != "" {
			d.log.Warn("a new database (another generation): the cursor starts again at its first row",
				"old_gen", d.cur.Gen, "gen", r.Generation(), "old_cursor", d.cur.Row)
		}
		d.cur = cursorFile{Gen: r.Generation()}
		d.list, d.replay = nil, nil
		d.nextRow, d.nextGap = 0, 0
		d.epoch++
		if err := saveCursor(d.cursorPath, d.cur); err != nil {
			return err
		}
	}
	d.refreshStatus(ctx)
	return nil
}

// pop drops the acknowledged batches at the head of the list, moves the
// cursor past them and saves it.
func (d *dataPath) pop() error {
	n := 0
	for n < len(d.list) && d.list[n].state == acked {
		p := d.list[n].plan
		d.cur.Row, d.cur.Gap = max(d.cur.Row, p.Last), max(d.cur.Gap, p.GapLast)
		n++
	}
	if n == 0 {
		return nil
	}
	d.list = d.list[n:]
	for range n {
		d.svc.Advance()
	}
	d.mu.Lock()
	d.status.Acked += uint64(n)
	d.status.Cursor = d.cur.Row
	d.mu.Unlock()
	return d.save()
}

// save writes the cursor with every batch planned and not acknowledged.
func (d *dataPath) save() error {
	d.cur.Sent = d.cur.Sent[:0]
	for _, b := range d.list {
		d.cur.Sent = append(d.cur.Sent, b.plan)
	}
	d.cur.Sent = append(d.cur.Sent, d.replay...)
	return saveCursor(d.cursorPath, d.cur)
}

// fill plans batches until the window is full: first the ones planned
// before a restart, then new ones. The new ones are saved in the cursor
// file before they are sent.
func (d *dataPath) fill(ctx context.Context) error {
	added := 0
	for len(d.list) < d.u.Window {
		if len(d.replay) > 0 {
			p := d.replay[0]
			b, err := d.rebuild(ctx, p)
			if err != nil {
				d.readError(err)
				return nil
			}
			d.replay = d.replay[1:]
			d.list = append(d.list, b)
			continue
		}
		b, err := d.next(ctx)
		if err != nil {
			d.readError(err)
			break
		}
		if b == nil {
			break
		}
		d.list = append(d.list, b)
		d.nextRow, d.nextGap = max(d.nextRow, b.plan.Last), max(d.nextGap, b.plan.GapLast)
		added++
	}
	if added == 0 {
		return nil
	}
	if err := d.save(); err != nil {
		// Not sent, so not planned: the next attempt plans them again.
		d.list = d.list[:len(d.list)-added]
		d.nextRow, d.nextGap = d.cur.Row, d.cur.Gap
		for _, b := range d.list {
			d.nextRow, d.nextGap = max(d.nextRow, b.plan.Last), max(d.nextGap, b.plan.GapLast)
		}
		if ok, n := d.rate.Check("save", time.Now()); ok {
			d.log.Error("cannot save the cursor; not sending", "file", d.cursorPath, "err", err, "suppressed", n)
		}
		d.wakeAt = time.Now().Add(time.Second)
	}
	return nil
}

func (d *dataPath) readError(err error) {
	if ok, n := d.rate.Check("read", time.Now()); ok {
		d.log.Warn("reading the database failed; retrying", "err", err, "suppressed", n)
	}
	d.wakeAt = time.Now().Add(time.Second)
}

// maxGaps bounds the gap records of one batch.
const maxGaps = 1000

// next builds the batch after the last one planned, or returns nil when
// there is nothing to send, or when what there is does not fill a batch
// and has not waited batch_delay yet.
func (d *dataPath) next(ctx context.Context) (*batch, error) {
	samples, err := d.r.Samples(ctx, d.nextRow, -1, d.u.BatchReadings)
	if err != nil {
		return nil, err
	}
	gaps, err := d.r.Gaps(ctx, d.nextGap, -1, maxGaps)
	if err != nil {
		return nil, err
	}
	if len(samples) == 0 && len(gaps) == 0 {
		d.pendingSince = time.Time{}
		return nil, nil
	}
	b, cut := d.encode(samples, gaps, int(d.u.BatchBytes))
	full := cut || len(gaps) == maxGaps || b.entries >= d.u.BatchReadings
	if !full && len(samples) > 0 {
		last, _, err := d.r.Tail(ctx)
		if err != nil {
			return nil, err
		}
		full = last > b.plan.Last
	}
	if !full {
		now := time.Now()
		if d.pendingSince.IsZero() {
			d.pendingSince = now
		}
		if due := d.pendingSince.Add(d.u.BatchDelay.Duration); now.Before(due) {
			d.wakeAt = due
			return nil, nil
		}
	}
	d.pendingSince = time.Time{}
	return b, nil
}

// rebuild builds a batch of exactly the extent p (planned before a
// restart); rows deleted since are missing from it, as a 'dropped' gap
// record says.
func (d *dataPath) rebuild(ctx context.Context, p plan) (*batch, error) {
	var samples []store.Sample
	var gaps []store.Gap
	var err error
	if p.First > 0 {
		if samples, err = d.r.Samples(ctx, p.First-1, p.Last, 0); err != nil {
			return nil, err
		}
	}
	if p.GapFirst > 0 {
		if gaps, err = d.r.Gaps(ctx, p.GapFirst-1, p.GapLast, 0); err != nil {
			return nil, err
		}
	}
	b, _ := d.encodePlan(p, samples, gaps)
	return b, nil
}

// encode makes the batch of samples (cut where the JSON reaches maxBytes,
// after at least one sample) and gaps; cut says it was.
func (d *dataPath) encode(samples []store.Sample, gaps []store.Gap, maxBytes int) (*batch, bool) {
	d.body = d.body[:0]
	cut := false
	n := 0
	for i := range samples {
		if i > 0 && len(d.body) >= maxBytes {
			cut = true
			break
		}
		if i > 0 {
			d.body = append(d.body, ',')
		}
		d.body = appendSample(d.body, &samples[i])
		n++
	}
	samples = samples[:n]
	var p plan
	if n > 0 {
		p.First, p.Last = samples[0].Row, samples[n-1].Row
	}
	if len(gaps) > 0 {
		p.GapFirst, p.GapLast = gaps[0].ID, gaps[len(gaps)-1].ID
	}
	return d.finish(p, samples, gaps), cut
}

func (d *dataPath) encodePlan(p plan, samples []store.Sample, gaps []store.Gap) (*batch, bool) {
	d.body = d.body[:0]
	for i := range samples {
		if i > 0 {
			d.body = append(d.body, ',')
		}
		d.body = appendSample(d.body, &samples[i])
	}
	return d.finish(p, samples, gaps), false
}

// finish wraps the encoded samples (d.body) into the batch payload.
func (d *dataPath) finish(p plan, samples []store.Sample, gaps []store.Gap) *batch {
	b := d.buf[:0]
	b = append(b, `{"v":1,"node":`...)
	b = appendString(b, d.cfg.Node)
	b = append(b, `,"gen":`...)
	b = appendString(b, d.cur.Gen)
	b = append(b, `,"first":`...)
	b = strconv.AppendInt(b, p.First, 10)
	b = append(b, `,"last":`...)
	b = strconv.AppendInt(b, p.Last, 10)
	if p.GapFirst > 0 {
		b = append(b, `,"gap_first":`...)
		b = strconv.AppendInt(b, p.GapFirst, 10)
		b = append(b, `,"gap_last":`...)
		b = strconv.AppendInt(b, p.GapLast, 10)
	}
	b = append(b, `,"sent":`...)
	b = strconv.AppendInt(b, time.Now().UnixMilli(), 10)
	b = append(b, `,"samples":[`...)
	b = append(b, d.body...)
	b = append(b, ']')
	if len(gaps) > 0 {
		b = append(b, `,"gaps":[`...)
		for i := range gaps {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendGap(b, &gaps[i])
		}
		b = append(b, ']')
	}
	b = append(b, '}')
	d.buf = b
	bt := &batch{plan: p, samples: len(samples), raw: len(b)}
	for i := range samples {
		bt.entries += samples[i].Entries()
	}
	if d.u.Gzip {
		d.zbuf.Reset()
		if d.zw == nil {
			d.zw = gzip.NewWriter(&d.zbuf)
		} else {
			d.zw.Reset(&d.zbuf)
		}
		_, _ = d.zw.Write(b)
		_ = d.zw.Close()
		bt.payload = bytes.Clone(d.zbuf.Bytes())
	} else {
		bt.payload = bytes.Clone(b)
	}
	if p.First == 0 && p.GapFirst == 0 {
		bt.state = acked // nothing in it
	}
	return bt
}

// send sends the batches that are not on the wire, oldest first, within
// the bandwidth cap.
func (d *dataPath) send(ctx context.Context) {
	for _, b := range d.list {
		if b.state != toSend {
			continue
		}
		if bw := int64(d.u.Bandwidth); bw > 0 {
			now := time.Now()
			if now.Before(d.sendAfter) {
				d.wakeAt = d.sendAfter
				return
			}
			d.sendAfter = now.Add(time.Duration(float64(len(b.payload)) / float64(bw) * float64(time.Second)))
		}
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		s, err := d.c.Send(sctx, bus.Message{Topic: d.up.Data(), QoS: 1, Payload: b.payload})
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				if ok, n := d.rate.Check("send", time.Now()); ok {
					d.log.Info("sending a batch upstream failed; trying again", "err", err, "suppressed", n)
				}
				d.wakeAt = time.Now().Add(500 * time.Millisecond)
			}
			return
		}
		b.state = waiting
		go func(s bus.Sent, b *batch, epoch int) {
			err := s.Wait(ctx)
			select {
			case d.results <- result{b: b, epoch: epoch, err: err}:
			case <-ctx.Done():
			}
		}(s, b, d.epoch)
	}
}

// publishLocal publishes the retained local cursor when it moved, or when
// the local broker came back (it keeps nothing across restarts), and the
// retained uplink state when it changed.
func (d *dataPath) publishLocal(ctx context.Context) {
	up := d.svc.Bus.Connected()
	fresh := up && !d.localUp
	d.localUp = up
	if !up {
		return
	}
	if fresh || d.cur.Row != d.published || d.cur.Gen != d.publishedGen {
		if d.cur.Gen != "" {
			b, _ := json.Marshal(struct {
				Gen string `json:"gen"`
				Row int64  `json:"row"`
			}{d.cur.Gen, d.cur.Row})
			pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			err := d.svc.Bus.Publish(pctx, bus.Message{Topic: d.svc.Topics.UplinkCursor(), QoS: 1, Retain: true, Payload: b})
			cancel()
			if err == nil {
				d.published, d.publishedGen = d.cur.Row, d.cur.Gen
			}
		}
	}
	if fresh || d.statusChanged {
		d.mu.Lock()
		st := d.status
		d.mu.Unlock()
		st.InFlight = len(d.list)
		if st.OldestMs > 0 {
			st.OldestAge = max(time.Now().UnixMilli()-st.OldestMs, 0) / 1000
		}
		b, _ := json.Marshal(st)
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := d.svc.Bus.Publish(pctx, bus.Message{Topic: d.svc.Topics.UplinkState(), QoS: 1, Retain: true, Payload: b})
		cancel()
		if err == nil {
			d.statusChanged = false
		}
	}
}

// refreshStatus counts the backlog (rows above the acknowledged cursor)
// and marks the retained state for publishing.
func (d *dataPath) refreshStatus(ctx context.Context) {
	var rows, oldest int64
	if d.r != nil {
		var err error
		if rows, oldest, err = d.r.Backlog(ctx, d.cur.Row); err != nil {
			d.readError(err)
			return
		}
	}
	d.mu.Lock()
	d.status.Gen = d.cur.Gen
	d.status.Cursor = d.cur.Row
	d.status.Backlog = rows
	d.status.OldestMs = oldest
	d.mu.Unlock()
	d.statusChanged = true
	d.svc.Status("uplink to %s: %s, %d rows behind", d.u.Address, d.upstreamState(), rows)
}

func (d *dataPath) upstreamState() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.status.Upstream
}

// appendSample writes one sample as a JSON object (docs/uplink.md).
func appendSample(b []byte, s *store.Sample) []byte {
	b = append(b, `{"row":`...)
	b = strconv.AppendInt(b, s.Row, 10)
	b = append(b, `,"dev":`...)
	b = appendString(b, s.Device)
	b = append(b, `,"t":`...)
	b = strconv.AppendInt(b, s.Time, 10)
	switch s.Quality {
	case "good":
	case "clock_corrected":
		b = append(b, `,"clock":"corrected","wall":`...)
		b = strconv.AppendInt(b, s.Wall, 10)
	case "clock_untrusted":
		b = append(b, `,"clock":"untrusted"`...)
	default:
		b = append(b, `,"clock":`...)
		b = appendString(b, s.Quality)
	}
	if len(s.Values) > 0 {
		b = append(b, `,"v":{`...)
		for i := range s.Values {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, s.Values[i].Point)
			b = append(b, ':')
			b = appendNumber(b, s.Values[i].Text)
		}
		b = append(b, '}')
	}
	if len(s.Bad) > 0 {
		b = append(b, `,"bad":{`...)
		for i := range s.Bad {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, s.Bad[i].Point)
			b = append(b, ':')
			b = appendString(b, s.Bad[i].Reason)
		}
		b = append(b, '}')
	}
	return append(b, '}')
}

// appendGap writes one gap record as a JSON object (docs/uplink.md).
func appendGap(b []byte, g *store.Gap) []byte {
	b = append(b, `{"id":`...)
	b = strconv.AppendInt(b, g.ID, 10)
	b = append(b, `,"kind":`...)
	b = appendString(b, g.Kind)
	field := func(name string, v int64) {
		b = append(b, ',', '"')
		b = append(b, name...)
		b = append(b, '"', ':')
		b = strconv.AppendInt(b, v, 10)
	}
	if g.Row > 0 {
		field("row", g.Row)
	}
	if g.LastRow > 0 {
		field("last_row", g.LastRow)
	}
	if g.Run != "" {
		b = append(b, `,"run":`...)
		b = appendString(b, g.Run)
		field("first_seq", g.FirstSeq)
		field("last_seq", g.LastSeq)
	}
	if g.Samples >= 0 {
		field("samples", g.Samples)
	}
	if g.Readings >= 0 {
		field("readings", g.Readings)
	}
	if g.From > 0 {
		field("from", g.From)
	}
	if g.To > 0 {
		field("to", g.To)
	}
	field("at", g.At)
	b = append(b, `,"reason":`...)
	b = appendString(b, g.Reason)
	return append(b, '}')
}

// appendNumber writes a stored value's text: true, false, or a number as
// strconv formats it, which is JSON, except NaN and ±Inf (which a data
// message cannot carry): those become strings.
func appendNumber(b []byte, s string) []byte {
	if s == "true" || s == "false" || s != "" && (s[0] == '-' || s[0] >= '0' && s[0] <= '9') && s[len(s)-1] >= '0' && s[len(s)-1] <= '9' {
		return append(b, s...)
	}
	return appendString(b, s)
}

// appendString writes s as a JSON string: as it is when it needs no
// escaping (the common case: device and point names), else through
// encoding/json.
func appendString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == '"' || c == '\\' || c >= utf8.RuneSelf {
			j, _ := json.Marshal(s)
			return append(b, j...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}
