// Package broker is the embedded MQTT broker role: mochi-mqtt in memory (no
// storage hook), with per-role credentials and publish rules, and its own
// state and heartbeats sent through its inline client so that a heartbeat
// proves routing works.
package broker

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tinyscada/tinyscada/shared/bus"
	"github.com/tinyscada/tinyscada/shared/config"
	"github.com/tinyscada/tinyscada/shared/credentials"
	"github.com/tinyscada/tinyscada/shared/lograte"
	"github.com/tinyscada/tinyscada/shared/service"
	"github.com/tinyscada/tinyscada/shared/topics"
)

// Run serves MQTT until ctx ends. It creates the credentials on first start,
// binds every listener, and sends READY=1 once all of them accept
// connections. It returns an error at once when the credentials cannot be
// written or a listener cannot be bound (one wrapping ErrAddrInUse when the
// address is taken); nil when ctx ended.
func Run(ctx context.Context, cfg *config.Config, log *slog.Logger) error {
	b, err := start(ctx, cfg, log)
	if err != nil {
		return err
	}
	return b.run(ctx)
}

// broker is one running broker.
type broker struct {
	srv       *mqtt.Server
	svc       *service.Service
	log       *slog.Logger
	addrs     []string
	clients   atomic.Int64 // client count last put in STATUS
	closeOnce sync.Once
}

// options turns the configuration into mochi's options.
func options(cfg *config.Config, log *slog.Logger) *mqtt.Options {
	c := cfg.Broker
	caps := mqtt.NewDefaultServerCapabilities()
	// 0: retained messages never expire (mochi enforces this maximum on
	// retained messages too, from the time they were stored).
	caps.MaximumMessageExpiryInterval = 0
	caps.MaximumClientWritesPending = int32(clamp(c.MaxPending, 1, math.MaxInt32))
	caps.MaximumInflight = uint16(clamp(c.MaxInflight, 1, math.MaxUint16))
	caps.ReceiveMaximum = uint16(clamp(c.MaxInflight, 1, math.MaxUint16))
	// Checked on the fixed header, before the body is read (and buffered):
	// a larger packet disconnects its sender.
	caps.MaximumPacketSize = uint32(clamp(int(c.MaxPacketSize), 1, math.MaxInt32))
	sys := int64(math.MaxInt32) // mochi takes 0 as "every second": never, in effect
	if d := c.SysInterval.Duration; d > 0 {
		sys = int64(max(d.Round(time.Second), time.Second) / time.Second)
	}
	buf := int(clamp(int(c.ClientBuffer), 512, 1<<24))
	return &mqtt.Options{
		Capabilities:             caps,
		ClientNetWriteBufferSize: buf,
		ClientNetReadBufferSize:  buf,
		SysTopicResendInterval:   sys,
		InlineClient:             true,
		Logger:                   slog.New(dropPacketAttr{log.Handler()}).With("component", "mochi"),
	}
}

func clamp(v, lo, hi int) int { return min(max(v, lo), hi) }

