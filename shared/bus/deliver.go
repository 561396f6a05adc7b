package bus

import (
	"sync"
	"sync/atomic"
)

// queueLimit bounds the messages one subscription holds, waiting or in its
// handler. It matches the broker's default max_inflight (1024): with the
// acknowledgement sent after the handler, the broker stops sending QoS 1
// messages before a queue fills, so a blocked handler holds up the network
// reader only when QoS 0 messages pile up. A variable for the tests.
var queueLimit = 1024

// item is one message on its way to a handler.
type item struct {
	topic   string
	payload []byte
	c       *conn         // the connection it came on, for the PUBACK
	refs    *atomic.Int32 // handlers still to run when several subscriptions match
	id      uint16
	qos     byte
}

// subscription is a filter's handler with its queue and goroutine.
type subscription struct {
	filter string
	q      queue

	mu  sync.Mutex
	qos byte
	h   Handler

	ack [4]byte // PUBACK buffer of the handler goroutine
}

func (s *subscription) set(qos byte, h Handler) {
	s.mu.Lock()
	s.qos, s.h = qos, h
	s.mu.Unlock()
}

func (s *subscription) get() (byte, Handler) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.qos, s.h
}

// queue is a bounded FIFO with one producer (the connection's reader) and
// one consumer (the subscription's goroutine), which takes everything
// waiting at once.
type queue struct {
	mu    sync.Mutex
	items []item
	spare []item
	n     int  // items waiting or being handled
	full  bool // the producer waits for room
	wake  chan struct{}
	room  chan struct{}
}

func newQueue() queue {
	return queue{wake: make(chan struct{}, 1), room: make(chan struct{}, 1)}
}

// put appends it, waiting while the queue is full; the connection's reader
// is then marked blocked (no keepalive timeout while a handler holds it up).
// It returns false when c died meanwhile.
func (q *queue) put(it item, c *conn) bool {
	q.mu.Lock()
	for q.n >= queueLimit {
		q.full = true
		q.mu.Unlock()
		c.blocked.Store(true)
		select {
		case <-q.room:
		case <-c.dead:
			c.blocked.Store(false)
			return false
		}
		c.lastRecv.Store(now())
		c.blocked.Store(false)
		q.mu.Lock()
	}
	q.n++
	q.items = append(q.items, it)
	first := len(q.items) == 1
	q.mu.Unlock()
	if first {
		select {
		case q.wake <- struct{}{}:
		default:
		}
	}
	return true
}

// take returns everything waiting, blocking until there is something or
// quit is closed (then nil). Give the batch back with recycle.
func (q *queue) take(quit <-chan struct{}) []item {
	for {
		q.mu.Lock()
		if len(q.items) > 0 {
			b := q.items
			q.items, q.spare = q.spare, nil
			q.mu.Unlock()
			return b
		}
		q.mu.Unlock()
		select {
		case <-q.wake:
		case <-quit:
			return nil
		}
	}
}

// done counts one item of a taken batch as handled.
func (q *queue) done() {
	q.mu.Lock()
	q.n--
	full := q.full
	q.full = false
	q.mu.Unlock()
	if full {
		select {
		case q.room <- struct{}{}:
		default:
		}
	}
}

// recycle hands a handled batch's storage back.
func (q *queue) recycle(b []item) {
	clear(b)
	q.mu.Lock()
	if q.spare == nil {
		q.spare = b[:0]
	}
	q.mu.Unlock()
}
