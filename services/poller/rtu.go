package poller

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tinyscada/tinyscada/shared/clock"
	"github.com/tinyscada/tinyscada/shared/flock"
	"github.com/tinyscada/tinyscada/shared/modbus"
	"github.com/tinyscada/tinyscada/shared/modbus/value"
)

// firstReopen is the first wait before reopening a port that failed.
const firstReopen = 100 * time.Millisecond

// openBound is how long opening a port may take (a non-blocking open and
// a few ioctls) before the port's loop counts as hung.
const openBound = 5 * time.Second

// requestBound is how long one Modbus transaction with its retries may take
// on a port: each attempt sends a request and waits timeout for a reply of
// at most 256 bytes, at 11 bits a byte; plus the silences between frames.
func requestBound(timeout time.Duration, retries, baud int) time.Duration {
	frames := time.Duration(2*256*11) * time.Second / time.Duration(max(baud, 1))
	return time.Duration(retries+1)*(timeout+frames+10*time.Millisecond) + 100*time.Millisecond
}

// openPort locks the device node of pr (flock, so that a second poller or
// a terminal program that locks, like picocom, cannot interleave) and
// opens it with the port's line settings. Errors name the port: missing,
// not a character device, locked by another process ("… is locked by pid
// N", a *flock.LockedError inside), or the open failed.
func openPort(pr *portRun) (*modbus.Line, func(), error) {
	c := pr.plan.Config
	path := pr.plan.Path
	f, held := pr.pre.take()
	if f == nil {
		var err error
		if f, held, err = lockNode(pr.plan); err != nil {
			return nil, nil, err
		}
	}
	port, err := modbus.Open(path, modbus.PortConfig{
		Baud:                 c.Baud,
		DataBits:             c.DataBits,
		Parity:               c.ParityLetter(),
		StopBits:             c.StopBits,
		RS485:                c.RS485,
		RS485RTSOnSend:       !c.RS485RTSAfterSend,
		RS485DelayBeforeSend: c.RS485DelayBeforeSend.Duration,
		RS485DelayAfterSend:  c.RS485DelayAfterSend.Duration,
		RS485RxDuringTx:      c.RS485RxDuringTx,
	})
	if err != nil {
		held.Close()
		f.Close()
		return nil, nil, fmt.Errorf("port %s: %w", c.Name, err)
	}
	// go.bug.st/serial sets TIOCEXCL. On a real port the kernel drops it
	// at the last close, even after a kill -9; on a pseudo-terminal whose
	// other end stays open (the simulator, socat) it outlives us, and a
	// restarted poller that is not root then gets EBUSY for good. There
	// the flock above is the exclusion, so clear the flag.
	if isPTY(f) {
		if err := clearExclusive(f); err != nil {
			pr.log.Warn("cannot clear TIOCEXCL on the pseudo-terminal; a restarted poller may find it busy", "err", err)
		}
	}
	// What the device sent before we listened is no use (a line device's
	// partial record, an RTU reply to the poller before us). Flushed here,
	// before the port counts as tried (Poller.Started), not by its serve
	// function later: what arrives after Started is kept.
	_ = port.ResetInputBuffer()
	closeAll := func() {
		port.Close()
		held.Close()
		f.Close()
	}
	return port, closeAll, nil
}

// lockNode opens the device node of port pp and locks it (flock). Errors
// name the port: missing, not a character device, locked by another
// process ("… is locked by pid N", a *flock.LockedError inside).
func lockNode(pp *PortPlan) (*os.File, *flock.Held, error) {
	name, path := pp.Config.Name, pp.Path
	// Open the node ourselves, without O_CREAT: a vanished USB adapter must
	// not leave a plain file where its device node was. O_NONBLOCK only for
	// the open (a modem line without carrier would block it); the file is
	// then made blocking, so that os.NewFile keeps it out of Go's poller:
	// this descriptor is only held for the lock and a few ioctls, and a
	// pollable one would wake the process for every few bytes the device
	// sends (edge-triggered epoll on the node), dozens per reply.
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_NOCTTY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("port %s: %w", name, &os.PathError{Op: "open", Path: path, Err: err})
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return nil, nil, fmt.Errorf("port %s: %w", name, &os.PathError{Op: "open", Path: path, Err: err})
	}
	f := os.NewFile(uintptr(fd), path)
	if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice == 0 {
		f.Close()
		return nil, nil, fmt.Errorf("port %s: %s is not a serial device", name, path)
	}
	held, err := flock.LockFD(f)
	if err != nil {
		f.Close()
		var le *flock.LockedError
		if errors.As(err, &le) {
			le.Path = path
			return nil, nil, fmt.Errorf("port %s: %w", name, le)
		}
		return nil, nil, fmt.Errorf("port %s: %w", name, err)
	}
	return f, held, nil
}

