package uplink

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	toml "github.com/pelletier/go-toml/v2"

	"github.com/tinyscada/tinyscada/shared/atomicfile"
	"github.com/tinyscada/tinyscada/shared/bus"
	"github.com/tinyscada/tinyscada/shared/clock"
	"github.com/tinyscada/tinyscada/shared/config"
	"github.com/tinyscada/tinyscada/shared/topics"
)

// Remote configuration (docs/uplink-config.md): a TOML document on
// <up>/config/set is validated with config.Parse, the loader of `tinyscada
// config check`; a bad one is rejected with every reason and changes
// nothing. A good one replaces the configuration file atomically (the old
// one kept as <path>.prev), the roles that read the changed sections are
// restarted through health's restart command, and the result is reported
// once the stack is healthy again; if it is not within the deadline, the
// previous file is restored and those roles restarted again. Every step is
// recorded first in a marker file, so an uplink killed or restarted
// mid-apply finishes the check (or the rollback) when it starts again.

// errRestartSelf is what remoteConfig.run returns when the uplink itself
// must restart to read a new (or restored) configuration: its caller
// returns it, the process exits non-zero, and its supervisor starts it
// again; the marker makes the new process finish the apply. Test with
// errors.Is.
var errRestartSelf = errors.New("uplink: restarting to read the new configuration")

// Result statuses on <up>/config/result.
const (
	statusApplying   = "applying"    // accepted and valid; roles being restarted
	statusApplied    = "applied"     // in force and the stack healthy
	statusRejected   = "rejected"    // invalid (errors); nothing changed
	statusRolledBack = "rolled_back" // applied, then restored (reason)
	statusCurrent    = "current"     // the answer to config/get
)

// Marker phases, in order; a rollback goes through rollingBack,
// restarting and checking again with Rollback set.
const (
	phaseApplying    = "applying"     // write New, then restart
	phaseRestarting  = "restarting"   // restart the roles of Restart still on their old pid
	phaseChecking    = "checking"     // wait for the stack to be healthy
	phaseRollingBack = "rolling_back" // write Prev, then restart
	phaseReport      = "report"       // publish Result, then remove the marker
)

// configRequest is a config/set payload: a JSON object {"id":…,"toml":…}
// (id optional, echoed in the result), or the TOML document itself, which
// then has no id. The first character tells them apart: a TOML document
// cannot start with '{'.
type configRequest struct {
	ID   string `json:"id"`
	TOML string `json:"toml"`
}

// parseRequest decodes a config/set or config/get payload; for a get only
// the id matters, and an empty payload is a request without id.
func parseRequest(payload []byte) (configRequest, error) {
	trimmed := bytes.TrimSpace(payload)
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return configRequest{TOML: string(payload)}, nil
	}
	var r configRequest
	dec := json.NewDecoder(bytes.NewReader(trimmed))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return configRequest{}, fmt.Errorf("request: not a JSON object {\"id\":…,\"toml\":…}: %v", err)
	}
	if dec.More() {
		return configRequest{}, errors.New("request: trailing data after the JSON object")
	}
	return r, nil
}

// configResult is the payload on <up>/config/result.
type configResult struct {
	ID     string `json:"id,omitempty"`
	Status string `json:"status"`
	// Errors are the reasons of a rejection, one per problem, as
	// `tinyscada config check` prints them ("config/set:3: bus.bogus: …").
	Errors []string `json:"errors,omitempty"`
	// Reason says why a configuration was rolled back, or notes on an
	// applied one ("unchanged").
	Reason string `json:"reason,omitempty"`
	// Roles are the roles restarted for it.
	Roles []string `json:"roles,omitempty"`
	// Healthy, after a rollback, says whether the stack was healthy
	// again within the deadline.
	Healthy *bool `json:"healthy,omitempty"`
	// SHA256 is the hash of the document concerned (hex).
	SHA256 string `json:"sha256,omitempty"`
	T      int64  `json:"t"`
}

// configCurrent is the payload on <up>/config/current, the answer to
// config/get: the file the roles read, as it is now.
type configCurrent struct {
	ID     string `json:"id,omitempty"`
	Status string `json:"status"` // "current"
	Path   string `json:"path"`
	TOML   string `json:"toml"`
	SHA256 string `json:"sha256"`
	// Applying says that TOML is being tried: an apply is in progress
	// and may still be rolled back.
	Applying bool   `json:"applying,omitempty"`
	Error    string `json:"error,omitempty"`
	T        int64  `json:"t"`
}

