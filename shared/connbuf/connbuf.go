// Package connbuf wraps a stream connection for MQTT traffic, many small
// packets each way: Coalesce gathers small writes into one syscall per
// wake-up of a flusher goroutine, and Raw makes a socket's reads and
// writes raw system calls (see Raw for why). The broker and the roles'
// client (shared/bus) use both.
package connbuf

import (
	"net"
	"runtime"
	"sync"
	"time"
)

// maxPendingWrite bounds what one connection may have buffered and not yet
// written; a writer beyond it waits (back-pressure, as a blocking socket).
const maxPendingWrite = 256 << 10

// coalescingConn gathers the many small writes an MQTT peer makes — one
// write syscall for every PUBACK and every PUBLISH — and hands them to the socket
// in one write per wake-up of its flusher goroutine. Under load the writes
// that arrive while the flusher is in the kernel go out together; when idle,
// each write goes out at once (no timer, no added delay beyond a goroutine
// hand-off). Write errors are reported by the next Write or Close.
type coalescingConn struct {
	net.Conn
	mu      sync.Mutex
	space   *sync.Cond // signalled when the flusher took the buffer
	buf     []byte     // written by mochi, not yet taken by the flusher
	spare   []byte
	err     error
	closing bool
	timeout time.Duration
	kick    chan struct{}
	done    chan struct{}
}

// SetDeadline sets the read deadline only; see Coalesce.
func (c *coalescingConn) SetDeadline(t time.Time) error { return c.Conn.SetReadDeadline(t) }

// SetWriteDeadline does nothing; see Coalesce.
func (c *coalescingConn) SetWriteDeadline(time.Time) error { return nil }

// Coalesce wraps c. writeTimeout, if not zero, bounds each write to the
// socket: a peer that stops reading makes the next Write fail instead of
// holding the buffer for good. Deadlines set on the result apply to reads
// only (the writes happen later, on the flusher's own clock).
func Coalesce(c net.Conn, writeTimeout time.Duration) net.Conn {
	return newCoalescingConn(c, writeTimeout)
}

func newCoalescingConn(c net.Conn, writeTimeout time.Duration) *coalescingConn {
	cc := &coalescingConn{Conn: c, timeout: writeTimeout, kick: make(chan struct{}, 1), done: make(chan struct{})}
	cc.space = sync.NewCond(&cc.mu)
	go cc.flusher()
	return cc
}

// Write queues p for the flusher; it blocks only while maxPendingWrite
// bytes are already waiting.
func (c *coalescingConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	for len(c.buf) >= maxPendingWrite && c.err == nil && !c.closing {
		c.space.Wait()
	}
	if c.err != nil || c.closing {
		err := c.err
		c.mu.Unlock()
		if err == nil {
			err = net.ErrClosed
		}
		return 0, err
	}
	c.buf = append(c.buf, p...)
	c.mu.Unlock()
	select {
	case c.kick <- struct{}{}:
	default:
	}
	return len(p), nil
}

func (c *coalescingConn) flusher() {
	defer close(c.done)
	for range c.kick {
		// Let the writers that are runnable now add theirs first: under
		// load that turns many one-packet writes into one; when idle
		// nothing else is runnable and this returns at once.
		runtime.Gosched()
		c.mu.Lock()
		out := c.buf
		c.buf = c.spare[:0]
		closing := c.closing
		c.mu.Unlock()
		var err error
		if len(out) > 0 {
			if c.timeout > 0 {
				_ = c.Conn.SetWriteDeadline(time.Now().Add(c.timeout))
			}
			_, err = c.Conn.Write(out)
		}
		c.mu.Lock()
		c.spare = out[:0]
		if err != nil && c.err == nil {
			c.err = err
		}
		c.space.Broadcast()
		stop := c.err != nil || (closing && len(c.buf) == 0)
		c.mu.Unlock()
		if stop {
			return
		}
	}
}

// Close sends what is still buffered (mochi writes a DISCONNECT or a refusal
// right before closing), then closes the socket.
func (c *coalescingConn) Close() error {
	c.mu.Lock()
	already := c.closing
	c.closing = true
	c.space.Broadcast()
	c.mu.Unlock()
	if !already {
		select {
		case c.kick <- struct{}{}:
		default:
		}
		<-c.done
	}
	return c.Conn.Close()
}
