package value

import (
	"math"
	"slices"
	"testing"
)

var layoutCases = []struct {
	regs []uint16
	l    Layout
	want string
}{
	{[]uint16{0x4366, 0x199A}, Layout{F32, BigEndian, BigEndian}, "230.1"},
	{[]uint16{0x199A, 0x4366}, Layout{F32, LittleEndian, BigEndian}, "230.1"},
	{[]uint16{0x6643, 0x9A19}, Layout{F32, BigEndian, LittleEndian}, "230.1"},
	{[]uint16{0x9A19, 0x6643}, Layout{F32, LittleEndian, LittleEndian}, "230.1"},
	{[]uint16{0xFFFF}, Layout{S16, BigEndian, BigEndian}, "-1"},
	{[]uint16{0xFFFF}, Layout{U16, BigEndian, BigEndian}, "65535"},
	{[]uint16{0x0201}, Layout{U16, BigEndian, LittleEndian}, "258"},
	{[]uint16{0x0001, 0x0000}, Layout{U32, BigEndian, BigEndian}, "65536"},
	{[]uint16{0x0000, 0x0001}, Layout{U32, LittleEndian, BigEndian}, "65536"},
	{[]uint16{0xFFFF, 0xFFFE}, Layout{S32, BigEndian, BigEndian}, "-2"},
	{[]uint16{0x0102, 0x0304, 0x0506, 0x0708}, Layout{U64, BigEndian, BigEndian}, "72623859790382856"},
	{[]uint16{0x0708, 0x0506, 0x0304, 0x0102}, Layout{U64, LittleEndian, BigEndian}, "72623859790382856"},
	{[]uint16{0x0807, 0x0605, 0x0403, 0x0201}, Layout{U64, LittleEndian, LittleEndian}, "72623859790382856"},
	{[]uint16{0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF}, Layout{U64, BigEndian, BigEndian}, "18446744073709551615"},
	{[]uint16{0xFFFF, 0xFFFF, 0xFFFF, 0xFF85}, Layout{S64, BigEndian, BigEndian}, "-123"},
	{[]uint16{0x400E, 0xCCCC, 0xCCCC, 0xCCCD}, Layout{F64, BigEndian, BigEndian}, "3.85"},
	{[]uint16{0xCCCD, 0xCCCC, 0xCCCC, 0x400E}, Layout{F64, LittleEndian, BigEndian}, "3.85"},
	{[]uint16{0x0002}, Layout{Bool, BigEndian, BigEndian}, "true"},
	{[]uint16{0x0000}, Layout{Bool, BigEndian, BigEndian}, "false"},
}

func TestDecodeEncode(t *testing.T) {
	for _, c := range layoutCases {
		v, err := Decode(c.regs, c.l)
		if err != nil {
			t.Fatalf("%v: %v", c, err)
		}
		if got := v.String(); got != c.want {
			t.Errorf("Decode(%04x, %+v) = %s, want %s", c.regs, c.l, got, c.want)
		}
		if c.l.Type == Bool {
			continue // bool decoding folds non-zero to 1
		}
		back := make([]uint16, len(c.regs))
		if err := Encode(back, v, c.l); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(back, c.regs) {
			t.Errorf("Encode(%s, %+v) = %04x, want %04x", v, c.l, back, c.regs)
		}
	}
}