// testHookServe, when set by a test, runs between a port's open and its
// serve function (to widen the window between the two).
var testHookServe func()

// keepPort opens pr's port and runs serve on it until ctx ends, reopening
// it with backoff whenever it cannot be opened or serve returns an error
// (the port vanished). While the port is down its devices are offline and,
// like dead devices, have failed rounds on their schedule (closedRounds).
func (p *Poller) keepPort(ctx context.Context, pr *portRun, serve func(context.Context, modbus.Port) error) {
	pr.loop = p.watch("port " + pr.plan.Config.Name)
	defer pr.loop.Stop()
	backoff := firstReopen
	closed := false // the port is down and its devices' closed rounds are scheduled
	for ctx.Err() == nil {
		pr.loop.Busy(openBound)
		port, closePort, err := openPort(pr)
		if err == nil {
			closed = false // pollRTU schedules afresh; a later failure is a new episode
			pr.open.Store(true)
			p.portMoved()
			pr.log.Info("port open", "path", pr.plan.Path)
			if !pr.tried {
				pr.tried = true
				p.portTried()
			}
			if testHookServe != nil {
				testHookServe()
			}
			err = serve(ctx, port)
			closePort()
			pr.open.Store(false)
			p.portMoved()
			if ctx.Err() != nil {
				return
			}
			backoff = firstReopen
			pr.log.Warn("port failed; reopening", "err", err)
			p.limiter.Start("port "+pr.plan.Config.Name, time.Now()) // a new episode of "cannot open"
		} else {
			if !pr.tried {
				pr.tried = true
				p.portTried()
				pr.log.Error("cannot open port; retrying", "err", err)
			} else if ok, n := p.limiter.Check("port "+pr.plan.Config.Name, time.Now()); ok {
				pr.log.Warn("cannot open port; retrying", "err", err, "suppressed", n)
			}
		}
		for _, d := range pr.devices {
			p.setState(d, err)
		}
		if !closed {
			// The first closed round of every device is due now, as
			// the first failed round of a dead device would be.
			now := time.Now()
			for _, d := range pr.devices {
				d.due, d.backoff = now, 0
			}
			closed = true
		}
		if !p.closedRounds(ctx, pr, err, time.Now().Add(backoff)) {
			return
		}
		backoff = min(2*backoff, p.cfg.ReopenBackoffMax.Duration)
	}
}

// closedRounds runs, until reopenAt, the rounds of pr's devices while the
// port is closed (cause says why): each device whose round is due gets a
// round with every point bad ("port_closed: <cause>") and is scheduled as
// after a failed round, with its offline backoff. So a vanished port shows
// in the data as a dead device does, and the sequence numbers and
// acknowledgements keep flowing. A device without points (a line device
// that publishes whatever fields come) has no round to fail. It returns
// false when ctx ended.
func (p *Poller) closedRounds(ctx context.Context, pr *portRun, cause error, reopenAt time.Time) bool {
	why := "port_closed: " + strings.TrimPrefix(cause.Error(), "port "+pr.plan.Config.Name+": ")
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		var next *device
		for _, d := range pr.devices {
			if len(d.plan.Points) > 0 && (next == nil || d.due.Before(next.due)) {
				next = d
			}
		}
		until := reopenAt
		if next != nil && next.due.Before(until) {
			until = next.due
		}
		if wait := time.Until(until); wait > 0 {
			pr.loop.Wait(wait)
			timer.Reset(wait)
			select {
			case <-ctx.Done():
				return false
			case <-timer.C:
			}
		}
		if ctx.Err() != nil {
			return false
		}
		if next == nil || next.due.After(time.Now()) {
			return true // woken for the reopen
		}
		p.closedRound(next, why)
	}
}

// closedRound publishes a round of d with every point bad for why, and
// schedules the next one as after a failed round.
func (p *Poller) closedRound(d *device, why string) {
	now := time.Now()
	if !p.out.Reserve() {
		p.noteBackpressure(d)
		p.schedule(d, now, false)
		return
	}
	d.text = d.text[:0]
	for i := range d.res {
		d.res[i] = result{why: why}
	}
	p.publishRound(d, p.clock.Now())
	p.wakeSender()
	p.schedule(d, now, false)
}

