// Command fieldbench runs tinyscada's field workloads with two (or more)
// builds side by side on the same machine and compares what each role costs
// per stored reading: CPU, memory (PSS), bytes written, and wake-ups per
// Modbus transaction. It is the seed of `tinyscada bench` (issue 13);
// docs/performance.md says how to run it and what it measures.
//
//	go run ./internal/fieldbench -bin OLD=/path/a -bin NEW=/path/b[,NAME=VALUE…] [-window 60s] [-warmup 40s] [-workload field|demo] [-rounds N] [-json]
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "fieldbench:", err)
		}
		os.Exit(1)
	}
}

// binFlag collects -bin LABEL=PATH (or PATH, labelled by its base name),
// optionally followed by ,NAME=VALUE settings for the stack's environment
// (e.g. -bin mp1=/tmp/ts,GOMAXPROCS=1: the same build tuned otherwise).
type binFlag struct{ labels, paths, envs []string }

func (f *binFlag) String() string { return strings.Join(f.labels, ",") }

func (f *binFlag) Set(v string) error {
	v, env, _ := strings.Cut(v, ",")
	for kv := range strings.SplitSeq(env, ",") {
		if kv != "" && !strings.Contains(kv, "=") {
			return fmt.Errorf("%q: want NAME=VALUE after the path", kv)
		}
	}
	label, path, ok := strings.Cut(v, "=")
	if !ok {
		label, path = filepath.Base(v), v
	}
	if label == "" || path == "" {
		return fmt.Errorf("%q: want LABEL=PATH", v)
	}
	if slices.Contains(f.labels, label) {
		return fmt.Errorf("label %q given twice", label)
	}
	// The supervisor starts the roles with its own resolved executable, by
	// which the bench finds them in /proc.
	abs, err := filepath.Abs(path)
	if err == nil {
		abs, err = filepath.EvalSymlinks(abs)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", label, err)
	}
	if fi, err := os.Stat(abs); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
		return fmt.Errorf("%s: %s is not an executable file", label, abs)
	}
	f.labels, f.paths, f.envs = append(f.labels, label), append(f.paths, abs), append(f.envs, env)
	return nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("fieldbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var bins binFlag
	fs.Var(&bins, "bin", "a tinyscada binary to measure, `LABEL=PATH` (repeat: one column each)")
	window := fs.Duration("window", 60*time.Second, "how long each run is measured")
	warmup := fs.Duration("warmup", 40*time.Second, "how long each run goes after its first stored reading before the window")
	workload := fs.String("workload", "field", "field (50 devices × 20 registers, 1000 readings/s) or demo (the built-in demo)")
	rounds := fs.Int("rounds", 1, "runs of every binary, interleaved (A B, then B A, …)")
	asJSON := fs.Bool("json", false, "print JSON instead of the table")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: go run ./internal/fieldbench -bin OLD=/path/a -bin NEW=/path/b[,NAME=VALUE…] [-window 60s] [-warmup 40s] [-workload field|demo] [-rounds N] [-json]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch {
	case fs.NArg() > 0:
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	case len(bins.paths) == 0:
		fs.Usage()
		return fmt.Errorf("no -bin given")
	case !slices.Contains(workloads, *workload):
		return fmt.Errorf("-workload %q: want %s", *workload, strings.Join(workloads, " or "))
	case *window < pssSamples*100*time.Millisecond:
		return fmt.Errorf("-window %s: want at least 1s", *window)
	case *warmup < 0:
		return fmt.Errorf("-warmup %s: want >= 0", *warmup)
	case *rounds < 1:
		return fmt.Errorf("-rounds %d: want >= 1", *rounds)
	}
	logf := func(format string, a ...any) {
		fmt.Fprintf(stderr, time.Now().Format("15:04:05 ")+format+"\n", a...)
	}
	var results []*runResult
	for r := 1; r <= *rounds; r++ {
		// A B, then B A: a drift of the machine over the rounds weighs on
		// both alike.
		order := make([]int, len(bins.paths))
		for i := range order {
			order[i] = i
		}
		if r%2 == 0 {
			slices.Reverse(order)
		}
		for _, i := range order {
			b := &bench{Label: bins.labels[i], Bin: bins.paths[i], Env: bins.envs[i], Workload: *workload,
				Warmup: *warmup, Window: *window, Proc: "/proc", Log: logf}
			res, err := b.run(ctx, r)
			if err != nil {
				return err
			}
			for _, w := range res.Warnings {
				logf("%s round %d: warning: %s", res.Label, r, w)
			}
			results = append(results, res)
		}
	}
	rep := summarize(describe(*workload), *window, *warmup, *rounds, bins, results)
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	return rep.writeTable(stdout)
}
