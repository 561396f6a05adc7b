package store

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"unicode/utf8"
	"unsafe"

	"github.com/tinyscada/tinyscada/shared/config"
)

// MaxPayload is the largest data message Decode takes (256 KiB); a larger
// one is malformed.
const MaxPayload = 256 << 10

// Other limits of a data message; anything beyond is malformed.
const (
	maxValues   = 4096
	maxNameLen  = 128
	maxIDLen    = 64
	maxWhyLen   = 512
	maxSkipDeep = 32
	maxWall     = 7258118400000 // 2200-01-01T00:00:00Z, Unix ms
)

// DecodeItem decodes payload, a data message of device (the last level(s)
// of its topic), into it, reusing the memory of it.Msg. A device name must
// obey the configuration's name rule (config.NameProblem: one topic level,
// no control characters, …) and be at most 128 bytes, or the message is
// malformed.
func DecodeItem(it *Item, device string, payload []byte) {
	it.Device = device
	capValues, capBad := cap(it.Msg.Values), cap(it.Msg.Bad)
	it.Err = Decode(payload, &it.Msg)
	it.Msg.detach(capValues, capBad)
	if it.Err != nil {
		return
	}
	if p := config.NameProblem(device); p != "" {
		it.Err = &DecodeError{Msg: "bad device name in the topic: " + p}
	} else if len(device) > maxNameLen {
		it.Err = &DecodeError{Msg: fmt.Sprintf("device name of %d bytes in the topic (at most %d)", len(device), maxNameLen)}
	}
}

// DecodeError says why a payload is not a valid data message and where.
type DecodeError struct {
	Offset int
	Msg    string
}

func (e *DecodeError) Error() string { return fmt.Sprintf("byte %d: %s", e.Offset, e.Msg) }

// errDecode is a sentinel for the internal error path (the position is
// added by Decode).
var errDecode = errors.New("malformed")

// decoder is a cursor over one payload.
type decoder struct {
	b   []byte
	i   int
	msg string
}

func (d *decoder) fail(format string, args ...any) error {
	if d.msg == "" {
		d.msg = fmt.Sprintf(format, args...)
	}
	return errDecode
}

// Decode parses payload as a data message into m, reusing m's slices. It
// returns nil or a *DecodeError. The message is:
//
//	{"run":"<id>","seq":N,"t":<wall ms>,"m":<boottime ns>,"b":"<boot id>",
//	 "v":{"<point>":<number|true|false>,...},"bad":{"<point>":"<why>",...}}
//
// run, seq, t, m and v are required; b and bad may be left out; unknown keys
// are skipped (later producers may add some). A repeated key, a point named
// twice, a value that is not a number or boolean (null, a string, NaN), an
// out-of-range number, a t outside 1970 to 2200, a point name that breaks
// the configuration's name rule (config.NameProblem) or is longer than 128
// bytes, text after the object, more than 4096 values, or a payload above
// 256 KiB (whose run and seq are still read from its start) make the
// payload malformed. Values with a fraction
// or exponent are floats; integers are KindInt, or KindText above 2⁶³-1.
// On success no memory is allocated unless strings hold escapes.
func Decode(payload []byte, m *Message) error {
	*m = Message{Values: m.Values[:0], Bad: m.Bad[:0], own: m.own}
	if len(payload) > MaxPayload {
		// Never taken, but its run and seq are read from its start if
		// they come first (as the poller writes them), so that it can be
		// recorded as a malformed gap and acknowledged.
		d := decoder{b: payload[:MaxPayload]}
		_ = d.message(m)
		hasID, run, seq := m.HasID, m.Run, m.Seq
		*m = Message{Values: m.Values[:0], Bad: m.Bad[:0], HasID: hasID, Run: run, Seq: seq, own: m.own}
		return &DecodeError{Offset: MaxPayload, Msg: fmt.Sprintf("payload of %d bytes (at most %d)", len(payload), MaxPayload)}
	}
	d := decoder{b: payload}
	if err := d.message(m); err != nil {
		return &DecodeError{Offset: d.i, Msg: d.msg}
	}
	return nil
}

const (
	seenRun = 1 << iota
	seenSeq
	seenT
	seenM
	seenB
	seenV
	seenBad
)

