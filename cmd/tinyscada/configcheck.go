package main

import (
	"context"
	"flag"
	"fmt"
	"os"

	"github.com/tinyscada/tinyscada/shared/config"
)

const configUsage = "usage: tinyscada config check [-config FILE | FILE]   (no FILE: the file the services would use)"

// configCmd is `tinyscada config check [-config FILE | FILE]`: it loads and
// validates FILE (or the file the services would use) and prints the
// effective configuration, defaults included. -config is the flag every
// role takes, so the command line of a unit works here too.
func configCmd(_ context.Context, args []string) error {
	if len(args) == 0 || args[0] != "check" {
		fmt.Fprintln(os.Stderr, configUsage)
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			return flag.ErrHelp
		}
		return errUsage
	}
	fs, cfgPath := commandFlags("config check", configUsage)
	if err := fs.Parse(args[1:]); err != nil {
		if err == flag.ErrHelp {
			return err
		}
		return errUsage
	}
	path := config.Resolve(*cfgPath)
	switch {
	case fs.NArg() > 1, fs.NArg() == 1 && *cfgPath != "":
		fmt.Fprintln(os.Stderr, "tinyscada config check: one file, either as -config FILE or as FILE")
		fs.Usage()
		return errUsage
	case fs.NArg() == 1:
		path = fs.Arg(0)
	}
	cfg, err := loadConfig(path)
	if err != nil {
		return err
	}
	b, err := cfg.Encode()
	if err != nil {
		return err
	}
	src := path
	if src == "" {
		src = "built-in demo configuration"
	}
	fmt.Printf("# %s: ok\n", src)
	_, err = os.Stdout.Write(b)
	return err
}