// applyMarker is the persisted state of an apply in progress.
type applyMarker struct {
	ID       string      `json:"id,omitempty"`
	Phase    string      `json:"phase"`
	New      string      `json:"new"`
	Prev     string      `json:"prev"`
	Mode     fs.FileMode `json:"mode"`
	Rollback bool        `json:"rollback,omitempty"`
	Reason   string      `json:"reason,omitempty"` // why it is rolled back
	// Roles are the roles restarted for the configuration, Restart the
	// ones still to restart in this phase with the pid they had: a role
	// whose pid changed has restarted (onto the file as it is).
	// Old has the pids the roles had when the apply began.
	Roles   []string       `json:"roles"`
	Old     map[string]int `json:"old"`
	Restart map[string]int `json:"restart,omitempty"`
	// Started is when this phase's deadline began.
	Started clock.Stamp   `json:"started"`
	Result  *configResult `json:"result,omitempty"`
}

// remoteConfig takes configurations from upstream. Fill in the fields and
// call run; call setUpstream once the upstream connection is there (run
// finishes an apply left by an earlier process meanwhile, which needs only
// the local bus).
type remoteConfig struct {
	// local is the tinyscada bus, connected as the uplink (which may
	// publish restart commands under <prefix>/cmd/).
	local *bus.Client
	// tree names the local topics.
	tree topics.Tree
	// topics names the upstream topics (Upstream.ConfigSet, …).
	topics Upstream
	// path is the configuration file every role reads; "" (the built-in
	// demo) makes every request rejected.
	path string
	// marker is where the apply in progress is recorded, e.g.
	// <state_dir>/uplink/config-apply.json.
	marker string
	// deadline is how long the stack may take to be healthy after a
	// configuration is applied (and again after a rollback).
	deadline time.Duration
	// self is this role's name (topics.Uplink), which restarts by exiting.
	self string
	log  *slog.Logger

	up    atomic.Pointer[bus.Client]
	upSet chan struct{} // closed by setUpstream
	once  sync.Once
	view  stackView
	clock clock.Clock
}

// setUpstream hands run the upstream connection; call it once.
func (rc *remoteConfig) setUpstream(up *bus.Client) {
	rc.init()
	rc.up.Store(up)
	rc.once.Do(func() { close(rc.upSet) })
}

func (rc *remoteConfig) init() {
	if rc.upSet == nil {
		rc.upSet = make(chan struct{})
	}
}

// run watches the stack on the local bus, finishes an apply left in the
// marker, then serves config/set and config/get from upstream until ctx
// ends. It returns nil when ctx ends, errRestartSelf when the uplink must
// restart to read a new configuration, or an error when it cannot
// subscribe on the local bus or the marker cannot be read or written
// (an apply must never go on unrecorded).
func (rc *remoteConfig) run(ctx context.Context) error {
	rc.init()
	if rc.log == nil {
		rc.log = slog.New(slog.DiscardHandler)
	}
	if rc.clock == nil {
		rc.clock = clock.System()
	}
	if rc.self == "" {
		rc.self = string(topics.Uplink)
	}
	if err := rc.view.watch(rc.local, rc.tree); err != nil {
		return fmt.Errorf("remote config: %w", err)
	}
	if m, err := rc.loadMarker(); err != nil {
		return err
	} else if m != nil {
		// The retained states first: they tell which roles restarted.
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_ = rc.view.wait(wctx, func(v *stackView) (bool, error) {
			for _, r := range m.Roles {
				if _, ok := v.states[r]; !ok && r != rc.self {
					return false, nil
				}
			}
			return true, nil
		}, func() error { return nil })
		cancel()
		rc.log.Warn("remote config: finishing an apply left by an earlier process", "id", m.ID, "phase", m.Phase)
		if m.Started.Boot != rc.clock.Now().Boot {
			m.Started = rc.clock.Now() // rebooted meanwhile: a fresh deadline
		}
		if err := rc.proceed(ctx, m); err != nil {
			return err
		}
	}

	select {
	case <-rc.upSet:
	case <-ctx.Done():
		return nil
	}
	up := rc.up.Load()
	sets, gets := make(chan []byte, 8), make(chan []byte, 8)
	enqueue := func(ch chan []byte, what string) bus.Handler {
		return func(_ string, payload []byte) {
			select {
			case ch <- payload:
			default:
				rc.log.Warn("remote config: too many requests queued; dropped one", "topic", what)
			}
		}
	}
	if err := up.Subscribe(rc.topics.ConfigSet(), 1, enqueue(sets, "set")); err != nil {
		rc.log.Warn("remote config: subscribe failed; retried on reconnect", "err", err)
	}
	if err := up.Subscribe(rc.topics.ConfigGet(), 1, enqueue(gets, "get")); err != nil {
		rc.log.Warn("remote config: subscribe failed; retried on reconnect", "err", err)
	}
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case p := <-gets:
				rc.answerGet(ctx, p)
			}
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return nil
		case p := <-sets:
			if err := rc.apply(ctx, p); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
		}
	}
}

