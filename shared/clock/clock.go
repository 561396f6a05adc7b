// Package clock stamps readings with wall time, time since boot and the boot
// id, so that intervals never depend on the wall clock and wrong wall times
// (no RTC, NTP steps) can be corrected afterwards.
package clock

import (
	"fmt"
	"math"
	"os"
	"strings"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Stamp is one moment as seen by the clocks of this device.
type Stamp struct {
	// Wall is the wall-clock time (CLOCK_REALTIME), which may be wrong or
	// jump. It carries no monotonic reading.
	Wall time.Time
	// Mono is the time since boot on CLOCK_BOOTTIME. Unlike
	// CLOCK_MONOTONIC it keeps counting while the system is suspended, so
	// the difference of two stamps of one boot is the real time that passed,
	// and a wall time can be corrected from another stamp of the same boot.
	// Neither clock is changed by setting the wall clock.
	Mono time.Duration
	// Boot is the boot id (/proc/sys/kernel/random/boot_id) that Mono is
	// relative to, or "" if unknown.
	Boot string
}

// Forever is what Since returns for a stamp of another boot: its Mono cannot
// be compared with ours, and anything judged by age is older than any limit.
const Forever = time.Duration(math.MaxInt64)

// Clock tells the time. Implementations are safe for concurrent use.
type Clock interface {
	// Now returns the current moment.
	Now() Stamp
	// Since returns the time elapsed since t on the monotonic part only
	// (Now().Mono - t.Mono): negative if t is in the future of this boot,
	// and Forever if t and now have different, known boot ids.
	Since(t Stamp) time.Duration
}

// since implements Clock.Since given the current stamp.
func since(now, t Stamp) time.Duration {
	if now.Boot != "" && t.Boot != "" && now.Boot != t.Boot {
		return Forever
	}
	return now.Mono - t.Mono
}

type system struct {
	boot string
}

// System returns the clock of this machine: the wall clock, CLOCK_BOOTTIME
// and the boot id, which is read once here. If the boot id cannot be read
// (no /proc), the stamps' Boot is ""; BootID reports why.
func System() Clock {
	boot, _ := BootID()
	return system{boot: boot}
}

func (s system) Now() Stamp {
	mono := boottime()
	return Stamp{Wall: time.Now().Round(0), Mono: mono, Boot: s.boot}
}

func (s system) Since(t Stamp) time.Duration {
	return since(Stamp{Mono: boottime(), Boot: s.boot}, t)
}

// boottime reads CLOCK_BOOTTIME, falling back to CLOCK_MONOTONIC on kernels
// without it (before 2.6.39).
func boottime() time.Duration {
	var ts unix.Timespec
	if e := clockGettime(unix.CLOCK_BOOTTIME, &ts); e != 0 {
		if e := clockGettime(unix.CLOCK_MONOTONIC, &ts); e != 0 {
			panic(fmt.Sprintf("clock: clock_gettime: %v", e))
		}
	}
	return time.Duration(ts.Nano())
}

// clockGettime is clock_gettime(2) as a raw system call. Go's vDSO path
// serves only its own clocks, and unix.ClockGettime enters the runtime's
// system call state, whose first use after the process slept wakes the
// runtime's monitor thread; the poller stamps every round, between two
// waits on the line (see modbus.Line). The call cannot block.
func clockGettime(id int, ts *unix.Timespec) unix.Errno {
	_, _, e := unix.RawSyscall(unix.SYS_CLOCK_GETTIME, uintptr(id), uintptr(unsafe.Pointer(ts)), 0)
	return e
}

// BootID returns the id of the running boot, from
// /proc/sys/kernel/random/boot_id (a UUID, new at each boot), or an error
// naming the file if it cannot be read or is empty.
func BootID() (string, error) {
	return readBootID("/proc/sys/kernel/random/boot_id")
}

func readBootID(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("clock: boot id: %w", err)
	}
	id := strings.TrimSpace(string(b))
	if id == "" {
		return "", fmt.Errorf("clock: boot id: %s is empty", path)
	}
	return id, nil
}

// Fake is a Clock for tests that moves only when told. The zero value is a
// clock at the zero time, Mono 0, boot "". It is safe for concurrent use.
type Fake struct {
	mu  sync.Mutex
	now Stamp
}

// NewFake returns a Fake clock showing s.
func NewFake(s Stamp) *Fake {
	f := &Fake{}
	f.Set(s)
	return f
}

// Now returns the stamp the clock shows.
func (f *Fake) Now() Stamp {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

// Since returns Now().Mono - t.Mono, or Forever when t is of another boot.
func (f *Fake) Since(t Stamp) time.Duration {
	return since(f.Now(), t)
}

// Set makes the clock show s (with any monotonic reading of s.Wall dropped).
func (f *Fake) Set(s Stamp) {
	s.Wall = s.Wall.Round(0)
	f.mu.Lock()
	f.now = s
	f.mu.Unlock()
}

// Advance lets d pass: wall and monotonic time both move by d.
func (f *Fake) Advance(d time.Duration) {
	f.mu.Lock()
	f.now.Wall = f.now.Wall.Add(d)
	f.now.Mono += d
	f.mu.Unlock()
}

// Step moves the wall clock alone by d, as an NTP step or a date command
// does; the monotonic time does not move.
func (f *Fake) Step(d time.Duration) {
	f.mu.Lock()
	f.now.Wall = f.now.Wall.Add(d)
	f.mu.Unlock()
}

// Reboot starts a new boot: Boot becomes boot and Mono starts again at mono.
// The wall clock is left as it is (set it with Set or Step).
func (f *Fake) Reboot(boot string, mono time.Duration) {
	f.mu.Lock()
	f.now.Boot = boot
	f.now.Mono = mono
	f.mu.Unlock()
}