func (d *decoder) message(m *Message) error {
	d.ws()
	if !d.eat('{') {
		return d.fail("not a JSON object")
	}
	seen := 0
	first := true
	for {
		d.ws()
		if d.eat('}') {
			break
		}
		if !first {
			if !d.eat(',') {
				return d.fail("want ',' or '}'")
			}
			d.ws()
		}
		first = false
		key, err := d.str()
		if err != nil {
			return err
		}
		d.ws()
		if !d.eat(':') {
			return d.fail("want ':' after key")
		}
		d.ws()
		bit := 0
		switch string(key) {
		case "run":
			bit = seenRun
			if m.Run, err = d.ident("run"); err != nil {
				return err
			}
			if len(m.Run) == 0 {
				return d.fail("empty run")
			}
		case "seq":
			bit = seenSeq
			n, err := d.integer("seq")
			if err != nil {
				return err
			}
			if n < 1 {
				return d.fail("seq %d (want ≥ 1)", n)
			}
			m.Seq = uint64(n)
		case "t":
			bit = seenT
			if m.Wall, err = d.integer("t"); err != nil {
				return err
			}
			// Beyond 2262 the wall time in ns would overflow int64.
			if m.Wall < 0 || m.Wall > maxWall {
				return d.fail("t %d out of range (1970 to 2200)", m.Wall)
			}
		case "m":
			bit = seenM
			if m.Mono, err = d.integer("m"); err != nil {
				return err
			}
			if m.Mono < 0 {
				return d.fail("negative m")
			}
		case "b":
			bit = seenB
			if m.Boot, err = d.ident("b"); err != nil {
				return err
			}
		case "v":
			bit = seenV
			if err := d.values(m); err != nil {
				return err
			}
		case "bad":
			bit = seenBad
			if err := d.bads(m); err != nil {
				return err
			}
		default:
			if err := d.skip(0); err != nil {
				return err
			}
		}
		if bit != 0 {
			if seen&bit != 0 {
				return d.fail("key %q repeated", key)
			}
			seen |= bit
		}
		if seen&(seenRun|seenSeq) == seenRun|seenSeq {
			m.HasID = true
		}
	}
	d.ws()
	if d.i != len(d.b) {
		return d.fail("text after the object")
	}
	for _, k := range []struct {
		bit  int
		name string
	}{{seenRun, "run"}, {seenSeq, "seq"}, {seenT, "t"}, {seenM, "m"}, {seenV, "v"}} {
		if seen&k.bit == 0 {
			return d.fail("no %q", k.name)
		}
	}
	for i := range m.Bad {
		for j := range m.Values {
			if string(m.Bad[i].Name) == string(m.Values[j].Name) {
				return d.fail("point %q both in v and bad", m.Bad[i].Name)
			}
		}
	}
	return nil
}

// members reads a JSON object of point names (what names it in errors),
// calling member for each name after its ':'.
func (d *decoder) members(what string, member func(name []byte) error) error {
	if !d.eat('{') {
		return d.fail("%s is not an object", what)
	}
	for first := true; ; first = false {
		d.ws()
		if d.eat('}') {
			return nil
		}
		if !first {
			if !d.eat(',') {
				return d.fail("want ',' or '}' in %s", what)
			}
			d.ws()
		}
		name, err := d.name()
		if err != nil {
			return err
		}
		d.ws()
		if !d.eat(':') {
			return d.fail("want ':' after point name")
		}
		d.ws()
		if err := member(name); err != nil {
			return err
		}
	}
}

func (d *decoder) values(m *Message) error {
	return d.members("v", func(name []byte) error {
		for j := range m.Values {
			if string(m.Values[j].Name) == string(name) {
				return d.fail("point %q repeated in v", name)
			}
		}
		if len(m.Values) >= maxValues {
			return d.fail("more than %d values", maxValues)
		}
		v := Value{Name: name}
		switch {
		case d.lit("true"):
			v.Kind, v.I = KindBool, 1
		case d.lit("false"):
			v.Kind = KindBool
		default:
			if err := d.number(&v); err != nil {
				return err
			}
		}
		m.Values = append(m.Values, v)
		return nil
	})
}

func (d *decoder) bads(m *Message) error {
	return d.members("bad", func(name []byte) error {
		for j := range m.Bad {
			if string(m.Bad[j].Name) == string(name) {
				return d.fail("point %q repeated in bad", name)
			}
		}
		if len(m.Bad) >= maxValues {
			return d.fail("more than %d bad points", maxValues)
		}
		why, err := d.str()
		if err != nil {
			return err
		}
		if len(why) > maxWhyLen {
			why = why[:maxWhyLen]
			for len(why) > 0 && !utf8.Valid(why) {
				why = why[:len(why)-1]
			}
		} else if !utf8.Valid(why) {
			return d.fail("reason of %q is not UTF-8", name)
		}
		m.Bad = append(m.Bad, Bad{Name: name, Why: why})
		return nil
	})
}

