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
}