// answerGet publishes the configuration in force on config/current.
func (rc *remoteConfig) answerGet(ctx context.Context, payload []byte) {
	req, _ := parseRequest(payload) // a bad get is answered without id
	cur := configCurrent{ID: req.ID, Status: statusCurrent, Path: rc.path, T: time.Now().UnixMilli()}
	if rc.path == "" {
		cur.Error = "no configuration file: the built-in demo configuration is in force"
	} else if b, err := os.ReadFile(rc.path); err != nil {
		cur.Error = err.Error()
	} else {
		cur.TOML, cur.SHA256 = string(b), hash(b)
	}
	if _, err := os.Stat(rc.marker); err == nil {
		cur.Applying = true
	}
	rc.publish(ctx, rc.topics.ConfigCurrent(), cur)
}

// publish sends v as JSON QoS 1 upstream, waiting for the connection.
func (rc *remoteConfig) publish(ctx context.Context, topic string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	select {
	case <-rc.upSet:
	case <-ctx.Done():
		return ctx.Err()
	}
	if err := rc.up.Load().Publish(ctx, bus.Message{Topic: topic, QoS: 1, Payload: b}); err != nil {
		rc.log.Warn("remote config: publish failed", "topic", topic, "err", err)
		return err
	}
	return nil
}

func (rc *remoteConfig) reject(ctx context.Context, id, sum string, errs ...string) error {
	rc.log.Warn("remote config rejected", "id", id, "errors", strings.Join(errs, "; "))
	rc.publish(ctx, rc.topics.ConfigResult(), configResult{ID: id, Status: statusRejected, Errors: errs, SHA256: sum, T: time.Now().UnixMilli()})
	return nil
}

// apply handles one config/set payload. It returns an error only for
// errRestartSelf or a marker that cannot be written; a rejection is a
// result, not an error.
func (rc *remoteConfig) apply(ctx context.Context, payload []byte) error {
	req, err := parseRequest(payload)
	if err != nil {
		return rc.reject(ctx, "", hash(payload), err.Error())
	}
	doc := []byte(req.TOML)
	sum := hash(doc)
	newCfg, err := config.Parse("config/set", doc)
	if err != nil {
		var errs []string
		for _, e := range config.Errors(err) {
			errs = append(errs, e.Error())
		}
		if len(errs) == 0 {
			errs = []string{err.Error()}
		}
		return rc.reject(ctx, req.ID, sum, errs...)
	}
	if rc.path == "" {
		return rc.reject(ctx, req.ID, sum, "no configuration file: the gateway runs the built-in demo configuration; start the roles with -config FILE")
	}
	cur, err := os.ReadFile(rc.path)
	if err != nil {
		return rc.reject(ctx, req.ID, sum, fmt.Sprintf("cannot read the configuration in force: %v", err))
	}
	st, err := os.Stat(rc.path)
	if err != nil {
		return rc.reject(ctx, req.ID, sum, fmt.Sprintf("cannot read the configuration in force: %v", err))
	}
	if bytes.Equal(cur, doc) {
		rc.publish(ctx, rc.topics.ConfigResult(), configResult{ID: req.ID, Status: statusApplied, Reason: "unchanged: this is the configuration in force", SHA256: sum, T: time.Now().UnixMilli()})
		return nil
	}
	if s := rc.view.state(string(topics.Health)); s.State != "ready" {
		return rc.reject(ctx, req.ID, sum, "health is not running (its state: "+cmpOr(s.State, "none")+"): roles are restarted through it, so nothing was changed")
	}
	curCfg, err := config.Parse(rc.path, cur)
	if err != nil {
		curCfg = nil // the file in force is broken: restart everything
	}
	affected := affectedRoles(curCfg, newCfg)
	restart := map[string]int{}
	var roles []string
	for _, r := range affected {
		if s := rc.view.state(r); s.State == "ready" || s.State == "starting" {
			restart[r] = s.PID
			roles = append(roles, r)
		}
	}
	m := &applyMarker{ID: req.ID, Phase: phaseApplying, New: string(doc), Prev: string(cur), Mode: st.Mode().Perm(),
		Roles: roles, Old: restart, Restart: maps.Clone(restart), Started: rc.clock.Now()}
	if err := atomicfile.WriteFile(rc.path+".prev", cur, st.Mode().Perm()); err != nil {
		return rc.reject(ctx, req.ID, sum, fmt.Sprintf("cannot keep the previous configuration: %v", err))
	}
	if err := rc.saveMarker(m); err != nil {
		return err
	}
	rc.log.Info("remote config: applying", "id", req.ID, "restart", strings.Join(roles, ","))
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	rc.publish(pctx, rc.topics.ConfigResult(), configResult{ID: req.ID, Status: statusApplying, Roles: roles, SHA256: sum, T: time.Now().UnixMilli()})
	cancel()
	return rc.proceed(ctx, m)
}