// name reads a point name: at most 128 bytes that obey the
// configuration's name rule (config.NameProblem).
func (d *decoder) name() ([]byte, error) {
	s, err := d.str()
	if err != nil {
		return nil, err
	}
	if len(s) == 0 {
		return nil, d.fail("bad point name: must not be empty")
	}
	if len(s) > maxNameLen {
		return nil, d.fail("point name of %d bytes (at most %d)", len(s), maxNameLen)
	}
	if p := config.NameProblem(unsafe.String(&s[0], len(s))); p != "" {
		return nil, d.fail("bad point name: %s", p)
	}
	return s, nil
}

// ident reads a run or boot id: printable ASCII, at most 64 bytes.
func (d *decoder) ident(what string) ([]byte, error) {
	s, err := d.str()
	if err != nil {
		return nil, err
	}
	if len(s) > maxIDLen {
		return nil, d.fail("%s of %d bytes (at most %d)", what, len(s), maxIDLen)
	}
	for _, c := range s {
		if c <= ' ' || c >= 0x7f {
			return nil, d.fail("%s holds byte %#x (want printable ASCII)", what, c)
		}
	}
	return s, nil
}

func (d *decoder) ws() {
	for d.i < len(d.b) {
		switch d.b[d.i] {
		case ' ', '\t', '\n', '\r':
			d.i++
		default:
			return
		}
	}
}

func (d *decoder) eat(c byte) bool {
	if d.i < len(d.b) && d.b[d.i] == c {
		d.i++
		return true
	}
	return false
}

func (d *decoder) lit(s string) bool {
	if len(d.b)-d.i >= len(s) && string(d.b[d.i:d.i+len(s)]) == s {
		d.i += len(s)
		return true
	}
	return false
}

// str reads a JSON string. Without escapes it returns a slice of the
// payload; with escapes, a new slice holding the unescaped bytes.
func (d *decoder) str() ([]byte, error) {
	if !d.eat('"') {
		return nil, d.fail("want a string")
	}
	start := d.i
	for d.i < len(d.b) {
		c := d.b[d.i]
		switch {
		case c == '"':
			s := d.b[start:d.i]
			d.i++
			return s, nil
		case c == '\\':
			return d.strEscaped(start)
		case c < 0x20:
			return nil, d.fail("control character in string")
		}
		d.i++
	}
	return nil, d.fail("unterminated string")
}

func (d *decoder) strEscaped(start int) ([]byte, error) {
	out := make([]byte, 0, d.i-start+16)
	out = append(out, d.b[start:d.i]...)
	for d.i < len(d.b) {
		c := d.b[d.i]
		switch {
		case c == '"':
			d.i++
			return out, nil
		case c < 0x20:
			return nil, d.fail("control character in string")
		case c != '\\':
			out = append(out, c)
			d.i++
			continue
		}
		d.i++
		if d.i >= len(d.b) {
			break
		}
		e := d.b[d.i]
		d.i++
		switch e {
		case '"', '\\', '/':
			out = append(out, e)
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case 'u':
			r, ok := d.hex4()
			if !ok {
				return nil, d.fail("bad \\u escape")
			}
			if utf16IsSurrogate(r) {
				// A high surrogate followed by \uDC00-\uDFFF is one rune;
				// anything else is replaced, as encoding/json does.
				r2 := rune(-1)
				if r < 0xdc00 && d.lit(`\u`) {
					var ok2 bool
					if r2, ok2 = d.hex4(); !ok2 {
						return nil, d.fail("bad \\u escape")
					}
				}
				if r < 0xdc00 && r2 >= 0xdc00 && r2 <= 0xdfff {
					r = (r-0xd800)<<10 | (r2 - 0xdc00) + 0x10000
				} else {
					out = utf8.AppendRune(out, utf8.RuneError)
					if r2 < 0 {
						continue
					}
					r = r2
					if utf16IsSurrogate(r) {
						r = utf8.RuneError
					}
				}
			}
			out = utf8.AppendRune(out, r)
		default:
			return nil, d.fail("bad escape \\%c", e)
		}
	}
	return nil, d.fail("unterminated string")
}

func utf16IsSurrogate(r rune) bool { return r >= 0xd800 && r <= 0xdfff }

