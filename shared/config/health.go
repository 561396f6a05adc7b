package config

import (
	"time"

	"github.com/tinyscada/tinyscada/shared/topics"
)

// Health configures the health role: which services it expects, when a
// heartbeat counts as stale or stalled, the grace it gives the others while
// the broker is away, and how often it may restart a unit.
//
// Under systemd the watchdog timeouts themselves are the units' WatchdogSec=;
// under `tinyscada run`, RunWatchdog and RunSelfWatchdog play that part.
type Health struct {
	// Expect lists the services that must be up for the gateway to be
	// "ok"; each runs as the unit tinyscada-<name>.service. Any other
	// service that publishes heartbeats is supervised too (its unit is
	// found from its pid) but only makes the status "degraded".
	Expect []string `toml:"expect"`
	// Interval is how often health judges every service and sends the
	// watchdog pings (its own included).
	Interval Duration `toml:"interval"`
	// StaleAfter is the age at which a service's last heartbeat is too old
	// to ping its watchdog.
	StaleAfter Duration `toml:"stale_after"`
	// StallAfter is how long a service's progress counter may stand still,
	// while it does not declare itself idle, before it counts as hung.
	StallAfter Duration `toml:"stall_after"`
	// BrokerGrace is how long the other services keep being pinged, on
	// their last good heartbeat, while the broker cannot be reached.
	BrokerGrace Duration `toml:"broker_grace"`
	// FailingRestartAfter is how long a service may report itself failing
	// (alive, but not doing its job) before health restarts it; 0 never.
	FailingRestartAfter Duration `toml:"failing_restart_after"`
	// RestartLimit is how many restarts health may make of one service
	// within RestartWindow (by command or because it keeps failing).
	RestartLimit  int      `toml:"restart_limit"`
	RestartWindow Duration `toml:"restart_window"`
	// RunWatchdog is, under `tinyscada run`, the watchdog timeout of every
	// role but health (systemd's WatchdogSec=); 0 disables it. It needs
	// health to be among run.roles and CAP_SYS_ADMIN (root).
	RunWatchdog Duration `toml:"run_watchdog"`
	// RunSelfWatchdog is health's own watchdog timeout under `tinyscada
	// run`; 0 disables it.
	RunSelfWatchdog Duration `toml:"run_self_watchdog"`
}

func defaultHealth() Health {
	return Health{
		Expect:              topics.Names(topics.Core()),
		Interval:            Duration{2 * time.Second},
		StaleAfter:          Duration{15 * time.Second},
		StallAfter:          Duration{time.Minute},
		BrokerGrace:         Duration{time.Minute},
		FailingRestartAfter: Duration{2 * time.Minute},
		RestartLimit:        3,
		RestartWindow:       Duration{15 * time.Minute},
		RunWatchdog:         Duration{30 * time.Second},
		RunSelfWatchdog:     Duration{10 * time.Second},
	}
}

// Unit returns the systemd unit of an expected service:
// tinyscada-<svc>.service.
func (h *Health) Unit(svc string) string { return "tinyscada-" + svc + ".service" }

func (h *Health) validate(ch *checker) {
	if len(h.Expect) == 0 {
		h.Expect = nil
	}
	seen := map[string]bool{}
	for i, s := range h.Expect {
		key := indexKey("expect", i)
		ch.topic(key, s, true)
		if seen[s] {
			ch.errorf(key, "%q is listed twice", s)
		}
		if s == string(topics.Health) {
			ch.errorf(key, "%q watches itself through its own watchdog; leave it out", s)
		}
		seen[s] = true
	}
	ch.atLeast("interval", h.Interval, 100*time.Millisecond)
	ch.atMost("interval", h.Interval, time.Minute)
	if h.StaleAfter.Duration < 2*h.Interval.Duration {
		ch.errorf("stale_after", "%s is shorter than two intervals (%s): every service would look stale between two checks", h.StaleAfter.Duration, 2*h.Interval.Duration)
	}
	if h.StallAfter.Duration < h.StaleAfter.Duration {
		ch.errorf("stall_after", "%s is shorter than stale_after (%s)", h.StallAfter.Duration, h.StaleAfter.Duration)
	}
	ch.atMost("broker_grace", h.BrokerGrace, time.Hour)
	if f := h.FailingRestartAfter.Duration; f != 0 && f < h.Interval.Duration {
		ch.errorf("failing_restart_after", "%s is shorter than interval (%s); 0 disables these restarts", f, h.Interval.Duration)
	}
	ch.intRange("restart_limit", h.RestartLimit, 0, 1000)
	if h.RestartLimit > 0 {
		ch.positive("restart_window", h.RestartWindow)
	}
	for _, k := range []struct {
		key string
		d   Duration
	}{{"run_watchdog", h.RunWatchdog}, {"run_self_watchdog", h.RunSelfWatchdog}} {
		if k.d.Duration != 0 && k.d.Duration < 2*h.Interval.Duration {
			ch.errorf(k.key, "%s is shorter than two intervals (%s): pings could not keep up; 0 disables it", k.d.Duration, 2*h.Interval.Duration)
		}
	}
}
