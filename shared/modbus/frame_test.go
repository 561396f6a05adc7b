package modbus

import (
	"bytes"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
)

func unhex(s string) []byte {
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		panic(err)
	}
	return b
}

func TestCRC(t *testing.T) {
	// Frames from the Modbus over serial line specification and common
	// references; the last two bytes are the CRC, low byte first.
	for _, s := range []string{
		"01 03 00 00 00 0A C5 CD",
		"11 03 00 6B 00 03 76 87",
		"01 06 00 01 00 03 98 0B",
		"01 83 02 C0 F1",
	} {
		f := unhex(s)
		if !checkCRC(f) {
			t.Errorf("CRC(% x) = %04x, want %02x%02x", f[:len(f)-2], CRC(f[:len(f)-2]), f[len(f)-1], f[len(f)-2])
		}
	}
	// The table equals the bit-wise definition.
	for i := range 256 {
		c := uint16(i)
		for range 8 {
			if c&1 != 0 {
				c = c>>1 ^ 0xA001
			} else {
				c >>= 1
			}
		}
		if crcTable[i] != c {
			t.Fatalf("crcTable[%d] = %04x, want %04x", i, crcTable[i], c)
		}
	}
}

var requestCases = []struct {
	req   Request
	frame string // "" when the request is invalid
}{
	{Request{Unit: 1, Function: 3, Address: 0, Quantity: 10}, "01 03 00 00 00 0A C5 CD"},
	{Request{Unit: 0x11, Function: 3, Address: 0x6B, Quantity: 3}, "11 03 00 6B 00 03 76 87"},
	{Request{Unit: 1, Function: 1, Address: 19, Quantity: 19}, "01 01 00 13 00 13 8C 02"},
	{Request{Unit: 1, Function: 2, Address: 196, Quantity: 22}, "01 02 00 C4 00 16 B8 39"},
	{Request{Unit: 1, Function: 4, Address: 8, Quantity: 1}, "01 04 00 08 00 01 B0 08"},
	{Request{Unit: 1, Function: 5, Address: 172, Value: CoilOn}, "01 05 00 AC FF 00 4C 1B"},
	{Request{Unit: 1, Function: 6, Address: 1, Value: 3}, "01 06 00 01 00 03 98 0B"},
	{Request{Unit: 1, Function: 15, Address: 19, Quantity: 10, Data: []byte{0xCD, 0x01}}, "01 0F 00 13 00 0A 02 CD 01 72 CB"},
	{Request{Unit: 1, Function: 16, Address: 1, Quantity: 2, Data: []byte{0, 0x0A, 1, 2}}, "01 10 00 01 00 02 04 00 0A 01 02 92 30"},
	{Request{Unit: 1, Function: 3, Quantity: 126}, ""},
	{Request{Unit: 1, Function: 3, Quantity: 0}, ""},
	{Request{Unit: 1, Function: 1, Quantity: 2001}, ""},
	{Request{Unit: 1, Function: 1, Quantity: 2000}, "01 01 00 00 07 D0 3F A6"},
	{Request{Unit: 1, Function: 3, Address: 0xFFFF, Quantity: 2}, ""},
	{Request{Unit: 1, Function: 5, Value: 1}, ""},
	{Request{Unit: 1, Function: 15, Quantity: 9, Data: []byte{1}}, ""},
	{Request{Unit: 1, Function: 16, Quantity: 124, Data: make([]byte, 248)}, ""},
	{Request{Unit: 1, Function: 16, Quantity: 2, Data: []byte{1, 2}}, ""},
	{Request{Unit: 1, Function: 7}, ""},
}

