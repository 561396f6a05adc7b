// Package sdnotify sends service notifications to systemd (the sd_notify
// protocol) without cgo, for this process or on behalf of another one.
//
// Every call is a no-op when NOTIFY_SOCKET is unset, so a service runs the
// same with or without systemd. The variable is never unset: later calls keep
// working.
package sdnotify

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Well-known states of the protocol (see sd_notify(3)).
const (
	StateReady    = "READY=1"
	StateStopping = "STOPPING=1"
	StateWatchdog = "WATCHDOG=1"
)

// Notify sends state (one or more newline-separated VAR=value assignments)
// to the socket named by $NOTIFY_SOCKET: a file system path, or an abstract
// socket when it starts with '@'. Outcomes:
//
//   - (false, nil): NOTIFY_SOCKET is unset or empty, nothing was sent;
//   - (false, err): the socket could not be reached or the send failed
//     (including a receive queue still full after 5 s);
//   - (true, nil): the datagram was sent.
func Notify(state string) (bool, error) {
	return send(0, state)
}

// NotifyPID sends state like Notify, but on behalf of process pid: the
// datagram carries SCM_CREDENTIALS with that pid (and our uid and gid), which
// is how systemd attributes it to a unit (what sd_pid_notify and
// `systemd-notify --pid=` do). The kernel allows a pid other than our own only
// with CAP_SYS_ADMIN; without it the error wraps unix.EPERM and says so.
// Outcomes are those of Notify.
func NotifyPID(pid int, state string) (bool, error) {
	if pid <= 0 {
		return false, fmt.Errorf("sdnotify: notify for pid %d: not a valid pid", pid)
	}
	return send(pid, state)
}

// CanNotifyPID reports whether NotifyPID may speak for a process other than
// this one: whether CAP_SYS_ADMIN is in the calling thread's effective set
// (the threads of a Go program share their capabilities unless one changes
// its own). It is false when the capabilities cannot be read.
func CanNotifyPID() bool {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return false
	}
	return data[unix.CAP_SYS_ADMIN/32].Effective&(1<<(unix.CAP_SYS_ADMIN%32)) != 0
}

// sendTimeout bounds a send to a socket whose queue is full.
const sendTimeout = 5 * time.Second

// sock is the process's notify socket: opened at the first send and kept
// for the next ones (each role pings its watchdog every few seconds,
// health for every role each interval), non-blocking, unbound; the address
// goes with each datagram, so a changed NOTIFY_SOCKET needs no new socket.
var sock struct {
	sync.Mutex
	fd   int
	open bool
}

// send sends state; pid > 0 attaches explicit credentials with that pid.
func send(pid int, state string) (bool, error) {
	name := os.Getenv("NOTIFY_SOCKET")
	if name == "" {
		return false, nil
	}
	if name[0] != '/' && name[0] != '@' {
		return false, fmt.Errorf("sdnotify: NOTIFY_SOCKET=%q: only path and abstract (@) sockets are supported", name)
	}
	var oob []byte
	if pid > 0 {
		oob = unix.UnixCredentials(&unix.Ucred{
			Pid: int32(pid),
			Uid: uint32(os.Getuid()),
			Gid: uint32(os.Getgid()),
		})
	}
	err := sendNow(name, state, oob)
	if err == unix.EAGAIN {
		// systemd's queue is full: wait for room, as long as sendTimeout.
		err = sendWaiting(name, state, oob)
	}
	switch {
	case err == nil:
		return true, nil
	case pid > 0 && pid != os.Getpid() && errors.Is(err, unix.EPERM):
		return false, fmt.Errorf("sdnotify: send to %s for pid %d: notifying for another process needs CAP_SYS_ADMIN: %w", name, pid, err)
	case pid > 0:
		return false, fmt.Errorf("sdnotify: send to %s for pid %d: %w", name, pid, err)
	default:
		return false, fmt.Errorf("sdnotify: send to %s: %w", name, err)
	}
}

