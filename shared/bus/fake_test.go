package bus

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// These tests script the broker's side byte by byte, for what a real
// broker does not do on demand: drop a connection at a chosen packet, go
// silent, send garbage.

// The scripted broker's bytes: MQTT 3.1.1 packet types (the high nibble
// of the first byte) and the few encodings it needs, written out here so
// that the client's packets are checked against something paho did not
// write.
const (
	typeConnect    = 1
	typePublish    = 3
	typePuback     = 4
	typeSubscribe  = 8
	typeSuback     = 9
	typePingreq    = 12
	typeDisconnect = 14
)

// appendLength appends MQTT's variable-length remaining length.
func appendLength(b []byte, n int) []byte {
	for {
		d := byte(n % 128)
		n /= 128
		if n > 0 {
			d |= 0x80
		}
		b = append(b, d)
		if n == 0 {
			return b
		}
	}
}

// readLength reads a remaining length.
func readLength(r *bufio.Reader) (int, error) {
	n, mul := 0, 1
	for i := 0; i < 4; i++ {
		b, err := r.ReadByte()
		if err != nil {
			return 0, err
		}
		n += int(b&0x7f) * mul
		if b&0x80 == 0 {
			return n, nil
		}
		mul *= 128
	}
	return 0, errors.New("remaining length longer than 4 bytes")
}

// appendPublish appends a PUBLISH packet.
func appendPublish(b []byte, topic string, payload []byte, qos byte, retain, dup bool, id uint16) []byte {
	h := byte(typePublish<<4) | qos<<1
	if retain {
		h |= 0x01
	}
	if dup {
		h |= 0x08
	}
	n := 2 + len(topic) + len(payload)
	if qos > 0 {
		n += 2
	}
	b = append(b, h)
	b = appendLength(b, n)
	b = append(b, byte(len(topic)>>8), byte(len(topic)))
	b = append(b, topic...)
	if qos > 0 {
		b = append(b, byte(id>>8), byte(id))
	}
	return append(b, payload...)
}

// fakeBroker accepts connections on a loopback port; each accepted
// connection is handed to the test.
type fakeBroker struct {
	l     net.Listener
	conns chan *fakeConn
}

type fakeConn struct {
	net.Conn
	r *bufio.Reader
}

func newFakeBroker(t *testing.T) *fakeBroker {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fb := &fakeBroker{l: l, conns: make(chan *fakeConn, 10)}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				close(fb.conns)
				return
			}
			fb.conns <- &fakeConn{Conn: c, r: bufio.NewReader(c)}
		}
	}()
	t.Cleanup(func() {
		l.Close()
		for c := range fb.conns {
			c.Close()
		}
	})
	return fb
}

func (fb *fakeBroker) addr() string { return fb.l.Addr().String() }

// accept returns the next connection after reading its CONNECT and
// answering with CONNACK code.
func (fb *fakeBroker) accept(t *testing.T, code byte) *fakeConn {
	t.Helper()
	select {
	case c := <-fb.conns:
		t.Cleanup(func() { c.Close() })
		if h, _ := c.next(t); h>>4 != typeConnect {
			t.Fatalf("first packet of type %d; want CONNECT", h>>4)
		}
		c.send(t, 0x20, 2, 0, code)
		return c
	case <-time.After(15 * time.Second):
		t.Fatal("no connection to the fake broker")
		return nil
	}
}

// next reads one packet from the client: its first byte and the rest after
// the remaining length.
func (c *fakeConn) next(t *testing.T) (byte, []byte) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(15 * time.Second))
	h, err := c.r.ReadByte()
	if err != nil {
		t.Fatalf("fake broker read: %v", err)
	}
	n, err := readLength(c.r)
	if err != nil {
		t.Fatal(err)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(c.r, body); err != nil {
		t.Fatal(err)
	}
	return h, body
}

