package bus

import (
	"sync"
	"sync/atomic"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/tinyscada/tinyscada/shared/topics"
)

// queueLimit bounds the messages one subscription holds, waiting or in its
// handler. It matches the broker's default max_inflight (1024): with the
// acknowledgement sent after the handler, the broker stops sending QoS 1
// messages before a queue fills, so a blocked handler holds up paho's
// reader only when QoS 0 messages pile up. Each queue has its copy, which
// a test lowers on one subscription.
const queueLimit = 1024

// item is one message on its way to a handler.
type item struct {
	topic   string
	payload []byte
	ack     *ackEntry // nil for QoS 0
}

// subscription is a filter's handler with its queue and goroutine.
type subscription struct {
	filter string
	q      queue
	on     *link // the connection it was last subscribed on; under Client.mu

	mu  sync.Mutex
	qos byte
	h   Handler
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

func (cl *Client) newSubscription(filter string) *subscription {
	s := &subscription{filter: filter, q: newQueue()}
	cl.hwg.Add(1)
	go cl.handle(s)
	return s
}

// handle runs s's handler on its queue until Close.
func (cl *Client) handle(s *subscription) {
	defer cl.hwg.Done()
	quit := cl.ctx.Done()
	for {
		batch := s.q.take(quit)
		if batch == nil {
			return
		}
		_, h := s.get()
		for i := range batch {
			it := &batch[i]
			h(it.topic, it.payload)
			if it.ack != nil {
				it.ack.release()
			}
			s.q.done()
			select {
			case <-quit:
				return
			default:
			}
		}
		s.q.recycle(batch)
	}
}

// dispatch is paho's default publish handler, the one entry of every
// message: paho calls it on its router goroutine, one message at a time in
// the order they came (OrderMatters). It queues the message for every
// subscription it matches, else for the default handler, else only
// acknowledges it. paho routes nothing itself: a message matching several
// subscriptions is acknowledged once, after the last of its handlers.
func (cl *Client) dispatch(_ mqtt.Client, m mqtt.Message) {
	l := cl.cur.Load()
	topic := m.Topic()
	var hits [4]*subscription
	matched := hits[:0]
	for _, s := range *cl.routes.Load() {
		if topics.Match(s.filter, topic) {
			matched = append(matched, s)
		}
	}
	if len(matched) == 0 && cl.def != nil {
		matched = append(matched, cl.def)
	}
	var e *ackEntry
	if m.Qos() > 0 {
		e = l.acks.push(m, len(matched))
		if len(matched) == 0 {
			e.release()
			return
		}
	}
	it := item{topic: topic, payload: m.Payload(), ack: e}
	for _, s := range matched {
		if !s.q.put(it, l, cl.ctx.Done()) {
			// The connection or the client ended while a queue was
			// full: the broker sends a QoS 1 message again on a
			// persistent session; nothing else can be done.
			return
		}
	}
}

// ackEntry is a QoS 1 or 2 message waiting for its handlers, in its
// connection's acknowledgement order.
type ackEntry struct {
	q    *ackQueue
	m    mqtt.Message
	refs atomic.Int32 // handlers still to return
	done bool         // under q.mu
	next *ackEntry
}

// release counts one of e's handlers as returned; after the last one, e
// is acknowledged as soon as every earlier message was.
func (e *ackEntry) release() {
	if e.refs.Add(-1) <= 0 {
		e.q.finish(e)
	}
}

// ackQueue sends a connection's acknowledgements in the order its messages
// came [MQTT-4.6.0-2], although per-subscription handlers finish them out
// of order: paho acknowledges a message when Ack is called, whatever came
// before it. One connection's queue: a message of a connection that was
// lost holds back nothing on the next (its Ack goes nowhere; paho drops
// it).
type ackQueue struct {
	mu         sync.Mutex
	head, tail *ackEntry
	draining   bool
}

// push appends m with refs handlers to run; refs 0 is released by the
// caller at once.
func (q *ackQueue) push(m mqtt.Message, refs int) *ackEntry {
	e := &ackEntry{q: q, m: m}
	e.refs.Store(int32(max(refs, 1)))
	q.mu.Lock()
	if q.tail == nil {
		q.head = e
	} else {
		q.tail.next = e
	}
	q.tail = e
	q.mu.Unlock()
	return e
}

// finish marks e handled and acknowledges the handled messages at the head
// of the queue. One goroutine at a time does (draining), outside the lock,
// so the acknowledgements leave in order while paho may block on them.
func (q *ackQueue) finish(e *ackEntry) {
	q.mu.Lock()
	e.done = true
	if q.draining {
		q.mu.Unlock()
		return
	}
	q.draining = true
	for q.head != nil && q.head.done {
		var ready []mqtt.Message
		for q.head != nil && q.head.done {
			ready = append(ready, q.head.m)
			q.head = q.head.next
		}
		if q.head == nil {
			q.tail = nil
		}
		q.mu.Unlock()
		for _, m := range ready {
			m.Ack()
		}
		q.mu.Lock()
	}
	q.draining = false
	q.mu.Unlock()
}

// queue is a bounded FIFO with one producer (paho's router goroutine) and
// one consumer (the subscription's goroutine), which takes everything
// waiting at once.
type queue struct {
	mu    sync.Mutex
	items []item
	spare []item
	n     int  // items waiting or being handled
	limit int  // queueLimit
	full  bool // the producer waits for room
	wake  chan struct{}
	room  chan struct{}
}

func newQueue() queue {
	return queue{limit: queueLimit, wake: make(chan struct{}, 1), room: make(chan struct{}, 1)}
}

// put appends it, waiting while the queue is full; l is then marked held
// (it keeps the broker's keep-alive going by itself meanwhile, link.go).
// It returns false when l or the client ended meanwhile.
func (q *queue) put(it item, l *link, quit <-chan struct{}) bool {
	q.mu.Lock()
	for q.n >= q.limit {
		q.full = true
		q.mu.Unlock()
		l.hold(true)
		select {
		case <-q.room:
		case <-l.dead:
			l.hold(false)
			return false
		case <-quit:
			l.hold(false)
			return false
		}
		l.hold(false)
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
