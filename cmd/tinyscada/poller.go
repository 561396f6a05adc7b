package main

import (
	"context"
	"errors"
	"log/slog"
	"os"

	"github.com/tinyscada/tinyscada/services/poller"
	"github.com/tinyscada/tinyscada/shared/config"
	"github.com/tinyscada/tinyscada/shared/logging"
	"github.com/tinyscada/tinyscada/shared/service"
	"github.com/tinyscada/tinyscada/shared/topics"
)

// pollerCmd is `tinyscada poller [-config FILE] [-plan]`: the poller role,
// or with -plan the request plan printed on stdout.
func pollerCmd(ctx context.Context, args []string) error {
	fs, cfgPath := commandFlags(string(topics.Poller), "usage: tinyscada poller [-config FILE] [-plan]")
	plan := fs.Bool("plan", false, "print the request plan (ports, devices, the reads of one round) and exit")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	cfg, err := loadConfig(*cfgPath)
	if err != nil {
		return err
	}
	if *plan {
		pl, err := poller.MakePlan(&cfg.Poller, cfg.StateDir)
		if err != nil {
			return err
		}
		return pl.Write(os.Stdout)
	}
	crashTraceback()
	log := logging.New(os.Stderr, cfg.Log.Level).With("role", string(topics.Poller))
	return runPoller(ctx, cfg, log)
}

// runPoller is the poller role: see package poller. The ports are locked
// before the broker connection, so that a second poller with the same
// configuration stops here (exitLocked) instead of taking the first one's
// client id and knocking it off the broker.
func runPoller(ctx context.Context, cfg *config.Config, log *slog.Logger) error {
	locks, err := poller.LockPorts(cfg)
	if err != nil {
		if errors.Is(err, poller.ErrLocked) {
			return &lockedError{err}
		}
		return err
	}
	defer locks.Close()
	svc, err := service.Start(ctx, topics.Poller, cfg, log)
	if err != nil {
		return err
	}
	return svc.RunWith(ctx, func(ctx context.Context) error { return poller.ServeLocked(ctx, svc, locks) })
}