// nextRaw is next without a test to fail.
func (c *fakeConn) nextRaw() (byte, error) {
	_ = c.SetReadDeadline(time.Now().Add(15 * time.Second))
	h, err := c.r.ReadByte()
	if err != nil {
		return 0, err
	}
	n, err := readLength(c.r)
	if err != nil {
		return 0, err
	}
	_, err = c.r.Discard(n)
	return h, err
}

func (c *fakeConn) send(t *testing.T, b ...byte) {
	t.Helper()
	if _, err := c.Write(b); err != nil {
		t.Fatalf("fake broker write: %v", err)
	}
}

func fakeDial(t *testing.T, fb *fakeBroker, o Options) (*Client, *fakeConn) {
	t.Helper()
	o.Address = fb.addr()
	o.ClientID = "fake"
	o.RetryMax = 100 * time.Millisecond
	type result struct {
		c   *Client
		err error
	}
	done := make(chan result, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		c, err := Dial(ctx, o)
		done <- result{c, err}
	}()
	fc := fb.accept(t, 0)
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(r.c.Close)
	return r.c, fc
}

// A QoS 1 Publish whose connection drops before the PUBACK returns an
// error (paho's token would complete without one, upstream #563), and paho
// sends the message again, marked DUP, on the next connection.
func TestPublishFailsWhenConnectionDrops(t *testing.T) {
	t.Parallel()
	fb := newFakeBroker(t)
	c, fc := fakeDial(t, fb, Options{CleanSession: true})
	errc := make(chan error, 1)
	go func() { errc <- c.Publish(context.Background(), Message{Topic: "d", QoS: 1, Payload: []byte("first")}) }()
	if h, body := fc.next(t); h != typePublish<<4|0x02 || !strings.HasSuffix(string(body), "first") {
		t.Fatalf("got % x % x; want the PUBLISH", h, body)
	}
	fc.Close()
	fc2 := fb.accept(t, 0)
	select {
	case err := <-errc:
		if err == nil {
			t.Fatal("Publish returned nil after the connection dropped before PUBACK")
		}
		t.Logf("Publish: %v", err)
	case <-time.After(15 * time.Second):
		t.Fatal("Publish still waiting after the connection dropped")
	}

	second := make(chan error, 1)
	go func() {
		second <- c.Publish(context.Background(), Message{Topic: "d", QoS: 1, Payload: []byte("second")})
	}()
	// The first again (DUP) and the second, in either order (paho's resend
	// and the new Publish race); each acknowledged.
	seen := map[string]byte{}
	for range 2 {
		h, body := fc2.next(t)
		if h&0xf6 != typePublish<<4|0x02 {
			t.Fatalf("packet % x on the new connection; want a QoS 1 PUBLISH", h)
		}
		p := string(body[5:])
		seen[p] = h
		fc2.send(t, typePuback<<4, 2, body[3], body[4])
	}
	if h, ok := seen["first"]; !ok || h&0x08 == 0 {
		t.Errorf("first message on the new connection: % x (present %v); want it again with DUP", h, ok)
	}
	if h, ok := seen["second"]; !ok || h&0x08 != 0 {
		t.Errorf("second message: % x (present %v); want it once, without DUP", h, ok)
	}
	if err := <-second; err != nil {
		t.Fatal(err)
	}
}

// Close sends DISCONNECT before closing the socket, after the pending
// acknowledgement came.
func TestCloseSendsDisconnect(t *testing.T) {
	t.Parallel()
	fb := newFakeBroker(t)
	c, fc := fakeDial(t, fb, Options{CleanSession: true})
	errc := make(chan error, 1)
	go func() { errc <- c.Publish(context.Background(), Message{Topic: "d", QoS: 1, Payload: []byte("x")}) }()
	_, body := fc.next(t)
	closed := make(chan struct{})
	go func() { c.Close(); close(closed) }()
	fc.send(t, typePuback<<4, 2, body[3], body[4])
	if err := <-errc; err != nil {
		t.Errorf("Publish acknowledged during Close: %v", err)
	}
	if h, _ := fc.next(t); h != typeDisconnect<<4 {
		t.Fatalf("packet % x at Close; want DISCONNECT", h)
	}
	if _, err := fc.r.ReadByte(); err != io.EOF {
		t.Errorf("after DISCONNECT: %v; want EOF", err)
	}
	<-closed
}

