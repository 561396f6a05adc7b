// Package flock takes exclusive advisory locks (flock(2)) on lock files and
// device nodes, so that one process at a time owns a resource, and says who
// holds it when it is taken. The kernel drops a lock when its holder dies, so
// a crash never leaves a stale lock.
package flock

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// ErrLocked is matched by every *LockedError: test with
// errors.Is(err, flock.ErrLocked), or errors.As for the holder's pid.
var ErrLocked = errors.New("locked by another holder")

// LockedError says that a lock is held elsewhere.
type LockedError struct {
	// Path is the locked file.
	Path string
	// PID is the holder's process id, or 0 if it could not be found out.
	PID int
}

// Error returns "<path> is locked by pid N" (N is 0 when unknown).
func (e *LockedError) Error() string {
	return fmt.Sprintf("%s is locked by pid %d", e.Path, e.PID)
}

// Is reports whether target is ErrLocked.
func (e *LockedError) Is(target error) bool { return target == ErrLocked }

// Held is a held lock (the function Lock takes the name Lock). Release it
// with Close, or by exiting.
type Held struct {
	f    *os.File
	own  bool // f was opened by Lock and is closed by Close
	path string
}

// Lock opens or creates (mode 0644) the file at path and takes an exclusive
// lock on it without waiting. On success it writes our pid into the file if
// it is a regular file (a device node is never written to; a pid that
// cannot be written, on a full disk, is left out) and returns the held
// lock. If another open file holds the lock, in this process or
// another, it returns a *LockedError with the holder's pid: read from the
// file, else from /proc/locks, else 0. Other failures (open, flock) are
// returned wrapped.
//
// Locks belong to the open file description: two Locks of one path conflict
// even within one process, and a child process does not inherit them (the
// file is opened close-on-exec).
func Lock(path string) (*Held, error) {
	// O_NOCTTY: locking a terminal must not make it our controlling tty.
	// O_NONBLOCK: opening a serial port must not wait for carrier.
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_NOCTTY|unix.O_NONBLOCK, 0o644)
	if err != nil {
		return nil, fmt.Errorf("flock: %w", err)
	}
	l, err := lock(f, path, true)
	if err != nil {
		f.Close()
		return nil, err
	}
	if st, err := f.Stat(); err == nil && st.Mode().IsRegular() {
		// The pid only names the holder to whoever finds the lock taken;
		// on a full disk it cannot be written (the file is then empty,
		// and the holder is found in /proc/locks), and the lock holds
		// all the same.
		_ = writePID(f)
	}
	return l, nil
}

// LockFD takes an exclusive lock on an already open file, typically a device
// node such as a serial port (flock works on a tty), without waiting. It
// writes nothing to f. The error cases are those of Lock, the holder's pid
// coming from /proc/locks. Close releases the lock and leaves f open; closing
// f also releases it.
func LockFD(f *os.File) (*Held, error) {
	return lock(f, f.Name(), false)
}

// lock flocks f, or returns a *LockedError for path.
func lock(f *os.File, path string, readPIDFile bool) (*Held, error) {
	err := flock(f, unix.LOCK_EX|unix.LOCK_NB)
	if errors.Is(err, unix.EWOULDBLOCK) {
		pid := 0
		if readPIDFile {
			pid = readPID(f)
		}
		if pid == 0 {
			pid = holderPID(f)
		}
		return nil, &LockedError{Path: path, PID: pid}
	}
	if err != nil {
		return nil, fmt.Errorf("flock: lock %s: %w", path, err)
	}
	return &Held{f: f, own: readPIDFile, path: path}, nil
}

// Close releases the lock; for a lock taken by Lock it also closes the file,
// which stays in place with the pid in it (removing it would race with
// another process locking it). A second Close does nothing. It returns the
// error of the close or unlock.
func (l *Held) Close() error {
	if l.f == nil {
		return nil
	}
	f := l.f
	l.f = nil
	if l.own {
		if err := f.Close(); err != nil {
			return fmt.Errorf("flock: close %s: %w", l.path, err)
		}
		return nil
	}
	if err := flock(f, unix.LOCK_UN); err != nil {
		return fmt.Errorf("flock: unlock %s: %w", l.path, err)
	}
	return nil
}

// flock calls flock(2) on f's descriptor, retrying when interrupted.
func flock(f *os.File, how int) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	err = rc.Control(func(fd uintptr) {
		for {
			ferr = unix.Flock(int(fd), how)
			if ferr != unix.EINTR {
				return
			}
		}
	})
	if err != nil {
		return err
	}
	return ferr
}

func writePID(f *os.File) error {
	if err := f.Truncate(0); err != nil {
		return err
	}
	_, err := f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return err
}

// readPID returns the pid written in a lock file, or 0.
func readPID(f *os.File) int {
	buf := make([]byte, 32)
	n, _ := f.ReadAt(buf, 0)
	pid, err := strconv.Atoi(string(bytes.TrimSpace(buf[:n])))
	if err != nil || pid < 0 {
		return 0
	}
	return pid
}

// holderPID finds the holder of a flock on f's inode in /proc/locks, or 0.
func holderPID(f *os.File) int {
	st, err := f.Stat()
	if err != nil {
		return 0
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return 0
	}
	procLocks, err := os.Open("/proc/locks")
	if err != nil {
		return 0
	}
	defer procLocks.Close()
	return findHolder(procLocks, uint64(sys.Dev), uint64(sys.Ino))
}

// findHolder parses /proc/locks lines such as
//
//	1: FLOCK  ADVISORY  WRITE 1234 00:1a:5678 0 EOF
//
// (device major:minor in hex, inode in decimal) for a granted flock on the
// inode, skipping waiters ("1: -> FLOCK ..."). It returns the pid or 0.
func findHolder(r io.Reader, dev, ino uint64) int {
	want := fmt.Sprintf("%02x:%02x:%d", unix.Major(dev), unix.Minor(dev), ino)
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 || fields[1] != "FLOCK" || fields[5] != want {
			continue
		}
		if pid, err := strconv.Atoi(fields[4]); err == nil && pid > 0 {
			return pid
		}
	}
	return 0
}
