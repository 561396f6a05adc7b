package connbuf

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Raw returns c with its Read and Write made as raw system calls on its
// non-blocking socket, Go's poller still doing the waiting (and the
// deadlines); c is returned as it is when it has no descriptor of its own
// (a TLS connection, a pipe in a test).
//
// Why: every read or write of a net.Conn enters the runtime's system call
// state, and the first such call after the process slept wakes the
// runtime's monitor thread (sysmon), which then polls every 20 µs until
// the process is idle again; and a call that takes more than 20 µs (a
// loopback write runs the receiver's TCP input too) has its processor
// handed to another thread. An MQTT peer wakes for every burst of
// packets: at field rate that monitor was a tenth of the broker's CPU
// (docs/performance.md). A raw call on a non-blocking socket cannot
// block, so it needs neither.
func Raw(c net.Conn) net.Conn {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return c
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return c
	}
	r := &rawConn{Conn: c, rc: rc}
	switch c.(type) {
	case *net.TCPConn:
		r.network = "tcp"
	case *net.UnixConn:
		r.network = "unix"
	}
	r.readFn, r.writeFn = r.read, r.write
	return r
}

// rawConn is Raw's connection. The state of the call in progress lives in
// the struct, and the functions handed to syscall.RawConn are made once,
// so that a read or write allocates nothing.
type rawConn struct {
	net.Conn
	rc      syscall.RawConn
	network string // for errors, as net's: "tcp", "unix"

	rmu    sync.Mutex // one Read at a time
	rp     []byte
	rn     int
	re     unix.Errno
	readFn func(fd uintptr) bool

	wmu     sync.Mutex // one Write at a time
	wp      []byte
	wn      int
	we      unix.Errno
	writeFn func(fd uintptr) bool
}

func (c *rawConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.rmu.Lock()
	defer c.rmu.Unlock()
	c.rp, c.rn, c.re = p, 0, 0
	err := c.rc.Read(c.readFn)
	n, e := c.rn, c.re
	c.rp = nil
	switch {
	case err != nil:
		return 0, c.opError("read", err)
	case e != 0:
		return 0, c.opError("read", os.NewSyscallError("read", e))
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// read reads once into c.rp; false (wait, then call again) when nothing
// is there yet.
func (c *rawConn) read(fd uintptr) bool {
	for {
		r, _, e := unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&c.rp[0])), uintptr(len(c.rp)))
		switch e {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		case 0:
			c.rn = int(r)
		default:
			c.re = e
		}
		return true
	}
}

func (c *rawConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.wp, c.wn, c.we = p, 0, 0
	var err error
	if len(p) > 0 {
		err = c.rc.Write(c.writeFn)
	}
	n, e := c.wn, c.we
	c.wp = nil
	switch {
	case err != nil:
		return n, c.opError("write", err)
	case e != 0:
		return n, c.opError("write", os.NewSyscallError("write", e))
	}
	return n, nil
}

// write writes what is left of c.wp; false (wait until the socket takes
// more, then call again) while the socket's buffer is full.
func (c *rawConn) write(fd uintptr) bool {
	for c.wn < len(c.wp) {
		r, _, e := unix.RawSyscall(unix.SYS_WRITE, fd, uintptr(unsafe.Pointer(&c.wp[c.wn])), uintptr(len(c.wp)-c.wn))
		switch e {
		case 0:
			c.wn += int(r)
		case unix.EINTR:
		case unix.EAGAIN:
			return false
		default:
			c.we = e
			return true
		}
	}
	return true
}

// opError wraps err as net's own Read and Write do: a *net.OpError, so
// that timeouts (os.ErrDeadlineExceeded) and a closed connection
// (net.ErrClosed) test as they do there.
func (c *rawConn) opError(op string, err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) { // syscall.RawConn's own, op "raw-read"/"raw-write"
		err = oe.Err
	}
	return &net.OpError{Op: op, Net: c.network, Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}
