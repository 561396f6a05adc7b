package broker

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tinyscada/tinyscada/shared/connbuf"
)

// listener is a mochi listener for TCP (optionally TLS) or a unix socket. It
// replaces mochi's own, which stop accepting for good on the first Accept
// error (EMFILE, for one) and remove any file at the socket path: this one
// binds in Init (so a taken port is an error there, at start-up), keeps
// accepting after transient errors, and refuses to replace a live socket or
// a file that is not a socket.
type listener struct {
	id      string
	network string // "tcp" or "unix"
	address string
	tls     *tls.Config
	// local says the listener only takes connections from this machine,
	// so anonymous clients are accepted on it.
	local bool

	// srv is the server the listener serves, for disconnectClients.
	srv    *mqtt.Server
	log    *slog.Logger
	ln     net.Listener
	mu     sync.Mutex
	closed bool
	conns  map[net.Conn]struct{} // accepted and not yet finished
}

var _ listeners.Listener = (*listener)(nil)

// connectTimeout is how long a new connection may take to send its CONNECT
// (including the TLS handshake).
const connectTimeout = 10 * time.Second

// writeTimeout bounds one write to a client's socket: a client that stops
// reading is dropped after it, instead of holding its buffers for good.
const writeTimeout = 30 * time.Second

// ErrAddrInUse is wrapped by Run's error when a listen address is taken;
// test with errors.Is (it is syscall.EADDRINUSE).
var ErrAddrInUse = syscall.EADDRINUSE

func (l *listener) ID() string       { return l.id }
func (l *listener) Protocol() string { return l.network }

// Address is the bound address (the real port when configured as :0), or
// unix:PATH.
func (l *listener) Address() string {
	if l.network == "unix" {
		return "unix:" + l.address
	}
	if l.ln != nil {
		return l.ln.Addr().String()
	}
	return l.address
}

// Init binds the address. It returns an error wrapping ErrAddrInUse when the
// address is taken (including a unix socket another process serves).
func (l *listener) Init(log *slog.Logger) error {
	l.log = log
	if l.network == "unix" {
		if err := prepareSocketPath(l.address); err != nil {
			return err
		}
	}
	ln, err := net.Listen(l.network, l.address)
	if errors.Is(err, syscall.EADDRINUSE) {
		return fmt.Errorf("listen %s: %w — another broker (mosquitto?) running?", l.address, ErrAddrInUse)
	}
	if err != nil {
		return fmt.Errorf("listen %s: %w", l.address, err)
	}
	if l.tls != nil {
		ln = tls.NewListener(ln, l.tls)
	}
	l.ln = ln
	return nil
}

// prepareSocketPath makes the socket's directory and removes a stale socket
// left by a dead broker. A socket that still answers, or a path that is not
// a socket, is an error.
func prepareSocketPath(path string) error {
	st, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return fmt.Errorf("listen unix:%s: %w", path, err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("listen unix:%s: %w", path, err)
	}
	if st.Mode()&fs.ModeSocket == 0 {
		return fmt.Errorf("listen unix:%s: exists and is not a socket (%s)", path, st.Mode().Type())
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("listen unix:%s: %w — another broker running?", path, ErrAddrInUse)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("listen unix:%s: remove stale socket: %w", path, err)
	}
	return nil
}

// Serve accepts connections until Close, handing each to establish. After an
// Accept error other than the listener being closed it waits (5 ms doubling
// to 1 s) and carries on.
func (l *listener) Serve(establish listeners.EstablishFn) {
	var delay time.Duration
	for {
		conn, err := l.ln.Accept()
		if err != nil {
			if l.isClosed() || errors.Is(err, net.ErrClosed) {
				return
			}
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			l.log.Warn("accept failed; retrying", "err", err, "delay", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		// mochi sets no deadline until the CONNECT has arrived, then its
		// own from the keep-alive: a connection that never sends one
		// would hold its goroutine for good.
		_ = conn.SetDeadline(time.Now().Add(connectTimeout))
		conn = connbuf.Coalesce(connbuf.Raw(conn), writeTimeout)
		if !l.track(conn) {
			_ = conn.Close()
			return
		}
		go func() {
			defer l.untrack(conn)
			if err := establish(l.id, conn); err != nil {
				l.log.Debug("client connection ended", "remote", conn.RemoteAddr().String(), "err", err)
			}
		}()
	}
}

// track records a live connection; false if the listener is closed.
func (l *listener) track(c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	if l.conns == nil {
		l.conns = map[net.Conn]struct{}{}
	}
	l.conns[c] = struct{}{}
	return true
}

func (l *listener) untrack(c net.Conn) {
	l.mu.Lock()
	delete(l.conns, c)
	l.mu.Unlock()
}

// Close stops accepting, disconnects the listener's clients (not with
// the CloseFn mochi hands it: see disconnectClients), and closes
// every connection still open (one accepted while closing, which mochi
// does not know as a client yet and would wait for); a second call does
// nothing.
func (l *listener) Close(listeners.CloseFn) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	l.closed = true
	l.mu.Unlock()
	if l.ln != nil {
		_ = l.ln.Close() // a unix socket file is removed by Close
	}
	l.disconnectClients()
	l.mu.Lock()
	for c := range l.conns {
		_ = c.Close()
	}
	l.mu.Unlock()
}

// disconnectClients does what mochi's closeListenerClients, handed to Close
// as its argument, does, but without its recursive read lock of the client
// list: GetByListener calls Len under its RLock, and a client attaching or
// leaving in between (a writer waiting) deadlocks the broker for good,
// never to stop (mochi-mqtt/server#488, open; it hung a test here).
func (l *listener) disconnectClients() {
	if l.srv == nil {
		return
	}
	for _, cl := range l.srv.Clients.GetAll() {
		if cl.Net.Listener == l.id && !cl.Closed() {
			_ = l.srv.DisconnectClient(cl, packets.ErrServerShuttingDown)
		}
	}
}

func (l *listener) isClosed() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.closed
}
