package main

import (
	"context"
	"log/slog"

	"github.com/tinyscada/tinyscada/services/logger"
	"github.com/tinyscada/tinyscada/shared/config"
	"github.com/tinyscada/tinyscada/shared/service"
	"github.com/tinyscada/tinyscada/shared/topics"
)

// runLogger is the logger role: see package logger. The database is opened
// before the broker connection, so that the messages the broker queued for
// the logger's persistent session have somewhere to go the moment it
// connects.
func runLogger(ctx context.Context, cfg *config.Config, log *slog.Logger) error {
	dropDevices(cfg)
	l, err := logger.New(ctx, cfg, logger.Options{Log: log})
	if err != nil {
		return err
	}
	defer l.Close()
	svc, err := service.Start(ctx, topics.Logger, cfg, log, service.StartOptions{PersistentSession: true, OnMessage: l.Handle})
	if err != nil {
		return err
	}
	return svc.RunWith(ctx, func(ctx context.Context) error { return l.Serve(ctx, svc) })
}
