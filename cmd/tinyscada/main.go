// Command tinyscada is the one binary of the stack: a subcommand per role
// (broker, poller, logger, uplink, health) and the supporting commands.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"syscall"

	"github.com/tinyscada/tinyscada/services/broker"
	"github.com/tinyscada/tinyscada/shared/config"
	"github.com/tinyscada/tinyscada/shared/logging"
	"github.com/tinyscada/tinyscada/shared/topics"
)

// Exit codes. exitUsage, exitLocked and exitConfig pair with
// RestartPreventExitStatus= in the units: a bad command line or
// configuration is not fixed by restarting, nor is another process holding
// what the role must own (a second poller on the same ports). exitUsage is
// not 2, which is what the Go runtime exits with after an unhandled panic
// (and, without GOTRACEBACK=crash, after SIGABRT): a crash must be
// restarted. A role dies by SIGABRT itself after a watchdog timeout (see
// crashTraceback).
const (
	exitFailure = 1
	exitUsage   = 64 // EX_USAGE
	exitLocked  = 69 // EX_UNAVAILABLE
	exitConfig  = 78 // EX_CONFIG
)

// errNoUpstream: the uplink role without an upstream broker.
var errNoUpstream = errors.New("uplink.address is not set: there is no upstream broker to send to (tinyscada run leaves the uplink out then)")

// crashTraceback makes a fatal signal (SIGABRT from a watchdog timeout) or
// an unhandled panic print every goroutine's stack and then end the process
// by that signal, with its default action, instead of exit status 2: so
// systemd reports "signal=ABRT" (or "SEGV", ...) for a crash, never a code
// that reads as a bad command line. The units set LimitCORE=0, so no core
// file is written.
func crashTraceback() { debug.SetTraceback("crash") }

// errUsage marks a command-line mistake; its message was printed already.
var errUsage = errors.New("usage")

type command struct {
	name    string
	summary string
	run     func(ctx context.Context, args []string) error
}

func commands() []command {
	return []command{
		{string(topics.Broker), "run the embedded MQTT broker", roleCmd(topics.Broker, runBroker)},
		{string(topics.Health), "turn heartbeats into watchdog pings; restart failing units", roleCmd(topics.Health, runHealth)},
		{string(topics.Poller), "poll the serial devices and publish readings", pollerCmd},
		{string(topics.Logger), "store readings in SQLite and acknowledge them", roleCmd(topics.Logger, runLogger)},
		{string(topics.Uplink), "send stored readings upstream", uplinkCmd},
		{"export", "write stored readings as CSV or JSON lines", exportCmd},
		{"run", "run the whole stack without systemd", runStack},
		{"simulate", "a Modbus RTU device simulator on a pseudo-terminal", simulateCmd},
		{"config", "config check [-config] FILE: validate and print the effective configuration", configCmd},
		{"version", "print the version", versionCmd},
	}
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "usage: tinyscada COMMAND [flags]   (tinyscada COMMAND -h for its flags)\n\ncommands:\n")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-9s %s\n", c.name, c.summary)
	}
}

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(os.Stderr)
		if len(args) == 0 {
			return exitUsage
		}
		return 0
	}
	for _, c := range commands() {
		if c.name != args[0] {
			continue
		}
		if topics.IsRole(c.name) || c.name == "simulate" {
			tuneRuntime(c.name)
			defer startProfile(c.name, os.Stderr)()
		}
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		err := c.run(ctx, args[1:])
		var cerr *configError
		var lerr *lockedError
		switch {
		case err == nil, errors.Is(err, context.Canceled):
			return 0
		case errors.Is(err, flag.ErrHelp):
			return 0
		case errors.Is(err, errUsage):
			return exitUsage
		case errors.As(err, &cerr):
			fmt.Fprintf(os.Stderr, "tinyscada %s: %v\n", c.name, cerr.err)
			return exitConfig
		case errors.As(err, &lerr):
			fmt.Fprintf(os.Stderr, "tinyscada %s: %v (not restarted: stop the other one first)\n", c.name, lerr.err)
			return exitLocked
		default:
			fmt.Fprintf(os.Stderr, "tinyscada %s: %v\n", c.name, err)
			return exitFailure
		}
	}
	fmt.Fprintf(os.Stderr, "tinyscada: unknown command %q\n", args[0])
	usage(os.Stderr)
	return exitUsage
}

