// Package uplink is the uplink role: it sends the stored readings upstream
// (store-and-forward from the database, by row id, acknowledged batch by
// batch), sends crash reports, and takes remote configuration, over one
// MQTT connection to an ordinary upstream broker. See docs/uplink.md.
package uplink

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/tinyscada/tinyscada/shared/atomicfile"
	"github.com/tinyscada/tinyscada/shared/bus"
	"github.com/tinyscada/tinyscada/shared/config"
	"github.com/tinyscada/tinyscada/shared/lograte"
	"github.com/tinyscada/tinyscada/shared/service"
	"github.com/tinyscada/tinyscada/shared/topics"
	"github.com/tinyscada/tinyscada/shared/version"
)

// Upstream names the upstream topics of one node: <prefix>/<node>/….
type Upstream struct{ Prefix, Node string }

func (u Upstream) join(s string) string { return u.Prefix + "/" + u.Node + "/" + s }

// Data is where the batches of readings go (QoS 1).
func (u Upstream) Data() string { return u.join("data") }

// State is the node's retained state upstream: its birth, and its last will.
func (u Upstream) State() string { return u.join("state") }

// Crash is where crash reports go (QoS 1).
func (u Upstream) Crash() string { return u.join("crash") }

// ConfigSet, ConfigGet, ConfigResult and ConfigCurrent are the remote
// configuration topics: requests come on the first two, answers go to
// the other two (docs/uplink-config.md).
func (u Upstream) ConfigSet() string     { return u.join("config/set") }
func (u Upstream) ConfigGet() string     { return u.join("config/get") }
func (u Upstream) ConfigResult() string  { return u.join("config/result") }
func (u Upstream) ConfigCurrent() string { return u.join("config/current") }

// NodeState is the payload of the upstream State topic.
type NodeState struct {
	State   string `json:"state"` // online, offline (a clean stop), lost (the will)
	Since   int64  `json:"since,omitempty"`
	Version string `json:"version,omitempty"`
}

// Uplink is the running role. Create it with New, then Run.
type Uplink struct {
	cfg  *config.Config
	u    config.Uplink
	svc  *service.Service
	log  *slog.Logger
	up   Upstream
	rate *lograte.Limiter

	cursorPath string
	dbPath     string
	// ConfigPath is the configuration file every role reads, the one a
	// remote configuration replaces; "" (the built-in demo, or one that
	// came through a memfd) rejects remote configurations.
	ConfigPath string

	wake       chan struct{}
	dialed     chan *bus.Client
	upstreamCh chan *bus.Client // the same client, for the crash and config loops

	// Shown in heartbeats and the retained uplink state; written by the
	// loops, read by the heartbeat goroutine.
	mu        sync.Mutex
	status    Status
	connected atomic.Bool
}

// Status is the payload of the retained <local prefix>/uplink/state.
type Status struct {
	Upstream  string `json:"upstream"` // connecting, connected, lost
	Address   string `json:"address"`
	Error     string `json:"error,omitempty"` // of the last connection attempt that failed
	ErrorAt   int64  `json:"error_at,omitempty"`
	Gen       string `json:"gen,omitempty"`
	Cursor    int64  `json:"cursor"`
	Backlog   int64  `json:"backlog_rows"`
	OldestMs  int64  `json:"oldest_unsent,omitempty"` // time of the oldest unsent sample, Unix ms
	OldestAge int64  `json:"oldest_age_s,omitempty"`
	Acked     uint64 `json:"batches_acked"`
	InFlight  int    `json:"in_flight"`
}

// New prepares the uplink of cfg on the local service runtime svc (its
// Bus connected to the local broker). Errors: no upstream configured.
func New(cfg *config.Config, svc *service.Service) (*Uplink, error) {
	if !cfg.Uplink.Configured() {
		return nil, errors.New("uplink.address is not set: there is no upstream broker to send to")
	}
	u := &Uplink{
		cfg:        cfg,
		u:          cfg.Uplink,
		svc:        svc,
		log:        svc.Log,
		up:         Upstream{Prefix: cfg.Uplink.Prefix, Node: cfg.Node},
		rate:       lograte.New(time.Minute, 64),
		cursorPath: filepath.Join(cfg.StateDir, config.CursorFile),
		dbPath:     cfg.Logger.Path(cfg.StateDir),
		wake:       make(chan struct{}, 1),
		dialed:     make(chan *bus.Client, 1),
		upstreamCh: make(chan *bus.Client, 1),
	}
	u.status = Status{Upstream: "connecting", Address: cfg.Uplink.Address}
	return u, nil
}

