// Package simulate is a Modbus RTU slave simulator on a pseudo-terminal:
// units with register maps (constants, counters, sine and square waves,
// writable registers and coils), fault injection and faithful line timing.
// It is the demo device of `tinyscada run` and the poller's test fixture.
package simulate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/tinyscada/tinyscada/shared/pty"
	"github.com/tinyscada/tinyscada/shared/sdnotify"
)

// Sim is a simulator running on its own pseudo-terminal.
type Sim struct {
	// Device holds the units: change faults and values, read counters.
	Device *Device
	pty    *pty.PTY
	path   string
	log    *slog.Logger
	baud   int
	timing bool // byte timing
	done   chan error
}

// Start creates a pseudo-terminal, makes link a symbolic link to it when
// link is not empty, and serves m's units on it until ctx ends. Errors:
// an invalid map, the pseudo-terminal or the link could not be made.
// log may be nil (no logs).
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
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Sim{Device: dev, pty: p, path: path, log: log, baud: m.Baud, timing: m.ByteTiming, done: make(chan error, 1)}
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

// Serve is Wait for a simulator run as a service (`tinyscada simulate`, the
// tinyscada-simulate@ unit): it logs what it serves, tells systemd or the
// run supervisor READY=1 with a STATUS= line (the line exists now: the
// poller may start), waits for the server to stop and logs what it was
// asked. It returns what Wait returns.
func (s *Sim) Serve() error {
	var units []int
	for _, id := range s.Device.Units() {
		units = append(units, int(id))
	}
	s.log.Info("serving", "path", s.path, "pty", s.pty.SlavePath, "units", units,
		"baud", s.baud, "byte_timing", s.timing)
	if err := sdnotify.Ready(); err != nil {
		s.log.Warn("sd_notify READY failed", "err", err)
	}
	_ = sdnotify.Status("simulating units %v on %s", units, s.path)
	err := s.Wait()
	st := s.Device.Stats()
	s.log.Info("stopped", "frames", st.Frames, "crc_errors", st.CRCErrors, "resyncs", st.Resyncs)
	return err
}