func TestRoundTripAllLayouts(t *testing.T) {
	values := map[Type][]float64{
		Bool: {0, 1},
		U16:  {0, 1, 65535, 1234},
		S16:  {-32768, -1, 0, 32767},
		U32:  {0, 4294967295, 305419896},
		S32:  {-2147483648, -5, 2147483647},
		U64:  {0, 1 << 60, 12345678901234},
		S64:  {-(1 << 62), -7, 1 << 62},
		F32:  {0, -1.5, 230.1, 3.4e38},
		F64:  {0, -1e300, math.Pi, 2.2250738585072014e-308},
	}
	for typ, fs := range values {
		for _, wo := range []Order{BigEndian, LittleEndian} {
			for _, bo := range []Order{BigEndian, LittleEndian} {
				l := Layout{typ, wo, bo}
				for _, f := range fs {
					v, err := FromFloat(typ, f)
					if err != nil {
						t.Fatal(err)
					}
					regs := make([]uint16, typ.Registers())
					if err := Encode(regs, v, l); err != nil {
						t.Fatal(err)
					}
					got, err := Decode(regs, l)
					if err != nil {
						t.Fatal(err)
					}
					want := f
					if typ == F32 {
						want = float64(float32(f))
					}
					if got.Float64() != want {
						t.Errorf("%+v: %v -> %04x -> %v", l, f, regs, got.Float64())
					}
				}
			}
		}
	}
}

func TestErrors(t *testing.T) {
	if _, err := Decode([]uint16{1}, Layout{Type: U32}); err == nil {
		t.Error("Decode u32 from 1 register succeeded")
	}
	if _, err := Decode([]uint16{1}, Layout{}); err == nil {
		t.Error("Decode of the zero Type succeeded")
	}
	if err := Encode(make([]uint16, 3), Value{}, Layout{Type: F64}); err == nil {
		t.Error("Encode f64 into 3 registers succeeded")
	}
	for _, c := range []struct {
		t Type
		f float64
	}{{U16, -1}, {U16, 65536}, {S16, 40000}, {U32, -0.6}, {S64, math.Inf(1)}, {U64, math.NaN()}} {
		if _, err := FromFloat(c.t, c.f); err == nil {
			t.Errorf("FromFloat(%v, %v) succeeded", c.t, c.f)
		}
	}
	if _, err := FromInt(U16, 70000); err == nil {
		t.Error("FromInt(u16, 70000) succeeded")
	}
	if _, err := ParseType("u24"); err == nil {
		t.Error("ParseType(u24) succeeded")
	}
	if _, err := ParseOrder("middle"); err == nil {
		t.Error("ParseOrder(middle) succeeded")
	}
	for _, name := range typeNames[1:] {
		if typ, err := ParseType(name); err != nil || typ.String() != name {
			t.Errorf("ParseType(%s) = %v, %v", name, typ, err)
		}
	}
}

func TestFromInt(t *testing.T) {
	v, err := FromInt(S16, -2)
	if err != nil || v.Int64() != -2 || v.Bits != 0xFFFE {
		t.Fatalf("FromInt(s16, -2) = %+v, %v", v, err)
	}
	v, err = FromInt(S64, math.MinInt64)
	if err != nil || v.Int64() != math.MinInt64 {
		t.Fatalf("FromInt(s64, min) = %+v, %v", v, err)
	}
}

func FuzzDecode(f *testing.F) {
	for _, c := range layoutCases {
		var b []byte
		for _, r := range c.regs {
			b = append(b, byte(r>>8), byte(r))
		}
		f.Add(b, byte(c.l.Type), byte(c.l.WordOrder), byte(c.l.ByteOrder))
	}
	f.Fuzz(func(t *testing.T, b []byte, typ, wo, bo byte) {
		regs := make([]uint16, len(b)/2)
		for i := range regs {
			regs[i] = uint16(b[2*i])<<8 | uint16(b[2*i+1])
		}
		l := Layout{Type(typ), Order(wo), Order(bo)}
		v, err := Decode(regs, l)
		if err != nil {
			return
		}
		_ = v.String()
		_ = v.Int64()
		back := make([]uint16, l.Type.Registers())
		if err := Encode(back, v, l); err != nil {
			t.Fatalf("Encode of a decoded value: %v", err)
		}
		if l.Type != Bool && !slices.Equal(back, regs[:len(back)]) {
			t.Fatalf("round trip %04x -> %v -> %04x", regs, v, back)
		}
	})
}
