// Package bus connects a role to the tinyscada broker (or, over TLS, to
// another broker) through paho.mqtt.golang: it retries with backoff until
// the broker is there, sets the last will, restores subscriptions and runs
// the role's hook after every (re)connect, and hands each subscription's
// messages to its handler in order, on a goroutine of its own.
package bus

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"
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
	// Address is host:port for TCP (TLS when TLS is set) or unix:PATH for
	// a unix socket.
	Address string
	// TLS, when set, makes the connection TLS with the broker's
	// certificate verified; see TLS. Not with a unix socket.
	TLS *TLS
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
	// Jitter randomises the backoff between connection attempts (Dial's
	// and the reconnects'), so that many clients that lost one broker do
	// not all come back at the same moment: Dial waits a random time
	// between half the backoff and all of it; before each reconnect
	// attempt up to half the current backoff is added to paho's.
	Jitter bool
	// OnConnectError, when set, is called with the error of every
	// connection attempt that failed (Dial's and the reconnects'), e.g. a
	// certificate that does not verify, so a role can show it.
	OnConnectError func(error)
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
// its handler one at a time and in order. A message that matches several
// subscriptions reaches each. The payload is the handler's to keep.
//
// A QoS 1 message is acknowledged when its handler (every matching one)
// returned, and the acknowledgements go out in the order the messages came
// [MQTT-4.6.0-2]: a handler that blocks holds back the acknowledgements of
// every later QoS 1 message on the connection, so once the broker's
// in-flight window is used up (mosquitto: 20, our broker: max_inflight)
// the broker sends no more QoS 1 messages until it returns; QoS 0 messages
// keep coming to the other subscriptions. When a queue is full (1024
// messages) the client stops reading from the broker until there is room
// (TCP back-pressure); the connection stays up meanwhile (the client keeps
// pinging the broker), but no acknowledgement is read either: a handler
// that waits for a QoS 1 Publish of its own may then wait until that
// Publish's ctx ends.
type Handler func(topic string, payload []byte)

// Client is a connected MQTT client. Its methods are safe for concurrent use.
type Client struct {
	opts    Options
	log     *slog.Logger
	pc      mqtt.Client
	network string
	addr    string
	tls     *tls.Config
	ka      time.Duration // opts.KeepAlive in whole seconds, as sent

	// ctx ends at Close: it stops dialling and the handlers.
	ctx    context.Context
	cancel context.CancelFunc
	hwg    sync.WaitGroup // handler goroutines

	cur    atomic.Pointer[link] // the connection last opened
	routes atomic.Pointer[[]*subscription]
	def    *subscription // the DefaultHandler's; nil without one

	mu      sync.Mutex
	closed  bool
	up      chan struct{} // closed while connected, replaced on loss
	subs    map[string]*subscription
	flights map[*flight]struct{} // QoS 1 and 2 messages sent, not yet waited for
	lastErr error                // of the last connection attempt
	lossN   int                  // reconnect attempts since the last connect (Jitter)
}

const (
	connectTimeout = 5 * time.Second
	// subscribeTimeout bounds the wait for a SUBACK.
	subscribeTimeout = 10 * time.Second
	// writeTimeout bounds one write to the broker's socket, and a Publish
	// waiting for paho's writer.
	writeTimeout = 10 * time.Second
	// closeWait is how long Close waits for acknowledgements and the
	// DISCONNECT to go out.
	closeWait = 250 * time.Millisecond
)

var errClientClosed = errors.New("bus: client closed")

