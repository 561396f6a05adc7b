// Package bus connects a role to the tinyscada broker: it retries with
// backoff until the broker is there, sets the last will, restores
// subscriptions and runs the role's hook after every (re)connect.
package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/tinyscada/tinyscada/shared/connbuf"
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
	// KeepAlive is the MQTT keep-alive; RetryMax caps the reconnect backoff.
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

// Handler receives a message. It runs on its own goroutine per message
// (paho's OrderMatters is off so a slow handler cannot stall the client).
type Handler func(topic string, payload []byte)

// Client is a connected MQTT client. Its methods are safe for concurrent use.
type Client struct {
	opts Options
	c    mqtt.Client
	log  *slog.Logger

	mu   sync.Mutex
	subs map[string]subscription
}

type subscription struct {
	qos byte
	h   Handler
}

const (
	connectTimeout = 5 * time.Second
	// writeTimeout bounds one write to the broker's socket (connbuf).
	writeTimeout = 10 * time.Second
)

// dialBroker opens the connection paho speaks MQTT on, buffered both ways
// (connbuf.Client): paho reads a packet header a byte at a time and writes
// every packet with its own syscall, which made the client side of the bus
// the bottleneck of ingest (docs/logger.md, "Throughput").
func dialBroker(u *url.URL, _ mqtt.ClientOptions) (net.Conn, error) {
	network, addr := "tcp", u.Host
	if u.Scheme == "unix" {
		network, addr = "unix", u.Path
	}
	c, err := net.DialTimeout(network, addr, connectTimeout)
	if err != nil {
		return nil, err
	}
	return connbuf.Client(c, writeTimeout), nil
}

// ErrClosed is returned by Dial when ctx ends before the broker answered;
// test with errors.Is.
var ErrClosed = errors.New("bus: gave up connecting")

// BrokerURL turns a configured address (host:port or unix:PATH) into the URL
// paho dials.
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
// error) when ctx ended first; or an error at once for a bad address. After
// Dial the client reconnects by itself.
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
	cl := &Client{opts: opts, log: opts.Log, subs: map[string]subscription{}}
	mo := mqtt.NewClientOptions().
		AddBroker(u).
		SetClientID(opts.ClientID).
		SetCleanSession(opts.CleanSession).
		SetOrderMatters(false).
		SetKeepAlive(opts.KeepAlive).
		SetPingTimeout(opts.KeepAlive / 2).
		SetConnectTimeout(connectTimeout).
		SetCustomOpenConnectionFn(dialBroker).
		SetAutoReconnect(true).
		SetMaxReconnectInterval(opts.RetryMax).
		SetConnectRetry(false).
		SetOnConnectHandler(func(mqtt.Client) { go cl.connected() }).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) {
			cl.log.Warn("lost broker connection", "err", err)
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
	if h := opts.DefaultHandler; h != nil {
		mo.SetDefaultPublishHandler(func(_ mqtt.Client, m mqtt.Message) { h(m.Topic(), m.Payload()) })
	}
	if w := opts.Will; w != nil {
		mo.SetBinaryWill(w.Topic, w.Payload, w.QoS, w.Retain)
	}
	cl.c = mqtt.NewClient(mo)

	backoff := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		tok := cl.c.Connect()
		select {
		case <-tok.Done():
		case <-ctx.Done():
			cl.c.Disconnect(0)
			return nil, fmt.Errorf("%w: %w", ErrClosed, ctx.Err())
		}
		err := tok.Error()
		if err == nil {
			return cl, nil
		}
		if attempt == 1 || attempt%10 == 0 {
			cl.log.Info("broker not reachable yet, retrying", "address", opts.Address, "attempt", attempt, "err", err)
		}
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("%w after %d attempts: %w (last: %v)", ErrClosed, attempt, ctx.Err(), err)
		}
		backoff = min(backoff*2, opts.RetryMax)
	}
}

// connected restores the subscriptions and runs the OnConnect hook.
func (cl *Client) connected() {
	cl.mu.Lock()
	subs := make(map[string]subscription, len(cl.subs))
	for f, s := range cl.subs {
		subs[f] = s
	}
	cl.mu.Unlock()
	for f, s := range subs {
		if err := cl.subscribe(f, s); err != nil {
			cl.log.Warn("re-subscribe failed", "filter", f, "err", err)
		}
	}
	if cl.opts.OnConnect != nil {
		cl.opts.OnConnect(cl)
	}
}

func (cl *Client) subscribe(filter string, s subscription) error {
	tok := cl.c.Subscribe(filter, s.qos, func(_ mqtt.Client, m mqtt.Message) {
		s.h(m.Topic(), m.Payload())
	})
	if !tok.WaitTimeout(10 * time.Second) {
		return fmt.Errorf("subscribe %q: no answer from broker", filter)
	}
	if err := tok.Error(); err != nil {
		return fmt.Errorf("subscribe %q: %w", filter, err)
	}
	return nil
}

// Subscribe subscribes now and after every reconnect. It returns the error
// of the first attempt; the subscription is kept for reconnects either way.
func (cl *Client) Subscribe(filter string, qos byte, h Handler) error {
	s := subscription{qos: qos, h: h}
	cl.mu.Lock()
	cl.subs[filter] = s
	cl.mu.Unlock()
	return cl.subscribe(filter, s)
}

// Publish sends a message and, for QoS ≥ 1, waits until the broker
// acknowledged it or ctx ended. A nil error is not proof of delivery when the
// connection drops at that moment (paho #563): data safety rests on the
// end-to-end acknowledgements, not on this.
func (cl *Client) Publish(ctx context.Context, m Message) error {
	tok := cl.c.Publish(m.Topic, m.QoS, m.Retain, m.Payload)
	if m.QoS == 0 {
		return nil
	}
	select {
	case <-tok.Done():
		if err := tok.Error(); err != nil {
			return fmt.Errorf("publish %s: %w", m.Topic, err)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("publish %s: %w", m.Topic, ctx.Err())
	}
}

// Connected reports whether the client is connected right now.
func (cl *Client) Connected() bool { return cl.c.IsConnectionOpen() }

// Close disconnects cleanly (the broker does not publish the will), waiting
// at most 250 ms for in-flight work.
func (cl *Client) Close() { cl.c.Disconnect(250) }
