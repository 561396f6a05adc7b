package modbus

import (
	"errors"
	"fmt"
)

// Sentinel errors of a transaction. They are wrapped with context; test for
// them with errors.Is.
var (
	// ErrTimeout: no complete reply arrived before the transaction's
	// deadline and nothing resembling one was received.
	ErrTimeout = errors.New("modbus: timeout")
	// ErrCRC: a reply with the expected header arrived but its CRC was
	// wrong (and no good reply followed before the deadline).
	ErrCRC = errors.New("modbus: CRC error")
	// ErrShortFrame: the start of a matching reply arrived but the frame was
	// truncated (the deadline passed before its last byte).
	ErrShortFrame = errors.New("modbus: truncated frame")
	// ErrUnexpectedReply: bytes arrived, but none formed a reply to this
	// request (another slave id, another function code, a wrong byte count
	// or write echo, or garbage).
	ErrUnexpectedReply = errors.New("modbus: unexpected reply")
	// ErrInvalidRequest: the request itself is malformed (quantity 0 or over
	// the protocol limit, address range past 0xFFFF, data of the wrong
	// length). Nothing was sent.
	ErrInvalidRequest = errors.New("modbus: invalid request")
	// ErrPort: the port failed (read or write error, port closed or gone).
	// The transaction's outcome is unknown; reopen the port.
	ErrPort = errors.New("modbus: port error")
)

// Exception codes defined by the Modbus application protocol.
const (
	ExIllegalFunction      = 0x01
	ExIllegalDataAddress   = 0x02
	ExIllegalDataValue     = 0x03
	ExServerDeviceFailure  = 0x04
	ExAcknowledge          = 0x05
	ExServerDeviceBusy     = 0x06
	ExGatewayPathUnavail   = 0x0A
	ExGatewayTargetNoReply = 0x0B
)

// ExceptionError is a slave's exception reply (function code | 0x80). Test
// for it with errors.As.
type ExceptionError struct {
	// Function is the function code of the request (without the 0x80 bit).
	Function byte
	// Code is the exception code the slave sent.
	Code byte
}

func (e *ExceptionError) Error() string {
	return fmt.Sprintf("modbus: exception %d (%s) for function %d", e.Code, ExceptionName(e.Code), e.Function)
}

// ExceptionName returns the protocol's name of an exception code, or
// "unknown exception" for codes it does not define.
func ExceptionName(code byte) string {
	switch code {
	case ExIllegalFunction:
		return "illegal function"
	case ExIllegalDataAddress:
		return "illegal data address"
	case ExIllegalDataValue:
		return "illegal data value"
	case ExServerDeviceFailure:
		return "server device failure"
	case ExAcknowledge:
		return "acknowledge"
	case ExServerDeviceBusy:
		return "server device busy"
	case ExGatewayPathUnavail:
		return "gateway path unavailable"
	case ExGatewayTargetNoReply:
		return "gateway target device failed to respond"
	}
	return "unknown exception"
}