// A pending QoS 1 Publish returns an error at Close when its
// acknowledgement does not come.
func TestCloseFailsPendingPublish(t *testing.T) {
	t.Parallel()
	fb := newFakeBroker(t)
	c, fc := fakeDial(t, fb, Options{CleanSession: true})
	errc := make(chan error, 1)
	go func() { errc <- c.Publish(context.Background(), Message{Topic: "d", QoS: 1, Payload: []byte("x")}) }()
	fc.next(t)
	c.Close()
	if err := <-errc; err == nil {
		t.Fatal("pending Publish returned nil at Close")
	}
}

// A broker that goes silent (nothing, not even PINGRESP) is given up after
// 1.5 keep-alive intervals, and the client connects again.
func TestKeepAliveTimeout(t *testing.T) {
	t.Parallel()
	fb := newFakeBroker(t)
	log := &logRecorder{}
	c, fc := fakeDial(t, fb, Options{CleanSession: true, KeepAlive: time.Second, Log: slog.New(log)})
	if h, _ := fc.next(t); h != typePingreq<<4 {
		t.Fatalf("packet % x from an idle client; want PINGREQ", h)
	}
	fb.accept(t, 0)
	// The loss is logged by paho's connection-lost callback, which may run
	// after the reconnect (it did under qemu-user).
	eventually(t, "the loss logged with the keep-alive named", func() bool {
		return strings.Contains(log.has("lost broker connection"), "keep-alive")
	})
	eventually(t, "connected", c.Connected)
}

// A QoS 1 message is acknowledged after its handler returned; a re-sent
// one (DUP) is delivered as any other.
func TestPubackAfterHandler(t *testing.T) {
	t.Parallel()
	fb := newFakeBroker(t)
	c, fc := fakeDial(t, fb, Options{CleanSession: true})
	var handled atomic.Int32
	release := make(chan struct{})
	subscribed := make(chan error, 1)
	go func() {
		subscribed <- c.Subscribe("s/#", 1, func(_ string, p []byte) {
			<-release
			handled.Add(1)
		})
	}()
	h, body := fc.next(t)
	if h != typeSubscribe<<4|0x02 || string(body[2:]) != "\x00\x03s/#\x01" {
		t.Fatalf("got % x % x; want SUBSCRIBE s/# QoS 1", h, body)
	}
	fc.send(t, typeSuback<<4, 3, body[0], body[1], 1)
	if err := <-subscribed; err != nil {
		t.Fatal(err)
	}
	fc.send(t, appendPublish(nil, "s/1", []byte("a"), 1, false, false, 7)...)
	fc.send(t, appendPublish(nil, "s/1", []byte("a"), 1, false, true, 7)...)
	close(release)
	for _, want := range []int32{1, 2} {
		h, body := fc.next(t)
		if h != typePuback<<4 || string(body) != "\x00\x07" {
			t.Fatalf("got % x % x; want PUBACK 7", h, body)
		}
		if n := handled.Load(); n < want {
			t.Fatalf("PUBACK %d came with %d handlers returned", want, n)
		}
	}
	// A message nothing subscribed to, without a default handler, is
	// acknowledged at once.
	fc.send(t, appendPublish(nil, "other", nil, 1, false, false, 8)...)
	if h, body := fc.next(t); h != typePuback<<4 || string(body) != "\x00\x08" {
		t.Fatalf("got % x % x; want PUBACK 8", h, body)
	}
}

