package modbus

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// errPastEnd is wrapped by Validate's error for a range that ends past
// address 65535, so that a slave can answer it with exception 2.
var errPastEnd = errors.New("range ends past address 65535")

// Function codes.
const (
	FuncReadCoils              = 0x01
	FuncReadDiscreteInputs     = 0x02
	FuncReadHoldingRegisters   = 0x03
	FuncReadInputRegisters     = 0x04
	FuncWriteSingleCoil        = 0x05
	FuncWriteSingleRegister    = 0x06
	FuncWriteMultipleCoils     = 0x0F
	FuncWriteMultipleRegisters = 0x10
)

// Protocol limits on the quantity of one request.
const (
	MaxReadBits       = 2000 // coils or discrete inputs per read
	MaxReadRegisters  = 125  // registers per read
	MaxWriteBits      = 1968 // coils per write
	MaxWriteRegisters = 123  // registers per write
	// MaxFrame is the longest RTU frame (address, PDU, CRC).
	MaxFrame = 256
)

// Coil values of a FuncWriteSingleCoil request.
const (
	CoilOn  = 0xFF00
	CoilOff = 0x0000
)

// Request is one Modbus request, as the master sends it and the slave
// parses it.
type Request struct {
	// Unit is the slave id (1-247; 0 is broadcast, which gets no reply).
	Unit byte
	// Function is one of the Func constants.
	Function byte
	// Address is the first coil or register (0-based, as on the wire).
	Address uint16
	// Quantity is the number of bits or registers, for function codes 1-4,
	// 15 and 16.
	Quantity uint16
	// Value is the coil value (CoilOn/CoilOff) of function 5 or the register
	// value of function 6.
	Value uint16
	// Data is the payload of function 15 (coils packed LSB first, see
	// PackBits) or 16 (registers, big-endian).
	Data []byte
}

// String describes r for logs and errors, e.g. "unit 1 fc 3 addr 0 qty 10".
func (r *Request) String() string {
	switch r.Function {
	case FuncWriteSingleCoil, FuncWriteSingleRegister:
		return fmt.Sprintf("unit %d fc %d addr %d value %#04x", r.Unit, r.Function, r.Address, r.Value)
	}
	return fmt.Sprintf("unit %d fc %d addr %d qty %d", r.Unit, r.Function, r.Address, r.Quantity)
}

// Validate checks r against the protocol: a known function code, a
// quantity between 1 and the function's limit, a range that ends at or
// before address 0xFFFF, a coil value of CoilOn or CoilOff, and Data of the
// length the quantity needs. It returns nil or an error wrapping
// ErrInvalidRequest.
func (r *Request) Validate() error {
	limit := 0
	switch r.Function {
	case FuncReadCoils, FuncReadDiscreteInputs:
		limit = MaxReadBits
	case FuncReadHoldingRegisters, FuncReadInputRegisters:
		limit = MaxReadRegisters
	case FuncWriteMultipleCoils:
		limit = MaxWriteBits
	case FuncWriteMultipleRegisters:
		limit = MaxWriteRegisters
	case FuncWriteSingleCoil:
		if r.Value != CoilOn && r.Value != CoilOff {
			return fmt.Errorf("%w: %v: coil value must be 0xFF00 or 0x0000", ErrInvalidRequest, r.String())
		}
		return nil
	case FuncWriteSingleRegister:
		return nil
	default:
		return fmt.Errorf("%w: unsupported function code %d", ErrInvalidRequest, r.Function)
	}
	if r.Quantity < 1 || int(r.Quantity) > limit {
		return fmt.Errorf("%w: %v: quantity must be 1..%d", ErrInvalidRequest, r.String(), limit)
	}
	if int(r.Address)+int(r.Quantity) > 0x10000 {
		return fmt.Errorf("%w: %v: %w", ErrInvalidRequest, r.String(), errPastEnd)
	}
	switch r.Function {
	case FuncWriteMultipleCoils:
		if len(r.Data) != (int(r.Quantity)+7)/8 {
			return fmt.Errorf("%w: %v: %d data bytes, want %d", ErrInvalidRequest, r.String(), len(r.Data), (r.Quantity+7)/8)
		}
	case FuncWriteMultipleRegisters:
		if len(r.Data) != 2*int(r.Quantity) {
			return fmt.Errorf("%w: %v: %d data bytes, want %d", ErrInvalidRequest, r.String(), len(r.Data), 2*r.Quantity)
		}
	}
	return nil
}

// AppendFrame validates r and appends its RTU frame (with CRC) to dst. On
// a validation error it returns dst unchanged and the error.
func (r *Request) AppendFrame(dst []byte) ([]byte, error) {
	if err := r.Validate(); err != nil {
		return dst, err
	}
	start := len(dst)
	dst = append(dst, r.Unit, r.Function)
	dst = binary.BigEndian.AppendUint16(dst, r.Address)
	switch r.Function {
	case FuncWriteSingleCoil, FuncWriteSingleRegister:
		dst = binary.BigEndian.AppendUint16(dst, r.Value)
	case FuncWriteMultipleCoils, FuncWriteMultipleRegisters:
		dst = binary.BigEndian.AppendUint16(dst, r.Quantity)
		dst = append(dst, byte(len(r.Data)))
		dst = append(dst, r.Data...)
	default:
		dst = binary.BigEndian.AppendUint16(dst, r.Quantity)
	}
	crc := CRC(dst[start:])
	return append(dst, byte(crc), byte(crc>>8)), nil
}