// proceed takes m through its phases to the end, saving it before each
// step, and removes it. See the phase constants.
func (rc *remoteConfig) proceed(ctx context.Context, m *applyMarker) error {
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		switch m.Phase {
		case phaseApplying, phaseRollingBack:
			doc := m.New
			if m.Phase == phaseRollingBack {
				doc = m.Prev
			}
			if err := atomicfile.WriteFile(rc.path, []byte(doc), m.Mode); err != nil {
				if m.Phase == phaseApplying {
					// Nothing is restarted yet: the old file is
					// still in force (WriteFile leaves it).
					m.Result = &configResult{ID: m.ID, Status: statusRejected, Errors: []string{err.Error()}}
					m.Phase = phaseReport
				} else {
					rc.log.Error("remote config: cannot restore the previous configuration; retrying", "err", err)
					if !sleepCtx(ctx, time.Second) {
						return ctx.Err()
					}
					continue
				}
			} else {
				m.Phase = phaseRestarting
			}
		case phaseRestarting:
			if err := rc.restartRoles(ctx, m); err != nil {
				return err // errRestartSelf, ctx, or a marker write
			}
			if m.Phase == phaseRestarting {
				m.Phase = phaseChecking
			}
		case phaseChecking:
			err := rc.waitHealthy(ctx, m)
			if ctx.Err() != nil {
				return ctx.Err()
			}
			switch {
			case m.Rollback:
				ok := err == nil
				m.Result = &configResult{ID: m.ID, Status: statusRolledBack, Reason: m.Reason, Roles: m.Roles, Healthy: &ok}
				m.Phase = phaseReport
			case err == nil:
				m.Result = &configResult{ID: m.ID, Status: statusApplied, Roles: m.Roles}
				m.Phase = phaseReport
			default:
				rc.rollback(m, err.Error())
			}
		case phaseReport:
			r := *m.Result
			r.T, r.SHA256 = time.Now().UnixMilli(), hash([]byte(m.New))
			if err := rc.publish(ctx, rc.topics.ConfigResult(), r); err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				if !sleepCtx(ctx, time.Second) {
					return ctx.Err()
				}
				continue // the marker keeps it meanwhile
			}
			rc.log.Info("remote config: done", "id", m.ID, "status", r.Status, "reason", r.Reason)
			if err := os.Remove(rc.marker); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("remote config: remove marker: %w", err)
			}
			return nil
		default:
			return fmt.Errorf("remote config: marker %s: unknown phase %q", rc.marker, m.Phase)
		}
		if err := rc.saveMarker(m); err != nil {
			return err
		}
	}
}