// newServer builds the mochi server with the access hook and the configured
// listeners, bound but not serving. On error nothing stays bound.
func newServer(cfg *config.Config, passwords map[string]string, log *slog.Logger) (*mqtt.Server, []*listener, error) {
	srv := mqtt.New(options(cfg, log))
	if err := slowHousekeeping(srv, housekeeping); err != nil {
		log.Warn("mochi's housekeeping stays every second", "err", err)
	}
	var lns []*listener
	fail := func(err error) (*mqtt.Server, []*listener, error) {
		_ = srv.Close()
		return nil, nil, fmt.Errorf("broker: %w", err)
	}
	var tlsCfg *tls.Config
	if cfg.Broker.TLSCert != "" && cfg.Broker.TLSKey != "" {
		cert, err := tls.LoadX509KeyPair(cfg.Broker.TLSCert, cfg.Broker.TLSKey)
		if err != nil {
			return fail(fmt.Errorf("tls_cert %s, tls_key %s: %w", cfg.Broker.TLSCert, cfg.Broker.TLSKey, err))
		}
		tlsCfg = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	for _, addr := range cfg.Broker.Listen {
		l := &listener{id: "tcp:" + addr, network: "tcp", address: addr, local: isLoopback(addr)}
		if !l.local {
			l.tls = tlsCfg
		}
		lns = append(lns, l)
	}
	if p := cfg.Broker.UnixSocket; p != "" {
		lns = append(lns, &listener{id: "unix:" + p, network: "unix", address: p, local: true})
	}
	if len(lns) == 0 {
		return fail(errors.New("no listener configured (broker.listen and broker.unix_socket are empty)"))
	}
	hook := &accessHook{
		rules:     publishRules(topics.Tree{Prefix: cfg.TopicPrefix}),
		passwords: passwords,
		local:     map[string]bool{},
		limiter:   lograte.New(time.Minute, 4096),
		log:       log.With("component", "access"),
	}
	for _, l := range lns {
		hook.local[l.id] = l.local
	}
	if err := srv.AddHook(hook, nil); err != nil {
		return fail(err)
	}
	refuse := &refuseHook{srv: srv, access: hook, maxPacket: srv.Options.Capabilities.MaximumPacketSize}
	if err := srv.AddHook(refuse, nil); err != nil {
		return fail(err)
	}
	if cfg.Poller.RetainValues {
		if err := srv.AddHook(newValueHook(srv, cfg), nil); err != nil {
			return fail(err)
		}
	}
	for _, l := range lns {
		l.srv = srv
		if err := srv.AddListener(l); err != nil {
			return fail(err)
		}
	}
	return srv, lns, nil
}

// start does everything up to READY=1.
func start(ctx context.Context, cfg *config.Config, log *slog.Logger) (*broker, error) {
	svc, err := service.New(ctx, topics.Broker, cfg, log)
	if err != nil {
		return nil, err
	}
	passwords, err := credentials.Ensure(cfg.StateDir, users())
	if err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}
	srv, lns, err := newServer(cfg, passwords, log)
	if err != nil {
		return nil, err
	}
	b := &broker{srv: srv, svc: svc, log: log}
	for _, l := range lns {
		b.addrs = append(b.addrs, l.Address())
	}
	if err := srv.Serve(); err != nil {
		b.close()
		return nil, fmt.Errorf("broker: serve: %w", err)
	}
	// The heartbeat comes back through the topic index to this inline
	// subscription: progress counts heartbeats the router delivered.
	hb := svc.Topics.SvcHeartbeat(svc.Name)
	if err := srv.Subscribe(hb, 1, func(*mqtt.Client, packets.Subscription, packets.Packet) {
		svc.Advance()
		b.updateStatus()
	}); err != nil {
		b.close()
		return nil, fmt.Errorf("broker: subscribe %s: %w", hb, err)
	}
	// Whether health is there, so that the broker feeds its own watchdog
	// while it is not (see service.Service.WatchHealth).
	svc.WatchHealth(func(filter string, h func(string, []byte)) error {
		return srv.Subscribe(filter, 2, func(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
			h(pk.TopicName, pk.Payload)
		})
	})
	svc.SetExtra(b.stats)
	svc.Attach(inline{srv})
	svc.Ready(b.status(0))
	return b, nil
}

// run sends heartbeats until ctx ends, then closes the server.
func (b *broker) run(ctx context.Context) error {
	defer b.close()
	return b.svc.Run(ctx)
}

func (b *broker) status(clients int64) string {
	return fmt.Sprintf("serving on %s; %d clients", strings.Join(b.addrs, ", "), clients)
}

// updateStatus sends a STATUS= line when the number of clients changed.
func (b *broker) updateStatus() {
	n := atomic.LoadInt64(&b.srv.Info.ClientsConnected)
	if b.clients.Swap(n) != n {
		b.svc.Status("%s", b.status(n))
	}
}

// stats are the heartbeat's extra fields.
func (b *broker) stats() map[string]any {
	in := b.srv.Info
	return map[string]any{
		"clients":          atomic.LoadInt64(&in.ClientsConnected),
		"received":         atomic.LoadInt64(&in.MessagesReceived),
		"sent":             atomic.LoadInt64(&in.MessagesSent),
		"dropped":          atomic.LoadInt64(&in.MessagesDropped),
		"inflight_dropped": atomic.LoadInt64(&in.InflightDropped),
		"retained":         b.srv.Topics.Retained.Len(),
	}
}

// close stops the server once (mochi's Close panics the second time).
func (b *broker) close() {
	b.closeOnce.Do(func() { _ = b.srv.Close() })
}

// inline publishes through mochi's inline client, which bypasses the access
// rules.
type inline struct{ srv *mqtt.Server }

func (p inline) Publish(_ context.Context, m bus.Message) error {
	if err := p.srv.Publish(m.Topic, m.Payload, m.Retain, m.QoS); err != nil {
		return fmt.Errorf("broker: inline publish %s: %w", m.Topic, err)
	}
	return nil
}

// dropPacketAttr removes the "pk" attribute mochi adds to packet errors: a
// dump of the whole packet, kilobytes a line, on every denied QoS 1 publish
// of an MQTT 3 client.
type dropPacketAttr struct{ slog.Handler }

func (h dropPacketAttr) Handle(ctx context.Context, r slog.Record) error {
	found := false
	r.Attrs(func(a slog.Attr) bool { found = a.Key == "pk"; return !found })
	if !found {
		return h.Handler.Handle(ctx, r)
	}
	nr := slog.NewRecord(r.Time, r.Level, r.Message, r.PC)
	r.Attrs(func(a slog.Attr) bool {
		if a.Key != "pk" {
			nr.AddAttrs(a)
		}
		return true
	})
	return h.Handler.Handle(ctx, nr)
}

func (h dropPacketAttr) WithAttrs(as []slog.Attr) slog.Handler {
	return dropPacketAttr{h.Handler.WithAttrs(as)}
}

func (h dropPacketAttr) WithGroup(name string) slog.Handler {
	return dropPacketAttr{h.Handler.WithGroup(name)}
}
