package store

import (
	"context"
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// Clock states of a sample (column sample.clock).
const (
	clockTrusted   = 0 // the wall time is believed
	clockUntrusted = 1 // the wall time is not believed and not corrected yet
	clockCorrected = 2 // tc holds monotonic time + the boot's good offset
	// clockImplausible: the wall time is ahead of the logger's own trusted
	// clock (a reading from the future); tc holds the corrected time when
	// the boot has a good offset. Such a reading never moves the newest
	// trusted time, so it cannot make the retention delete anything.
	clockImplausible = 3
)

// How clocks are judged
//
// Every sample carries wall time t (ms), monotonic time m (CLOCK_BOOTTIME,
// ns) and the boot id. Within one boot, offset = t·10⁶ − m is constant
// while nobody sets the clock, so the samples of a boot fall into segments
// of one offset each; a change of more than ClockStep starts a new segment
// (a clock event of kind 'step'). A segment is judged when it starts (the
// first segment of a boot is kind 'boot'):
//
//   - a wall time before 2020 is untrusted (no RTC: the clock starts at 1970);
//   - with Synced set (adjtimex), a kernel clock that is not synchronised
//     is untrusted;
//   - a wall time earlier than the newest trusted reading of another boot
//     (by more than ClockStep) is untrusted;
//   - else the segment is trusted.
//
// An untrusted segment becomes trusted without a step once those rules
// pass (kind 'sync', e.g. NTP confirmed a clock that was right). Once a
// boot has a trusted segment, every untrusted sample of that boot, earlier
// or later, gets a corrected time tc = m + the latest trusted offset
// (clock = 2), kept beside the original t; the correction is exact to the
// 1 ms resolution of t. Samples of a boot that never gets a trusted clock
// stay untrusted (clock = 1). A step between two trusted segments is
// recorded, and samples keep their own times: both clocks were believed.

// An implausible wall time: one more than ClockStep ahead of the logger's
// own clock, when that clock is trusted (after 2020 and, with Synced,
// synchronised). The logger runs on the poller's host, so a reading from
// the future is a wrong stamp, not a clock the logger lacks: it is stored
// with clock = 3 (quality clock_implausible), its segment is untrusted,
// and it counts for nothing in the clock rules and the retention.

// loggerNow returns the logger's own wall clock in Unix ms when it is
// trusted (after 2020 and, with Synced, synchronised), else 0.
func (s *Store) loggerNow() int64 {
	now := s.opts.Now().UnixMilli()
	if now < minSaneWall || s.opts.Synced != nil && !s.opts.Synced() {
		return 0
	}
	return now
}

// implausible reports whether wall time t (ms) is ahead of the logger's
// trusted clock now (0: not trusted) by more than ClockStep.
func (s *Store) implausible(t, now int64) bool {
	return now > 0 && t > now+s.opts.ClockStep.Milliseconds()
}

// KernelSynced reports whether the kernel says its clock is synchronised
// (adjtimex: STA_UNSYNC clear). If adjtimex fails it reports true, so that
// a missing syscall does not distrust every reading.
func KernelSynced() bool {
	var tx unix.Timex
	state, err := unix.Adjtimex(&tx)
	if err != nil {
		return true
	}
	return state != unix.TIME_ERROR && tx.Status&unix.STA_UNSYNC == 0
}

func abs64(x int64) int64 {
	if x < 0 {
		return -x
	}
	return x
}

// judge decides whether wall time t (ms) of boot b can be trusted; if not
// it says why. Besides the rules above, a wall time the logger's own
// trusted clock says is in the future is not.
func (s *Store) judge(t int64, b *bootState) (bool, string) {
	if t < minSaneWall {
		return false, "wall clock before 2020"
	}
	if s.opts.Synced != nil && !s.opts.Synced() {
		return false, "kernel clock not synchronised (adjtimex)"
	}
	if now := s.loggerNow(); s.implausible(t, now) {
		return false, fmt.Sprintf("wall clock %s ahead of the logger's clock", time.Duration(t-now)*time.Millisecond)
	}
	var newest int64
	for _, o := range s.boots {
		if o != b && o.lastT > newest {
			newest = o.lastT
		}
	}
	if step := s.opts.ClockStep.Milliseconds(); t < newest-step {
		return false, fmt.Sprintf("wall clock %s earlier than the newest trusted reading of an earlier boot",
			time.Duration(newest-t)*time.Millisecond)
	}
	return true, ""
}

// clockOf judges the sample m of boot b: it returns its clock state and,
// for clockCorrected, its corrected time (ms). It records clock events and
// corrects earlier samples of the boot when the clock becomes trusted.
func (s *Store) clockOf(ctx context.Context, b *bootState, m *Message) (int, int64, error) {
	off := m.Wall*1e6 - m.Mono
	step := s.opts.ClockStep.Nanoseconds()
	var seg *segment
	switch {
	case len(b.segs) == 0:
		ok, why := s.judge(m.Wall, b)
		if err := s.newSegment(ctx, b, "boot", m, off, ok, why, 0); err != nil {
			return 0, 0, err
		}
		seg = &b.segs[len(b.segs)-1]
	case m.Mono >= b.segs[len(b.segs)-1].m:
		last := &b.segs[len(b.segs)-1]
		d := off - last.offset
		if abs64(d) > step {
			ok, why := s.judge(m.Wall, b)
			if err := s.newSegment(ctx, b, "step", m, off, ok, why, d); err != nil {
				return 0, 0, err
			}
		} else if !last.trusted && m.Mono-b.judged >= int64(time.Second) {
			// Judged again at most once a second of monotonic time.
			b.judged = m.Mono
			if ok, _ := s.judge(m.Wall, b); ok {
				if err := s.newSegment(ctx, b, "sync", m, off, true, "", d); err != nil {
					return 0, 0, err
				}
			}
		}
		seg = &b.segs[len(b.segs)-1]
	default:
		// A late (re-sent) sample from earlier in this boot: the segment
		// of its offset that is nearest before it, else any of its offset.
		for i := len(b.segs) - 1; i >= 0; i-- {
			g := &b.segs[i]
			if abs64(off-g.offset) > step {
				continue
			}
			if seg == nil || g.m <= m.Mono {
				seg = g
			}
			if g.m <= m.Mono {
				break
			}
		}
	}
	switch {
	case s.implausible(m.Wall, s.nowMs):
		if b.hasGood {
			return clockImplausible, roundMs(m.Mono + b.good), nil
		}
		return clockImplausible, 0, nil
	case seg != nil && seg.trusted:
		return clockTrusted, 0, nil
	case b.hasGood:
		return clockCorrected, roundMs(m.Mono + b.good), nil
	}
	return clockUntrusted, 0, nil
}

// roundMs turns ns since the epoch into ms, rounded to the nearest.
func roundMs(ns int64) int64 { return (ns + 500_000) / 1_000_000 }

// newSegment records a clock event starting a segment, and when the
// segment is trusted corrects the boot's untrusted samples.
func (s *Store) newSegment(ctx context.Context, b *bootState, kind string, m *Message, off int64, trusted bool, why string, delta int64) error {
	var deltaArg, whyArg any
	if kind != "boot" {
		deltaArg = delta
	}
	if why != "" {
		whyArg = why
	}
	res, err := s.exec(ctx, `INSERT INTO clock(boot, kind, m, t, offset_ns, trusted, delta_ns, reason, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		b.id, kind, m.Mono, m.Wall, off, trusted, deltaArg, whyArg, s.opts.Now().UnixMilli())
	if err != nil {
		return err
	}
	b.segs = append(b.segs, segment{m: m.Mono, offset: off, trusted: trusted})
	lvl := s.log.Info
	if !trusted {
		lvl = s.log.Warn
	}
	lvl("clock event", "kind", kind, "boot", b.name, "wall", time.UnixMilli(m.Wall).UTC().Format(time.RFC3339Nano),
		"trusted", trusted, "reason", why, "step", time.Duration(delta))
	if !trusted {
		return nil
	}
	b.good, b.hasGood = off, true
	if b.firstRow == 0 {
		return nil
	}
	// Implausible samples that had no corrected time get one too, and
	// stay flagged.
	res2, err := s.exec(ctx, `UPDATE sample SET clock = CASE clock WHEN 1 THEN 2 ELSE clock END, tc = (m + ?1 + 500000) / 1000000
		WHERE id >= ?2 AND boot = ?3 AND (clock = 1 OR clock = 3 AND tc IS NULL)`, off, b.firstRow, b.id)
	if err != nil {
		return err
	}
	n, err := res2.RowsAffected()
	if err != nil {
		return err
	}
	if n > 0 {
		id, _ := res.LastInsertId()
		if _, err := s.exec(ctx, `UPDATE clock SET corrected = ? WHERE id = ?`, n, id); err != nil {
			return err
		}
		var newest int64
		if err := s.conn.QueryRowContext(ctx, `SELECT coalesce(max(tc), 0) FROM sample WHERE id >= ? AND boot = ? AND clock = 2`,
			b.firstRow, b.id).Scan(&newest); err != nil {
			return err
		}
		if newest > b.lastT {
			b.lastT, b.dirty = newest, true
		}
		s.log.Info("corrected the timestamps of readings taken under an untrusted clock", "boot", b.name, "samples", n)
	}
	return nil
}
