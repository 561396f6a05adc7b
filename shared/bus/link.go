package bus

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/tinyscada/tinyscada/shared/connbuf"
)

// readBufferSize holds a few dozen data messages: paho reads a packet's
// header a byte at a time, and this makes it one read syscall for many
// packets under load.
const readBufferSize = 16 << 10

var errKeepAlive = errors.New("bus: nothing from the broker within the keep-alive interval and a half")

// pingreq is MQTT's PINGREQ packet.
var pingreq = []byte{0xc0, 0}

// link is one connection to the broker as paho sees it (its net.Conn):
// the socket (TCP, TLS or unix) with buffered reads and coalesced writes
// (connbuf: paho writes every packet with a syscall of its own; gathering
// them doubled the bus's peak in BenchmarkTransport), the connection's
// acknowledgement order, and the part of the keep-alive that paho cannot
// do while our queues hold its reader.
//
// paho sends PINGREQ when the connection was idle for a keep-alive
// interval and drops it when no PINGRESP came within PingTimeout; but it
// reads that PINGRESP on the goroutine that waits while a subscription's
// queue is full (our back-pressure), so it would drop a healthy
// connection, and it sends no further PINGREQ while one is out, so the
// broker would drop us at 1.5 intervals. Instead paho's ping timeout is
// off, and the link's keeper:
//   - while the reader is held, sends PINGREQ itself (one Write, as paho's
//     own pinger does, so it never splits a packet) whenever nothing was
//     written for half an interval; the PINGRESPs wait in the socket;
//   - while the reader is free, ends the connection when nothing was read
//     for the interval, paho's check period and half an interval (paho
//     pings after an idle interval, so a live broker always answers
//     within that).
type link struct {
	raw  net.Conn
	w    net.Conn // raw with coalesced writes (connbuf): the one write path
	r    *bufio.Reader
	ka   time.Duration
	dead chan struct{} // closed when the connection ends
	once sync.Once
	err  atomic.Pointer[error] // why the keeper (or a test) ended it

	lastRead  atomic.Int64 // now() of the last read that returned data
	lastWrite atomic.Int64
	held      atomic.Int32 // subscriptions whose full queue holds the reader

	acks ackQueue

	// resumed is closed when paho read its store after this connection's
	// CONNACK (bus.go, store).
	resumed    chan struct{}
	resumeOnce sync.Once
}

// epoch makes now() monotonic nanoseconds.
var epoch = time.Now()

func now() int64 { return int64(time.Since(epoch)) }

// open is paho's CustomOpenConnectionFn: it dials the broker (ending with
// the client) and starts the link's keeper.
func (cl *Client) open(_ *url.URL, _ mqtt.ClientOptions) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(cl.ctx, connectTimeout)
	defer cancel()
	var raw net.Conn
	var err error
	if cl.tls != nil {
		d := tls.Dialer{Config: cl.tls}
		raw, err = d.DialContext(ctx, "tcp", cl.addr)
	} else {
		var d net.Dialer
		raw, err = d.DialContext(ctx, cl.network, cl.addr)
	}
	if err != nil {
		return nil, err
	}
	raw = connbuf.Raw(raw) // a TLS connection stays as it is
	l := &link{
		raw:     raw,
		w:       connbuf.Coalesce(raw, writeTimeout),
		r:       bufio.NewReaderSize(raw, readBufferSize),
		ka:      cl.ka,
		dead:    make(chan struct{}),
		resumed: make(chan struct{}),
	}
	t := now()
	l.lastRead.Store(t)
	l.lastWrite.Store(t)
	cl.cur.Store(l)
	go l.keep()
	return l, nil
}

// Read reads through the buffer. After the keeper ended the connection it
// returns the keeper's reason: paho takes "use of closed network
// connection" for its own Close and would not notice the loss.
func (l *link) Read(p []byte) (int, error) {
	n, err := l.r.Read(p)
	if n > 0 {
		l.lastRead.Store(now())
	}
	if err != nil {
		if e := l.err.Load(); e != nil {
			err = *e
		}
	}
	return n, err
}

func (l *link) Write(p []byte) (int, error) {
	n, err := l.w.Write(p)
	l.lastWrite.Store(now())
	return n, err
}

// Close is paho's: it ends the connection, after writing what is buffered
// (paho closes right after writing DISCONNECT) for at most closeWait.
func (l *link) Close() error {
	l.once.Do(func() {
		flushed := make(chan struct{})
		go func() {
			_ = l.w.Close() // writes what is buffered, then closes raw
			close(flushed)
		}()
		t := time.NewTimer(closeWait)
		select {
		case <-flushed:
		case <-t.C:
			_ = l.raw.Close()
			<-flushed
		}
		t.Stop()
		close(l.dead)
	})
	return nil
}

// fail ends the connection at once for err, which paho's reader then
// reports.
func (l *link) fail(err error) {
	l.err.CompareAndSwap(nil, &err)
	_ = l.raw.Close()
	_ = l.Close()
}

func (l *link) LocalAddr() net.Addr                { return l.raw.LocalAddr() }
func (l *link) RemoteAddr() net.Addr               { return l.raw.RemoteAddr() }
func (l *link) SetDeadline(t time.Time) error      { return l.raw.SetDeadline(t) }
func (l *link) SetReadDeadline(t time.Time) error  { return l.raw.SetReadDeadline(t) }
func (l *link) SetWriteDeadline(t time.Time) error { return l.w.SetWriteDeadline(t) }

// hold marks the reader held by a full queue, or free again; once free,
// the liveness clock starts anew (nothing could be read while held).
func (l *link) hold(on bool) {
	if on {
		l.held.Add(1)
		return
	}
	l.lastRead.Store(now())
	l.held.Add(-1)
}

func (l *link) isHeld() bool { return l.held.Load() > 0 }

// keep is the link's keeper; see link.
func (l *link) keep() {
	ka := int64(l.ka)
	check := min(ka/4, int64(5*time.Second)) // paho's check period
	limit := ka + check + ka/2
	t := time.NewTicker(time.Duration(max(ka/8, int64(50*time.Millisecond))))
	defer t.Stop()
	for {
		select {
		case <-l.dead:
			return
		case <-t.C:
		}
		n := now()
		if l.isHeld() {
			if n-l.lastWrite.Load() >= ka/2 {
				if _, err := l.Write(pingreq); err != nil {
					l.fail(fmt.Errorf("bus: ping while the reader waits: %w", err))
					return
				}
			}
			continue
		}
		if n-l.lastRead.Load() >= limit {
			l.fail(errKeepAlive)
			return
		}
	}
}