// sendNow sends one datagram on the kept socket without waiting:
// unix.EAGAIN when the receiver's queue is full.
//
// It is a raw system call (sendmsg with MSG_DONTWAIT returns at once). Go's
// blocking-style calls (unix.Sendmsg, and the socket, setsockopt and close
// a socket per send took) tell the scheduler a thread may block: on an
// otherwise idle process that wakes the runtime's monitor thread, which
// then polls every 20 µs while the call lasts and may hand the processor to
// another thread. For health, which pings every role each interval, that
// was most of its wake-ups (docs/performance.md, "Issue 13, fourth round").
func sendNow(name, state string, oob []byte) error {
	var sa unix.RawSockaddrUnix
	path := (*[len(sa.Path)]byte)(unsafe.Pointer(&sa.Path))
	if len(name) >= len(path) {
		return fmt.Errorf("socket name of %d bytes, longer than %d: %w", len(name), len(path)-1, unix.EINVAL)
	}
	sa.Family = unix.AF_UNIX
	copy(path[:], name)
	size := 2 + len(name) + 1 // the family, the path and its NUL
	if name[0] == '@' {
		path[0] = 0 // abstract: a leading NUL, and no trailing one
		size--
	}
	var iov unix.Iovec
	if p := []byte(state); len(p) > 0 {
		iov.Base = &p[0]
		iov.SetLen(len(p))
	}
	var msg unix.Msghdr
	msg.Name = (*byte)(unsafe.Pointer(&sa))
	msg.Namelen = uint32(size)
	msg.Iov = &iov
	msg.SetIovlen(1)
	if len(oob) > 0 {
		msg.Control = &oob[0]
		msg.SetControllen(len(oob))
	}
	fd, err := socket()
	if err != nil {
		return err
	}
	for {
		_, _, e := unix.RawSyscall(unix.SYS_SENDMSG, uintptr(fd), uintptr(unsafe.Pointer(&msg)), unix.MSG_NOSIGNAL|unix.MSG_DONTWAIT)
		switch e {
		case 0:
			return nil
		case unix.EINTR:
			continue
		}
		return e
	}
}

// socket returns the kept socket, opening it at the first call.
func socket() (int, error) {
	sock.Lock()
	defer sock.Unlock()
	if !sock.open {
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
		if err != nil {
			return 0, fmt.Errorf("socket: %w", err)
		}
		sock.fd, sock.open = fd, true
	}
	return sock.fd, nil
}

// sendWaiting sends one datagram on a socket of its own that waits up to
// sendTimeout for room in the receiver's queue.
func sendWaiting(name, state string, oob []byte) error {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(fd)
	// systemd reads promptly; a full queue must not block a caller forever.
	tv := unix.NsecToTimeval(int64(sendTimeout))
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv); err != nil {
		return fmt.Errorf("set send timeout: %w", err)
	}
	// A name starting with '@' becomes an abstract address (leading NUL).
	to := &unix.SockaddrUnix{Name: name}
	for {
		err = unix.Sendmsg(fd, []byte(state), oob, to, unix.MSG_NOSIGNAL)
		if err != unix.EINTR {
			return err
		}
	}
}

// Ready tells systemd that start-up is finished (READY=1). It returns nil when
// the message was sent or NOTIFY_SOCKET is unset, and the send error otherwise.
func Ready() error { return notify(StateReady) }

// Stopping tells systemd that the service is shutting down (STOPPING=1). It
// returns nil when the message was sent or NOTIFY_SOCKET is unset, and the
// send error otherwise.
func Stopping() error { return notify(StateStopping) }

// Watchdog pings the service watchdog (WATCHDOG=1). It returns nil when the
// message was sent or NOTIFY_SOCKET is unset, and the send error otherwise.
func Watchdog() error { return notify(StateWatchdog) }

// Status sets the free-form status line shown by `systemctl status`
// (STATUS=...), formatted as fmt.Sprintf(format, args...). Newlines, which
// would end the assignment, become spaces. It returns nil when the message was
// sent or NOTIFY_SOCKET is unset, and the send error otherwise.
func Status(format string, args ...any) error {
	s := fmt.Sprintf(format, args...)
	s = strings.NewReplacer("\r\n", " ", "\n", " ", "\r", " ").Replace(s)
	return notify("STATUS=" + s)
}

func notify(state string) error {
	_, err := Notify(state)
	return err
}

// WatchdogInterval returns the watchdog timeout systemd expects pings within
// (WatchdogSec=, passed as WATCHDOG_USEC). Ping at about half of it.
// Outcomes:
//
//   - (d, nil) with d > 0: the watchdog is enabled for this process;
//   - (0, nil): WATCHDOG_USEC is unset, or WATCHDOG_PID is set and names
//     another process (the variables were inherited, not meant for us);
//   - (0, err): WATCHDOG_USEC or WATCHDOG_PID is malformed or not positive.
func WatchdogInterval() (time.Duration, error) {
	usec := os.Getenv("WATCHDOG_USEC")
	if usec == "" {
		return 0, nil
	}
	if p := os.Getenv("WATCHDOG_PID"); p != "" {
		pid, err := strconv.Atoi(p)
		if err != nil || pid <= 0 {
			return 0, fmt.Errorf("sdnotify: WATCHDOG_PID=%q: not a pid", p)
		}
		if pid != os.Getpid() {
			return 0, nil
		}
	}
	n, err := strconv.ParseInt(usec, 10, 64)
	if err != nil || n <= 0 || n > int64(time.Duration(1<<63-1)/time.Microsecond) {
		return 0, fmt.Errorf("sdnotify: WATCHDOG_USEC=%q: not a positive number of microseconds", usec)
	}
	return time.Duration(n) * time.Microsecond, nil
}
