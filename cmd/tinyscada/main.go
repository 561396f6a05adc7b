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
	"runtime/debug"
	"syscall"

	"github.com/tinyscada/tinyscada/shared/config"
	"github.com/tinyscada/tinyscada/shared/logging"
	"github.com/tinyscada/tinyscada/shared/topics"
)

// Exit codes. exitUsage and exitConfig pair with RestartPreventExitStatus=
// in the units: a bad command line or configuration is not fixed by
// restarting. exitUsage is not 2, which is what the Go runtime exits with
// after an unhandled panic (and, without GOTRACEBACK=crash, after SIGABRT):
// a crash must be restarted. A role dies by SIGABRT itself after a watchdog
// timeout (see crashTraceback).
const (
	exitFailure = 1
	exitUsage   = 64 // EX_USAGE
	exitConfig  = 78 // EX_CONFIG
)

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
		{"export", "write stored readings as CSV or JSON lines", exportCmd},
		{"run", "run the whole stack without systemd", runStack},
		{"simulate", "a Modbus RTU device simulator on a pseudo-terminal", simulateCmd},
		{"config", "config check FILE: validate and print the effective configuration", configCmd},
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
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		err := c.run(ctx, args[1:])
		var cerr *configError
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
		default:
			fmt.Fprintf(os.Stderr, "tinyscada %s: %v\n", c.name, err)
			return exitFailure
		}
	}
	fmt.Fprintf(os.Stderr, "tinyscada: unknown command %q\n", args[0])
	usage(os.Stderr)
	return exitUsage
}

// configError wraps a configuration error so main exits with exitConfig.
type configError struct{ err error }

func (e *configError) Error() string { return e.err.Error() }
func (e *configError) Unwrap() error { return e.err }

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
