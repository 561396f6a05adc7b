package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/tinyscada/tinyscada/services/simulate"
	"github.com/tinyscada/tinyscada/shared/logging"
)

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
