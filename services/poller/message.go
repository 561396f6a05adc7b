package poller

import (
	"math"
	"strconv"
	"unicode/utf8"

	"github.com/tinyscada/tinyscada/shared/clock"
	"github.com/tinyscada/tinyscada/shared/modbus/value"
)

// The JSON of the poller's messages is written by hand: one data message
// per device round is the hot path, and encoding/json would cost a map, a
// sort and several allocations per message.

// appendValue appends the published form of raw for pt: the exact value
// when the point has no scale or offset, else raw×scale+offset as the
// shortest decimal. It returns the extended dst and "" or, when the value
// cannot be written in JSON (NaN, an infinity), dst unchanged and why.
func appendValue(dst []byte, pt *Point, raw value.Value) ([]byte, string) {
	if pt.Exact {
		if t := raw.Type; t == value.F32 || t == value.F64 {
			if f := raw.Float64(); math.IsNaN(f) || math.IsInf(f, 0) {
				return dst, "not a number (" + strconv.FormatFloat(f, 'g', -1, 64) + ")"
			}
		}
		return raw.Append(dst), ""
	}
	return appendScaled(dst, pt, raw.Float64())
}

// appendScaled appends f×scale+offset (or f/div+offset) as a JSON number.
func appendScaled(dst []byte, pt *Point, f float64) ([]byte, string) {
	if pt.Div != 0 {
		f /= pt.Div
	} else {
		f *= pt.Scale
	}
	f += pt.Add
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return dst, "not a number (" + strconv.FormatFloat(f, 'g', -1, 64) + ")"
	}
	return strconv.AppendFloat(dst, f, 'g', -1, 64), ""
}

// msgHeader appends the start of a data message: run, seq, the stamp, and
// the opening of "v".
func msgHeader(dst []byte, run string, seq uint64, at clock.Stamp) []byte {
	dst = append(dst, `{"run":"`...)
	dst = append(dst, run...) // hex: nothing to escape
	dst = append(dst, `","seq":`...)
	dst = strconv.AppendUint(dst, seq, 10)
	dst = append(dst, `,"t":`...)
	dst = strconv.AppendInt(dst, at.Wall.UnixMilli(), 10)
	dst = append(dst, `,"m":`...)
	dst = strconv.AppendInt(dst, int64(at.Mono), 10)
	dst = append(dst, `,"b":`...)
	dst = appendJSONString(dst, at.Boot)
	return append(dst, `,"v":{`...)
}

const hexDigits = "0123456789abcdef"

// appendJSONString appends s as a JSON string: quotes, backslashes and
// control characters escaped, invalid UTF-8 replaced by U+FFFD.
func appendJSONString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, "\ufffd"...)
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// message builds one data message: the good values in "v", then the failed
// points in "bad".
type message struct {
	buf  []byte
	bad  []byte // `"name":"why",...` without braces
	nv   int
	nbad int
}

// begin starts a message in m.buf (reused).
func (m *message) begin(run string, seq uint64, at clock.Stamp) {
	m.buf = msgHeader(m.buf[:0], run, seq, at)
	m.bad = m.bad[:0]
	m.nv, m.nbad = 0, 0
}

// good adds a value: key is `"name":` and text the JSON value.
func (m *message) good(key, text []byte) {
	if m.nv > 0 {
		m.buf = append(m.buf, ',')
	}
	m.buf = append(m.buf, key...)
	m.buf = append(m.buf, text...)
	m.nv++
}

// failed adds a point that could not be read, and why.
func (m *message) failed(key []byte, why string) {
	if m.nbad > 0 {
		m.bad = append(m.bad, ',')
	}
	m.bad = append(m.bad, key...)
	m.bad = appendJSONString(m.bad, why)
	m.nbad++
}

// end closes the message and returns it (valid until the next begin).
func (m *message) end() []byte {
	m.buf = append(m.buf, '}')
	if m.nbad > 0 {
		m.buf = append(m.buf, `,"bad":{`...)
		m.buf = append(m.buf, m.bad...)
		m.buf = append(m.buf, '}')
	}
	return append(m.buf, '}')
}
