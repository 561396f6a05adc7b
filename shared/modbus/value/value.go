// Package value converts typed values (bool, 16/32/64-bit integers,
// 32/64-bit floats) to and from Modbus registers, in any word and byte
// order.
package value

import (
	"fmt"
	"math"
	"strconv"
)

// Type is the type of a value held in registers.
type Type uint8

// Types. The zero Type is invalid.
const (
	Bool Type = iota + 1 // one register, non-zero is true (or one coil)
	U16
	S16
	U32
	S32
	U64
	S64
	F32
	F64
)

var typeNames = [...]string{Bool: "bool", U16: "u16", S16: "s16", U32: "u32", S32: "s32", U64: "u64", S64: "s64", F32: "f32", F64: "f64"}

// String returns the configuration name of t ("u16", "f32"…).
func (t Type) String() string {
	if t >= Bool && int(t) < len(typeNames) {
		return typeNames[t]
	}
	return "type(" + strconv.Itoa(int(t)) + ")"
}

// ParseType returns the Type named s (bool, u16, s16, u32, s32, u64, s64,
// f32, f64), or an error naming s.
func ParseType(s string) (Type, error) {
	for t, name := range typeNames {
		if name != "" && name == s {
			return Type(t), nil
		}
	}
	return 0, fmt.Errorf("value: unknown type %q (want bool, u16, s16, u32, s32, u64, s64, f32 or f64)", s)
}

// Registers returns how many 16-bit registers a value of type t occupies,
// or 0 for an invalid Type.
func (t Type) Registers() int {
	switch t {
	case Bool, U16, S16:
		return 1
	case U32, S32, F32:
		return 2
	case U64, S64, F64:
		return 4
	}
	return 0
}

// Order is the order of words in a value, or of bytes in a word.
type Order uint8

const (
	// BigEndian: most significant first (the Modbus default for bytes, and
	// the most common word order).
	BigEndian Order = iota
	// LittleEndian: least significant first ("word swap" for words, "byte
	// swap" for bytes).
	LittleEndian
)

// String returns "big" or "little".
func (o Order) String() string {
	if o == LittleEndian {
		return "little"
	}
	return "big"
}

// ParseOrder returns the Order named s: "big" or "" (BigEndian), "little"
// (LittleEndian); otherwise an error naming s.
func ParseOrder(s string) (Order, error) {
	switch s {
	case "", "big":
		return BigEndian, nil
	case "little":
		return LittleEndian, nil
	}
	return 0, fmt.Errorf("value: unknown order %q (want big or little)", s)
}

// Layout says how a value sits in registers.
type Layout struct {
	Type      Type
	WordOrder Order // order of the registers of a multi-register value
	ByteOrder Order // order of the two bytes within each register
}

// Value is a decoded value: its type and its bits (the two's complement or
// IEEE 754 bits, zero-extended to 64).
type Value struct {
	Type Type
	Bits uint64
}

// Float64 returns v as a float64; integers above 2^53 lose precision,
// bool is 0 or 1.
func (v Value) Float64() float64 {
	switch v.Type {
	case Bool:
		if v.Bits != 0 {
			return 1
		}
		return 0
	case S16:
		return float64(int16(v.Bits))
	case S32:
		return float64(int32(v.Bits))
	case S64:
		return float64(int64(v.Bits))
	case F32:
		return float64(math.Float32frombits(uint32(v.Bits)))
	case F64:
		return math.Float64frombits(v.Bits)
	}
	return float64(v.Bits)
}

// Int64 returns v as an int64: signed types sign-extended, floats
// truncated toward zero (saturating), u64 above 2^63-1 wrapped.
func (v Value) Int64() int64 {
	switch v.Type {
	case S16:
		return int64(int16(v.Bits))
	case S32:
		return int64(int32(v.Bits))
	case F32, F64:
		f := v.Float64()
		switch {
		case f != f:
			return 0
		case f >= math.MaxInt64:
			return math.MaxInt64
		case f <= math.MinInt64:
			return math.MinInt64
		}
		return int64(f)
	case Bool:
		if v.Bits != 0 {
			return 1
		}
		return 0
	}
	return int64(v.Bits)
}

// Bool returns whether v is non-zero.
func (v Value) Bool() bool { return v.Float64() != 0 }

// String formats v exactly: integers in decimal, floats in the shortest
// form that reads back the same, bool as true/false.
func (v Value) String() string { return string(v.Append(nil)) }

// Append appends v formatted as String does (JSON-compatible, except NaN
// and infinities, which are written as NaN, +Inf, -Inf).
func (v Value) Append(dst []byte) []byte {
	switch v.Type {
	case Bool:
		return strconv.AppendBool(dst, v.Bits != 0)
	case S16, S32, S64:
		return strconv.AppendInt(dst, v.Int64(), 10)
	case F32:
		return strconv.AppendFloat(dst, v.Float64(), 'g', -1, 32)
	case F64:
		return strconv.AppendFloat(dst, v.Float64(), 'g', -1, 64)
	}
	return strconv.AppendUint(dst, v.Bits, 10)
}

