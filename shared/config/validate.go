package config

import (
	"strconv"
	"strings"
	"time"

	"github.com/tinyscada/tinyscada/shared/topics"
)

// validate checks the top-level keys, then every section (see
// validateSections), then what spans sections.
func (c *Config) validate(ch *checker) {
	if c.Version != 1 {
		ch.errorf("version", "unsupported version %d (want 1)", c.Version)
	}
	ch.topic("node", c.Node, true)
	if c.StateDir == "" {
		ch.errorf("state_dir", "must not be empty")
	} else if strings.IndexByte(c.StateDir, 0) >= 0 {
		ch.errorf("state_dir", "%q holds a NUL byte", c.StateDir)
	}
	ch.topic("topic_prefix", c.TopicPrefix, false)
	validateSections(c, ch)
	c.validateAcross(ch)
}

// validateAcross checks the rules that span sections. Every check a role
// makes of its configuration when it starts belongs here or in a section's
// validate, so that `tinyscada config check` accepts exactly what the roles
// accept (cmd/tinyscada tests it role by role).
func (c *Config) validateAcross(ch *checker) {
	// Health judges a heartbeat stale after health.stale_after: it must
	// be longer than the interval the heartbeats come at. Named where the
	// file sets it (either key may be the one that moved).
	if hb, st := c.Bus.HeartbeatInterval.Duration, c.Health.StaleAfter.Duration; hb >= st {
		if !ch.has("health.stale_after") && ch.has("bus.heartbeat_interval") {
			ch.errorf("bus.heartbeat_interval", "%s is not shorter than health.stale_after (%s): every service would look stale", hb, st)
		} else {
			ch.errorf("health.stale_after", "%s is not longer than bus.heartbeat_interval (%s): every service would look stale", st, hb)
		}
	}
	// The logger acknowledges a reading when it commits it, up to
	// logger.batch_delay later; a poller that gave up on it sooner would
	// send every reading twice.
	if at, bd := c.Poller.AckTimeout.Duration, c.Logger.BatchDelay.Duration; at <= bd {
		if !ch.has("poller.ack_timeout") && ch.has("logger.batch_delay") {
			ch.errorf("logger.batch_delay", "%s is not shorter than poller.ack_timeout (%s): the poller would send every reading again before it is committed", bd, at)
		} else {
			ch.errorf("poller.ack_timeout", "%s is not longer than logger.batch_delay (%s): the poller would send every reading again before it is committed", at, bd)
		}
	}
}

func (l *Log) validate(ch *checker) {
	ch.oneOf("level", l.Level, "debug", "info", "warn", "error")
}

func (b *Bus) validate(ch *checker) {
	if path, ok := strings.CutPrefix(b.Address, "unix:"); ok {
		ch.absPath("address", path, maxUnixPath)
	} else if msg := checkHostPort(b.Address, false); msg != "" {
		ch.errorf("address", "bad address %q: %s (or unix:/path/to/socket)", b.Address, msg)
	}
	ch.atLeast("heartbeat_interval", b.HeartbeatInterval, 100*time.Millisecond)
	// MQTT carries the keep-alive as a 16-bit number of seconds.
	ch.atLeast("keep_alive", b.KeepAlive, time.Second)
	ch.atMost("keep_alive", b.KeepAlive, 65535*time.Second)
	ch.positive("retry_max", b.RetryMax)
}

func (b *Broker) validate(ch *checker) {
	for i, addr := range b.Listen {
		ch.hostPort(indexKey("listen", i), addr, true)
	}
	if b.UnixSocket != "" {
		ch.absPath("unix_socket", b.UnixSocket, maxUnixPath)
	}
	if len(b.Listen) == 0 && b.UnixSocket == "" {
		ch.errorf("listen", "no listener: set listen or unix_socket")
	}
	switch {
	case b.TLSCert != "" && b.TLSKey == "":
		ch.errorf("tls_key", "must be set when tls_cert is")
	case b.TLSCert == "" && b.TLSKey != "":
		ch.errorf("tls_cert", "must be set when tls_key is")
	}
	// mochi's ticker counts whole seconds: less than 1s would disable it.
	if b.SysInterval.Duration != 0 {
		ch.atLeast("sys_interval", b.SysInterval, time.Second)
	}
	ch.sizeRange("client_buffer", b.ClientBuffer, 1<<10, 1<<20)
	// mochi allocates a channel of max_pending per client and keeps
	// max_inflight in 16 bits.
	ch.intRange("max_pending", b.MaxPending, 1, 65535)
	ch.intRange("max_inflight", b.MaxInflight, 1, 65535)
	// The roles' MQTT client (shared/bus) takes packets up to 1MiB: a
	// larger limit would let through messages that then stall the
	// subscribers.
	ch.sizeRange("max_packet_size", b.MaxPacketSize, 4<<10, 1<<20)
}

func (r *Run) validate(ch *checker) {
	if len(r.Roles) == 0 {
		ch.errorf("roles", "no role to run (want some of %s)", strings.Join(topics.Names(topics.Roles()), ", "))
	}
	seen := map[string]bool{}
	for i, role := range r.Roles {
		key := indexKey("roles", i)
		switch {
		case seen[role]:
			ch.errorf(key, "role %q is listed twice", role)
		case !topics.IsRole(role):
			ch.errorf(key, "unknown role %q (want one of %s)", role, strings.Join(topics.Names(topics.Roles()), ", "))
		}
		seen[role] = true
	}
	ch.positive("ready_timeout", r.ReadyTimeout)
	ch.positive("restart_backoff", r.RestartBackoff)
	if r.RestartBackoffMax.Duration < r.RestartBackoff.Duration {
		key := "restart_backoff_max"
		if !ch.has(key) && ch.has("restart_backoff") {
			key = "restart_backoff"
		}
		ch.errorf(key, "restart_backoff_max %s is less than restart_backoff %s",
			r.RestartBackoffMax.Duration, r.RestartBackoff.Duration)
	}
}

// indexKey names element i of an array: indexKey("listen", 1) is
// "listen[1]".
func indexKey(key string, i int) string {
	return key + "[" + strconv.Itoa(i) + "]"
}
