// Command fieldbench runs tinyscada's field workloads with two (or more)
// builds side by side on the same machine and compares what each role costs
// per stored reading: CPU, memory (PSS), bytes written, and wake-ups per
// Modbus transaction. It is the seed of `tinyscada bench` (issue 13);
// docs/performance.md says how to run it and what it measures.
//
//	go run ./internal/fieldbench -bin OLD=/path/a -bin NEW=/path/b[,EXEC=WRAPPER][,NAME=VALUE…] [-window 60s] [-warmup 40s]
//		[-workload field|demo] [-rounds N] [-stack run|direct] [-reference] [-json]
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
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
// (e.g. -bin mp1=/tmp/ts,GOMAXPROCS=1: the same build tuned otherwise) and
// by ,EXEC=WRAPPER: a command every process of the build is started under,
// words split on spaces (e.g. -bin arm5=/tmp/ts-arm5,EXEC=qemu-arm-static:
// the build run by qemu-user). EXEC is the bench's, not the environment's.
type binFlag struct {
	labels, paths, envs []string
	execs               [][]string // per binary: the wrapper and its arguments, or nil
}

func (f *binFlag) String() string { return strings.Join(f.labels, ",") }

func (f *binFlag) Set(v string) error {
	v, settings, _ := strings.Cut(v, ",")
	var env []string
	var wrapper []string
	for kv := range strings.SplitSeq(settings, ",") {
		if kv == "" {
			continue
		}
		name, value, ok := strings.Cut(kv, "=")
		if !ok || name == "" {
			return fmt.Errorf("%q: want NAME=VALUE after the path", kv)
		}
		if name != "EXEC" {
			env = append(env, kv)
			continue
		}
		if wrapper != nil {
			return fmt.Errorf("%q: EXEC given twice", v)
		}
		wrapper = strings.Fields(value)
		if len(wrapper) == 0 {
			return fmt.Errorf("%q: EXEC= wants a command (e.g. EXEC=qemu-arm-static)", kv)
		}
		// Resolved now, so that a wrapper that is not installed fails
		// before anything runs, and the report names the one used.
		p, err := exec.LookPath(wrapper[0])
		if err != nil {
			return fmt.Errorf("EXEC=%s: %w", value, err)
		}
		if wrapper[0], err = filepath.Abs(p); err != nil {
			return fmt.Errorf("EXEC=%s: %w", value, err)
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
	fi, err := os.Stat(abs)
	switch {
	case err != nil || fi.IsDir():
		return fmt.Errorf("%s: %s is not a file", label, abs)
	case wrapper == nil && fi.Mode()&0o111 == 0:
		// Under a wrapper the binary is the wrapper's to read.
		return fmt.Errorf("%s: %s is not an executable file", label, abs)
	}
	f.labels, f.paths = append(f.labels, label), append(f.paths, abs)
	f.envs, f.execs = append(f.envs, strings.Join(env, ",")), append(f.execs, wrapper)
	return nil
}

// wrapped reports whether any binary runs under an EXEC wrapper.
func (f *binFlag) wrapped() bool {
	return slices.ContainsFunc(f.execs, func(w []string) bool { return w != nil })
}

// The ways to start the stack (-stack).
const (
	// stackRun is `tinyscada run`: its supervisor starts the roles by
	// re-executing its own binary.
	stackRun = "run"
	// stackDirect is the bench as the supervisor: it starts every role
	// as its own process (`BIN ROLE -config FILE`, the command lines of
	// the systemd units), each under the build's EXEC wrapper if any. An
	// ARM binary under qemu-user cannot re-execute itself without
	// binfmt_misc, so a wrapped build needs this.
	stackDirect = "direct"
)

// stackMode picks the -stack value: the one given, else direct when a
// binary is wrapped (so every column is started alike), else run.
func stackMode(given string, bins *binFlag) (string, error) {
	switch given {
	case "":
		if bins.wrapped() {
			return stackDirect, nil
		}
		return stackRun, nil
	case stackDirect:
		return given, nil
	case stackRun:
		if bins.wrapped() {
			return "", fmt.Errorf("-stack run cannot start a build under EXEC: `tinyscada run` re-executes its own binary, " +
				"which under qemu-user works only with binfmt_misc registered; use -stack direct (the default with EXEC)")
		}
		return given, nil
	}
	return "", fmt.Errorf("-stack %q: want %s or %s", given, stackRun, stackDirect)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("fieldbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var bins binFlag
	fs.Var(&bins, "bin", "a tinyscada binary to measure, `LABEL=PATH[,EXEC=WRAPPER][,NAME=VALUE…]` (repeat: one column each)")
	window := fs.Duration("window", 60*time.Second, "how long each run is measured")
	warmup := fs.Duration("warmup", 40*time.Second, "how long each run goes after its first stored reading before the window")
	workload := fs.String("workload", "field", "field (50 devices × 20 registers, 1000 readings/s) or demo (the built-in demo)")
	rounds := fs.Int("rounds", 1, "runs of every binary, interleaved (A B, then B A, …)")
	stackFlag := fs.String("stack", "", "how the roles are started: run (`tinyscada run`) or direct (by the bench, one process per role, as the systemd units); default run, direct when a -bin has EXEC")
	reference := fs.Bool("reference", false, "also run the broker's reference benchmarks against Debian's mosquitto (needs the module's source: run from a checkout)")
	asJSON := fs.Bool("json", false, "print JSON instead of the table")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: go run ./internal/fieldbench -bin OLD=/path/a -bin NEW=/path/b[,EXEC=WRAPPER][,NAME=VALUE…] [-window 60s] [-warmup 40s] [-workload field|demo] [-rounds N] [-stack run|direct] [-reference] [-json]")
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
	mode, err := stackMode(*stackFlag, &bins)
	if err != nil {
		return err
	}
	// The machine as the bench found it: before -reference compiles its
	// benchmarks, which would show in the load average.
	m := readMachine("/proc")
	var ref *referenceBench
	if *reference {
		// Before the long runs: a checkout without the benchmarks, or a
		// machine without mosquitto, fails at once.
		if ref, err = newReferenceBench(ctx, &bins); err != nil {
			return fmt.Errorf("-reference: %w", err)
		}
		defer ref.close()
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
			b := &bench{Label: bins.labels[i], Bin: bins.paths[i], Exec: bins.execs[i], Env: bins.envs[i], Workload: *workload,
				Stack: mode, Warmup: *warmup, Window: *window, Proc: "/proc", Log: logf}
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
	m.LoadAfter = readLoad("/proc")
	rep := summarize(describe(*workload), *window, *warmup, *rounds, bins, results)
	rep.Stack, rep.Machine = mode, m
	for _, br := range rep.Results {
		br.Build = buildOf(br.Bin)
	}
	if ref != nil {
		logf("reference benchmarks (at most %s)", referenceBudget)
		rep.Reference = ref.run(ctx, logf)
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	if err := rep.writeTable(stdout); err != nil {
		return err
	}
	if rep.Reference != nil {
		return rep.Reference.write(stdout)
	}
	return nil
}