// Decode reads a value laid out as l from the first l.Type.Registers()
// registers of regs. Errors: an invalid type or order, or too few
// registers.
func Decode(regs []uint16, l Layout) (Value, error) {
	n := l.Type.Registers()
	if n == 0 {
		return Value{}, fmt.Errorf("value: decode: invalid type %v", l.Type)
	}
	if l.WordOrder > LittleEndian || l.ByteOrder > LittleEndian {
		return Value{}, fmt.Errorf("value: decode: invalid order")
	}
	if len(regs) < n {
		return Value{}, fmt.Errorf("value: decode %v: %d registers, need %d", l.Type, len(regs), n)
	}
	var bits uint64
	for i := range n {
		w := regs[i]
		if l.WordOrder == LittleEndian {
			w = regs[n-1-i]
		}
		if l.ByteOrder == LittleEndian {
			w = w<<8 | w>>8
		}
		bits = bits<<16 | uint64(w)
	}
	if l.Type == Bool && bits != 0 {
		bits = 1
	}
	return Value{Type: l.Type, Bits: bits}, nil
}

// Encode writes v laid out as l into the first l.Type.Registers() entries
// of dst; v.Type is ignored (its bits are taken as l.Type's). Errors: an
// invalid type or order, or dst too short.
func Encode(dst []uint16, v Value, l Layout) error {
	n := l.Type.Registers()
	if n == 0 {
		return fmt.Errorf("value: encode: invalid type %v", l.Type)
	}
	if l.WordOrder > LittleEndian || l.ByteOrder > LittleEndian {
		return fmt.Errorf("value: encode: invalid order")
	}
	if len(dst) < n {
		return fmt.Errorf("value: encode %v: %d registers, need %d", l.Type, len(dst), n)
	}
	bits := v.Bits
	for i := n - 1; i >= 0; i-- {
		w := uint16(bits)
		bits >>= 16
		if l.ByteOrder == LittleEndian {
			w = w<<8 | w>>8
		}
		if l.WordOrder == LittleEndian {
			dst[n-1-i] = w
		} else {
			dst[i] = w
		}
	}
	return nil
}

// FromFloat returns the Value of type t nearest to f: floats rounded to
// the type's precision, integers rounded to nearest. Errors: an invalid
// type, or f (NaN or infinite included) outside an integer type's range.
func FromFloat(t Type, f float64) (Value, error) {
	v := Value{Type: t}
	outOfRange := func(lo, hi float64) error {
		if f != f || f < lo || f > hi {
			return fmt.Errorf("value: %v does not fit in %v", f, t)
		}
		return nil
	}
	r := math.Round(f)
	switch t {
	case Bool:
		if f != 0 {
			v.Bits = 1
		}
	case U16:
		if err := outOfRange(0, math.MaxUint16); err != nil {
			return v, err
		}
		v.Bits = uint64(r)
	case S16:
		if err := outOfRange(math.MinInt16, math.MaxInt16); err != nil {
			return v, err
		}
		v.Bits = uint64(uint16(int16(r)))
	case U32:
		if err := outOfRange(0, math.MaxUint32); err != nil {
			return v, err
		}
		v.Bits = uint64(r)
	case S32:
		if err := outOfRange(math.MinInt32, math.MaxInt32); err != nil {
			return v, err
		}
		v.Bits = uint64(uint32(int32(r)))
	case U64:
		if err := outOfRange(0, 1<<64-2048); err != nil { // largest float64 below 2^64
			return v, err
		}
		v.Bits = uint64(r)
	case S64:
		if err := outOfRange(math.MinInt64, 1<<63-1024); err != nil { // largest float64 below 2^63
			return v, err
		}
		v.Bits = uint64(int64(r))
	case F32:
		v.Bits = uint64(math.Float32bits(float32(f)))
	case F64:
		v.Bits = math.Float64bits(f)
	default:
		return v, fmt.Errorf("value: invalid type %v", t)
	}
	return v, nil
}

// FromInt returns the Value of type t holding i exactly. Errors: an
// invalid type, or i outside the type's range (floats accept any i, f32
// and f64 rounding it).
func FromInt(t Type, i int64) (Value, error) {
	v := Value{Type: t}
	fits := func(lo, hi int64) error {
		if i < lo || i > hi {
			return fmt.Errorf("value: %d does not fit in %v", i, t)
		}
		return nil
	}
	var err error
	switch t {
	case Bool:
		if i != 0 {
			v.Bits = 1
		}
	case U16:
		err = fits(0, math.MaxUint16)
		v.Bits = uint64(i)
	case S16:
		err = fits(math.MinInt16, math.MaxInt16)
		v.Bits = uint64(uint16(i))
	case U32:
		err = fits(0, math.MaxUint32)
		v.Bits = uint64(i)
	case S32:
		err = fits(math.MinInt32, math.MaxInt32)
		v.Bits = uint64(uint32(i))
	case U64:
		err = fits(0, math.MaxInt64)
		v.Bits = uint64(i)
	case S64:
		v.Bits = uint64(i)
	case F32:
		v.Bits = uint64(math.Float32bits(float32(i)))
	case F64:
		v.Bits = math.Float64bits(float64(i))
	default:
		err = fmt.Errorf("value: invalid type %v", t)
	}
	if err != nil {
		return Value{Type: t}, err
	}
	return v, nil
}
