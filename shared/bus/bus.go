// Package bus connects a role to the tinyscada broker: it retries with
// backoff until the broker is there, sets the last will, restores
// subscriptions and runs the role's hook after every (re)connect. It speaks
// MQTT 3.1.1 itself (QoS 0 and 1), over TCP or a unix socket.
package bus

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tinyscada/tinyscada/shared/topics"
)

// Message is one MQTT message to send.
type Message struct {
	Topic   string
	QoS     byte
	Retain  bool
	Payload []byte
}

// Publisher sends one message. *Client is one; so is the broker's
// in-process client (through an adapter), and tests give their own.
type Publisher interface {
	Publish(ctx context.Context, m Message) error
}

// Conn is a Publisher that also says whether its connection is up: a change
// from down to up means the broker kept nothing for this client, so what it
// must hold (an outbox, retained states) is published again. *Client is one.
type Conn interface {
	Publisher
	Connected() bool
}

// Credentials returns the username and password to connect with. It is
// called before every connection attempt, so a credential file that appears
// later (the broker creates them on its first start) is picked up.
type Credentials func() (user, pass string, err error)

// Options configure a Client.
type Options struct {
	// Address is host:port for TCP or unix:PATH for a unix socket.
	Address string
	// ClientID identifies the session; a stable id with CleanSession false
	// keeps QoS 1 messages queued by the broker while the client is away.
	ClientID     string
	CleanSession bool
	Credentials  Credentials
	// Will is published by the broker when the connection is lost.
	Will *Message
	// KeepAlive is the MQTT keep-alive, in whole seconds (30 s when zero);
	// RetryMax caps the reconnect backoff (5 s when zero).
	KeepAlive time.Duration
	RetryMax  time.Duration
	// OnConnect runs after every successful (re)connect, after the
	// subscriptions are restored, in its own goroutine.
	OnConnect func(*Client)
	// DefaultHandler, when set, receives messages that match no
	// subscription made with Subscribe yet: with CleanSession false the
	// broker sends the messages it queued for the session right after
	// connecting, before Subscribe registered a handler. Without it they
	// are acknowledged and dropped.
	DefaultHandler Handler
	Log            *slog.Logger
}

// Handler receives a message. Every subscription, and the default handler,
// has its own goroutine and bounded queue: a subscription's messages reach
// its handler one at a time and in order, and a slow handler holds up its
// own subscription only. A message that matches several subscriptions
// reaches each. When a queue is full (1024 messages) the client stops
// reading from the broker until there is room (TCP back-pressure);
// keep-alive goes on meanwhile, so a handler may block for long, but no
// acknowledgement is read either: a handler that waits for a QoS 1 Publish
// of its own may then wait until that Publish's ctx ends. The payload is
// the handler's to keep. A QoS 1 message is acknowledged when its handler
// returned, so the broker's in-flight limit paces delivery.
type Handler func(topic string, payload []byte)

// Client is a connected MQTT client. Its methods are safe for concurrent use.
type Client struct {
	opts      Options
	log       *slog.Logger
	network   string
	addr      string
	keepAlive time.Duration // opts.KeepAlive in whole seconds, as sent

	// ctx ends at Close: it stops reconnecting and the handlers.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // supervisor, readers, keep-alive loops
	hwg    sync.WaitGroup // handler goroutines

	cur    atomic.Pointer[conn] // nil while disconnected
	routes atomic.Pointer[[]*subscription]
	def    *subscription // the DefaultHandler's; nil without one

	mu     sync.Mutex
	closed bool
	up     chan struct{} // closed while connected, replaced on loss
	subs   map[string]*subscription
}

// ErrClosed is returned by Dial when ctx ends before the broker answered;
// test with errors.Is.
var ErrClosed = errors.New("bus: gave up connecting")

// BrokerURL turns a configured address (host:port or unix:PATH) into a URL
// (tcp://host:port or unix://PATH), the form MQTT tools print; it returns an
// error for an empty address or socket path.
func BrokerURL(addr string) (string, error) {
	if p, ok := strings.CutPrefix(addr, "unix:"); ok {
		if p == "" {
			return "", fmt.Errorf("bus address %q: empty socket path", addr)
		}
		return (&url.URL{Scheme: "unix", Path: p}).String(), nil
	}
	if addr == "" {
		return "", errors.New("bus address is empty")
	}
	return "tcp://" + addr, nil
}

