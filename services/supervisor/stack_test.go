package supervisor

import (
	"bytes"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/shared/config"
)

func TestStack(t *testing.T) {
	const cfgPath = "/state/run/tinyscada.toml"
	demo := func() *config.Config {
		cfg := config.Default()
		cfg.StateDir = "/state"
		cfg.Health.RunWatchdog = config.Duration{Duration: 30 * time.Second}
		cfg.Health.RunSelfWatchdog = config.Duration{Duration: 10 * time.Second}
		// Neither a port that is no simulator nor a simulated line port
		// gets a simulator.
		hw := cfg.Poller.Port[0]
		hw.Name, hw.Device, hw.Simulate = "rs485", "/dev/ttyUSB0", false
		line := cfg.Poller.Port[0]
		line.Name, line.Device, line.Mode = "gps", "run/gps-tty", config.ModeLine
		sim2 := cfg.Poller.Port[0]
		sim2.Name, sim2.Device, sim2.Baud = "sim2", "run/sim2-tty", 19200
		cfg.Poller.Port = append(cfg.Poller.Port, hw, line, sim2)
		return cfg
	}
	all := func(string) bool { return true }
	noUplink := func(r string) bool { return r != "uplink" }
	sim := Role{Name: "simulate-sim", Args: []string{"simulate", "-config", cfgPath, "-link", "/state/run/sim-tty", "-baud", "9600"}}
	sim2 := Role{Name: "simulate-sim2", Args: []string{"simulate", "-config", cfgPath, "-link", "/state/run/sim2-tty", "-baud", "19200"}}
	role := func(name string, wd time.Duration) Role {
		return Role{Name: name, Args: []string{name, "-config", cfgPath}, Watchdog: wd}
	}
	tests := []struct {
		name    string
		roles   []string
		have    func(string) bool
		canPing bool
		want    []Role
		skipped []string
		log     string // in the log; "" for none
	}{
		{"demo with watchdogs", nil, noUplink, true, []Role{
			role("broker", 30*time.Second), role("logger", 30*time.Second), sim, sim2,
			role("poller", 30*time.Second), role("health", 10*time.Second),
		}, []string{"uplink"}, ""},
		{"without CAP_SYS_ADMIN", nil, noUplink, false, []Role{
			role("broker", 0), role("logger", 0), sim, sim2, role("poller", 0), role("health", 0),
		}, []string{"uplink"}, "no watchdogs: health needs CAP_SYS_ADMIN"},
		// The stack's order, whatever the order of run.roles: the
		// supervisor stops in reverse, the producer first.
		{"listed out of order", []string{"health", "poller", "logger", "broker"}, all, false, []Role{
			role("broker", 0), role("logger", 0), sim, sim2, role("poller", 0), role("health", 0),
		}, nil, "no watchdogs"},
		{"without health nothing pings", []string{"broker", "poller"}, all, true, []Role{
			role("broker", 0), sim, sim2, role("poller", 0),
		}, nil, ""},
		{"no poller, no simulators", []string{"broker", "health"}, all, true, []Role{
			role("broker", 30*time.Second), role("health", 10*time.Second),
		}, nil, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := demo()
			if tc.roles != nil {
				cfg.Run.Roles = tc.roles
			}
			var logs bytes.Buffer
			roles, skipped := stack(cfg, cfgPath, tc.have, tc.canPing, slog.New(slog.NewTextHandler(&logs, nil)))
			if !slices.EqualFunc(roles, tc.want, func(a, b Role) bool {
				return a.Name == b.Name && slices.Equal(a.Args, b.Args) && a.Watchdog == b.Watchdog
			}) {
				t.Errorf("roles:\n got %+v\nwant %+v", roles, tc.want)
			}
			if !slices.Equal(skipped, tc.skipped) {
				t.Errorf("skipped %v, want %v", skipped, tc.skipped)
			}
			if tc.log == "" && logs.Len() > 0 || !strings.Contains(logs.String(), tc.log) {
				t.Errorf("log %q, want %q", logs.String(), tc.log)
			}
		})
	}
}