func TestRequestFrames(t *testing.T) {
	for _, c := range requestCases {
		got, err := c.req.AppendFrame(nil)
		if c.frame == "" {
			if !errors.Is(err, ErrInvalidRequest) {
				t.Errorf("%v: err %v, want ErrInvalidRequest", &c.req, err)
			}
			continue
		}
		want := unhex(c.frame)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%v: frame % x, %v; want % x", &c.req, got, err, want)
			continue
		}
		// The slave side reads back what the master wrote.
		if n := RequestLen(want[:7]); n != len(want) {
			t.Errorf("RequestLen(% x) = %d, want %d", want[:7], n, len(want))
		}
		back, err := ParseRequest(want)
		if err != nil {
			t.Errorf("ParseRequest(% x): %v", want, err)
			continue
		}
		again, _ := back.AppendFrame(nil)
		if !bytes.Equal(again, want) {
			t.Errorf("ParseRequest(% x) = %+v, which encodes as % x", want, back, again)
		}
	}
}

func TestParseRequestErrors(t *testing.T) {
	for _, c := range []struct {
		frame string
		want  error
		code  byte
	}{
		{"01 03 00 00 00 0A C5", ErrShortFrame, 0},
		{"01 03 00 00 00 0A C5 CD 00", ErrUnexpectedReply, 0},
		{"01 03 00 00 00 0A C5 CE", ErrCRC, 0},
		{"01 03 00 00 00 7E", ErrShortFrame, 0},
		{"01 07 41 E2", nil, ExIllegalFunction},
		{"01 03 00 00 00 7E " + crcHex("01 03 00 00 00 7E"), nil, ExIllegalDataValue},
		{"01 05 00 00 12 34 " + crcHex("01 05 00 00 12 34"), nil, ExIllegalDataValue},
		{"01 10 00 00 00 02 02 00 01 " + crcHex("01 10 00 00 00 02 02 00 01"), nil, ExIllegalDataValue},
	} {
		_, err := ParseRequest(unhex(c.frame))
		if c.want != nil {
			if !errors.Is(err, c.want) {
				t.Errorf("ParseRequest(%s) = %v, want %v", c.frame, err, c.want)
			}
			continue
		}
		var ex *ExceptionError
		if !errors.As(err, &ex) || ex.Code != c.code {
			t.Errorf("ParseRequest(%s) = %v, want exception %d", c.frame, err, c.code)
		}
	}
}

func crcHex(s string) string {
	b := unhex(s)
	c := CRC(b)
	return hex.EncodeToString([]byte{byte(c), byte(c >> 8)})
}

var replyCases = []struct {
	req   Request
	frame string
	data  string // expected data, or the error below
	err   error
	code  byte
}{
	{Request{Unit: 1, Function: 3, Quantity: 2}, "01 03 04 00 0A 01 02 " + crcHex("01 03 04 00 0A 01 02"), "000A0102", nil, 0},
	{Request{Unit: 1, Function: 1, Quantity: 10}, "01 01 02 CD 01 " + crcHex("01 01 02 CD 01"), "CD01", nil, 0},
	{Request{Unit: 1, Function: 6, Address: 1, Value: 3}, "01 06 00 01 00 03 98 0B", "", nil, 0},
	{Request{Unit: 1, Function: 3, Quantity: 2}, "01 83 02 C0 F1", "", nil, ExIllegalDataAddress},
	{Request{Unit: 1, Function: 3, Quantity: 2}, "01 03 04 00 0A 01 02 00 00", "", ErrCRC, 0},
	{Request{Unit: 1, Function: 3, Quantity: 2}, "01 03 04 00 0A", "", ErrShortFrame, 0},
	{Request{Unit: 1, Function: 3, Quantity: 2}, "02 03 04 00 0A 01 02 " + crcHex("02 03 04 00 0A 01 02"), "", ErrUnexpectedReply, 0},
	{Request{Unit: 1, Function: 3, Quantity: 2}, "01 04 04 00 0A 01 02 " + crcHex("01 04 04 00 0A 01 02"), "", ErrUnexpectedReply, 0},
	{Request{Unit: 1, Function: 3, Quantity: 3}, "01 03 04 00 0A 01 02 " + crcHex("01 03 04 00 0A 01 02"), "", ErrUnexpectedReply, 0},
	{Request{Unit: 1, Function: 6, Address: 1, Value: 4}, "01 06 00 01 00 03 98 0B", "", ErrUnexpectedReply, 0},
	{Request{Unit: 1, Function: 6, Address: 1, Value: 3}, "01 06 00 01 00 03 98 0B 00", "", ErrUnexpectedReply, 0},
	{Request{Unit: 1, Function: 3, Quantity: 2}, "", "", ErrShortFrame, 0},
}

