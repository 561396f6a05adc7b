package health

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"

	sddbus "github.com/coreos/go-systemd/v22/dbus"
	"golang.org/x/sys/unix"

	"github.com/tinyscada/tinyscada/shared/sdnotify"
)

// Supervisor is what health drives: systemd over D-Bus (Systemd), or the
// `tinyscada run` supervisor (RunSupervisor). Its methods are called from
// health's loop and restart goroutines and must be safe for concurrent use.
type Supervisor interface {
	// UnitOf returns the unit process pid runs in, for services health
	// does not expect (their unit is not tinyscada-<svc>.service).
	UnitOf(ctx context.Context, pid int) (string, error)
	// Verify returns nil when pid is the main process of unit right now,
	// and an error saying why not otherwise: a heartbeat's pid is pinged
	// only after this check, never on a stale pid.
	Verify(ctx context.Context, unit string, pid int) error
	// Ping sends WATCHDOG=1 on behalf of pid.
	Ping(pid int) error
	// Restart restarts unit, whose main process is pid, and returns once
	// the restart is done, or failed, or ctx ended.
	Restart(ctx context.Context, unit string, pid int) error
	// Close releases the supervisor's connections.
	Close()
}

// ping sends WATCHDOG=1 for pid to $NOTIFY_SOCKET, with pid in
// SCM_CREDENTIALS (needs CAP_SYS_ADMIN). An unset NOTIFY_SOCKET is an error
// here: a ping that goes nowhere must not look sent.
func ping(pid int) error {
	sent, err := sdnotify.NotifyPID(pid, sdnotify.StateWatchdog)
	if err != nil {
		return err
	}
	if !sent {
		return errors.New("watchdog ping: NOTIFY_SOCKET is not set")
	}
	return nil
}

// Systemd drives systemd over D-Bus: MainPID checks, unit lookups by pid and
// restarts. It connects to systemd's private socket (root, no dbus-daemon
// needed) or else to the system bus, and reconnects after a failed call.
type Systemd struct {
	mu   sync.Mutex
	conn *sddbus.Conn
	// verified is, per unit, the main process last confirmed over D-Bus
	// (its pid, its start time) and when; see Verify.
	verified map[string]verifiedMain
	// mainPID asks systemd for a unit's MainPID; nil: over D-Bus (tests
	// count the calls with their own).
	mainPID func(ctx context.Context, unit string) (uint32, error)
}

// verifiedMain is a unit's main process as Verify last confirmed it.
type verifiedMain struct {
	pid   int
	start uint64 // the process's start time, /proc/<pid>/stat field 22
	at    time.Time
}

// reverify is how long a confirmed main process is taken as the unit's
// while it lives (the same pid and start time) before systemd is asked
// again.
const reverify = time.Minute