// A SUBACK failure code is Subscribe's error.
func TestSubscribeRefused(t *testing.T) {
	t.Parallel()
	fb := newFakeBroker(t)
	c, fc := fakeDial(t, fb, Options{CleanSession: true})
	errc := make(chan error, 1)
	go func() { errc <- c.Subscribe("no/#", 1, func(string, []byte) {}) }()
	_, body := fc.next(t)
	fc.send(t, typeSuback<<4, 3, body[0], body[1], 0x80)
	if err := <-errc; err == nil || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("Subscribe with SUBACK 0x80: %v; want refused", err)
	}
}

// Each CONNACK refusal code is named in Dial's error.
func TestConnackRefusal(t *testing.T) {
	t.Parallel()
	for code, reason := range connackReasons {
		if reason == "" {
			continue
		}
		t.Run(fmt.Sprint(code), func(t *testing.T) {
			t.Parallel()
			fb := newFakeBroker(t)
			go func() {
				for c := range fb.conns {
					h, _ := c.nextRaw()
					if h>>4 == typeConnect {
						_, _ = c.Write([]byte{0x20, 2, 0, byte(code)})
					}
					c.Close()
				}
			}()
			ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
			_, err := Dial(ctx, Options{Address: fb.addr(), ClientID: "x", RetryMax: 100 * time.Millisecond})
			cancel()
			if !errors.Is(err, ErrClosed) || !strings.Contains(err.Error(), reason) {
				t.Errorf("Dial refused with code %d: %v; want ErrClosed and %q", code, err, reason)
			}
		})
	}
}

// The credentials are asked for before every connection attempt.
func TestCredentialsEveryAttempt(t *testing.T) {
	t.Parallel()
	fb := newFakeBroker(t)
	var calls atomic.Int32
	c, fc := fakeDial(t, fb, Options{CleanSession: true, Credentials: func() (string, string, error) {
		if calls.Add(1) == 1 {
			return "u", "", errors.New("not there yet")
		}
		return "u", "p", nil
	}})
	fc.Close()
	fc2 := fb.accept(t, 0)
	_ = fc2
	eventually(t, "connected", c.Connected)
	if n := calls.Load(); n != 2 {
		t.Errorf("credentials asked %d times for two connections", n)
	}
}

// subscribeFake subscribes c to filter through the scripted broker.
func subscribeFake(t *testing.T, c *Client, fc *fakeConn, filter string, h Handler) {
	t.Helper()
	errc := make(chan error, 1)
	go func() { errc <- c.Subscribe(filter, 1, h) }()
	hd, body := fc.next(t)
	if hd != typeSubscribe<<4|0x02 {
		t.Fatalf("got % x; want SUBSCRIBE", hd)
	}
	fc.send(t, typeSuback<<4, 3, body[0], body[1], 1)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// The acknowledgements leave in the order the messages came
// [MQTT-4.6.0-2], although two subscriptions' handlers finish them in the
// other order.
func TestPubacksInOrder(t *testing.T) {
	t.Parallel()
	fb := newFakeBroker(t)
	c, fc := fakeDial(t, fb, Options{CleanSession: true})
	release := make(chan struct{})
	fastDone := make(chan struct{})
	subscribeFake(t, c, fc, "slow/#", func(string, []byte) { <-release })
	subscribeFake(t, c, fc, "fast/#", func(string, []byte) { close(fastDone) })
	fc.send(t, appendPublish(nil, "slow/1", []byte("a"), 1, false, false, 1)...)
	fc.send(t, appendPublish(nil, "fast/1", []byte("b"), 1, false, false, 2)...)
	select {
	case <-fastDone:
	case <-time.After(15 * time.Second):
		t.Fatal("the fast handler did not run while the slow one blocks")
	}
	close(release)
	for _, id := range []byte{1, 2} {
		if h, body := fc.next(t); h != typePuback<<4 || string(body) != string([]byte{0, id}) {
			t.Fatalf("got % x % x; want PUBACK %d (in the order received)", h, body, id)
		}
	}
}