func TestDecodeReply(t *testing.T) {
	for _, c := range replyCases {
		data, err := DecodeReply(&c.req, unhex(c.frame))
		switch {
		case c.code != 0:
			var ex *ExceptionError
			if !errors.As(err, &ex) || ex.Code != c.code || ex.Function != c.req.Function {
				t.Errorf("%v / %s: %v, want exception %d", &c.req, c.frame, err, c.code)
			}
		case c.err != nil:
			if !errors.Is(err, c.err) {
				t.Errorf("%v / %s: %v, want %v", &c.req, c.frame, err, c.err)
			}
		default:
			if err != nil || !bytes.Equal(data, unhex(c.data)) {
				t.Errorf("%v / %s: % x, %v; want %s", &c.req, c.frame, data, err, c.data)
			}
		}
	}
}

func TestExceptionNames(t *testing.T) {
	for code, want := range map[byte]string{1: "illegal function", 2: "illegal data address", 3: "illegal data value",
		4: "server device failure", 6: "server device busy", 10: "gateway path unavailable",
		11: "gateway target device failed to respond", 99: "unknown exception"} {
		if got := ExceptionName(code); got != want {
			t.Errorf("ExceptionName(%d) = %q, want %q", code, got, want)
		}
	}
	e := &ExceptionError{Function: 3, Code: 2}
	if !strings.Contains(e.Error(), "illegal data address") {
		t.Errorf("Error() = %q", e.Error())
	}
}

func TestPackBits(t *testing.T) {
	bits := []bool{true, false, true, true, false, false, true, true, true, false}
	packed := PackBits(nil, bits)
	if !bytes.Equal(packed, []byte{0xCD, 0x01}) {
		t.Fatalf("PackBits = % x", packed)
	}
	back := make([]bool, len(bits))
	if !UnpackBits(back, packed) {
		t.Fatal("UnpackBits failed")
	}
	for i := range bits {
		if back[i] != bits[i] {
			t.Fatalf("bit %d: %v", i, back[i])
		}
	}
	if UnpackBits(make([]bool, 17), packed) {
		t.Fatal("UnpackBits of 17 bits from 2 bytes succeeded")
	}
}

func FuzzDecodeReply(f *testing.F) {
	for _, c := range replyCases {
		f.Add(c.req.Unit, c.req.Function, c.req.Address, c.req.Quantity, c.req.Value, unhex(c.frame))
	}
	f.Fuzz(func(t *testing.T, unit, fc byte, addr, qty, val uint16, frame []byte) {
		req := Request{Unit: unit, Function: fc, Address: addr, Quantity: qty, Value: val}
		data, err := DecodeReply(&req, frame)
		if err != nil {
			if data != nil {
				t.Fatalf("data % x with error %v", data, err)
			}
			return
		}
		if !checkCRC(frame) || frame[0] != unit || frame[1] != fc {
			t.Fatalf("accepted % x for %v", frame, &req)
		}
		if n := req.ReplyLen(); n != 8 && len(data) != n-5 {
			t.Fatalf("%d data bytes for %v", len(data), &req)
		}
	})
}

func FuzzParseRequest(f *testing.F) {
	for _, c := range requestCases {
		if c.frame != "" {
			f.Add(unhex(c.frame))
		}
	}
	f.Add(unhex("01 07 41 E2"))
	f.Fuzz(func(t *testing.T, frame []byte) {
		n := RequestLen(frame)
		if n > 0 && n > 9+255 {
			t.Fatalf("RequestLen = %d", n)
		}
		r, err := ParseRequest(frame)
		if err != nil {
			return
		}
		again, err := r.AppendFrame(nil)
		if err != nil || !bytes.Equal(again, frame) {
			t.Fatalf("ParseRequest(% x) = %+v, encodes as % x, %v", frame, r, again, err)
		}
	})
}