// ReplyLen returns the length in bytes of the normal (non-exception) reply
// frame to r, CRC included; an exception reply is always 5 bytes. It
// returns 0 for an unknown function code.
func (r *Request) ReplyLen() int {
	switch r.Function {
	case FuncReadCoils, FuncReadDiscreteInputs:
		return 5 + (int(r.Quantity)+7)/8
	case FuncReadHoldingRegisters, FuncReadInputRegisters:
		return 5 + 2*int(r.Quantity)
	case FuncWriteSingleCoil, FuncWriteSingleRegister, FuncWriteMultipleCoils, FuncWriteMultipleRegisters:
		return 8
	}
	return 0
}

// replyStatus is the verdict of matchReply on the bytes at one offset.
type replyStatus int

const (
	replyMore    replyStatus = iota // a matching header; more bytes needed
	replyNoMatch                    // these bytes do not start a reply to the request
	replyBadCRC                     // a matching header and length, wrong CRC
	replyOK                         // a complete reply (normal or exception)
)

// matchReply judges whether b starts a reply to r. For replyMore,
// replyBadCRC and replyOK it also returns the frame length (0 for replyMore
// when even the header is incomplete).
func (r *Request) matchReply(b []byte) (int, replyStatus) {
	if len(b) < 1 {
		return 0, replyMore
	}
	if b[0] != r.Unit {
		return 0, replyNoMatch
	}
	if len(b) < 2 {
		return 0, replyMore
	}
	n := 0
	switch b[1] {
	case r.Function | 0x80:
		n = 5
	case r.Function:
		n = r.ReplyLen()
		if n == 0 {
			return 0, replyNoMatch
		}
		if n != 8 && len(b) >= 3 && int(b[2]) != n-5 {
			return 0, replyNoMatch
		}
	default:
		return 0, replyNoMatch
	}
	if len(b) < n {
		return n, replyMore
	}
	if !checkCRC(b[:n]) {
		return n, replyBadCRC
	}
	if b[1] == r.Function && n == 8 && !r.echoes(b) {
		return 0, replyNoMatch
	}
	return n, replyOK
}

// echoes reports whether the write reply frame b echoes r.
func (r *Request) echoes(b []byte) bool {
	if binary.BigEndian.Uint16(b[2:]) != r.Address {
		return false
	}
	v := binary.BigEndian.Uint16(b[4:])
	switch r.Function {
	case FuncWriteSingleCoil, FuncWriteSingleRegister:
		return v == r.Value
	}
	return v == r.Quantity
}

// DecodeReply checks that frame is exactly one reply to r and returns its
// data: for reads, the bytes after the byte count (packed bits or
// big-endian registers, aliasing frame); for writes, nil. Errors:
// *ExceptionError for an exception reply; ErrShortFrame when frame is
// shorter than the reply its header announces; ErrCRC for a wrong CRC;
// ErrUnexpectedReply for another slave id, function code, byte count or
// write echo, or bytes after the frame.
func DecodeReply(r *Request, frame []byte) ([]byte, error) {
	n, st := r.matchReply(frame)
	switch st {
	case replyMore:
		return nil, fmt.Errorf("%w: %d bytes for %v", ErrShortFrame, len(frame), r)
	case replyNoMatch:
		return nil, fmt.Errorf("%w: % x for %v", ErrUnexpectedReply, head(frame), r)
	case replyBadCRC:
		return nil, fmt.Errorf("%w: reply to %v", ErrCRC, r)
	}
	if n != len(frame) {
		return nil, fmt.Errorf("%w: %d bytes after the reply to %v", ErrUnexpectedReply, len(frame)-n, r)
	}
	return replyData(r, frame)
}

// replyData extracts the data of a complete, matching reply frame.
func replyData(r *Request, frame []byte) ([]byte, error) {
	if frame[1]&0x80 != 0 {
		return nil, &ExceptionError{Function: r.Function, Code: frame[2]}
	}
	if len(frame) == 8 && r.ReplyLen() == 8 {
		return nil, nil
	}
	return frame[3 : len(frame)-2], nil
}

// head returns at most the first 8 bytes of b, for error messages.
func head(b []byte) []byte {
	if len(b) > 8 {
		return b[:8]
	}
	return b
}

// RequestLen is the slave's length-driven framing: given the first bytes
// of a request frame it returns the whole frame's length (CRC included),
// 0 when more bytes are needed to tell, or -1 when the function code is not
// one of 1-6, 15, 16 (the length is unknown: resynchronise on silence).
func RequestLen(b []byte) int {
	if len(b) < 2 {
		return 0
	}
	switch b[1] {
	case 1, 2, 3, 4, 5, 6:
		return 8
	case FuncWriteMultipleCoils, FuncWriteMultipleRegisters:
		if len(b) < 7 {
			return 0
		}
		return 9 + int(b[6])
	}
	return -1
}