// rollback turns m into the restoration of the previous configuration.
func (rc *remoteConfig) rollback(m *applyMarker, reason string) {
	rc.log.Error("remote config: rolling back", "id", m.ID, "reason", reason)
	m.Phase, m.Rollback, m.Reason = phaseRollingBack, true, reason
	m.Started = rc.clock.Now()
	// Restart every role that restarted since the apply began (onto the
	// new file); the others still run the previous configuration.
	m.Restart = map[string]int{}
	for _, r := range m.Roles {
		if pid := rc.view.state(r).PID; pid != m.Old[r] {
			m.Restart[r] = pid
		}
	}
	if m.Old[rc.self] != 0 && m.Old[rc.self] != os.Getpid() {
		m.Restart[rc.self] = os.Getpid() // this process read the new file
	}
}

// restartRoles restarts each role of m.Restart still on its recorded pid
// through health's restart command, and waits for its new pid, until this
// phase's deadline. The uplink itself goes last, by returning
// errRestartSelf. A restart health refuses or fails ends the apply in a
// rollback; during a rollback it is retried until it succeeds (the file is
// restored already, so any later restart of the role, or a reboot, also
// brings it back).
func (rc *remoteConfig) restartRoles(ctx context.Context, m *applyMarker) error {
	order := slices.Sorted(maps.Keys(m.Restart))
	// The broker last among the others: its restart drops every client.
	slices.SortStableFunc(order, func(a, b string) int { return rolePos(a) - rolePos(b) })
	for _, r := range order {
		if r == rc.self {
			continue
		}
		old := m.Restart[r]
		for {
			if s := rc.view.state(r); s.PID != old && s.PID != 0 {
				break // restarted already (by us before a restart of ours, or by itself)
			}
			err := rc.restartOne(ctx, r, old, rc.until(m))
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if !m.Rollback {
				rc.rollback(m, err.Error())
				return rc.saveMarker(m)
			}
			rc.log.Error("remote config: restart during rollback failed; retrying", "role", r, "err", err)
			if !sleepCtx(ctx, min(rc.deadline, 30*time.Second)) {
				return ctx.Err()
			}
		}
	}
	if old, ok := m.Restart[rc.self]; ok {
		delete(m.Restart, rc.self)
		if old != os.Getpid() {
			return nil // this process is the new one
		}
		m.Phase = phaseChecking
		if err := rc.saveMarker(m); err != nil {
			return err
		}
		rc.log.Warn("remote config: restarting the uplink to read the configuration", "id", m.ID)
		return errRestartSelf
	}
	return nil
}

// restartOne publishes the restart command for role and waits until a
// process other than pid old publishes the role's state, or health
// reports the restart refused or failed, or until.
func (rc *remoteConfig) restartOne(ctx context.Context, role string, old int, until time.Time) error {
	since := rc.view.mark()
	rc.log.Info("remote config: restarting", "role", role, "pid", old)
	cmd := []byte(`{"by":"uplink","reason":"remote configuration"}`)
	pctx, cancel := context.WithDeadline(ctx, until)
	defer cancel()
	if err := rc.local.Publish(pctx, bus.Message{Topic: rc.tree.Restart(role), QoS: 1, Payload: cmd}); err != nil {
		return fmt.Errorf("restart %s: %w", role, err)
	}
	return rc.view.wait(pctx, func(v *stackView) (bool, error) {
		if s := v.states[role]; s.PID != old && s.PID != 0 {
			return true, nil
		}
		for _, e := range v.events {
			if e.seq > since && e.Service == role && (e.Result == "refused" || e.Result == "failed") {
				return false, fmt.Errorf("restart of %s %s by health: %s", role, e.Result, e.Error)
			}
		}
		return false, nil
	}, func() error { return fmt.Errorf("%s did not restart within %s", role, rc.deadline) })
}

// until is the end of m's current deadline.
func (rc *remoteConfig) until(m *applyMarker) time.Time {
	left := rc.deadline - rc.clock.Since(m.Started)
	if rc.clock.Since(m.Started) == clock.Forever {
		left = 0
	}
	return time.Now().Add(left)
}

// waitHealthy waits until the stack is healthy with the roles of m.Roles
// restarted: two health reports in a row, the first received after each
// restarted role said ready from its new pid, say "ok" and list each
// restarted role (health itself aside) ok with that pid; and when the uplink
// itself was restarted, the upstream is connected. It returns nil then, or
// an error saying what was still wrong at the deadline.
func (rc *remoteConfig) waitHealthy(ctx context.Context, m *applyMarker) error {
	start := rc.view.mark()
	var why string
	pctx, cancel := context.WithDeadline(ctx, rc.until(m))
	defer cancel()
	return rc.view.wait(pctx, func(v *stackView) (bool, error) {
		why = v.healthy(m.Roles, rc.self, start)
		if why == "" && slices.Contains(m.Roles, rc.self) {
			if up := rc.up.Load(); up == nil || !up.Connected() {
				why = "the uplink is not connected upstream"
			}
		}
		return why == "", nil
	}, func() error { return fmt.Errorf("not healthy within %s: %s", rc.deadline, why) })
}

