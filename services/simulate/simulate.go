// Package simulate is a Modbus RTU slave simulator on a pseudo-terminal:
// units with register maps (constants, counters, sine and square waves,
// writable registers and coils), fault injection and faithful line timing.
// It is the demo device of `tinyscada run` and the poller's test fixture.
package simulate

import (
	"github.com/tinyscada/tinyscada/shared/sdnotify"

	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/tinyscada/tinyscada/shared/pty"
)

// Sim is a simulator running on its own pseudo-terminal.
type Sim struct {
	// Device holds the units: change faults and values, read counters.
	Device *Device
	pty    *pty.PTY
	path   string
	done   chan error
}

// Start creates a pseudo-terminal, makes link a symbolic link to it when
// link is not empty, and serves m's units on it until ctx ends. Errors:
// an invalid map, the pseudo-terminal or the link could not be made.
// log may be nil.
func Start(ctx context.Context, m *Map, link string, log *slog.Logger) (*Sim, error) {
	dev, err := m.NewDevice()
	if err != nil {
		return nil, err
	}
	p, err := pty.Open()
	if err != nil {
		return nil, fmt.Errorf("simulate: %w", err)
	}
	path := p.SlavePath
	if link != "" {
		if err := p.Link(link); err != nil {
			p.Close()
			return nil, fmt.Errorf("simulate: %w", err)
		}
		path = link
	}
	s := &Sim{Device: dev, pty: p, path: path, done: make(chan error, 1)}
	srv := NewServer(dev, p.Master, Options{Baud: m.Baud, ByteTiming: m.ByteTiming, Logger: log})
	go func() { s.done <- srv.Run(ctx) }()
	return s, nil
}

// Path returns the path a master opens: the link if Start made one, else
// the pseudo-terminal's slave device.
func (s *Sim) Path() string { return s.path }

// Wait waits for the server to stop (its context ended or the line
// failed), closes the pseudo-terminal and removes the link. It returns the
// server's error, or nil after a cancelled context.
func (s *Sim) Wait() error {
	err := <-s.done
	return errors.Join(err, s.pty.Close())
}

const usage = "usage: tinyscada simulate [-map FILE] [-link PATH] [-baud N] [-byte-timing[=false]] [-print-demo]"

// Main runs the `tinyscada simulate` command with args (without the
// command name): it serves the map of -map (or the built-in demo map) on a
// new pseudo-terminal, prints the path to open on stdout, and serves until
// SIGINT or SIGTERM, then removes the -link symlink. -baud and
// -byte-timing override the map's settings; -print-demo prints the
// built-in map (an example of the format) and returns. It returns nil after
// a signal or -h, and an error for bad flags, a bad map, or a failure to
// create or serve the line.
func Main(args []string) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return run(ctx, args, os.Stdout, os.Stderr)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("simulate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, usage)
		fs.PrintDefaults()
	}
	mapFile := fs.String("map", "", "register map `file` (TOML); default: the built-in demo map")
	link := fs.String("link", "", "make a symbolic link at `path` to the pseudo-terminal")
	baud := fs.Int("baud", 0, "line speed for the timing (overrides the map)")
	timing := fs.Bool("byte-timing", false, "take as long as a real line at the baud rate (overrides the map)")
	printDemo := fs.Bool("print-demo", false, "print the built-in map and exit")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return fmt.Errorf("simulate: %w", err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("simulate: unexpected argument %q\n%s", fs.Arg(0), usage)
	}
	if *printDemo {
		_, err := io.WriteString(stdout, DemoMapText())
		return err
	}
	m := Demo()
	if *mapFile != "" {
		var err error
		if m, err = LoadMap(*mapFile); err != nil {
			return err
		}
	}
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "baud":
			m.Baud = *baud
		case "byte-timing":
			m.ByteTiming = *timing
		}
	})
	if m.Baud <= 0 {
		return fmt.Errorf("simulate: -baud %d: want > 0", m.Baud)
	}
	log := slog.New(slog.NewTextHandler(stderr, nil)).With("service", "simulate")
	sim, err := Start(ctx, m, *link, log)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, sim.Path())
	var units []int
	for _, id := range sim.Device.Units() {
		units = append(units, int(id))
	}
	log.Info("serving", "path", sim.Path(), "pty", sim.pty.SlavePath, "units", units,
		"baud", m.Baud, "byte_timing", m.ByteTiming)
	// Under `tinyscada run` (or systemd) the line exists now: the poller
	// may start.
	if err := sdnotify.Ready(); err != nil {
		log.Warn("sd_notify READY failed", "err", err)
	}
	_ = sdnotify.Status("simulating units %v on %s", units, sim.Path())
	err = sim.Wait()
	s := sim.Device.Stats()
	log.Info("stopped", "frames", s.Frames, "crc_errors", s.CRCErrors, "resyncs", s.Resyncs)
	return err
}
