package store

import "strconv"

// The record Write stores: one data message of the producer, decoded (the
// logger decodes the payloads; the store never sees them).

// Kind is the type of a value.
type Kind uint8

// Kinds of values. KindText holds an integer above 2⁶³-1 (a u64 counter),
// kept exact as its decimal digits.
const (
	KindInt Kind = iota
	KindFloat
	KindBool
	KindText
)

// Value is one point's value in a data message. Name and Text may point
// into the caller's memory (the logger's decoder leaves them in the
// payload); Write copies what it keeps.
type Value struct {
	Name []byte
	Kind Kind
	I    int64   // KindInt; KindBool: 0 or 1
	F    float64 // KindFloat
	Text []byte  // KindText
}

// AppendJSON appends v's value as a JSON number or boolean: a float as
// the shortest decimal that reads back as it.
func (v *Value) AppendJSON(dst []byte) []byte {
	switch v.Kind {
	case KindBool:
		return strconv.AppendBool(dst, v.I != 0)
	case KindInt:
		return strconv.AppendInt(dst, v.I, 10)
	case KindFloat:
		return strconv.AppendFloat(dst, v.F, 'g', -1, 64)
	}
	return append(dst, v.Text...)
}

// Bad is a point that could not be read, and why.
type Bad struct {
	Name, Why []byte
}

// Message is one decoded data message: one poll round of one device.
type Message struct {
	Run    []byte // the producer's run id
	Seq    uint64 // ≥ 1
	Wall   int64  // wall time, Unix ms
	Mono   int64  // CLOCK_BOOTTIME, ns
	Boot   []byte // boot id; empty when unknown
	Values []Value
	Bad    []Bad
	// HasID says Run and Seq were read, even when decoding failed later:
	// the message can then be recorded as malformed and acknowledged.
	HasID bool

	own []byte // the bytes of the slices above after detach, reused
}

// detach moves m out of the payload it was decoded from, for a message
// that is kept while its payload is not needed (DecodeItem: the logger
// holds a batch's worth, 500 messages at field rate): the bytes its
// slices hold (run, boot, names, texts, reasons: a few bytes each) go to
// m's own buffer, reused from the message decoded in m before, so that
// the payload (hundreds of bytes) can be freed; and Values and Bad, when
// a decode grew them, go to arrays of their length, without the spare
// room of append's doubling that a reused message would keep (12 of 32
// values for a device of 20 points).
func (m *Message) detach(capValues, capBad int) {
	if cap(m.Values) != capValues && cap(m.Values) > len(m.Values) {
		m.Values = append([]Value(nil), m.Values...)
	}
	if cap(m.Bad) != capBad && cap(m.Bad) > len(m.Bad) {
		m.Bad = append([]Bad(nil), m.Bad...)
	}
	n := len(m.Run) + len(m.Boot)
	for i := range m.Values {
		n += len(m.Values[i].Name) + len(m.Values[i].Text)
	}
	for i := range m.Bad {
		n += len(m.Bad[i].Name) + len(m.Bad[i].Why)
	}
	if cap(m.own) < n {
		m.own = make([]byte, 0, n)
	}
	own := bytesArena{b: m.own[:0]}
	m.Run, m.Boot = own.take(m.Run), own.take(m.Boot)
	for i := range m.Values {
		v := &m.Values[i]
		v.Name, v.Text = own.take(v.Name), own.take(v.Text)
	}
	for i := range m.Bad {
		b := &m.Bad[i]
		b.Name, b.Why = own.take(b.Name), own.take(b.Why)
	}
	m.own = own.b
}

// bytesArena hands out copies from one array that has room for all of
// them, so that no copy handed out before moves.
type bytesArena struct{ b []byte }

func (a *bytesArena) take(p []byte) []byte {
	if p == nil {
		return nil
	}
	a.b = append(a.b, p...)
	return a.b[len(a.b)-len(p) : len(a.b) : len(a.b)]
}
