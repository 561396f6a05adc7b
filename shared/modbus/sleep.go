package modbus

import (
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Sleeper waits on a timerfd(2) through Go's poller: the goroutine parks
// until the kernel timer fires, to the microsecond, with one wake-up of
// the process. The master waits twice a transaction (for the reply, then
// the silence before the next request), a few milliseconds each time, and
// neither way the runtime offers is cheap there: time.Sleep wakes the
// poller thread once per whole millisecond it rounds down to, and once
// more for the rest (a 1.75 ms silence is two wake-ups), while nanosleep
// blocks the thread in a system call, which makes the runtime hand the
// process's P to another thread and poll every 20 µs until it returns.
// Where timerfd cannot be made, it falls back to time.Sleep.
//
// The timer is set and read with raw system calls, as the Line does its
// I/O (see Line): a wake-up of the master then makes no call that wakes
// the runtime's monitor thread. Go's poller only tells when the timer
// fired (syscall.RawConn's Read). The poller's sender lingers with one
// too. The zero value is ready to use; a Sleeper is for one goroutine at
// a time.
type Sleeper struct {
	once sync.Once
	fd   int
	f    *os.File        // nil: time.Sleep
	rc   syscall.RawConn // f's
	spec unix.ItimerSpec
	buf  [8]byte
	done func(fd uintptr) bool // reads the expiry count; false until it fired
}

// Sleep returns after d, never sooner; it cannot be interrupted.
func (s *Sleeper) Sleep(d time.Duration) {
	s.once.Do(s.open)
	if s.rc == nil {
		time.Sleep(d)
		return
	}
	s.spec.Value = unix.NsecToTimespec(int64(d))
	if _, _, e := unix.RawSyscall6(unix.SYS_TIMERFD_SETTIME, uintptr(s.fd), 0, uintptr(unsafe.Pointer(&s.spec)), 0, 0, 0); e != 0 {
		time.Sleep(d)
		return
	}
	// Parks until the timer fires: the read then returns its count.
	if err := s.rc.Read(s.done); err != nil {
		time.Sleep(d)
	}
}

// expired reads the timer's expiry count from fd: false while it has not
// fired yet (EAGAIN), so that RawConn.Read waits on Go's poller.
func (s *Sleeper) expired(fd uintptr) bool {
	for {
		_, _, e := unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&s.buf[0])), uintptr(len(s.buf)))
		if e != unix.EINTR {
			return e != unix.EAGAIN
		}
	}
}

func (s *Sleeper) open() {
	fd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC)
	if err != nil {
		return
	}
	// Non-blocking, so os.NewFile puts it in Go's poller; the file closes
	// the descriptor when the master is garbage.
	f := os.NewFile(uintptr(fd), "modbus-timer")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return
	}
	s.fd, s.f, s.rc, s.done = fd, f, rc, s.expired
}
