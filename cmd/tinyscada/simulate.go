package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/tinyscada/tinyscada/services/simulate"
	"github.com/tinyscada/tinyscada/shared/config"
	"github.com/tinyscada/tinyscada/shared/logging"
)

// simulatorWanted returns nil when cfg has a Modbus RTU port with simulate =
// true whose device is link (what `tinyscada run` starts a simulator for),
// and an error saying so otherwise: the unit of the demo's simulator runs
// it as its ExecCondition=, so that the target starts the simulator only
// where the configuration polls it.
func simulatorWanted(cfg *config.Config, link string) error {
	if link == "" {
		fmt.Fprintln(os.Stderr, "tinyscada simulate: -wanted needs -link PATH")
		return errUsage
	}
	for _, p := range cfg.Poller.Port {
		if p.Simulate && p.Mode == config.ModeRTU && filepath.Clean(p.Path(cfg.StateDir)) == filepath.Clean(link) {
			return nil
		}
	}
	return fmt.Errorf("no port with simulate = true on %s in the configuration: no simulator needed", link)
}

// simulateCmd is `tinyscada simulate`: the map of -map (or the built-in
// demo map) served on a new pseudo-terminal, whose path (the -link if
// given) is printed on stdout, until SIGINT or SIGTERM; then the link is
// removed. -baud and -byte-timing override the map's settings; -print-demo
// prints the built-in map (an example of the format) and exits; -h prints
// the flags and the map format (simulate.MapFormat, docs/simulate.md). The
// configuration gives the log level, as for every role. A map that cannot
// be read or is invalid is a configuration error.
func simulateCmd(ctx context.Context, args []string) error {
	fs, cfgPath := commandFlags("simulate", "usage: tinyscada simulate [-config FILE] [-map FILE] [-link PATH] [-baud N] [-byte-timing[=false]] [-print-demo]\n"+
		"A Modbus RTU device simulator on a pseudo-terminal: prints the path to open, serves until SIGINT or SIGTERM.")
	mapFile := fs.String("map", "", "register map `file` (TOML; -print-demo shows the format); default: the built-in demo map")
	link := fs.String("link", "", "make a symbolic link at `path` to the pseudo-terminal (removed at exit)")
	baud := fs.Int("baud", 0, "line speed for the timing (overrides the map)")
	timing := fs.Bool("byte-timing", false, "take as long as a real line at the baud rate (overrides the map)")
	printDemo := fs.Bool("print-demo", false, "print the built-in map and exit")
	wanted := fs.Bool("wanted", false, "only check whether the configuration polls a simulated port (simulate = true) at -link: exit 0 if so, 1 if not (for systemd's ExecCondition=)")
	flagsUsage := fs.Usage
	fs.Usage = func() {
		flagsUsage()
		fmt.Fprintln(fs.Output())
		fmt.Fprint(fs.Output(), simulate.MapFormat)
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *printDemo {
		_, err := io.WriteString(os.Stdout, simulate.DemoMapText())
		return err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if set["baud"] && *baud <= 0 {
		fmt.Fprintf(os.Stderr, "tinyscada simulate: -baud %d: want > 0\n", *baud)
		return errUsage
	}
	cfg, err := loadConfig(*cfgPath)
	if err != nil {
		return err
	}
	if *wanted {
		return simulatorWanted(cfg, *link)
	}
	m := simulate.Demo()
	if *mapFile != "" {
		if m, err = simulate.LoadMap(*mapFile); err != nil {
			return &configError{err}
		}
	}
	if set["baud"] {
		m.Baud = *baud
	}
	if set["byte-timing"] {
		m.ByteTiming = *timing
	}
	log := logging.New(os.Stderr, cfg.Log.Level).With("role", "simulate")
	sim, err := simulate.Start(ctx, m, *link, log)
	if err != nil {
		return err
	}
	fmt.Println(sim.Path())
	return sim.Serve()
}