// affectedRoles returns the roles that read a section that differs between
// old and new, in start order; every role when old is nil or on doubt.
// Sections: [broker] the broker, [poller] the poller and the logger (which
// reads poller.ack_timeout), and the broker too when retain_values or a
// point's unit changed (it makes the value topics), [logger] the logger, [health] health,
// [uplink] the uplink, [run] none (only `tinyscada run` reads it, at its
// start); anything else (node, state_dir, topic_prefix, [log], [bus], a
// section unknown here) every role.
func affectedRoles(old, new *config.Config) []string {
	all := topics.Names(topics.Roles())
	if old == nil {
		return all
	}
	a, err1 := sections(old)
	b, err2 := sections(new)
	if err1 != nil || err2 != nil {
		return all
	}
	set := map[string]bool{}
	for _, k := range slices.Compact(slices.Sorted(slices.Values(append(slices.Collect(maps.Keys(a)), slices.Collect(maps.Keys(b))...)))) {
		if reflect.DeepEqual(a[k], b[k]) {
			continue
		}
		switch k {
		case "run":
		case string(topics.Poller):
			set[string(topics.Poller)], set[string(topics.Logger)] = true, true
			// The broker makes the value topics (whether, and the units).
			if old.Poller.RetainValues != new.Poller.RetainValues || !reflect.DeepEqual(old.Poller.Units(), new.Poller.Units()) {
				set[string(topics.Broker)] = true
			}
		case string(topics.Broker), string(topics.Logger), string(topics.Health), string(topics.Uplink):
			set[k] = true
		default:
			return all
		}
	}
	var out []string
	for _, r := range all {
		if set[r] {
			out = append(out, r)
		}
	}
	return out
}

// sections returns the effective configuration's top-level keys and
// values, as the TOML printed by Encode (defaults included).
func sections(c *config.Config) (map[string]any, error) {
	b, err := c.Encode()
	if err != nil {
		return nil, err
	}
	var m map[string]any
	if err := toml.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	return m, nil
}

// rolePos orders restarts: roles in start order, the broker last.
func rolePos(r string) int {
	if r == string(topics.Broker) {
		return 100
	}
	if i := slices.Index(topics.Names(topics.Roles()), r); i >= 0 {
		return i
	}
	return 50
}

func (rc *remoteConfig) loadMarker() (*applyMarker, error) {
	b, err := os.ReadFile(rc.marker)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("remote config: read marker: %w", err)
	}
	var m applyMarker
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("remote config: marker %s is corrupt (%v): inspect it, restore %s.prev if needed, and remove it", rc.marker, err, rc.path)
	}
	return &m, nil
}

func (rc *remoteConfig) saveMarker(m *applyMarker) error {
	b, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("remote config: encode marker: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(rc.marker), 0o700); err != nil {
		return fmt.Errorf("remote config: marker directory: %w", err)
	}
	if err := atomicfile.WriteFile(rc.marker, b, 0o600); err != nil {
		return fmt.Errorf("remote config: %w", err)
	}
	return nil
}

