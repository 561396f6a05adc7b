package poller

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/tinyscada/tinyscada/shared/clock"
	"github.com/tinyscada/tinyscada/shared/config"
	"github.com/tinyscada/tinyscada/shared/modbus"
	"github.com/tinyscada/tinyscada/shared/modbus/value"
)

// A port in line mode carries one device that sends newline-terminated
// ASCII records, either key=value fields or what a regular expression's
// named groups capture. Each record is one reading. A field repeated in a
// record counts once, the first time (see keepFirst); bytes without a
// newline that the port's timeout of silence follows are a partial record,
// dropped; a device without configured points turns each field into a
// point, so a field whose name breaks the name rule (config.NameProblem:
// line noise, control bytes, invalid UTF-8) makes the record bad.

// maxLine bounds a record; a longer one is dropped up to its newline.
const maxLine = 4096

// field is one key and its value text in a record.
type field struct {
	key, val []byte
}

// Errors of record parsing.
var (
	errNoMatch = errors.New("record does not match line_regex")
	errEmpty   = errors.New("empty record")
)

// isSep reports whether c separates key=value fields.
func isSep(c byte) bool { return c == ' ' || c == '\t' || c == ',' || c == ';' }

// parseKV appends the key=value fields of line to dst. Fields are
// separated by spaces, tabs, commas or semicolons; a field without '=' or
// with an empty key is an error naming it, and so is a record without
// fields. Key and value alias line.
func parseKV(line []byte, dst []field) ([]field, error) {
	n0 := len(dst)
	for i := 0; i < len(line); {
		for i < len(line) && isSep(line[i]) {
			i++
		}
		if i == len(line) {
			break
		}
		j := i
		for j < len(line) && !isSep(line[j]) {
			j++
		}
		tok := line[i:j]
		eq := bytes.IndexByte(tok, '=')
		switch {
		case eq < 0:
			return dst[:n0], fmt.Errorf("field %q has no '=' (want key=value)", clip(tok))
		case eq == 0:
			return dst[:n0], fmt.Errorf("field %q has no key", clip(tok))
		}
		dst = append(dst, field{key: tok[:eq], val: tok[eq+1:]})
		i = j
	}
	if len(dst) == n0 {
		return dst, errEmpty
	}
	return keepFirst(dst, n0), nil
}

// keepFirst removes from fields[n0:] every field whose key came earlier in
// the record: the first value of a repeated field is the one kept (a data
// message, a JSON object, cannot hold a key twice, and the logger refuses
// one that does). A record has few fields, so the quadratic scan is cheap.
func keepFirst(fields []field, n0 int) []field {
	out := fields[:n0]
	for _, f := range fields[n0:] {
		if findField(out[n0:], string(f.key)) == nil {
			out = append(out, f)
		}
	}
	return out
}

// parseRegex appends the named groups of re that matched in line to dst
// (a group that did not take part in the match is left out). A line that
// does not match is errNoMatch.
func parseRegex(re *regexp.Regexp, line []byte, dst []field) ([]field, error) {
	m := re.FindSubmatchIndex(line)
	if m == nil {
		return dst, errNoMatch
	}
	for i, name := range re.SubexpNames() {
		if name == "" || i == 0 || m[2*i] < 0 {
			continue
		}
		dst = append(dst, field{key: []byte(name), val: line[m[2*i]:m[2*i+1]]})
	}
	// Go lets two groups have one name: the first that matched counts.
	return keepFirst(dst, 0), nil
}

// clip shortens b for an error message.
func clip(b []byte) string {
	if len(b) > 40 {
		return string(b[:40]) + "…"
	}
	return string(b)
}

// parseValue turns text into a value of type t: bool accepts
// 1/0/true/false/on/off (any case), integer types decimal numbers in
// their range, f32 and f64 any float syntax strconv accepts.
func parseValue(t value.Type, text []byte) (value.Value, error) {
	s := string(text)
	switch t {
	case value.Bool:
		switch strings.ToLower(s) {
		case "1", "true", "on":
			return value.Value{Type: t, Bits: 1}, nil
		case "0", "false", "off":
			return value.Value{Type: t}, nil
		}
		return value.Value{}, fmt.Errorf("%q is not a boolean", clip(text))
	case value.U16, value.U32, value.U64:
		u, err := strconv.ParseUint(s, 10, 16*t.Registers())
		if err != nil {
			return value.Value{}, fmt.Errorf("%q is not a %v", clip(text), t)
		}
		return value.Value{Type: t, Bits: u}, nil
	case value.S16, value.S32, value.S64:
		i, err := strconv.ParseInt(s, 10, 16*t.Registers())
		if err != nil {
			return value.Value{}, fmt.Errorf("%q is not an %v", clip(text), t)
		}
		return value.FromInt(t, i)
	case value.F32, value.F64:
		f, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return value.Value{}, fmt.Errorf("%q is not a number", clip(text))
		}
		return value.FromFloat(t, f)
	}
	return value.Value{}, fmt.Errorf("invalid type %v", t)
}

// runLine owns one line-mode port until ctx ends.
func (p *Poller) runLine(ctx context.Context, pr *portRun) {
	p.keepPort(ctx, pr, func(ctx context.Context, port modbus.Port) error {
		return p.readLines(ctx, pr, port)
	})
}