// DialSystemd connects to systemd. It returns an error naming both attempts
// when neither the private socket (/run/systemd/private) nor the system bus
// answers.
func DialSystemd(ctx context.Context) (*Systemd, error) {
	s := &Systemd{}
	if _, err := s.get(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Systemd) get(ctx context.Context) (*sddbus.Conn, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn != nil && s.conn.Connected() {
		return s.conn, nil
	}
	if s.conn != nil {
		s.conn.Close()
		s.conn = nil
	}
	// The connection lives longer than ctx: dial with a background context.
	c, err := sddbus.NewSystemdConnectionContext(context.Background())
	if err != nil {
		c, err2 := sddbus.NewSystemConnectionContext(context.Background())
		if err2 != nil {
			return nil, fmt.Errorf("systemd D-Bus: private socket: %v; system bus: %w", err, err2)
		}
		s.conn = c
		return c, nil
	}
	s.conn = c
	return c, nil
}

// drop forgets the connection after a failed call, so the next call redials.
func (s *Systemd) drop(c *sddbus.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn == c && !c.Connected() {
		c.Close()
		s.conn = nil
	}
}

// UnitOf implements Supervisor.
func (s *Systemd) UnitOf(ctx context.Context, pid int) (string, error) {
	c, err := s.get(ctx)
	if err != nil {
		return "", err
	}
	u, err := c.GetUnitNameByPID(ctx, uint32(pid))
	if err != nil {
		s.drop(c)
		return "", fmt.Errorf("unit of pid %d: %w", pid, err)
	}
	return u, nil
}

// Verify implements Supervisor: pid must equal the unit's MainPID.
//
// Health verifies every service it pings each interval. systemd is asked
// (a D-Bus call, which wakes systemd and health) when the unit's main
// process is new to it, and then once a minute; in between, the same pid
// with the same start time in /proc is the same process, still the
// unit's: a restart of the unit is a new process (another pid, or the same
// pid with a later start time), asked about at once. Five roles every 2 s
// were 2.5 calls to systemd a second.
func (s *Systemd) Verify(ctx context.Context, unit string, pid int) error {
	// A process /proc does not show (gone, or hidden from health) is
	// asked about every time, as systemd knows best.
	st, statErr := procStat(pid)
	now := time.Now()
	s.mu.Lock()
	v, ok := s.verified[unit]
	s.mu.Unlock()
	if statErr == nil && ok && v.pid == pid && v.start == st.start && now.Sub(v.at) < reverify {
		return nil
	}
	main, err := s.queryMainPID(ctx, unit)
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.verified, unit)
	if err != nil {
		return err
	}
	if int(main) != pid {
		return fmt.Errorf("pid %d is not the main process of %s (MainPID %d)", pid, unit, main)
	}
	if statErr != nil {
		return nil
	}
	if s.verified == nil {
		s.verified = make(map[string]verifiedMain)
	}
	s.verified[unit] = verifiedMain{pid: pid, start: st.start, at: now}
	return nil
}

// queryMainPID asks systemd for unit's MainPID.
func (s *Systemd) queryMainPID(ctx context.Context, unit string) (uint32, error) {
	if s.mainPID != nil {
		return s.mainPID(ctx, unit)
	}
	c, err := s.get(ctx)
	if err != nil {
		return 0, err
	}
	p, err := c.GetServicePropertyContext(ctx, unit, "MainPID")
	if err != nil {
		s.drop(c)
		return 0, fmt.Errorf("MainPID of %s: %w", unit, err)
	}
	main, ok := p.Value.Value().(uint32)
	if !ok {
		return 0, fmt.Errorf("MainPID of %s: unexpected value %v", unit, p.Value)
	}
	return main, nil
}

// Ping implements Supervisor.
func (s *Systemd) Ping(pid int) error { return ping(pid) }

// Restart implements Supervisor with RestartUnit(unit, "replace"), waiting
// for the job's result.
func (s *Systemd) Restart(ctx context.Context, unit string, _ int) error {
	c, err := s.get(ctx)
	if err != nil {
		return err
	}
	ch := make(chan string, 1) // buffered: the connection must never stall on it
	if _, err := c.RestartUnitContext(ctx, unit, "replace", ch); err != nil {
		s.drop(c)
		return fmt.Errorf("restart %s: %w", unit, err)
	}
	select {
	case res := <-ch:
		if res != "done" {
			return fmt.Errorf("restart %s: job %s", unit, res)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("restart %s: %w", unit, ctx.Err())
	}
}

// Close implements Supervisor.
func (s *Systemd) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn != nil {
		s.conn.Close()
		s.conn = nil
	}
}

// RunSupervisor drives the `tinyscada run` supervisor, health's parent: it
// has no D-Bus, so a pid is verified by being a child of that parent (the
// supervisor knows its children by pid, as systemd knows a unit's MainPID),
// pings go to the supervisor's notify socket exactly as to systemd's, and a
// restart is SIGTERM to the pid, after which the supervisor starts the role
// again.
type RunSupervisor struct {
	// Parent is the supervisor's pid (health's parent).
	Parent int
}

// UnitOf implements Supervisor: under run a process has no unit; a child of
// the supervisor is "run:<command name>".
func (r RunSupervisor) UnitOf(_ context.Context, pid int) (string, error) {
	p, err := procStat(pid)
	if err != nil {
		return "", err
	}
	if p.ppid != r.Parent {
		return "", fmt.Errorf("pid %d (%s) is not a child of the run supervisor (pid %d)", pid, p.comm, r.Parent)
	}
	return "run:" + p.comm, nil
}