func hash(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// sleepCtx sleeps d or until ctx ends; it reports whether ctx is alive.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// stackView is what the local bus says about the stack: every service's
// retained state, health's reports and its restart events, each numbered
// in the order they arrived.
type stackView struct {
	mu      sync.Mutex
	seq     uint64
	changed chan struct{} // closed and replaced on every change
	states  map[string]seenState
	reports []seenReport // the last two
	events  []seenEvent  // the last 64
}

type seenState struct {
	State string `json:"state"`
	PID   int    `json:"pid"`
	seq   uint64
}

type seenReport struct {
	Status   string `json:"status"`
	Services map[string]struct {
		Status string `json:"status"`
		PID    int    `json:"pid"`
		Reason string `json:"reason"`
	} `json:"services"`
	seq uint64
}

type seenEvent struct {
	Event   string `json:"event"`
	Service string `json:"service"`
	Result  string `json:"result"`
	Error   string `json:"error"`
	seq     uint64
}

// watch subscribes at QoS 0, as health does: on the loopback bus nothing
// is lost while connected, and a wait that misses a message ends at its
// deadline. (With QoS 1, our broker refused a SUBSCRIBE that followed
// retained QoS 1 messages with SUBACK code 0x91, packet identifier in use.)
func (v *stackView) watch(local *bus.Client, t topics.Tree) error {
	v.mu.Lock()
	v.states, v.changed = map[string]seenState{}, make(chan struct{})
	v.mu.Unlock()
	if err := local.Subscribe(t.SvcState("+"), 0, func(topic string, b []byte) {
		name, ok := t.ParseSvcState(topic)
		var s seenState
		if !ok || (len(b) > 0 && json.Unmarshal(b, &s) != nil) {
			return
		}
		v.update(func() { s.seq = v.seq; v.states[name] = s })
	}); err != nil {
		return err
	}
	if err := local.Subscribe(t.Health(), 0, func(_ string, b []byte) {
		var r seenReport
		if json.Unmarshal(b, &r) != nil {
			return
		}
		v.update(func() {
			r.seq = v.seq
			v.reports = append(v.reports, r)
			if len(v.reports) > 2 {
				v.reports = v.reports[1:]
			}
		})
	}); err != nil {
		return err
	}
	return local.Subscribe(t.HealthEvent(), 0, func(_ string, b []byte) {
		var e seenEvent
		if json.Unmarshal(b, &e) != nil || e.Event != "restart" {
			return
		}
		v.update(func() {
			e.seq = v.seq
			v.events = append(v.events, e)
			if len(v.events) > 64 {
				v.events = v.events[1:]
			}
		})
	})
}

func (v *stackView) update(f func()) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.seq++
	f()
	close(v.changed)
	v.changed = make(chan struct{})
}

// mark returns the number of the last thing seen.
func (v *stackView) mark() uint64 {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.seq
}

func (v *stackView) state(name string) seenState {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.states[name]
}

// wait calls cond under the lock now and after every change until it says
// done or fails, or ctx ends: then timeout gives the error (ctx's own error
// when the parent ended).
func (v *stackView) wait(ctx context.Context, cond func(*stackView) (bool, error), timeout func() error) error {
	for {
		v.mu.Lock()
		done, err := cond(v)
		ch := v.changed
		v.mu.Unlock()
		if done || err != nil {
			return err
		}
		select {
		case <-ch:
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return timeout()
			}
			return ctx.Err()
		}
	}
}

// healthy returns "" when the last two reports, both received after start
// and after the new states of the restarted roles, say ok with each role
// on its current pid; otherwise what is not so. Called under the lock.
func (v *stackView) healthy(roles []string, self string, start uint64) string {
	after := start
	for _, r := range roles {
		s := v.states[r]
		if s.State != "ready" {
			return fmt.Sprintf("%s is %s", r, cmpOr(s.State, "not seen"))
		}
		after = max(after, s.seq)
	}
	if len(v.reports) < 2 || v.reports[0].seq <= after {
		if len(v.reports) > 0 && v.reports[len(v.reports)-1].Status != "ok" {
			return "health says " + v.reports[len(v.reports)-1].Status + describe(v.reports[len(v.reports)-1])
		}
		return "waiting for health's reports on the restarted roles"
	}
	for _, r := range v.reports {
		if r.Status != "ok" {
			return "health says " + r.Status + describe(r)
		}
		for _, role := range roles {
			if role == string(topics.Health) {
				continue
			}
			s, ok := r.Services[role]
			if !ok || s.PID != v.states[role].PID || s.Status != "ok" {
				return fmt.Sprintf("health has not judged %s (pid %d) ok yet", role, v.states[role].PID)
			}
		}
	}
	return ""
}

// describe lists the services of r that are not ok, with their reasons.
func describe(r seenReport) string {
	var bad []string
	for _, name := range slices.Sorted(maps.Keys(r.Services)) {
		if s := r.Services[name]; s.Status != "ok" {
			bad = append(bad, fmt.Sprintf("%s %s: %s", name, s.Status, s.Reason))
		}
	}
	if len(bad) == 0 {
		return ""
	}
	return " (" + strings.Join(bad, "; ") + ")"
}