// runRTU owns one Modbus RTU port until ctx ends.
func (p *Poller) runRTU(ctx context.Context, pr *portRun) {
	c := pr.plan.Config
	p.keepPort(ctx, pr, func(ctx context.Context, port modbus.Port) error {
		m := modbus.NewMaster(port, modbus.Options{Baud: c.Baud, Timeout: c.Timeout.Duration, Retries: c.Retries})
		return p.pollRTU(ctx, pr, m)
	})
}

// pollRTU runs the devices of pr on master m, each on its own schedule,
// one request at a time, until ctx ends (nil) or the port fails (an error
// wrapping modbus.ErrPort).
func (p *Poller) pollRTU(ctx context.Context, pr *portRun, m *modbus.Master) error {
	now := time.Now()
	for _, d := range pr.devices {
		d.due, d.backoff = now, 0
	}
	var regs [modbus.MaxReadRegisters]uint16
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		d := pr.devices[0]
		for _, e := range pr.devices[1:] {
			if e.due.Before(d.due) {
				d = e
			}
		}
		if wait := time.Until(d.due); wait > 0 {
			pr.loop.Wait(wait)
			timer.Reset(wait)
			select {
			case <-ctx.Done():
				return nil
			case <-timer.C:
			}
		}
		if ctx.Err() != nil {
			return nil
		}
		if err := p.roundRTU(ctx, pr, m, d, regs[:]); err != nil {
			return err
		}
	}
}

// roundRTU polls device d once: every request of its plan, in order,
// stopping at the first that gets no reply (or a bad one), so that a dead
// device costs the bus one timeout per round. The round's message holds
// the good values and, for the other points, why they failed. The device
// is offline after a failed round and backs off; an exception reply fails
// only its points. It returns an error only when the port failed.
func (p *Poller) roundRTU(ctx context.Context, pr *portRun, m *modbus.Master, d *device, regs []uint16) error {
	// The port goroutine alone uses m, so what its counters do during the
	// round is this device's.
	before := m.Stats()
	defer func() { p.noteLine(d, lineDelta(before, m.Stats())) }()
	start := time.Now()
	if late := start.Sub(d.due); late > d.maxLate {
		d.maxLate = late
		d.late.Store(int64(late))
	}
	if !p.out.Reserve() {
		p.noteBackpressure(d)
		p.schedule(d, start, true)
		return nil
	}
	dp := d.plan
	d.text = d.text[:0]
	var stamp clock.Stamp
	stamped := false
	var fail error
	failWhy := ""
	for ri := range dp.Requests {
		r := &dp.Requests[ri]
		if fail != nil {
			d.markBad(r, failWhy)
			continue
		}
		req := modbus.Request{Unit: byte(dp.Config.Unit), Function: r.Function, Address: r.Address, Quantity: r.Quantity}
		p.sendDue(time.Now(), false)
		pr.loop.Busy(requestBound(dp.Timeout, pr.plan.Config.Retries, pr.plan.Config.Baud))
		data, err := m.Do(ctx, &req, dp.Timeout)
		var ex *modbus.ExceptionError
		if err != nil && !errors.As(err, &ex) {
			ex = nil
		}
		if !stamped && (err == nil || ex != nil) {
			stamp, stamped = p.clock.Now(), true
		}
		switch {
		case err == nil:
			d.decode(r, data, regs)
		case ex != nil:
			d.markBad(r, fmt.Sprintf("exception %d (%s)", ex.Code, modbus.ExceptionName(ex.Code)))
		case ctx.Err() != nil:
			p.out.Release()
			return nil
		case errors.Is(err, modbus.ErrPort):
			p.out.Release()
			return err
		default:
			fail, failWhy = err, reason(err)
			d.markBad(r, failWhy)
		}
	}
	if !stamped {
		stamp = p.clock.Now()
	}
	p.publishRound(d, stamp)
	p.roundWaits(time.Now())
	if fail != nil {
		p.setState(d, fmt.Errorf("unit %d: %w", dp.Config.Unit, fail))
	} else {
		p.setState(d, nil)
	}
	now := time.Now()
	p.schedule(d, now, fail == nil)
	p.sendDue(now, lineRests(pr, now))
	return nil
}

