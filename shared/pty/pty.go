// Package pty creates pseudo-terminal pairs in raw mode: the stand-in for
// a serial line that the simulator serves and tests open like a real port.
package pty

import (
	"errors"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// PTY is an open pseudo-terminal pair.
type PTY struct {
	// Master is the controlling side, non-blocking underneath so that
	// SetReadDeadline works and a deadline in the past ends a pending Read.
	Master *os.File
	// SlavePath is the device a serial-port user opens, e.g. /dev/pts/3.
	SlavePath string

	slave *os.File // held open: the master never reads EIO when users come and go
	link  string   // symlink made by Link, removed by Close
}

// Open creates a pseudo-terminal pair (posix_openpt, grantpt, unlockpt,
// ptsname done with ioctls on /dev/ptmx), sets both sides to raw mode (no
// echo, no line editing, no character translation, 8 bits) and keeps the
// slave side open itself, so that a peer may open and close SlavePath any
// number of times. It returns the pair or an error saying which step failed.
func Open() (*PTY, error) {
	fd, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("pty: open /dev/ptmx: %w", err)
	}
	master := os.NewFile(uintptr(fd), "/dev/ptmx")
	fail := func(step string, err error) (*PTY, error) {
		master.Close()
		return nil, fmt.Errorf("pty: %s: %w", step, err)
	}
	// unlockpt; grantpt is a no-op with devpts.
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		return fail("unlock (TIOCSPTLCK)", err)
	}
	n, err := unix.IoctlGetUint32(fd, unix.TIOCGPTN)
	if err != nil {
		return fail("ptsname (TIOCGPTN)", err)
	}
	path := "/dev/pts/" + strconv.FormatUint(uint64(n), 10)
	if err := makeRaw(fd); err != nil {
		return fail("raw mode on master", err)
	}
	slave, err := os.OpenFile(path, os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return fail("open slave", err)
	}
	if err := makeRaw(int(slave.Fd())); err != nil {
		slave.Close()
		return fail("raw mode on "+path, err)
	}
	return &PTY{Master: master, SlavePath: path, slave: slave}, nil
}

// makeRaw sets the terminal fd to raw mode, as cfmakeraw(3) does.
func makeRaw(fd int) error {
	t, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return err
	}
	t.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON | unix.IXOFF
	t.Oflag &^= unix.OPOST
	t.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	t.Cflag &^= unix.CSIZE | unix.PARENB
	t.Cflag |= unix.CS8
	t.Cc[unix.VMIN] = 1
	t.Cc[unix.VTIME] = 0
	return unix.IoctlSetTermios(fd, unix.TCSETS, t)
}

// Link makes path a symbolic link to SlavePath; Close removes it. An
// existing symbolic link at path is replaced (a stale one from a killed
// run); any other existing file is an error and is left alone.
func (p *PTY) Link(path string) error {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSymlink == 0 {
			return fmt.Errorf("pty: link %s: exists and is not a symbolic link", path)
		}
		if err := os.Remove(path); err != nil {
			return fmt.Errorf("pty: link %s: remove stale link: %w", path, err)
		}
	}
	if err := os.Symlink(p.SlavePath, path); err != nil {
		return fmt.Errorf("pty: link: %w", err)
	}
	p.link = path
	return nil
}

// Close removes the link made by Link (if it still points to SlavePath)
// and closes both sides; a peer that has SlavePath open then reads EOF or
// EIO. It returns the first error; closing twice is an error.
func (p *PTY) Close() error {
	var errs []error
	if p.link != "" {
		if dst, err := os.Readlink(p.link); err == nil && dst == p.SlavePath {
			errs = append(errs, os.Remove(p.link))
		}
		p.link = ""
	}
	errs = append(errs, p.slave.Close(), p.Master.Close())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("pty: close %s: %w", p.SlavePath, err)
	}
	return nil
}