// configFile is the file a remote configuration may replace: ConfigPath,
// unless it is a descriptor (`tinyscada run` on a full disk hands the
// configuration over in a memfd, which nothing can replace).
func (u *Uplink) configFile() string {
	if strings.HasPrefix(u.ConfigPath, "/proc/self/fd/") {
		return ""
	}
	return u.ConfigPath
}

// Run connects upstream and runs the data path (and the crash and
// configuration loops) until ctx ends; nil then. It returns an error for
// an upstream setting that cannot be used (a TLS file that cannot be
// read) or a cursor file that cannot be written.
func (u *Uplink) Run(ctx context.Context) error {
	if _, err := atomicfile.CleanTemp(u.cursorPath); err != nil {
		u.log.Warn("could not remove temporary cursor files", "err", err)
	}
	cur, err := loadCursor(u.cursorPath)
	if err != nil {
		u.log.Error("cursor file unreadable; starting from the first row (batches may be sent again under new keys)", "file", u.cursorPath, "err", err)
		cur = cursorFile{}
	}
	opts, err := u.busOptions()
	if err != nil {
		return err
	}
	// Wake-up on every commit; the poll interval covers a lost one.
	if err := u.svc.Bus.Subscribe(u.svc.Topics.Committed(), 0, func(string, []byte) { u.poke() }); err != nil {
		u.log.Warn("subscribe to commit announcements failed; polling until it is restored", "err", err)
	}
	u.svc.SetExtra(u.heartbeatExtra)
	u.svc.SetIdle(true)
	u.svc.Ready(fmt.Sprintf("uplink to %s", u.u.Address))

	g, ctx := errgroup.WithContext(ctx)
	var upstream atomic.Pointer[bus.Client]
	g.Go(func() error {
		c, err := bus.Dial(ctx, opts)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("uplink: connect upstream: %w", err)
		}
		upstream.Store(c)
		u.dialed <- c
		u.upstreamCh <- c
		return nil
	})
	g.Go(func() error { return u.dataLoop(ctx, cur) })
	// Remote configuration starts before the upstream is there: it
	// finishes (or rolls back) an apply a killed uplink left, with the
	// local bus alone, even if the new [uplink] made the upstream
	// unreachable. errRestartSelf ends Run with an error: the uplink exits
	// and is started again on the new configuration.
	rc := &remoteConfig{
		local:    u.svc.Bus,
		tree:     u.svc.Topics,
		topics:   u.up,
		path:     u.configFile(),
		marker:   filepath.Join(u.cfg.StateDir, "uplink", "config-apply.json"),
		deadline: u.u.ConfigDeadline.Duration,
		self:     string(topics.Uplink),
		log:      u.log.With("component", "remote-config"),
	}
	g.Go(func() error { return rc.run(ctx) })
	g.Go(func() error {
		select {
		case c := <-u.upstreamCh:
			rc.setUpstream(c)
			crashLoop(ctx, c, u.up.Crash(), u.up.Node, filepath.Join(u.cfg.StateDir, "crash"),
				u.u.CrashInterval.Duration, u.log.With("component", "crash"))
		case <-ctx.Done():
		}
		return nil
	})
	err = g.Wait()
	if c := upstream.Load(); c != nil {
		// A clean stop says so; the will ("lost") is for anything else.
		b, _ := json.Marshal(NodeState{State: "offline", Since: time.Now().UnixMilli(), Version: version.String()})
		pctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = c.Publish(pctx, bus.Message{Topic: u.up.State(), QoS: 1, Retain: true, Payload: b})
		cancel()
		c.Close()
	}
	return err
}

