package bus

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tinyscada/tinyscada/shared/connbuf"
)

const (
	connectTimeout = 5 * time.Second
	// subscribeTimeout bounds the wait for a SUBACK.
	subscribeTimeout = 10 * time.Second
	// writeTimeout bounds one write to the broker's socket (connbuf).
	writeTimeout = 10 * time.Second
	// closeWait is how long Close waits for acknowledgements and the
	// DISCONNECT to go out.
	closeWait = 250 * time.Millisecond
	// readBufferSize holds a few dozen data messages: one read syscall
	// for many packets under load.
	readBufferSize = 16 << 10
)

var (
	errClientClosed = errors.New("bus: client closed")
	errKeepAlive    = errors.New("bus: nothing from the broker for 1.5 keep-alive intervals")
)

// epoch makes now() monotonic nanoseconds.
var epoch = time.Now()

func now() int64 { return int64(time.Since(epoch)) }

// conn is one connection to the broker, from its CONNACK to its end. A
// conn is never reused: the client dials a new one after a loss.
type conn struct {
	cl  *Client
	raw net.Conn
	w   net.Conn // raw with coalesced writes: the one write path
	r   *bufio.Reader
	ka  int64 // keep-alive, ns

	dead chan struct{} // closed when the connection ended
	once sync.Once
	err  error // why; set before dead is closed

	lastSend atomic.Int64 // now() of the last write
	lastRecv atomic.Int64 // now() of the last packet read
	blocked  atomic.Bool  // the reader waits for room in a handler's queue

	mu      sync.Mutex
	pending map[uint16]*waiter // packet id → Publish or Subscribe waiting for its ack
	nextID  uint16
	idle    chan struct{} // closed when pending becomes empty, if set
}

// waiter is a Publish or Subscribe waiting for its PUBACK or SUBACK.
type waiter struct {
	done chan struct{} // one signal
	code byte          // SUBACK return code
}

var waiters = sync.Pool{New: func() any { return &waiter{done: make(chan struct{}, 1)} }}

// bufs holds packet encoding buffers.
var bufs = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

func newConn(cl *Client, raw net.Conn, r *bufio.Reader) *conn {
	c := &conn{
		cl:      cl,
		raw:     raw,
		w:       connbuf.Coalesce(raw, writeTimeout),
		r:       r,
		ka:      int64(cl.keepAlive),
		dead:    make(chan struct{}),
		pending: map[uint16]*waiter{},
	}
	t := now()
	c.lastSend.Store(t)
	c.lastRecv.Store(t)
	return c
}

func (c *conn) alive() bool {
	select {
	case <-c.dead:
		return false
	default:
		return true
	}
}

// fail ends the connection for err (the first reason sticks), wakes
// everything waiting on it and detaches it from the client.
func (c *conn) fail(err error) {
	c.once.Do(func() {
		c.err = err
		c.cl.detach(c) // before dead: the supervisor may attach a new one then
		close(c.dead)
		_ = c.raw.Close() // unblocks the reader and a write in the kernel
		_ = c.w.Close()   // ends the flusher
	})
}

// write hands one encoded packet to the write path.
func (c *conn) write(b []byte) error {
	_, err := c.w.Write(b)
	c.lastSend.Store(now())
	if err != nil {
		c.fail(fmt.Errorf("write: %w", err))
		return err
	}
	return nil
}

// puback acknowledges a QoS 1 message, with buf as scratch; nothing when
// the connection it came on is gone (the broker sends it again with
// CleanSession false).
func (c *conn) puback(buf *[4]byte, id uint16) {
	if c.alive() {
		_ = c.write(appendPuback(buf[:0], id))
	}
}

// register takes a free packet id for a packet that waits for its ack.
func (c *conn) register() (uint16, *waiter, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.pending) >= 0xffff {
		return 0, nil, errors.New("bus: no packet id free")
	}
	for {
		c.nextID++
		if c.nextID == 0 {
			c.nextID = 1
		}
		if _, used := c.pending[c.nextID]; !used {
			break
		}
	}
	w := waiters.Get().(*waiter)
	c.pending[c.nextID] = w
	return c.nextID, w, nil
}

// unregister frees id unless its ack was taken; it reports whether it freed
// it.
func (c *conn) unregister(id uint16, w *waiter) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pending[id] != w {
		return false
	}
	delete(c.pending, id)
	c.idleCheck()
	return true
}

func (c *conn) idleCheck() {
	if len(c.pending) == 0 && c.idle != nil {
		close(c.idle)
		c.idle = nil
	}
}

// complete hands an ack to its waiter; an unknown id (its Publish gave up)
// is ignored.
func (c *conn) complete(id uint16, code byte) {
	c.mu.Lock()
	w := c.pending[id]
	delete(c.pending, id)
	c.idleCheck()
	c.mu.Unlock()
	if w != nil {
		w.code = code
		w.done <- struct{}{}
	}
}

