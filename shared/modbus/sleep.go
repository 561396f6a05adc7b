package modbus

import (
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// sleeper waits on a timerfd(2) through Go's poller: the goroutine parks
// until the kernel timer fires, to the microsecond, with one wake-up of
// the process. The master waits twice a transaction (for the reply, then
// the silence before the next request), a few milliseconds each time, and
// neither way the runtime offers is cheap there: time.Sleep wakes the
// poller thread once per whole millisecond it rounds down to, and once
// more for the rest (a 1.75 ms silence is two wake-ups), while nanosleep
// blocks the thread in a system call, which makes the runtime hand the
// process's P to another thread and poll every 20 µs until it returns.
// Where timerfd cannot be made, it falls back to time.Sleep.
type sleeper struct {
	once sync.Once
	fd   int
	f    *os.File // nil: time.Sleep
	buf  [8]byte
}

func (s *sleeper) sleep(d time.Duration) {
	s.once.Do(s.open)
	if s.f == nil {
		time.Sleep(d)
		return
	}
	ts := unix.NsecToTimespec(int64(d))
	if err := unix.TimerfdSettime(s.fd, 0, &unix.ItimerSpec{Value: ts}, nil); err != nil {
		time.Sleep(d)
		return
	}
	// Blocks (parks) until the timer fires: the read returns its count.
	if _, err := s.f.Read(s.buf[:]); err != nil {
		time.Sleep(d)
	}
}

func (s *sleeper) open() {
	fd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC)
	if err != nil {
		return
	}
	// Non-blocking, so os.NewFile puts it in Go's poller; the file closes
	// the descriptor when the master is garbage.
	s.fd, s.f = fd, os.NewFile(uintptr(fd), "modbus-timer")
}