// Dial connects to the broker, retrying with exponential backoff (100 ms up
// to opts.RetryMax) until it succeeds or ctx ends. It returns (client, nil)
// once connected; (nil, error wrapping ErrClosed and the last connection
// error) when ctx ended first; or an error at once for a bad address (or a
// will or client id MQTT cannot carry). A refusal by the broker (a CONNACK
// return code, such as bad user name or password) is a connection error
// like any other, named in the last error. After Dial the client
// reconnects by itself, with the same backoff, until Close.
func Dial(ctx context.Context, opts Options) (*Client, error) {
	if _, err := BrokerURL(opts.Address); err != nil {
		return nil, err
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.RetryMax <= 0 {
		opts.RetryMax = 5 * time.Second
	}
	if opts.KeepAlive <= 0 {
		opts.KeepAlive = 30 * time.Second
	}
	f := connectFields{clientID: opts.ClientID, will: opts.Will}
	if err := f.check(); err != nil {
		return nil, err
	}
	cl := &Client{
		opts:      opts,
		log:       opts.Log,
		network:   "tcp",
		addr:      opts.Address,
		keepAlive: time.Duration(min(max((opts.KeepAlive+time.Second/2)/time.Second, 1), 0xffff)) * time.Second,
		up:        make(chan struct{}),
		subs:      map[string]*subscription{},
	}
	if p, ok := strings.CutPrefix(opts.Address, "unix:"); ok {
		cl.network, cl.addr = "unix", p
	}
	cl.ctx, cl.cancel = context.WithCancel(context.Background())
	cl.routes.Store(&[]*subscription{})
	if h := opts.DefaultHandler; h != nil {
		cl.def = cl.newSubscription("")
		cl.def.set(1, h)
	}

	backoff := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		c, err := cl.connect(ctx)
		if err == nil {
			cl.wg.Add(1)
			go cl.supervise(c)
			return cl, nil
		}
		if ctx.Err() != nil {
			cl.Close()
			return nil, fmt.Errorf("%w after %d attempts: %w (last: %v)", ErrClosed, attempt, ctx.Err(), err)
		}
		if attempt == 1 || attempt%10 == 0 {
			cl.log.Info("broker not reachable yet, retrying", "address", opts.Address, "attempt", attempt, "err", err)
		}
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			cl.Close()
			return nil, fmt.Errorf("%w after %d attempts: %w (last: %v)", ErrClosed, attempt, ctx.Err(), err)
		}
		backoff = min(backoff*2, opts.RetryMax)
	}
}

// connect makes one connection attempt: dial, CONNECT, CONNACK within
// connectTimeout. On success the connection is the client's current one,
// with its reader and keep-alive loops running and the subscriptions being
// restored.
func (cl *Client) connect(ctx context.Context) (*conn, error) {
	f := connectFields{
		clientID:  cl.opts.ClientID,
		clean:     cl.opts.CleanSession,
		keepAlive: uint16(cl.keepAlive / time.Second),
		will:      cl.opts.Will,
	}
	if cl.opts.Credentials != nil {
		user, pass, err := cl.opts.Credentials()
		if err != nil {
			cl.log.Warn("no bus credentials", "err", err)
		}
		f.user, f.pass = user, pass
	}
	if err := f.check(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	var d net.Dialer
	raw, err := d.DialContext(ctx, cl.network, cl.addr)
	if err != nil {
		return nil, err
	}
	// The socket closes when ctx ends during the handshake.
	stop := context.AfterFunc(ctx, func() { _ = raw.Close() })
	r := bufio.NewReaderSize(raw, readBufferSize)
	p, err := cl.handshake(raw, r, &f)
	if !stop() {
		_ = raw.Close()
		return nil, fmt.Errorf("no CONNACK: %w", ctx.Err())
	}
	if err != nil {
		_ = raw.Close()
		return nil, err
	}
	if p.code != 0 {
		_ = raw.Close()
		return nil, &refusedError{p.code}
	}
	c := newConn(cl, raw, r)
	if !cl.attach(c) {
		c.fail(errClientClosed)
		return nil, errClientClosed
	}
	return c, nil
}

func (cl *Client) handshake(raw net.Conn, r *bufio.Reader, f *connectFields) (packet, error) {
	if _, err := raw.Write(appendConnect(nil, f)); err != nil {
		return packet{}, fmt.Errorf("send CONNECT: %w", err)
	}
	p, err := readPacket(r, maxPacket, nil)
	if err != nil {
		return p, fmt.Errorf("waiting for CONNACK: %w", err)
	}
	if p.typ != typeConnack {
		return p, fmt.Errorf("%w: packet type %d before CONNACK", errProtocol, p.typ)
	}
	return p, nil
}

// attach makes c the current connection and starts its loops; false when
// the client was closed meanwhile.
func (cl *Client) attach(c *conn) bool {
	cl.mu.Lock()
	if cl.closed {
		cl.mu.Unlock()
		return false
	}
	cl.cur.Store(c)
	close(cl.up)
	type sub struct {
		filter string
		qos    byte
	}
	subs := make([]sub, 0, len(cl.subs))
	for f, s := range cl.subs {
		qos, _ := s.get()
		subs = append(subs, sub{f, qos})
	}
	cl.wg.Add(2)
	cl.mu.Unlock()
	go c.readLoop()
	go c.keepalive()
	go func() {
		// Restore the subscriptions, then the role's hook.
		for _, s := range subs {
			if err := c.subscribe(s.filter, s.qos); err != nil && c.alive() {
				cl.log.Warn("re-subscribe failed", "filter", s.filter, "err", err)
			}
		}
		if cl.opts.OnConnect != nil && c.alive() {
			cl.opts.OnConnect(cl)
		}
	}()
	return true
}

// detach forgets c as the current connection.
func (cl *Client) detach(c *conn) {
	cl.mu.Lock()
	if cl.cur.CompareAndSwap(c, nil) {
		cl.up = make(chan struct{})
	}
	cl.mu.Unlock()
}

// supervise reconnects after every loss until Close.
func (cl *Client) supervise(c *conn) {
	defer cl.wg.Done()
	for {
		select {
		case <-c.dead:
		case <-cl.ctx.Done():
			return
		}
		if cl.ctx.Err() != nil {
			return
		}
		cl.log.Warn("lost broker connection", "err", c.err)
		backoff := 100 * time.Millisecond
		for attempt := 1; ; attempt++ {
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-cl.ctx.Done():
				t.Stop()
				return
			}
			var err error
			if c, err = cl.connect(cl.ctx); err == nil {
				cl.log.Info("reconnected to broker", "attempts", attempt)
				break
			}
			if cl.ctx.Err() != nil {
				return
			}
			if attempt == 1 || attempt%10 == 0 {
				cl.log.Info("broker not reachable, retrying", "address", cl.opts.Address, "attempt", attempt, "err", err)
			}
			backoff = min(backoff*2, cl.opts.RetryMax)
		}
	}
}