// busOptions is the upstream connection: a stable client id, a clean
// session (after any reconnect the uplink sends again from its cursor, so
// a broker-side session would only add copies), the retained will "lost"
// and birth "online" on <prefix>/<node>/state, a jittered backoff.
func (u *Uplink) busOptions() (bus.Options, error) {
	will, _ := json.Marshal(NodeState{State: "lost"})
	o := bus.Options{
		Address:      u.u.Address,
		ClientID:     u.u.ID(u.cfg.Node),
		CleanSession: true,
		Will:         &bus.Message{Topic: u.up.State(), QoS: 1, Retain: true, Payload: will},
		KeepAlive:    u.u.KeepAlive.Duration,
		RetryMax:     u.u.RetryMax.Duration,
		Jitter:       true,
		Log:          u.log.With("component", "upstream"),
		OnConnect: func(c *bus.Client) {
			u.setConnected(true)
			b, _ := json.Marshal(NodeState{State: "online", Since: time.Now().UnixMilli(), Version: version.String()})
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := c.Publish(ctx, bus.Message{Topic: u.up.State(), QoS: 1, Retain: true, Payload: b}); err != nil {
				u.log.Warn("publish node state upstream failed", "err", err)
			}
			u.poke()
		},
		OnConnectError: u.connectError,
	}
	if u.u.TLS {
		o.TLS = &bus.TLS{CAFile: u.u.CAFile, CertFile: u.u.CertFile, KeyFile: u.u.KeyFile, ServerName: u.u.ServerName}
	}
	if u.u.Username != "" {
		path := u.u.Password(u.cfg.StateDir)
		user := u.u.Username
		o.Credentials = func() (string, string, error) {
			b, err := os.ReadFile(path)
			if err != nil {
				return user, "", fmt.Errorf("upstream password: %w", err)
			}
			return user, string(trimSpace(b)), nil
		}
		if _, err := os.Stat(path); err != nil {
			u.log.Warn("upstream password file missing; retrying with every attempt", "file", path, "err", err)
		}
	}
	return o, nil
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\n' || b[0] == '\r' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\n' || b[len(b)-1] == '\r' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// connectError records a failed connection attempt: in the state, and in
// the log at most once a minute per distinct error.
func (u *Uplink) connectError(err error) {
	u.setConnected(false)
	u.mu.Lock()
	u.status.Error = err.Error()
	u.status.ErrorAt = time.Now().UnixMilli()
	u.mu.Unlock()
	if ok, n := u.rate.Check("connect "+err.Error(), time.Now()); ok {
		u.log.Warn("upstream connection failed", "address", u.u.Address, "err", err, "suppressed", n)
	}
}

func (u *Uplink) setConnected(up bool) {
	u.connected.Store(up)
	u.mu.Lock()
	switch {
	case up:
		u.status.Upstream = "connected"
		u.status.Error = ""
	case u.status.Upstream == "connected":
		u.status.Upstream = "lost"
	}
	u.mu.Unlock()
}

// poke wakes the data loop.
func (u *Uplink) poke() {
	select {
	case u.wake <- struct{}{}:
	default:
	}
}

func (u *Uplink) heartbeatExtra() map[string]any {
	u.mu.Lock()
	st := u.status
	u.mu.Unlock()
	m := map[string]any{
		"upstream":      st.Upstream,
		"backlog_rows":  st.Backlog,
		"batches_acked": st.Acked,
		"cursor":        st.Cursor,
	}
	if st.OldestMs > 0 {
		m["oldest_age_s"] = max(time.Now().UnixMilli()-st.OldestMs, 0) / 1000
	}
	if st.Error != "" {
		m["upstream_error"] = st.Error
	}
	return m
}

// cursorFile is the persisted cursor (state_dir/uplink.cursor): what was
// acknowledged upstream (every sample up to Row, every gap record up to
// Gap, of database generation Gen), and the batches planned beyond it and
// maybe sent (Sent), so that after a restart exactly the same batches,
// under the same keys, are sent again.
type cursorFile struct {
	Gen  string `json:"gen"`
	Row  int64  `json:"row"`
	Gap  int64  `json:"gap"`
	Sent []plan `json:"sent,omitempty"`
}

// plan is the extent of one batch: samples First..Last (0, 0: none), gap
// records GapFirst..GapLast (0, 0: none).
type plan struct {
	First    int64 `json:"first"`
	Last     int64 `json:"last"`
	GapFirst int64 `json:"gap_first"`
	GapLast  int64 `json:"gap_last"`
}

func loadCursor(path string) (cursorFile, error) {
	var c cursorFile
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return c, nil
	}
	if err != nil {
		return c, err
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return cursorFile{}, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

func saveCursor(path string, c cursorFile) error {
	b, err := json.Marshal(c)
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(path, append(b, '\n'), 0o600)
}