// lineDelta is what the master's line counters did from a to b.
func lineDelta(a, b modbus.Stats) LineCounts {
	return LineCounts{
		CRCErrors:  b.CRCErrors - a.CRCErrors,
		Timeouts:   b.Timeouts - a.Timeouts,
		Exceptions: b.Exceptions - a.Exceptions,
		Discarded:  b.Discarded - a.Discarded,
	}
}

// publishRound puts the round's message (d.res, d.text) into the outbox
// (a place must be reserved) and counts the round. The caller has the
// sender publish it (wakeSender, or roundWaits and sendDue).
func (p *Poller) publishRound(d *device, stamp clock.Stamp) {
	p.out.Add(d.dataTopic, time.Now(), func(seq uint64) []byte {
		d.msg.begin(p.run, seq, stamp)
		for i := range d.res {
			r := &d.res[i]
			key := d.plan.Points[i].key
			if r.why != "" {
				d.msg.failed(key, r.why)
			} else {
				d.msg.good(key, d.text[r.start:r.end])
			}
		}
		b := d.msg.end()
		return append(make([]byte, 0, len(b)), b...)
	})
	d.rounds.Add(1)
	p.onRound()
}

// schedule sets d's next round: one interval after the last due time
// while it is well (skipping the rounds it is too late for, so that the
// phase holds), or after an exponential backoff (one interval, doubling up
// to offline_backoff_max) after a failed round.
func (p *Poller) schedule(d *device, now time.Time, ok bool) {
	iv := d.plan.Config.Interval.Duration
	if ok {
		d.backoff = 0
		d.due = d.due.Add(iv)
		if !d.due.After(now) {
			d.due = d.due.Add((now.Sub(d.due)/iv + 1) * iv)
		}
		return
	}
	if d.backoff == 0 {
		d.backoff = iv
	} else {
		d.backoff = min(2*d.backoff, max(iv, p.cfg.OfflineBackoffMax.Duration))
	}
	d.due = now.Add(d.backoff)
}

// decode decodes the points of request r from the reply's data.
func (d *device) decode(r *Request, data []byte, regs []uint16) {
	if r.Bits() {
		for _, i := range r.Points {
			pt := &d.plan.Points[i]
			off := pt.Offset
			var v value.Value
			v.Type = value.Bool
			if off/8 < len(data) {
				v.Bits = uint64(data[off/8]>>(off%8)) & 1
			}
			d.setValue(i, pt, v)
		}
		return
	}
	n := min(int(r.Quantity), len(data)/2, len(regs))
	for k := 0; k < n; k++ {
		regs[k] = binary.BigEndian.Uint16(data[2*k:])
	}
	for _, i := range r.Points {
		pt := &d.plan.Points[i]
		v, err := value.Decode(regs[pt.Offset:n], pt.Layout)
		if err != nil {
			d.res[i] = result{why: err.Error()}
			continue
		}
		d.setValue(i, pt, v)
	}
}

// setValue records point i's value as text, or why it has none.
func (d *device) setValue(i int, pt *Point, v value.Value) {
	start := len(d.text)
	var why string
	d.text, why = appendValue(d.text, pt, v)
	d.res[i] = result{start: start, end: len(d.text), why: why}
}

// markBad records why every point of r failed.
func (d *device) markBad(r *Request, why string) {
	for _, i := range r.Points {
		d.res[i] = result{why: why}
	}
}

// reason is the short "why" of a failed request for the data message.
func reason(err error) string {
	switch {
	case errors.Is(err, modbus.ErrTimeout):
		return "timeout"
	case errors.Is(err, modbus.ErrCRC):
		return "CRC error"
	case errors.Is(err, modbus.ErrShortFrame):
		return "truncated reply"
	case errors.Is(err, modbus.ErrUnexpectedReply):
		return "unexpected reply"
	}
	return strings.TrimPrefix(err.Error(), "modbus: ")
}

// isPTY reports whether f is the slave side of a Unix98 pseudo-terminal
// (character device majors 136 to 143).
func isPTY(f *os.File) bool {
	fi, err := f.Stat()
	if err != nil {
		return false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || fi.Mode()&os.ModeCharDevice == 0 {
		return false
	}
	major := unix.Major(uint64(st.Rdev))
	return major >= 136 && major <= 143
}

// clearExclusive clears the terminal's TIOCEXCL flag through f.
func clearExclusive(f *os.File) error {
	raw, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ierr error
	if err := raw.Control(func(fd uintptr) { ierr = unix.IoctlSetInt(int(fd), unix.TIOCNXCL, 0) }); err != nil {
		return err
	}
	return ierr
}
