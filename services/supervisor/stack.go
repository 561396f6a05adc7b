package supervisor

import (
	"log/slog"
	"slices"
	"strconv"
	"strings"

	"github.com/tinyscada/tinyscada/shared/config"
	"github.com/tinyscada/tinyscada/shared/sdnotify"
	"github.com/tinyscada/tinyscada/shared/topics"
)

// SimulatorPrefix starts the names of the simulator children.
const SimulatorPrefix = "simulate-"

// UnderRun is the variable `tinyscada run` sets in its children's
// environment, so that health drives the run supervisor instead of
// systemd.
const UnderRun = "TINYSCADA_SUPERVISOR=run"

// Stack returns the children of `tinyscada run` for cfg, in start order,
// each reading the configuration file cfgPath: the roles of run.roles that
// have(role) says this binary implements (the others are returned in
// skipped and not started), in the order of topics.Roles() whatever order
// run.roles lists them in (so the supervisor, which stops in reverse,
// stops the poller before the logger and the logger before the broker:
// the producer first, its consumer while it can still commit and
// acknowledge), and before the poller one simulator per RTU
// port of the poller marked simulate = true (the demo),
// `simulate -config cfgPath -link <device> -baud <baud>`, so that the port
// exists when the poller opens it.
//
// The roles get watchdogs as WatchdogSec= gives them under systemd:
// health.run_self_watchdog for health, health.run_watchdog for the others,
// none for the simulators. Only when health is among the roles (nothing
// else pings) and this process has CAP_SYS_ADMIN (health, its child, needs
// it to ping on behalf of the other roles); otherwise log is told why the
// stack runs without watchdogs.
func Stack(cfg *config.Config, cfgPath string, have func(role string) bool, log *slog.Logger) (roles []Role, skipped []string) {
	return stack(cfg, cfgPath, have, sdnotify.CanNotifyPID(), log)
}

func stack(cfg *config.Config, cfgPath string, have func(string) bool, canPing bool, log *slog.Logger) (roles []Role, skipped []string) {
	names := slices.Clone(cfg.Run.Roles)
	order := topics.Names(topics.Roles())
	slices.SortStableFunc(names, func(a, b string) int {
		return slices.Index(order, a) - slices.Index(order, b)
	})
	for _, name := range names {
		if !have(name) {
			skipped = append(skipped, name)
			continue
		}
		if name == string(topics.Poller) {
			roles = append(roles, simulators(cfg, cfgPath)...)
		}
		roles = append(roles, Role{Name: name, Args: []string{name, "-config", cfgPath}})
	}
	if !slices.ContainsFunc(roles, func(r Role) bool { return r.Name == string(topics.Health) }) {
		return roles, skipped
	}
	if !canPing {
		log.Info("no watchdogs: health needs CAP_SYS_ADMIN (root) to ping on behalf of the other roles")
		return roles, skipped
	}
	for i := range roles {
		switch {
		case roles[i].Name == string(topics.Health):
			roles[i].Watchdog = cfg.Health.RunSelfWatchdog.Duration
		case !strings.HasPrefix(roles[i].Name, SimulatorPrefix):
			roles[i].Watchdog = cfg.Health.RunWatchdog.Duration
		}
	}
	return roles, skipped
}

// simulators are the simulator children of the poller's ports marked
// simulate = true.
func simulators(cfg *config.Config, cfgPath string) []Role {
	var roles []Role
	for _, p := range cfg.Poller.Port {
		if !p.Simulate || p.Mode != config.ModeRTU {
			continue
		}
		roles = append(roles, Role{
			Name: SimulatorPrefix + p.Name,
			Args: []string{"simulate", "-config", cfgPath, "-link", p.Path(cfg.StateDir), "-baud", strconv.Itoa(p.Baud)},
		})
	}
	return roles
}