func (d *decoder) hex4() (rune, bool) {
	if len(d.b)-d.i < 4 {
		return 0, false
	}
	var r rune
	for _, c := range d.b[d.i : d.i+4] {
		switch {
		case c >= '0' && c <= '9':
			r = r<<4 | rune(c-'0')
		case c >= 'a' && c <= 'f':
			r = r<<4 | rune(c-'a'+10)
		case c >= 'A' && c <= 'F':
			r = r<<4 | rune(c-'A'+10)
		default:
			return 0, false
		}
	}
	d.i += 4
	return r, true
}

// numberSpan reads the text of a JSON number and reports whether it has a
// fraction or exponent.
func (d *decoder) numberSpan() (text []byte, float bool, err error) {
	start := d.i
	d.eat('-')
	switch {
	case d.eat('0'):
	case d.i < len(d.b) && d.b[d.i] >= '1' && d.b[d.i] <= '9':
		for d.i < len(d.b) && d.b[d.i] >= '0' && d.b[d.i] <= '9' {
			d.i++
		}
	default:
		return nil, false, d.fail("want a number or a boolean")
	}
	if d.eat('.') {
		float = true
		n := d.i
		for d.i < len(d.b) && d.b[d.i] >= '0' && d.b[d.i] <= '9' {
			d.i++
		}
		if d.i == n {
			return nil, false, d.fail("no digits after '.'")
		}
	}
	if d.i < len(d.b) && (d.b[d.i] == 'e' || d.b[d.i] == 'E') {
		float = true
		d.i++
		if !d.eat('+') {
			d.eat('-')
		}
		n := d.i
		for d.i < len(d.b) && d.b[d.i] >= '0' && d.b[d.i] <= '9' {
			d.i++
		}
		if d.i == n {
			return nil, false, d.fail("no digits in exponent")
		}
	}
	return d.b[start:d.i], float, nil
}

// integer reads a JSON integer that fits in int64.
func (d *decoder) integer(what string) (int64, error) {
	text, float, err := d.numberSpan()
	if err != nil {
		return 0, err
	}
	if float {
		return 0, d.fail("%s is not an integer", what)
	}
	n, ok := parseInt(text)
	if !ok {
		return 0, d.fail("%s out of range", what)
	}
	return n, nil
}

// number reads a point's value into v.
func (d *decoder) number(v *Value) error {
	text, float, err := d.numberSpan()
	if err != nil {
		return err
	}
	if !float {
		if n, ok := parseInt(text); ok {
			v.Kind, v.I = KindInt, n
			return nil
		}
		if text[0] != '-' && len(text) <= 20 {
			if _, err := strconv.ParseUint(unsafe.String(&text[0], len(text)), 10, 64); err == nil {
				v.Kind, v.Text = KindText, text
				return nil
			}
		}
	}
	f, err := strconv.ParseFloat(unsafe.String(&text[0], len(text)), 64)
	if err != nil || math.IsInf(f, 0) {
		return d.fail("number %s out of range", text)
	}
	v.Kind, v.F = KindFloat, f
	return nil
}

// parseInt parses a JSON integer (already checked for syntax) into int64.
func parseInt(text []byte) (int64, bool) {
	neg := text[0] == '-'
	if neg {
		text = text[1:]
	}
	if len(text) > 19 {
		return 0, false
	}
	var u uint64
	for _, c := range text {
		u = u*10 + uint64(c-'0')
	}
	switch {
	case neg && u <= 1<<63:
		return int64(-u), true
	case !neg && u <= math.MaxInt64:
		return int64(u), true
	}
	return 0, false
}

// skip passes over any JSON value.
func (d *decoder) skip(depth int) error {
	if depth > maxSkipDeep {
		return d.fail("nested deeper than %d", maxSkipDeep)
	}
	if d.i >= len(d.b) {
		return d.fail("want a value")
	}
	switch c := d.b[d.i]; {
	case c == '"':
		_, err := d.str()
		return err
	case c == '{' || c == '[':
		end := byte('}')
		if c == '[' {
			end = ']'
		}
		d.i++
		for first := true; ; first = false {
			d.ws()
			if d.eat(end) {
				return nil
			}
			if !first {
				if !d.eat(',') {
					return d.fail("want ',' or '%c'", end)
				}
				d.ws()
			}
			if end == '}' {
				if _, err := d.str(); err != nil {
					return err
				}
				d.ws()
				if !d.eat(':') {
					return d.fail("want ':'")
				}
				d.ws()
			}
			if err := d.skip(depth + 1); err != nil {
				return err
			}
		}
	case d.lit("true"), d.lit("false"), d.lit("null"):
		return nil
	default:
		_, _, err := d.numberSpan()
		return err
	}
}
