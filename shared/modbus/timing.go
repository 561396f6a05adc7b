package modbus

import (
	"time"

	"golang.org/x/sys/unix"
)

// BitsPerChar is the length of one RTU character on the line: start bit,
// 8 data bits, parity or a second stop bit, stop bit.
const BitsPerChar = 11

// CharTime returns the time one character takes on the line at baud
// (11 bits per character). baud <= 0 is taken as 9600.
func CharTime(baud int) time.Duration {
	if baud <= 0 {
		baud = 9600
	}
	return time.Duration(BitsPerChar) * time.Second / time.Duration(baud)
}

// LineTime returns the time n characters take on the line at baud.
func LineTime(baud, n int) time.Duration {
	return time.Duration(n) * CharTime(baud)
}

// Silence returns the inter-frame silence of RTU: 3.5 character times, or
// the fixed 1750 µs the specification prescribes above 19200 baud.
func Silence(baud int) time.Duration {
	if baud > 19200 {
		return 1750 * time.Microsecond
	}
	return CharTime(baud) * 7 / 2
}

// Sleep waits d with nanosleep(2): the Go timer rounds short waits up to
// a millisecond, which is several characters above 19200 baud; for the
// simulator's byte timing (the master waits on Go timers, see wait). It
// returns at once for d ≤ 0.
func Sleep(d time.Duration) {
	if d <= 0 {
		return
	}
	ts := unix.NsecToTimespec(int64(d))
	for {
		var rem unix.Timespec
		if err := unix.Nanosleep(&ts, &rem); err != unix.EINTR {
			return
		}
		ts = rem
	}
}
