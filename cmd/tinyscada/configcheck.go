package main

import (
	"context"
	"flag"
	"fmt"
	"os"

	"github.com/tinyscada/tinyscada/shared/config"
)

// configCmd is `tinyscada config check [FILE]`: it loads and validates FILE
// (or the file the services would use) and prints the effective
// configuration, defaults included.
func configCmd(_ context.Context, args []string) error {
	if len(args) == 0 || args[0] != "check" || len(args) > 2 {
		fmt.Fprintln(os.Stderr, "usage: tinyscada config check [FILE]   (no FILE: the file the services would use)")
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			return flag.ErrHelp
		}
		return errUsage
	}
	path := config.Resolve("")
	if len(args) == 2 {
		path = args[1]
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
