package modbus

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"go.bug.st/serial"
	"golang.org/x/sys/unix"
)

// Line is an open serial port (Open makes one). go.bug.st/serial sets it
// up: line settings, raw mode, no flow control, TIOCEXCL. The reads,
// writes and flushes of the Port interface go through a descriptor of the
// Line's own, non-blocking and outside Go's poller, with raw system calls.
//
// Why not the library's own reads: each of its calls enters the runtime's
// system call state, and the first such call after the process slept wakes
// the runtime's monitor thread (sysmon), which then polls every 20 µs
// until the process is idle again: two or three more context switches per
// wake-up of the poller, which wakes twice a transaction. A raw system call
// on a non-blocking descriptor cannot block, so it needs none of that. The
// descriptor is kept out of Go's poller because epoll there is
// edge-triggered: the process would wake for every few bytes a device
// sends. Waiting for bytes that are late (the slow path) is a ppoll(2)
// that blocks the thread, as the library's pselect did, with an eventfd
// that Close signals.
type Line struct {
	conf    serial.Port // the library's port: settings, TIOCEXCL, close
	fd      int         // the Line's descriptor: non-blocking, O_CLOEXEC
	wake    int         // eventfd: Close ends a ppoll in progress
	timeout atomic.Int64
	closed  atomic.Bool
	mu      sync.RWMutex // read-held during a system call on fd; Close takes it
}

// errHangUp is the error of a Read on a line whose device is gone (a read
// of 0 bytes, or ppoll's POLLHUP/POLLERR without bytes to read).
var errHangUp = errors.New("the device hung up")

// errClosed is the error of a call on a closed Line.
var errClosed = errors.New("the port is closed")

// openLine opens path for the Line's own I/O: before go.bug.st/serial's
// open, whose TIOCEXCL would make this open fail with EBUSY unless root.
func openLine(path string) (*Line, error) {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_NOCTTY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	wake, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	return &Line{fd: fd, wake: wake}, nil
}

// closeFDs closes the Line's descriptors (not the library's port).
func (l *Line) closeFDs() {
	unix.Close(l.fd)
	unix.Close(l.wake)
}

// Close closes the port. A Read or Write waiting in another goroutine
// returns an error; Close waits for it. Closing twice is harmless.
func (l *Line) Close() error {
	if l.closed.Swap(true) {
		return nil
	}
	one := uint64(1)
	unix.Write(l.wake, (*[8]byte)(unsafe.Pointer(&one))[:])
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closeFDs()
	return l.conf.Close()
}

// SetReadTimeout sets how long the following Reads wait for a first byte:
// 0 returns at once with what is there, a negative d waits without bound.
func (l *Line) SetReadTimeout(d time.Duration) error {
	l.timeout.Store(int64(d))
	return nil
}

// ResetInputBuffer discards received bytes not yet read (TCFLSH TCIFLUSH).
func (l *Line) ResetInputBuffer() error {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed.Load() {
		return errClosed
	}
	if _, _, e := unix.RawSyscall(unix.SYS_IOCTL, uintptr(l.fd), unix.TCFLSH, unix.TCIFLUSH); e != 0 {
		return fmt.Errorf("TCFLSH: %w", e)
	}
	return nil
}

// Read reads what has arrived, up to len(p) bytes. When nothing has, it
// waits for a first byte as SetReadTimeout says (then returns 0, nil).
func (l *Line) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	l.mu.RLock()
	defer l.mu.RUnlock()
	timeout := time.Duration(l.timeout.Load())
	var deadline time.Time
	if timeout > 0 {
		deadline = time.Now().Add(timeout)
	}
	for {
		if l.closed.Load() {
			return 0, errClosed
		}
		r, _, e := unix.RawSyscall(unix.SYS_READ, uintptr(l.fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
		switch {
		case e == 0 && r > 0:
			return int(r), nil
		case e == 0:
			return 0, errHangUp
		case e == unix.EINTR:
			continue
		case e != unix.EAGAIN:
			return 0, e
		}
		if timeout == 0 {
			return 0, nil
		}
		var ts *unix.Timespec
		if timeout > 0 {
			left := time.Until(deadline)
			if left <= 0 {
				return 0, nil
			}
			t := unix.NsecToTimespec(int64(left))
			ts = &t
		}
		if err := l.poll(unix.POLLIN, ts); err != nil {
			return 0, err
		}
	}
}

// Write writes all of p, waiting while the driver's buffer is full.
func (l *Line) Write(p []byte) (int, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	n := 0
	for n < len(p) {
		if l.closed.Load() {
			return n, errClosed
		}
		r, _, e := unix.RawSyscall(unix.SYS_WRITE, uintptr(l.fd), uintptr(unsafe.Pointer(&p[n])), uintptr(len(p)-n))
		switch {
		case e == 0:
			n += int(r)
		case e == unix.EINTR:
		case e == unix.EAGAIN:
			if err := l.poll(unix.POLLOUT, nil); err != nil {
				return n, err
			}
		default:
			return n, e
		}
	}
	return n, nil
}

// poll waits (blocking the thread, as a system call the runtime knows of)
// until fd is ready for events, ts has passed (nil: no bound) or Close was
// called. A hang-up or error on fd returns nil, so that the caller's next
// read or write reports it; a hang-up with nothing to read is errHangUp.
func (l *Line) poll(events int16, ts *unix.Timespec) error {
	fds := [2]unix.PollFd{{Fd: int32(l.fd), Events: events}, {Fd: int32(l.wake), Events: unix.POLLIN}}
	for {
		_, err := unix.Ppoll(fds[:], ts, nil)
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return fmt.Errorf("ppoll: %w", err)
		case fds[1].Revents != 0:
			return errClosed
		case fds[0].Revents&unix.POLLNVAL != 0:
			return errClosed
		case events == unix.POLLIN && fds[0].Revents&(unix.POLLHUP|unix.POLLERR) != 0 && fds[0].Revents&unix.POLLIN == 0:
			return errHangUp
		}
		return nil
	}
}