// connection returns the current connection, waiting for one until ctx
// ends or the client is closed.
func (cl *Client) connection(ctx context.Context) (*conn, error) {
	for {
		if c := cl.cur.Load(); c != nil {
			return c, nil
		}
		cl.mu.Lock()
		closed, up := cl.closed, cl.up
		cl.mu.Unlock()
		if closed {
			return nil, errClientClosed
		}
		select {
		case <-up:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-cl.ctx.Done():
			return nil, errClientClosed
		}
	}
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
			if it.qos == 1 && (it.refs == nil || it.refs.Add(-1) == 0) {
				it.c.puback(&s.ack, it.id)
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

// dispatch queues an incoming message for every subscription it matches,
// else for the default handler, else acknowledges and drops it. It runs on
// c's reader, with ack as its PUBACK buffer.
func (cl *Client) dispatch(c *conn, p *packet, ack *[4]byte) {
	var hits [4]*subscription
	matched := hits[:0]
	for _, s := range *cl.routes.Load() {
		if topics.Match(s.filter, p.topic) {
			matched = append(matched, s)
		}
	}
	if len(matched) == 0 {
		if cl.def == nil {
			if p.qos == 1 {
				c.puback(ack, p.id)
			}
			return
		}
		matched = append(matched, cl.def)
	}
	it := item{topic: p.topic, payload: p.payload, c: c, id: p.id, qos: p.qos}
	if len(matched) > 1 && p.qos == 1 {
		it.refs = new(atomic.Int32)
		it.refs.Store(int32(len(matched)))
	}
	for _, s := range matched {
		if !s.q.put(it, c) {
			return
		}
	}
}

// Subscribe subscribes now and after every reconnect. It returns the error
// of the first attempt (also when not connected right now); the
// subscription is kept for reconnects either way. A QoS above 1 is asked
// as 1. Subscribing to a filter again replaces its handler.
func (cl *Client) Subscribe(filter string, qos byte, h Handler) error {
	if filter == "" || len(filter) > 0xffff {
		return fmt.Errorf("subscribe %q: filter of %d bytes (want 1 to 65535)", filter, len(filter))
	}
	qos = min(qos, 1)
	cl.mu.Lock()
	if cl.closed {
		cl.mu.Unlock()
		return fmt.Errorf("subscribe %q: %w", filter, errClientClosed)
	}
	s := cl.subs[filter]
	if s == nil {
		s = cl.newSubscription(filter)
		cl.subs[filter] = s
		routes := append(append([]*subscription(nil), *cl.routes.Load()...), s)
		cl.routes.Store(&routes)
	}
	s.set(qos, h)
	c := cl.cur.Load()
	cl.mu.Unlock()
	if c == nil {
		return fmt.Errorf("subscribe %q: not connected", filter)
	}
	return c.subscribe(filter, qos)
}

// Publish sends a message and, for QoS 1, waits until the broker
// acknowledged it or ctx ended. While the client is reconnecting, a QoS 0
// message is dropped (nil error: at most once) and a QoS 1 message waits
// for the connection. A QoS 1 message is never sent again by the client:
// when the connection drops before the acknowledgement, Publish returns an
// error although the broker may have it; and a nil error is no proof of
// delivery to a subscriber either. Data safety rests on the end-to-end
// acknowledgements, not on this. QoS 2 is not supported (an error).
func (cl *Client) Publish(ctx context.Context, m Message) error {
	s, err := cl.Send(ctx, m)
	if err != nil {
		return err
	}
	return s.Wait(ctx)
}

// Sent is a message Send handed to the broker's socket (a value: nothing is
// allocated for it); Wait waits for the broker's acknowledgement of a QoS 1
// message.
type Sent struct {
	c     *conn
	w     *waiter
	id    uint16
	topic string
}

// Send is Publish without the wait for the acknowledgement: it writes m
// now, in the order of the calls like Publish, and returns. Call Wait on
// the result exactly once. A producer keeps many QoS 1 messages in flight
// on one connection this way instead of one round trip each; the rules of
// Publish hold for each message (a QoS 1 message waits in Send while the
// client is reconnecting, and is never sent again).
func (cl *Client) Send(ctx context.Context, m Message) (Sent, error) {
	if err := checkPublish(m.Topic, m.QoS, len(m.Payload)); err != nil {
		return Sent{}, fmt.Errorf("publish %s: %w", m.Topic, err)
	}
	if m.QoS == 0 {
		c := cl.cur.Load()
		if c == nil {
			if cl.ctx.Err() != nil {
				return Sent{}, fmt.Errorf("publish %s: %w", m.Topic, errClientClosed)
			}
			return Sent{}, nil
		}
		if err := cl.send(c, m, 0); err != nil {
			return Sent{}, fmt.Errorf("publish %s: %w", m.Topic, err)
		}
		return Sent{}, nil
	}
	for {
		c, err := cl.connection(ctx)
		if err != nil {
			return Sent{}, fmt.Errorf("publish %s: %w", m.Topic, err)
		}
		id, w, err := c.register()
		if err != nil {
			return Sent{}, fmt.Errorf("publish %s: %w", m.Topic, err)
		}
		if err := cl.send(c, m, id); err != nil {
			// Not handed to the socket: try on the next connection.
			if !c.unregister(id, w) {
				<-w.done // a stray ack for the id: keep the waiter clean
			}
			waiters.Put(w)
			continue
		}
		return Sent{c: c, w: w, id: id, topic: m.Topic}, nil
	}
}

// Send sends m through p without waiting for the acknowledgement when p
// can keep messages in flight (a *Client: Client.Send); any other
// Publisher publishes m and waits, and the result's Wait returns at once.
func Send(ctx context.Context, p Publisher, m Message) (Sent, error) {
	if s, ok := p.(interface {
		Send(context.Context, Message) (Sent, error)
	}); ok {
		return s.Send(ctx, m)
	}
	if err := p.Publish(ctx, m); err != nil {
		return Sent{}, err
	}
	return Sent{}, nil
}

// Wait waits until the broker acknowledged the message (at once for QoS
// 0), or ctx ended, or the connection was lost first (an error).
func (s *Sent) Wait(ctx context.Context) error {
	if s.w == nil {
		return nil
	}
	_, err := s.c.wait(ctx, s.id, s.w)
	s.w = nil
	if err != nil {
		return fmt.Errorf("publish %s: %w", s.topic, err)
	}
	return nil
}

func (cl *Client) send(c *conn, m Message, id uint16) error {
	bp := bufs.Get().(*[]byte)
	b := appendPublish((*bp)[:0], m.Topic, m.Payload, m.QoS, m.Retain, false, id)
	err := c.write(b)
	if cap(b) <= 64<<10 {
		*bp = b[:0]
		bufs.Put(bp)
	}
	return err
}

// Connected reports whether the client is connected right now: a CONNACK
// came and the connection was not lost since.
func (cl *Client) Connected() bool { return cl.cur.Load() != nil }

// Close disconnects cleanly (the broker does not publish the will), waiting
// at most 250 ms for in-flight work: the acknowledgements of pending QoS 1
// messages and the DISCONNECT. Pending and later Publish calls return
// errors; the handlers get nothing more. Close does not wait for a handler
// that blocks.
func (cl *Client) Close() {
	cl.mu.Lock()
	if cl.closed {
		cl.mu.Unlock()
		return
	}
	cl.closed = true
	cl.cancel()
	cl.mu.Unlock()
	deadline := time.Now().Add(closeWait)
	if c := cl.cur.Load(); c != nil {
		c.shutdown(deadline)
	}
	cl.wg.Wait()
	done := make(chan struct{})
	go func() {
		cl.hwg.Wait()
		close(done)
	}()
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	}
}