// readLines reads records from port until ctx ends (nil) or the port
// fails (an error wrapping modbus.ErrPort). The device goes offline after
// its timeout without a good record.
func (p *Poller) readLines(ctx context.Context, pr *portRun, port modbus.Port) error {
	d := pr.devices[0]
	if err := port.SetReadTimeout(100 * time.Millisecond); err != nil {
		return fmt.Errorf("%w: set read timeout: %w", modbus.ErrPort, err)
	}
	buf := make([]byte, maxLine)
	n := 0
	discarding := true // until the first newline: we may have started mid-record
	last := time.Now()
	lastByte := last // when the last byte arrived
	partialAfter := pr.plan.Config.Timeout.Duration
	silent := false
	for ctx.Err() == nil {
		// A read returns within its 100ms timeout, and what follows it is
		// quick: a second is a generous bound for one turn.
		pr.loop.Busy(time.Second)
		k, err := port.Read(buf[n:])
		if err != nil {
			return fmt.Errorf("%w: read: %w", modbus.ErrPort, err)
		}
		if k > 0 {
			lastByte = time.Now()
		} else if n > 0 && time.Since(lastByte) > partialAfter {
			// The line fell silent in mid-record: a device reset, a cable
			// pulled, noise. What came is no record, and must not be
			// glued onto the next one. After the silence a record starts.
			if !discarding {
				p.badRecord(d, fmt.Errorf("partial record %q dropped: no newline after %s of silence", clip(buf[:n]), partialAfter))
				p.noteLine(d, LineCounts{Discarded: uint64(n)})
			}
			n, discarding = 0, false
		}
		n += k
		start := 0
		for {
			i := bytes.IndexByte(buf[start:n], '\n')
			if i < 0 {
				break
			}
			line := bytes.TrimSuffix(buf[start:start+i], []byte{'\r'})
			start += i + 1
			if discarding {
				discarding = false
				continue
			}
			if len(bytes.TrimSpace(line)) == 0 {
				continue
			}
			if p.record(d, line) {
				last, silent = time.Now(), false
			}
		}
		n = copy(buf, buf[start:n])
		if n == len(buf) {
			p.badRecord(d, fmt.Errorf("record longer than %d bytes dropped", maxLine))
			p.noteLine(d, LineCounts{Discarded: uint64(n)})
			n, discarding = 0, true
		}
		if !silent && time.Since(last) > d.plan.Timeout {
			silent = true
			p.setState(d, fmt.Errorf("no record for %s", d.plan.Timeout))
		}
	}
	return nil
}

// record turns one line into a reading of d; it returns whether the line
// was a good record.
func (p *Poller) record(d *device, line []byte) bool {
	stamp := p.clock.Now()
	var err error
	pp := d.plan.Port
	if pp.LineRegex != nil {
		d.fields, err = parseRegex(pp.LineRegex, line, d.fields[:0])
	} else {
		d.fields, err = parseKV(line, d.fields[:0])
	}
	if err != nil {
		p.badRecord(d, err)
		return false
	}
	if len(d.plan.Points) == 0 {
		// Each field becomes a point: its name must be one.
		for _, f := range d.fields {
			if msg := config.NameProblem(string(f.key)); msg != "" {
				p.badRecord(d, fmt.Errorf("field name %s", msg))
				return false
			}
		}
	}
	if !p.out.Reserve() {
		p.noteBackpressure(d)
		return true
	}
	d.text = d.text[:0]
	if len(d.plan.Points) > 0 {
		for i := range d.plan.Points {
			pt := &d.plan.Points[i]
			f := findField(d.fields, pt.Config.Key)
			if f == nil {
				d.res[i] = result{why: "missing in record"}
				continue
			}
			v, err := parseValue(pt.Layout.Type, f.val)
			if err != nil {
				d.res[i] = result{why: err.Error()}
				continue
			}
			d.setValue(i, pt, v)
		}
		p.publishRound(d, stamp)
		p.wakeSender()
	} else {
		p.publishFields(d, stamp)
	}
	p.setState(d, nil)
	return true
}

// publishFields publishes every field of d's record as a number.
func (p *Poller) publishFields(d *device, stamp clock.Stamp) {
	p.out.Add(d.dataTopic, time.Now(), func(seq uint64) []byte {
		d.msg.begin(p.run, seq, stamp)
		for _, f := range d.fields {
			key := appendJSONString(d.text[:0], string(f.key))
			key = append(key, ':')
			fl, err := strconv.ParseFloat(string(f.val), 64)
			if err != nil || math.IsNaN(fl) || math.IsInf(fl, 0) {
				d.msg.failed(key, "not a number")
			} else {
				d.msg.good(key, strconv.AppendFloat(key[len(key):], fl, 'g', -1, 64))
			}
			d.text = key[:0]
		}
		b := d.msg.end()
		return append(make([]byte, 0, len(b)), b...)
	})
	p.wakeSender()
	d.rounds.Add(1)
	p.onRound()
}

func findField(fields []field, key string) *field {
	for i := range fields {
		if string(fields[i].key) == key {
			return &fields[i]
		}
	}
	return nil
}

// badRecord counts and logs (rate-limited) a record that was not a reading.
func (p *Poller) badRecord(d *device, err error) {
	p.badRecords.Add(1)
	if ok, n := p.limiter.Check("record "+d.name, time.Now()); ok {
		d.log.Warn("bad record ignored", "err", err, "suppressed", n)
	}
}