// ParseRequest decodes one complete request frame on the slave's side.
// Errors: ErrShortFrame when frame is shorter than its header announces (or
// under 4 bytes), ErrUnexpectedReply when bytes follow the frame, ErrCRC
// for a wrong CRC (a slave stays silent on all three); *ExceptionError for
// a well-formed frame the slave must answer with an exception (code 1 for
// an unknown function, 3 for a bad quantity, coil value or byte count, 2 for
// a range that ends past address 65535). The
// returned Request is filled as far as the frame allows; Data aliases frame.
func ParseRequest(frame []byte) (Request, error) {
	var r Request
	n := RequestLen(frame)
	switch {
	case n == -1:
		n = len(frame)
	case n == 0 || len(frame) < n:
		return r, fmt.Errorf("%w: %d-byte request", ErrShortFrame, len(frame))
	case len(frame) > n:
		return r, fmt.Errorf("%w: %d bytes after a %d-byte request", ErrUnexpectedReply, len(frame)-n, n)
	}
	if n < 4 {
		return r, fmt.Errorf("%w: %d-byte request", ErrShortFrame, len(frame))
	}
	if !checkCRC(frame) {
		return r, fmt.Errorf("%w: request", ErrCRC)
	}
	r.Unit, r.Function = frame[0], frame[1]
	switch r.Function {
	case 1, 2, 3, 4, 5, 6, FuncWriteMultipleCoils, FuncWriteMultipleRegisters:
	default:
		return r, &ExceptionError{Function: r.Function, Code: ExIllegalFunction}
	}
	r.Address = binary.BigEndian.Uint16(frame[2:])
	v := binary.BigEndian.Uint16(frame[4:])
	switch r.Function {
	case FuncWriteSingleCoil, FuncWriteSingleRegister:
		r.Value = v
	default:
		r.Quantity = v
	}
	if r.Function == FuncWriteMultipleCoils || r.Function == FuncWriteMultipleRegisters {
		r.Data = frame[7 : n-2]
	}
	if err := r.Validate(); err != nil {
		// The specification checks the quantity first (exception 3), then
		// whether the range exists (exception 2, illegal data address).
		code := byte(ExIllegalDataValue)
		if errors.Is(err, errPastEnd) {
			code = ExIllegalDataAddress
		}
		return r, &ExceptionError{Function: r.Function, Code: code}
	}
	return r, nil
}

// AppendReadReply appends the reply frame to a read (function codes 1-4)
// carrying data (packed bits or big-endian registers, at most 250 bytes).
func AppendReadReply(dst []byte, unit, function byte, data []byte) []byte {
	start := len(dst)
	dst = append(dst, unit, function, byte(len(data)))
	dst = append(dst, data...)
	return appendCRC2(dst, start)
}

// AppendWriteReply appends the reply frame to the write request r
// (function codes 5, 6, 15, 16): the echo of its address and value or
// quantity.
func AppendWriteReply(dst []byte, r *Request) []byte {
	start := len(dst)
	dst = append(dst, r.Unit, r.Function)
	dst = binary.BigEndian.AppendUint16(dst, r.Address)
	switch r.Function {
	case FuncWriteSingleCoil, FuncWriteSingleRegister:
		dst = binary.BigEndian.AppendUint16(dst, r.Value)
	default:
		dst = binary.BigEndian.AppendUint16(dst, r.Quantity)
	}
	return appendCRC2(dst, start)
}

// AppendException appends an exception reply frame (function | 0x80, code).
func AppendException(dst []byte, unit, function, code byte) []byte {
	start := len(dst)
	dst = append(dst, unit, function|0x80, code)
	return appendCRC2(dst, start)
}

// appendCRC2 appends the CRC of dst[start:].
func appendCRC2(dst []byte, start int) []byte {
	crc := CRC(dst[start:])
	return append(dst, byte(crc), byte(crc>>8))
}

// PackBits appends bits packed as Modbus sends them: 8 per byte, the first
// bit in the least significant bit, the last byte padded with zeros.
func PackBits(dst []byte, bits []bool) []byte {
	var b byte
	for i, v := range bits {
		if v {
			b |= 1 << (i % 8)
		}
		if i%8 == 7 {
			dst = append(dst, b)
			b = 0
		}
	}
	if len(bits)%8 != 0 {
		dst = append(dst, b)
	}
	return dst
}

// UnpackBits fills dst from packed bits (see PackBits). It returns false,
// leaving dst partly filled, when data holds fewer than len(dst) bits.
func UnpackBits(dst []bool, data []byte) bool {
	if len(data)*8 < len(dst) {
		return false
	}
	for i := range dst {
		dst[i] = data[i/8]&(1<<(i%8)) != 0
	}
	return true
}