// tuneRuntime sets a role's Go runtime for a small device, each setting
// unless the environment gives it (GOMAXPROCS, GOGC, GOMEMLIMIT; a
// unit's Environment= or a drop-in overrides it).
//
// GOMAXPROCS=1: a role runs Go code on one thread. A role's work is a chain of hand-offs between
// goroutines (a serial read, a message for the bus client's goroutines, a
// write to the broker; in the broker, from connection to connection): on
// one thread they cost no cross-core wake-ups. Measured at field rate with
// internal/fieldbench (docs/performance.md): the roles' CPU per reading
// came down by about an eighth, their wake-ups by a quarter; and for the
// broker with services/broker/internal/brokerbench
// (docs/broker-benchmark.md): more messages per second and less memory
// than with both cores of the machine.
//
// GOGC=50: a role's live heap is small (about 1 MB; the logger's SQLite
// page cache aside), so the collector's 4 MB minimum goal at the default
// 100 was most of each role's memory. At field rate, 50 took the roles'
// PSS from 44.7 to 37.0 MB in total with no more CPU (docs/performance.md).
//
// GOMEMLIMIT: a soft limit per role below its unit's MemoryMax, so that
// the collector works harder before systemd's limit kills the role.
func tuneRuntime(role string) {
	broker.ReleaseTestTables()
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(1)
	}
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(50)
	}
	if l, ok := memoryLimit[role]; ok && os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(l)
	}
}

// dropDevices empties the poller's device list in cfg, for a role that
// reads none of it (health, logger): with many points the list is most of
// the configuration's memory (of the 280 KB that BenchmarkParseRetained in
// shared/config reports for 50 devices of 20 points), which such a role
// would otherwise keep as long as it runs.
func dropDevices(cfg *config.Config) { cfg.Poller.Device = nil }

// memoryLimit is each role's GOMEMLIMIT, under its unit's MemoryMax
// (docs/operations.md, "The units").
var memoryLimit = map[string]int64{
	string(topics.Broker): 20 << 20,
	string(topics.Logger): 20 << 20,
	string(topics.Poller): 16 << 20,
	string(topics.Health): 8 << 20,
	string(topics.Uplink): 16 << 20,
	"simulate":            8 << 20,
}

// configError wraps a configuration error so main exits with exitConfig.
type configError struct{ err error }

func (e *configError) Error() string { return e.err.Error() }
func (e *configError) Unwrap() error { return e.err }

// lockedError wraps the error of a role that finds what it must own held
// by another process, so main exits with exitLocked.
type lockedError struct{ err error }

func (e *lockedError) Error() string { return e.err.Error() }
func (e *lockedError) Unwrap() error { return e.err }

// roleFunc runs one role until ctx ends.
type roleFunc func(ctx context.Context, cfg *config.Config, log *slog.Logger) error

// commandFlags returns the flag set of a command that takes -config, with
// usage as its usage line, and where the -config value lands.
func commandFlags(name, usage string) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	cfgPath := fs.String("config", "", "configuration `file` (default $"+config.EnvVar+", else "+config.DefaultPath+" if present, else the built-in demo)")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), usage)
		fs.PrintDefaults()
	}
	return fs, cfgPath
}

// parseFlags parses args, which may hold only flags. It returns
// flag.ErrHelp for -h, errUsage (with the usage printed) for anything wrong.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return errUsage
	}
	return nil
}

// roleCmd makes the subcommand of a role: -config, load and validate the
// configuration before anything starts, a logger, then the role.
func roleCmd(role topics.Role, fn roleFunc) func(context.Context, []string) error {
	name := string(role)
	return func(ctx context.Context, args []string) error {
		fs, cfgPath := commandFlags(name, "usage: tinyscada "+name+" [-config FILE]")
		if err := parseFlags(fs, args); err != nil {
			return err
		}
		cfg, err := loadConfig(*cfgPath)
		if err != nil {
			return err
		}
		crashTraceback()
		log := logging.New(os.Stderr, cfg.Log.Level).With("role", name)
		return fn(ctx, cfg, log)
	}
}

func loadConfig(flagValue string) (*config.Config, error) {
	cfg, err := config.Load(config.Resolve(flagValue))
	if err != nil {
		return nil, &configError{err}
	}
	return cfg, nil
}
