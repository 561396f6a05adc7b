package main

import (
	"context"
	"os"

	"github.com/tinyscada/tinyscada/services/uplink"
	"github.com/tinyscada/tinyscada/shared/config"
	"github.com/tinyscada/tinyscada/shared/logging"
	"github.com/tinyscada/tinyscada/shared/service"
	"github.com/tinyscada/tinyscada/shared/topics"
)

// uplinkCmd is the uplink role: see package uplink. It keeps the path of
// the configuration file, which a remote configuration replaces. Without
// an upstream broker (uplink.address) it is a configuration error:
// restarting does not fix it, and `tinyscada run` does not start the role
// then; under systemd the unit skips itself (ExecCondition= with -wanted),
// so a device without an upstream shows no failed unit.
func uplinkCmd(ctx context.Context, args []string) error {
	name := string(topics.Uplink)
	fs, cfgFlag := commandFlags(name, "usage: tinyscada "+name+" [-config FILE] [-wanted]")
	wanted := fs.Bool("wanted", false, "only check whether the configuration names an upstream broker (uplink.address): exit 0 if so, 1 if not (for systemd's ExecCondition=)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	path := config.Resolve(*cfgFlag)
	cfg, err := loadConfig(path)
	if err != nil {
		return err
	}
	if *wanted {
		if !cfg.Uplink.Configured() {
			return errNoUpstream
		}
		return nil
	}
	if !cfg.Uplink.Configured() {
		return &configError{errNoUpstream}
	}
	crashTraceback()
	log := logging.New(os.Stderr, cfg.Log.Level).With("role", name)
	svc, err := service.Start(ctx, topics.Uplink, cfg, log)
	if err != nil {
		return err
	}
	return svc.RunWith(ctx, func(ctx context.Context) error {
		u, err := uplink.New(cfg, svc)
		if err != nil {
			return err
		}
		u.ConfigPath = path
		return u.Run(ctx)
	})
}
