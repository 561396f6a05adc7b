package modbus

import (
	"errors"
	"fmt"
	"time"
	"unsafe"

	"go.bug.st/serial"
	"golang.org/x/sys/unix"
)

// PortConfig is the line setting of a serial port.
type PortConfig struct {
	// Baud is the line speed; 0 means 9600.
	Baud int
	// DataBits is 7 or 8; 0 means 8.
	DataBits int
	// Parity is "N" (none), "E" (even) or "O" (odd); "" means "N".
	Parity string
	// StopBits is 1 or 2; 0 means 1.
	StopBits int
	// RS485 switches the driver's RS-485 mode on (TIOCSRS485): the UART
	// drives the transceiver's direction pin (RTS) itself.
	RS485 bool
	// RS485RTSOnSend sets RTS active while sending (most transceivers);
	// when false, RTS is active after sending instead.
	RS485RTSOnSend bool
	// RS485DelayBeforeSend and RS485DelayAfterSend are the driver's delays
	// around a transmission (millisecond resolution).
	RS485DelayBeforeSend, RS485DelayAfterSend time.Duration
	// RS485RxDuringTx keeps the receiver on while sending (echo).
	RS485RxDuringTx bool
}

// mode converts c to go.bug.st/serial's Mode. InitialStatusBits stays nil:
// setting it fails on ports without modem lines (pseudo-terminals).
func (c PortConfig) mode() (*serial.Mode, error) {
	m := &serial.Mode{BaudRate: c.Baud, DataBits: c.DataBits}
	if m.BaudRate == 0 {
		m.BaudRate = 9600
	}
	if m.DataBits == 0 {
		m.DataBits = 8
	}
	if m.DataBits != 7 && m.DataBits != 8 {
		return nil, fmt.Errorf("data bits %d: want 7 or 8", c.DataBits)
	}
	switch c.Parity {
	case "", "N", "n":
		m.Parity = serial.NoParity
	case "E", "e":
		m.Parity = serial.EvenParity
	case "O", "o":
		m.Parity = serial.OddParity
	default:
		return nil, fmt.Errorf("parity %q: want N, E or O", c.Parity)
	}
	switch c.StopBits {
	case 0, 1:
		m.StopBits = serial.OneStopBit
	case 2:
		m.StopBits = serial.TwoStopBits
	default:
		return nil, fmt.Errorf("stop bits %d: want 1 or 2", c.StopBits)
	}
	return m, nil
}

// Open opens the serial port at path with cfg and returns it (a Line,
// which implements Port). Errors name the path: the port is missing,
// busy, refused, not a serial port, a setting is invalid, or RS485 was
// asked for and the driver cannot do it (a pseudo-terminal or a plain
// UART: the ioctl fails with "inappropriate ioctl for device"); the port
// is closed again in every error case. Open does not lock the port.
//
// The RS-485 mode is set through the Line's own descriptor: the setting
// belongs to the device, not to the descriptor. That descriptor is opened
// before go.bug.st/serial's (see Line), whose TIOCEXCL refuses later opens.
func Open(path string, cfg PortConfig) (*Line, error) {
	mode, err := cfg.mode()
	if err != nil {
		return nil, fmt.Errorf("modbus: open %s: %w", path, err)
	}
	l, err := openLine(path)
	if err != nil {
		return nil, fmt.Errorf("modbus: open %s: %w", path, err)
	}
	p, err := serial.Open(path, mode)
	if err != nil {
		l.closeFDs()
		return nil, fmt.Errorf("modbus: open %s: %w", path, err)
	}
	l.conf = p
	if cfg.RS485 {
		if err := setRS485(l.fd, cfg); err != nil {
			l.Close()
			return nil, fmt.Errorf("modbus: open %s: RS-485 mode: %w", path, err)
		}
	}
	return l, nil
}

// serialRS485 is the kernel's struct serial_rs485 (include/uapi/linux/serial.h).
type serialRS485 struct {
	Flags              uint32
	DelayRTSBeforeSend uint32
	DelayRTSAfterSend  uint32
	padding            [5]uint32
}

// Flags of serialRS485.
const (
	serRS485Enabled      = 1 << 0
	serRS485RTSOnSend    = 1 << 1
	serRS485RTSAfterSend = 1 << 2
	serRS485RxDuringTx   = 1 << 4
)

// errNoRS485 is returned by setRS485 when the device rejects the ioctl.
var errNoRS485 = errors.New("the port cannot do RS-485 (TIOCSRS485 not supported)")

// setRS485 sets the RS-485 mode of the device open as fd via TIOCSRS485.
func setRS485(fd int, cfg PortConfig) error {
	rs := serialRS485{
		Flags:              serRS485Enabled,
		DelayRTSBeforeSend: uint32(cfg.RS485DelayBeforeSend / time.Millisecond),
		DelayRTSAfterSend:  uint32(cfg.RS485DelayAfterSend / time.Millisecond),
	}
	if cfg.RS485RTSOnSend {
		rs.Flags |= serRS485RTSOnSend
	} else {
		rs.Flags |= serRS485RTSAfterSend
	}
	if cfg.RS485RxDuringTx {
		rs.Flags |= serRS485RxDuringTx
	}
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TIOCSRS485, uintptr(unsafe.Pointer(&rs)))
	if errno != 0 {
		if errno == unix.ENOTTY || errno == unix.EINVAL {
			return fmt.Errorf("%w: %w", errNoRS485, errno)
		}
		return fmt.Errorf("TIOCSRS485: %w", errno)
	}
	return nil
}