// Verify implements Supervisor: pid must be a live child of Parent.
func (r RunSupervisor) Verify(_ context.Context, _ string, pid int) error {
	p, err := procStat(pid)
	if err != nil {
		return err
	}
	if p.ppid != r.Parent {
		return fmt.Errorf("pid %d (%s) is not a child of the run supervisor (pid %d)", pid, p.comm, r.Parent)
	}
	return nil
}

// Ping implements Supervisor.
func (r RunSupervisor) Ping(pid int) error { return ping(pid) }

// Restart implements Supervisor: SIGTERM to a verified pid.
func (r RunSupervisor) Restart(ctx context.Context, unit string, pid int) error {
	if err := r.Verify(ctx, unit, pid); err != nil {
		return fmt.Errorf("restart: %w", err)
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		return fmt.Errorf("restart: SIGTERM to pid %d: %w", pid, err)
	}
	return nil
}

// Close implements Supervisor.
func (RunSupervisor) Close() {}

// procInfo is what health reads of a process in /proc/<pid>/stat.
type procInfo struct {
	ppid  int
	comm  string
	start uint64 // start time after boot, in clock ticks (field 22)
}

// procStat returns the parent pid, command name and start time of pid
// from /proc/<pid>/stat. A zombie counts as gone.
func procStat(pid int) (procInfo, error) {
	var buf [512]byte
	b, err := readProcFile("/proc/"+strconv.Itoa(pid)+"/stat", buf[:0])
	if err != nil {
		return procInfo{}, fmt.Errorf("pid %d: %w", pid, err)
	}
	// pid (comm) state ppid ...; comm may hold spaces and parentheses.
	s := string(b)
	open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || end < open {
		return procInfo{}, fmt.Errorf("pid %d: unreadable /proc stat %q", pid, s)
	}
	p := procInfo{comm: s[open+1 : end]}
	// f[0] is field 3 (state), f[1] field 4 (ppid), f[19] field 22.
	f := strings.Fields(s[end+1:])
	if len(f) < 20 {
		return procInfo{}, fmt.Errorf("pid %d: unreadable /proc stat %q", pid, s)
	}
	if f[0] == "Z" || f[0] == "X" {
		return procInfo{}, fmt.Errorf("pid %d (%s) has exited", pid, p.comm)
	}
	var err1, err2 error
	p.ppid, err1 = strconv.Atoi(f[1])
	p.start, err2 = strconv.ParseUint(f[19], 10, 64)
	if err1 != nil || err2 != nil {
		return procInfo{}, fmt.Errorf("pid %d: unreadable /proc stat %q", pid, s)
	}
	return p, nil
}

// readProcFile appends the contents of a /proc file to buf, with raw
// system calls: opening, reading and closing a /proc file return at once,
// and os.ReadFile's blocking-style calls (seven for a /proc file: open, an
// epoll registration the kernel refuses, fcntl, fstat, two reads, close)
// each told the scheduler the thread might block, which on an idle health
// woke the runtime's monitor thread and handed the processor to another
// thread, every interval for every service (docs/performance.md, "Issue
// 13, fourth round").
func readProcFile(path string, buf []byte) ([]byte, error) {
	p, err := unix.BytePtrFromString(path)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	cwd := unix.AT_FDCWD
	r, _, e := unix.RawSyscall6(unix.SYS_OPENAT, uintptr(cwd), uintptr(unsafe.Pointer(p)), unix.O_RDONLY|unix.O_CLOEXEC, 0, 0, 0)
	if e != 0 {
		return nil, &os.PathError{Op: "open", Path: path, Err: e}
	}
	fd := r
	defer unix.RawSyscall(unix.SYS_CLOSE, fd, 0, 0)
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		room := buf[len(buf):cap(buf)]
		n, _, e := unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&room[0])), uintptr(len(room)))
		switch {
		case e == unix.EINTR:
			continue
		case e != 0:
			return nil, &os.PathError{Op: "read", Path: path, Err: e}
		case n == 0:
			return buf, nil
		}
		buf = buf[:len(buf)+int(n)]
	}
}
