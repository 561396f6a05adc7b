package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/tinyscada/tinyscada/services/supervisor"
	"github.com/tinyscada/tinyscada/shared/config"
	"github.com/tinyscada/tinyscada/shared/flock"
	"github.com/tinyscada/tinyscada/shared/logging"
	"github.com/tinyscada/tinyscada/shared/topics"
)

// runStack is `tinyscada run`: every configured role that this binary
// implements, as children of one supervisor.
func runStack(ctx context.Context, args []string) error {
	fs, cfgPath := commandFlags("run", "usage: tinyscada run [-config FILE]   (the whole stack without systemd; Ctrl-C stops it)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	cfg, err := loadConfig(*cfgPath)
	if err != nil {
		return err
	}
	log := logging.New(os.Stderr, cfg.Log.Level).With("role", "run")

	runDir := filepath.Join(cfg.StateDir, "run")
	if err := os.MkdirAll(runDir, 0o700); err != nil {
		return err
	}
	lock, err := flock.Lock(filepath.Join(runDir, "lock"))
	if errors.Is(err, flock.ErrLocked) {
		return fmt.Errorf("another `tinyscada run` uses %s: %w", cfg.StateDir, err)
	}
	if err != nil {
		return err
	}
	defer lock.Close()

	// Every child reads the very configuration checked here, with the state
	// directory made absolute, whatever its working directory; without
	// writing to the disk, which may be full (see childConfig).
	effective, err := cfg.Encode()
	if err != nil {
		return err
	}
	effPath, files, err := childConfig(effective, runDir)
	if err != nil {
		return err
	}
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	roles, skipped := supervisor.Stack(cfg, effPath, func(role string) bool {
		if role == string(topics.Uplink) && !cfg.Uplink.Configured() {
			return false // nowhere to send: see errNoUpstream
		}
		return slices.ContainsFunc(commands(), func(c command) bool { return c.name == role })
	}, log)
	if len(skipped) > 0 {
		log.Info("roles not started (not built into this binary, or the uplink without uplink.address)", "roles", strings.Join(skipped, ","))
	}
	sup := supervisor.New(supervisor.Options{
		Exe:               exe,
		Roles:             roles,
		RunDir:            runDir,
		Env:               []string{supervisor.UnderRun},
		ExtraFiles:        files,
		ReadyTimeout:      cfg.Run.ReadyTimeout.Duration,
		RestartBackoff:    cfg.Run.RestartBackoff.Duration,
		RestartBackoffMax: cfg.Run.RestartBackoffMax.Duration,
		Log:               log,
		OnStarted:         func() { printHints(cfg) },
	})
	return sup.Run(ctx)
}

// printHints tells a newcomer where to look: a mosquitto_sub command for the
// first TCP listener of the broker, and the state directory.
func printHints(cfg *config.Config) {
	look := "  (the broker has no TCP listener; use a client that speaks unix sockets)"
	if len(cfg.Broker.Listen) > 0 {
		host, port, err := net.SplitHostPort(cfg.Broker.Listen[0])
		if err == nil {
			if host == "" || host == "0.0.0.0" || host == "::" {
				host = "127.0.0.1"
			}
			look = fmt.Sprintf("  mosquitto_sub -h %s -p %s -t '%s/#' -v", host, port, cfg.TopicPrefix)
		}
	}
	fmt.Fprintf(os.Stderr, "\ntinyscada is running. Look inside with:\n%s\nState directory: %s\nStop with Ctrl-C.\n\n", look, cfg.StateDir)
}
