package main

import (
	"context"
	"flag"
	"fmt"
	"os"

	"github.com/tinyscada/tinyscada/shared/version"
)

// versionCmd is `tinyscada version`.
func versionCmd(_ context.Context, args []string) error {
	if len(args) > 0 {
		fmt.Fprintln(os.Stderr, "usage: tinyscada version")
		if args[0] == "-h" || args[0] == "--help" {
			return flag.ErrHelp
		}
		return errUsage
	}
	fmt.Println("tinyscada", version.String())
	return nil
}