// errLost is Wait's error for a message whose connection was lost before
// its acknowledgement came: paho sends it again on the next connection
// (with DUP set) and then completes its token without error whether or
// not that copy is acknowledged (upstream #563), so the token is no proof.
var errLost = errors.New("bus: connection lost before the broker's acknowledgement (the message may arrive: it is sent again)")

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
// error) when ctx ended first; or an error at once for a bad address, a
// TLS setting that cannot be loaded (an unreadable CA file, say), or a will
// or client id MQTT cannot carry. A refusal by the broker (a CONNACK return
// code, such as bad user name or password) and a certificate that does not
// verify are connection errors like any other, named in the last error.
// After Dial the client reconnects by itself (paho's auto-reconnect, its
// backoff capped at RetryMax) until Close.
func Dial(ctx context.Context, opts Options) (*Client, error) {
	u, err := BrokerURL(opts.Address)
	if err != nil {
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
	if len(opts.ClientID) > 0xffff {
		return nil, fmt.Errorf("bus: client id of %d bytes (at most 65535)", len(opts.ClientID))
	}
	if w := opts.Will; w != nil {
		if err := checkPublish(w.Topic, w.QoS, len(w.Payload)); err != nil {
			return nil, fmt.Errorf("bus: will: %w", err)
		}
		if len(w.Payload) > 0xffff {
			return nil, fmt.Errorf("bus: will payload of %d bytes (at most 65535)", len(w.Payload))
		}
	}
	cl := &Client{
		opts:    opts,
		log:     opts.Log,
		network: "tcp",
		addr:    opts.Address,
		ka:      time.Duration(min(max((opts.KeepAlive+time.Second/2)/time.Second, 1), 0xffff)) * time.Second,
		up:      make(chan struct{}),
		subs:    map[string]*subscription{},
		flights: map[*flight]struct{}{},
	}
	if p, ok := strings.CutPrefix(opts.Address, "unix:"); ok {
		cl.network, cl.addr = "unix", p
	}
	if opts.TLS != nil {
		if cl.network == "unix" {
			return nil, fmt.Errorf("bus address %q: TLS over a unix socket is not supported", opts.Address)
		}
		if cl.tls, err = opts.TLS.config(cl.addr); err != nil {
			return nil, err
		}
		u = "tls://" + cl.addr
	}
	cl.ctx, cl.cancel = context.WithCancel(context.Background())
	cl.routes.Store(&[]*subscription{})
	if h := opts.DefaultHandler; h != nil {
		cl.def = cl.newSubscription("")
		cl.def.set(1, h)
	}

	mo := mqtt.NewClientOptions().
		AddBroker(u).
		SetClientID(opts.ClientID).
		SetCleanSession(opts.CleanSession).
		// 3.1.1 only: paho would retry a refused CONNECT as MQTT 3.1 and
		// report that refusal instead of the real one.
		SetProtocolVersion(4).
		// Order: paho calls dispatch on its router goroutine, in the order
		// the messages came (with OrderMatters false it starts a goroutine
		// per message and the order is lost before our queues see it).
		// dispatch only queues, so it blocks paho only when a queue is full:
		// that is the back-pressure we want.
		SetOrderMatters(true).
		// Acknowledged after the handlers returned, in order (deliver.go).
		SetAutoAckDisabled(true).
		SetDefaultPublishHandler(cl.dispatch).
		SetKeepAlive(cl.ka).
		// paho's ping timeout needs its reader to see the PINGRESP, and the
		// reader waits while a queue is full: the link judges liveness
		// itself (link.go), so paho's check is off.
		SetPingTimeout(math.MaxInt64).
		SetConnectTimeout(connectTimeout).
		SetWriteTimeout(writeTimeout).
		SetCustomOpenConnectionFn(cl.open).
		SetStore(&store{Store: mqtt.NewMemoryStore(), cl: cl}).
		SetAutoReconnect(true).
		SetMaxReconnectInterval(opts.RetryMax).
		// Dial retries itself, with a backoff and the last error at hand
		// (paho's ConnectRetry waits a fixed interval and reports nothing
		// until it gives up).
		SetConnectRetry(false).
		// Subscriptions are restored by onConnect, with their handlers.
		SetResumeSubs(false).
		SetOnConnectHandler(func(mqtt.Client) { cl.onConnect() }).
		SetReconnectingHandler(func(mqtt.Client, *mqtt.ClientOptions) { cl.onLoss() }).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) {
			cl.log.Warn("lost broker connection", "err", err)
		}).
		SetConnectionNotificationHandler(func(_ mqtt.Client, n mqtt.ConnectionNotification) {
			if f, ok := n.(mqtt.ConnectionNotificationFailed); ok {
				cl.mu.Lock()
				cl.lastErr = f.Reason
				cl.mu.Unlock()
				if opts.OnConnectError != nil {
					opts.OnConnectError(f.Reason)
				}
			}
		})
	if opts.Credentials != nil {
		mo.SetCredentialsProvider(func() (string, string) {
			user, pass, err := opts.Credentials()
			if err != nil {
				cl.log.Warn("no bus credentials", "err", err)
			}
			return user, pass
		})
	}
	if w := opts.Will; w != nil {
		mo.SetBinaryWill(w.Topic, w.Payload, w.QoS, w.Retain)
	}
	cl.pc = mqtt.NewClient(mo)

	backoff := 100 * time.Millisecond
	var last error // of the last attempt that finished
	for attempt := 1; ; attempt++ {
		tok := cl.pc.Connect()
		select {
		case <-tok.Done():
		case <-ctx.Done():
			// The attempt under way (its dial ends with cl.ctx) named
			// only when no attempt finished before it.
			if last == nil {
				last = cl.lastError()
			}
			cl.Close()
			return nil, fmt.Errorf("%w after %d attempts: %w (last: %v)", ErrClosed, attempt, ctx.Err(), last)
		}
		err := connectError(tok)
		if err == nil {
			return cl, nil
		}
		last = err
		if attempt == 1 || attempt%10 == 0 {
			cl.log.Info("broker not reachable yet, retrying", "address", opts.Address, "attempt", attempt, "err", err)
		}
		t := time.NewTimer(cl.jittered(backoff, false))
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

// connackReasons are the MQTT 3.1.1 CONNACK refusal codes.
var connackReasons = [...]string{
	1: "unacceptable protocol version",
	2: "identifier rejected",
	3: "server unavailable",
	4: "bad user name or password",
	5: "not authorized",
}

// refusedError is a broker's refusal of the connection: a CONNACK return
// code other than 0.
type refusedError struct {
	code byte
}

func (e *refusedError) Error() string {
	reason := "unknown reason"
	if int(e.code) < len(connackReasons) && connackReasons[e.code] != "" {
		reason = connackReasons[e.code]
	}
	return fmt.Sprintf("broker refused the connection: %s (code %d)", reason, e.code)
}

// connectError is the error of a finished Connect: a refusal named as
// such (paho's own text for it does not say the broker refused), else
// paho's error.
func connectError(tok mqtt.Token) error {
	err := tok.Error()
	if ct, ok := tok.(*mqtt.ConnectToken); ok && err != nil {
		if rc := ct.ReturnCode(); rc != packets.Accepted && rc < packets.ErrNetworkError {
			return &refusedError{rc}
		}
	}
	return err
}

// jittered returns the wait before the next attempt for a backoff of d:
// d itself without Jitter; with it, a random time in [d/2, d], or with
// extra (a reconnect, on top of paho's own wait) in [0, d/2].
func (cl *Client) jittered(d time.Duration, extra bool) time.Duration {
	if !cl.opts.Jitter || d < 2 {
		if extra {
			return 0
		}
		return d
	}
	r := time.Duration(rand.Int64N(int64(d / 2)))
	if extra {
		return r
	}
	return d/2 + r
}

func (cl *Client) lastError() error {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if cl.lastErr == nil {
		return errors.New("no answer yet")
	}
	return cl.lastErr
}

// onConnect runs on paho's OnConnect goroutine after every (re)connect:
// Send may go on, the subscriptions are restored, then the role's hook.
func (cl *Client) onConnect() {
	cl.mu.Lock()
	cl.lossN = 0
	if cl.closed {
		cl.mu.Unlock()
		return
	}
	if cl.pc.IsConnectionOpen() {
		select {
		case <-cl.up:
		default:
			close(cl.up)
		}
	}
	// The subscriptions not made on this connection yet: a Subscribe
	// since the CONNACK made its own.
	l := cl.cur.Load()
	subs := make([]*subscription, 0, len(cl.subs))
	for _, s := range cl.subs {
		if s.on != l {
			s.on = l
			subs = append(subs, s)
		}
	}
	cl.mu.Unlock()
	for _, s := range subs {
		qos, _ := s.get()
		if err := cl.subscribe(s.filter, qos); err != nil && cl.pc.IsConnectionOpen() {
			cl.log.Warn("re-subscribe failed", "filter", s.filter, "err", err)
		}
	}
	if cl.opts.OnConnect != nil && cl.pc.IsConnectionOpen() {
		cl.opts.OnConnect(cl)
	}
}

// onLoss runs on paho's reconnect goroutine before each attempt, after the
// lost connection's readers stopped and before paho sends anything again:
// every acknowledgement of that connection has completed its token by
// now, so a message still waiting is marked lost (see errLost).
func (cl *Client) onLoss() {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	select {
	case <-cl.up:
		cl.up = make(chan struct{})
	default:
	}
	for f := range cl.flights {
		if f.tok == nil || !isDone(f.tok) {
			f.lost = true
		}
	}
	if !cl.opts.Jitter {
		return
	}
	// paho waits 1s, 2s, 4s … up to RetryMax between attempts, the same
	// for every client; a random part of that on top spreads them.
	cl.lossN++
	d := min(time.Second<<min(cl.lossN, 20), cl.opts.RetryMax)
	cl.mu.Unlock()
	t := time.NewTimer(cl.jittered(d, true))
	select {
	case <-t.C:
	case <-cl.ctx.Done():
		t.Stop()
	}
	cl.mu.Lock()
}

// store is paho's memory store, which tells the connection when paho read
// it after connecting (resume on a reconnect or a persistent session, a
// reset on a clean one): from then on a Send is not sent twice.
type store struct {
	mqtt.Store
	cl *Client
}

func (s *store) All() []string {
	keys := s.Store.All()
	s.cl.resumed()
	return keys
}

func (s *store) Reset() {
	s.Store.Reset()
	s.cl.resumed()
}

func (cl *Client) resumed() {
	if l := cl.cur.Load(); l != nil {
		l.resumeOnce.Do(func() { close(l.resumed) })
	}
}

func isDone(t mqtt.Token) bool {
	select {
	case <-t.Done():
		return true
	default:
		return false
	}
}

// Subscribe subscribes now and after every reconnect. It returns the error
// of the first attempt (also when not connected right now); the
// subscription is kept for reconnects either way. Subscribing to a filter
// again replaces its handler.
func (cl *Client) Subscribe(filter string, qos byte, h Handler) error {
	if filter == "" || len(filter) > 0xffff {
		return fmt.Errorf("subscribe %q: filter of %d bytes (want 1 to 65535)", filter, len(filter))
	}
	if qos > 2 {
		return fmt.Errorf("subscribe %q: QoS %d (want 0 to 2)", filter, qos)
	}
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
	open := cl.pc.IsConnectionOpen()
	if open {
		s.on = cl.cur.Load()
	}
	cl.mu.Unlock()
	if !open {
		return fmt.Errorf("subscribe %q: not connected", filter)
	}
	return cl.subscribe(filter, qos)
}

// subscribe sends one SUBSCRIBE and waits for its SUBACK. paho gets no
// handler: every message comes to dispatch (paho's default handler), which
// routes it to the subscriptions itself.
func (cl *Client) subscribe(filter string, qos byte) error {
	tok := cl.pc.Subscribe(filter, qos, nil)
	if !tok.WaitTimeout(subscribeTimeout) {
		return fmt.Errorf("subscribe %q: no answer from broker in %v", filter, subscribeTimeout)
	}
	if err := tok.Error(); err != nil {
		return fmt.Errorf("subscribe %q: %w", filter, err)
	}
	if st, ok := tok.(*mqtt.SubscribeToken); ok {
		switch code := st.Result()[filter]; {
		case code == 0x80:
			return fmt.Errorf("subscribe %q: refused by the broker (SUBACK failure 0x80)", filter)
		case code > 2:
			return fmt.Errorf("subscribe %q: SUBACK return code %#x", filter, code)
		}
	}
	return nil
}

// checkPublish returns an error for a message a PUBLISH cannot carry.
func checkPublish(topic string, qos byte, payload int) error {
	switch {
	case qos > 2:
		return fmt.Errorf("QoS %d (want 0 to 2)", qos)
	case topic == "" || len(topic) > 0xffff:
		return fmt.Errorf("topic of %d bytes (want 1 to 65535)", len(topic))
	case strings.ContainsAny(topic, "+#\x00"):
		return fmt.Errorf("topic %q has a wildcard or NUL", topic)
	case payload > 268435455-2-len(topic)-2:
		return fmt.Errorf("payload of %d bytes too large for MQTT", payload)
	}
	return nil
}

// Publish sends a message and, for QoS 1 and 2, waits until the broker
// acknowledged it or ctx ended. While the client is reconnecting, a QoS 0
// message is dropped (nil error: at most once) and a QoS 1 message waits
// for the connection. When the connection drops before the
// acknowledgement, Publish returns an error, although the broker may have
// the message, and paho sends it again (DUP) on the next connection; a nil
// error is no proof of delivery to a subscriber either. Data safety rests
// on the end-to-end acknowledgements, not on this.
func (cl *Client) Publish(ctx context.Context, m Message) error {
	s, err := cl.Send(ctx, m)
	if err != nil {
		return err
	}
	return s.Wait(ctx)
}

// Sent is a message Send handed to paho; Wait waits for the broker's
// acknowledgement of a QoS 1 or 2 message.
type Sent struct {
	cl    *Client
	f     *flight
	topic string
}

// flight is a QoS 1 or 2 message between Send and Wait.
type flight struct {
	tok  mqtt.Token
	lost bool // still waiting when its connection was lost; under Client.mu
}

// Send is Publish without the wait for the acknowledgement: it hands m to
// paho now, in the order of the calls like Publish, and returns. Call Wait
// on the result exactly once. A producer keeps many QoS 1 messages in
// flight on one connection this way instead of one round trip each; the
// rules of Publish hold for each message (a QoS 1 message waits in Send
// while the client is reconnecting).
func (cl *Client) Send(ctx context.Context, m Message) (Sent, error) {
	if err := checkPublish(m.Topic, m.QoS, len(m.Payload)); err != nil {
		return Sent{}, fmt.Errorf("publish %s: bus: %w", m.Topic, err)
	}
	if m.QoS == 0 {
		cl.mu.Lock()
		closed := cl.closed
		cl.mu.Unlock()
		if closed {
			return Sent{}, fmt.Errorf("publish %s: %w", m.Topic, errClientClosed)
		}
		if cl.pc.IsConnectionOpen() {
			cl.pc.Publish(m.Topic, 0, m.Retain, m.Payload)
		}
		return Sent{}, nil
	}
	f := &flight{}
	for {
		cl.mu.Lock()
		if cl.closed {
			cl.mu.Unlock()
			return Sent{}, fmt.Errorf("publish %s: %w", m.Topic, errClientClosed)
		}
		// Registered while paho is connected: a loss from now on runs
		// onLoss, which sees f. And only once paho read its store after
		// the connect: paho's resume sends what it finds there again and
		// completes the token of each one without its acknowledgement.
		up := cl.up
		if cl.pc.IsConnectionOpen() {
			l := cl.cur.Load()
			select {
			case <-l.resumed:
				cl.flights[f] = struct{}{}
				cl.mu.Unlock()
				goto send
			default:
				up = l.resumed
			}
		}
		cl.mu.Unlock()
		select {
		case <-up:
		case <-ctx.Done():
			return Sent{}, fmt.Errorf("publish %s: %w", m.Topic, ctx.Err())
		case <-cl.ctx.Done():
			return Sent{}, fmt.Errorf("publish %s: %w", m.Topic, errClientClosed)
		}
	}
send:
	tok := cl.pc.Publish(m.Topic, m.QoS, m.Retain, m.Payload)
	cl.mu.Lock()
	f.tok = tok
	cl.mu.Unlock()
	return Sent{cl: cl, f: f, topic: m.Topic}, nil
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
// 0), or ctx ended, or the connection was lost first (an error), or the
// client was closed (an error).
func (s *Sent) Wait(ctx context.Context) error {
	if s.f == nil {
		return nil
	}
	f, cl := s.f, s.cl
	s.f = nil
	var err error
	if !isDone(f.tok) {
		select {
		case <-f.tok.Done():
		case <-ctx.Done():
			err = ctx.Err()
		case <-cl.ctx.Done():
			err = errClientClosed
		}
	}
	cl.mu.Lock()
	delete(cl.flights, f)
	lost := f.lost
	cl.mu.Unlock()
	if err == nil {
		switch {
		case f.tok.Error() != nil:
			err = f.tok.Error()
		case lost:
			err = errLost
		}
	}
	if err != nil {
		return fmt.Errorf("publish %s: %w", s.topic, err)
	}
	return nil
}

// Connected reports whether the client is connected right now: a CONNACK
// came and the connection was not lost since.
func (cl *Client) Connected() bool { return cl.pc.IsConnectionOpen() }

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
	var pending []mqtt.Token
	for f := range cl.flights {
		if f.tok != nil {
			pending = append(pending, f.tok)
		}
	}
	cl.mu.Unlock()
	deadline := time.Now().Add(closeWait)
	for _, t := range pending {
		if !t.WaitTimeout(time.Until(deadline)) {
			break
		}
	}
	// cl.ctx ends a dial in progress, which Disconnect would wait for.
	cl.cancel()
	left := max(time.Until(deadline), time.Millisecond)
	cl.pc.Disconnect(uint(left / time.Millisecond))
	done := make(chan struct{})
	go func() {
		cl.hwg.Wait()
		close(done)
	}()
	t := time.NewTimer(max(time.Until(deadline), 10*time.Millisecond))
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	}
}
