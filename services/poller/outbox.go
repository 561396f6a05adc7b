package poller

import (
	"sync"
	"time"
)

// Outbox keeps every data message until the logger acknowledges it. It is
// bounded: when it is full, Reserve fails and the caller does not take the
// sample (back-pressure); nothing in it is ever dropped unacknowledged.
// Sequence numbers are given in the order messages are added, starting at
// 1, so an acknowledgement of seq N covers a prefix of the outbox. It is
// safe for concurrent use.
type Outbox struct {
	max int

	mu       sync.Mutex
	items    []outItem // by seq; items[head:] are live
	head     int
	reserved int
	seq      uint64 // last seq given
	acked    uint64 // highest seq acknowledged
}

type outItem struct {
	seq     uint64
	topic   string
	payload []byte
	added   time.Time // when it was added (monotonic)
	sent    time.Time // when it was last published; zero: due now
	// published says it was published at least once.
	published bool
}

// NewOutbox returns an empty outbox that holds at most max messages.
func NewOutbox(max int) *Outbox {
	return &Outbox{max: max}
}

// Reserve takes a place for one message: true if there is room (then the
// caller must Add or Release exactly once), false if the outbox is full.
func (o *Outbox) Reserve() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.items)-o.head+o.reserved >= o.max {
		return false
	}
	o.reserved++
	return true
}

// Release gives back a place taken by Reserve and not used.
func (o *Outbox) Release() {
	o.mu.Lock()
	o.reserved--
	o.mu.Unlock()
}

// Add stores a message in a place taken by Reserve. build is called under
// the outbox's lock with the message's sequence number and must return the
// payload, which the outbox keeps (do not reuse it). Add returns the
// sequence number.
func (o *Outbox) Add(topic string, now time.Time, build func(seq uint64) []byte) uint64 {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.reserved--
	o.seq++
	o.items = append(o.items, outItem{seq: o.seq, topic: topic, payload: build(o.seq), added: now})
	return o.seq
}

// Ack drops every message with a sequence number up to seq and returns
// how many it dropped.
func (o *Outbox) Ack(seq uint64) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	if seq > o.acked {
		o.acked = min(seq, o.seq)
	}
	n := 0
	for o.head < len(o.items) && o.items[o.head].seq <= seq {
		o.items[o.head] = outItem{} // let the payload go
		o.head++
		n++
	}
	// Compact once the dead prefix is half the slice.
	if o.head > 0 && o.head >= len(o.items)/2 {
		k := copy(o.items, o.items[o.head:])
		clear(o.items[k:])
		o.items = o.items[:k]
		o.head = 0
	}
	return n
}

// Due returns up to limit messages to publish now: those never published,
// and those published longer than resend ago and still not acknowledged,
// oldest first. It marks them published at now. The payloads must not be
// modified.
func (o *Outbox) Due(now time.Time, resend time.Duration, limit int, dst []Pending) []Pending {
	o.mu.Lock()
	defer o.mu.Unlock()
	for i := o.head; i < len(o.items) && len(dst) < limit; i++ {
		it := &o.items[i]
		if !it.sent.IsZero() && now.Sub(it.sent) < resend {
			continue
		}
		resent := it.published
		it.sent, it.published = now, true
		dst = append(dst, Pending{Seq: it.seq, Topic: it.topic, Payload: it.payload, Resent: resent})
	}
	return dst
}

// Fresh returns how many messages at the end of the outbox were never
// published (the rounds since the sender last ran), counting up to max.
func (o *Outbox) Fresh(max int) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := 0
	for i := len(o.items) - 1; i >= o.head && n < max && !o.items[i].published; i-- {
		n++
	}
	return n
}

// Unsent marks every message as not yet published, so that Due returns
// all of them (after a reconnect: the broker kept nothing).
func (o *Outbox) Unsent() {
	o.mu.Lock()
	defer o.mu.Unlock()
	for i := o.head; i < len(o.items); i++ {
		o.items[i].sent = time.Time{}
	}
}

// Retry marks message seq as not yet published (its publication failed).
func (o *Outbox) Retry(seq uint64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for i := o.head; i < len(o.items); i++ {
		if o.items[i].seq == seq {
			o.items[i].sent = time.Time{}
			return
		}
	}
}

// Pending is a message to publish.
type Pending struct {
	Seq     uint64
	Topic   string
	Payload []byte
	Resent  bool // it was published before (not acknowledged in time, or a reconnect)
}

// OutboxStats is a snapshot of an Outbox.
type OutboxStats struct {
	Depth  int           // messages waiting for their acknowledgement
	Oldest time.Duration // age of the oldest of them; 0 when empty
	Seq    uint64        // last sequence number given
	Acked  uint64        // highest sequence number acknowledged
	Full   bool          // no room for another message
}

// Stats returns the outbox's state at now.
func (o *Outbox) Stats(now time.Time) OutboxStats {
	o.mu.Lock()
	defer o.mu.Unlock()
	s := OutboxStats{Depth: len(o.items) - o.head, Seq: o.seq, Acked: o.acked}
	if s.Depth > 0 {
		s.Oldest = now.Sub(o.items[o.head].added)
	}
	s.Full = s.Depth+o.reserved >= o.max
	return s
}