// wait waits for the ack of id. It returns the ack's code; or an error when
// ctx ended or the connection was lost first.
func (c *conn) wait(ctx context.Context, id uint16, w *waiter) (byte, error) {
	select {
	case <-w.done:
		code := w.code
		waiters.Put(w)
		return code, nil
	case <-c.dead:
	case <-ctx.Done():
	}
	if !c.unregister(id, w) {
		// The ack came at the same moment: it counts.
		<-w.done
		code := w.code
		waiters.Put(w)
		return code, nil
	}
	waiters.Put(w)
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	return 0, c.lostError()
}

func (c *conn) lostError() error {
	<-c.dead
	if c.err == errClientClosed {
		return errClientClosed
	}
	return fmt.Errorf("bus: connection lost before the broker's acknowledgement: %w", c.err)
}

// waitIdle waits until no Publish or Subscribe waits for an ack, the
// connection ended, or the deadline passed.
func (c *conn) waitIdle(deadline time.Time) {
	c.mu.Lock()
	if len(c.pending) == 0 {
		c.mu.Unlock()
		return
	}
	if c.idle == nil {
		c.idle = make(chan struct{})
	}
	idle := c.idle
	c.mu.Unlock()
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case <-idle:
	case <-c.dead:
	case <-t.C:
	}
}

// subscribe sends a SUBSCRIBE of one filter and waits for its SUBACK.
func (c *conn) subscribe(filter string, qos byte) error {
	id, w, err := c.register()
	if err != nil {
		return fmt.Errorf("subscribe %q: %w", filter, err)
	}
	bp := bufs.Get().(*[]byte)
	b := appendSubscribe((*bp)[:0], id, filter, qos)
	err = c.write(b)
	*bp = b[:0]
	bufs.Put(bp)
	if err != nil {
		c.unregister(id, w)
		return fmt.Errorf("subscribe %q: %w", filter, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), subscribeTimeout)
	defer cancel()
	code, err := c.wait(ctx, id, w)
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("subscribe %q: no answer from broker in %v", filter, subscribeTimeout)
	case err != nil:
		return fmt.Errorf("subscribe %q: %w", filter, err)
	case code == 0x80:
		return fmt.Errorf("subscribe %q: refused by the broker (SUBACK failure 0x80)", filter)
	case code > 2:
		return fmt.Errorf("subscribe %q: SUBACK return code %#x", filter, code)
	}
	return nil
}

// readLoop reads the broker's packets until the connection ends.
func (c *conn) readLoop() {
	defer c.cl.wg.Done()
	tc := topicCache{}
	var ack [4]byte
	for {
		p, err := readPacket(c.r, maxPacket, tc)
		if err != nil {
			c.fail(fmt.Errorf("read: %w", err))
			return
		}
		c.lastRecv.Store(now())
		switch p.typ {
		case typePublish:
			c.cl.dispatch(c, &p, &ack)
		case typePuback, typeSuback:
			c.complete(p.id, p.code)
		case typePingresp:
		default:
			c.fail(fmt.Errorf("%w: packet type %d after CONNACK", errProtocol, p.typ))
			return
		}
	}
}

// keepalive sends PINGREQ when nothing was sent for a keep-alive interval,
// or nothing was received for one and no PINGREQ is out; and it drops the
// connection when nothing was received for 1.5 intervals while the reader
// was free to read (a reader held up by a full handler queue reads nothing,
// broker alive or not).
func (c *conn) keepalive() {
	defer c.cl.wg.Done()
	ka := c.ka
	var pinged int64 = -1 // now() of the last PINGREQ
	t := time.NewTimer(time.Duration(ka))
	defer t.Stop()
	for {
		select {
		case <-c.dead:
			return
		case <-t.C:
		}
		n := now()
		sent, recv := c.lastSend.Load(), c.lastRecv.Load()
		blocked := c.blocked.Load()
		if !blocked && n-recv >= ka+ka/2 {
			c.fail(errKeepAlive)
			return
		}
		out := pinged >= recv // a PINGREQ waits for its answer
		if n-sent >= ka || (!out && n-recv >= ka) {
			if c.write(pingreq) != nil {
				return
			}
			pinged, sent, out = n, n, true
		}
		next := sent + ka
		if !out {
			next = min(next, recv+ka)
		}
		if !blocked {
			next = min(next, recv+ka+ka/2)
		}
		t.Reset(time.Duration(max(next-n, int64(time.Millisecond))))
	}
}

// shutdown ends the connection cleanly: it waits until the deadline for the
// acknowledgements still out, sends DISCONNECT (so the broker drops the
// will) and closes the socket once that is written, or at the deadline.
func (c *conn) shutdown(deadline time.Time) {
	c.waitIdle(deadline)
	if c.alive() {
		_ = c.write(disconnect)
		flushed := make(chan struct{})
		go func() {
			_ = c.w.Close() // writes what is buffered, then closes
			close(flushed)
		}()
		t := time.NewTimer(time.Until(deadline))
		select {
		case <-flushed:
		case <-t.C:
			_ = c.raw.Close()
			<-flushed
		}
		t.Stop()
	}
	c.fail(errClientClosed)
}
