package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
)

// The reference benchmarks (-reference) are the broker's, which exist
// beside the code they measure (docs/broker-benchmark.md): brokerbench,
// the tinyscada broker against Debian's mosquitto in separate processes
// with the same client code, and BenchmarkPubSubQoS1, the broker in
// process. The bench builds both from the module's source before the
// stack runs (so a checkout without them fails at once) and runs them
// after, with their documented settings, bounded by referenceBudget.
const (
	modulePath       = "github.com/tinyscada/tinyscada"
	brokerbenchPkg   = "./services/broker/internal/brokerbench"
	brokerPkg        = "./services/broker"
	inProcessBench   = "^BenchmarkPubSubQoS1$"
	inProcessN       = "100000x"
	referenceBudget  = 2 * time.Minute
	referenceBuildTO = 10 * time.Minute // a cold build on a busy 2-core machine
)

// referenceBench is the built reference programs, ready to run.
type referenceBench struct {
	module, dir     string // the module's root; a temporary directory for the programs
	brokerbench     string // the built brokerbench
	brokerTest      string // services/broker's test binary
	bin, mosquitto  string // the tinyscada build brokerbench runs, and mosquitto
	brokerbenchArgs []string
}

// newReferenceBench finds the module and mosquitto and builds the reference
// programs. The tinyscada build brokerbench runs is the first -bin without
// EXEC: brokerbench compares brokers on this machine, natively.
func newReferenceBench(ctx context.Context, bins *binFlag) (*referenceBench, error) {
	r := &referenceBench{}
	for i, w := range bins.execs {
		if w == nil {
			r.bin = bins.paths[i]
			break
		}
	}
	if r.bin == "" {
		return nil, errors.New("brokerbench runs the broker natively: give at least one -bin without EXEC")
	}
	var err error
	if r.mosquitto, err = findMosquitto(); err != nil {
		return nil, err
	}
	if r.module, err = moduleRoot(ctx); err != nil {
		return nil, err
	}
	if r.dir, err = os.MkdirTemp("", "fieldbench-reference-"); err != nil {
		return nil, err
	}
	r.brokerbench = filepath.Join(r.dir, "brokerbench")
	r.brokerTest = filepath.Join(r.dir, "broker.test")
	bctx, cancel := context.WithTimeout(ctx, referenceBuildTO)
	defer cancel()
	for _, args := range [][]string{
		{"build", "-o", r.brokerbench, brokerbenchPkg},
		{"test", "-c", "-o", r.brokerTest, brokerPkg},
	} {
		cmd := exec.CommandContext(bctx, "go", args...)
		cmd.Dir = r.module
		if out, err := cmd.CombinedOutput(); err != nil {
			r.close()
			return nil, fmt.Errorf("go %s (in %s): %w: %s", strings.Join(args, " "), r.module, err, firstLines(out, 10))
		}
	}
	// brokerbench's defaults (50 000 messages, 5 rounds, 20 starts): the
	// settings of its documented figures, about 20 s.
	r.brokerbenchArgs = []string{"-bin", r.bin, "-mosquitto", r.mosquitto}
	return r, nil
}

// findMosquitto returns Debian's mosquitto (/usr/sbin, often not in PATH).
func findMosquitto() (string, error) {
	if fi, err := os.Stat("/usr/sbin/mosquitto"); err == nil && !fi.IsDir() {
		return "/usr/sbin/mosquitto", nil
	}
	p, err := exec.LookPath("mosquitto")
	if err != nil {
		return "", errors.New("no mosquitto (/usr/sbin/mosquitto, or in PATH): apt-get install mosquitto")
	}
	return p, nil
}

// moduleRoot returns the directory of tinyscada's go.mod, as `go env GOMOD`
// finds it from the working directory.
func moduleRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w (the reference benchmarks are built from the module's source)", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("not inside a Go module: run from a checkout of tinyscada (the reference benchmarks are built from its source)")
	}
	b, err := os.ReadFile(gomod)
	if err != nil {
		return "", err
	}
	if got := goModModule(b); got != modulePath {
		return "", fmt.Errorf("%s is module %q, not %s: run from a checkout of tinyscada", gomod, got, modulePath)
	}
	return filepath.Dir(gomod), nil
}

// goModModule returns the path of the module line of a go.mod.
func goModModule(gomod []byte) string {
	sc := bufio.NewScanner(bytes.NewReader(gomod))
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "module"); ok && (rest == "" || rest[0] == ' ' || rest[0] == '\t') {
			return strings.Trim(strings.TrimSpace(rest), `"`)
		}
	}
	return ""
}

func (r *referenceBench) close() {
	if r.dir != "" {
		os.RemoveAll(r.dir)
	}
}

// referenceReport is -reference's outcome. A failing benchmark is reported
// in Errors, not fatal: the stack's figures come first.
type referenceReport struct {
	Module  string  `json:"module"`
	Seconds float64 `json:"seconds"`
	// Brokers is brokerbench: the tinyscada broker against mosquitto.
	Brokers *brokerComparison `json:"brokers,omitempty"`
	// InProcess is BenchmarkPubSubQoS1, the broker in the test's process.
	InProcess []goBenchmark `json:"in_process,omitempty"`
	Errors    []string      `json:"errors,omitempty"`
}

type brokerComparison struct {
	Command string `json:"command"`
	// Setup is brokerbench's line saying what it sent.
	Setup   string          `json:"setup"`
	Brokers []brokerFigures `json:"brokers"`
	// Ratio and Startup are brokerbench's summary lines: tinyscada
	// against mosquitto, and the broker's start to READY=1.
	Ratio   string `json:"ratio"`
	Startup string `json:"startup,omitempty"`
}

// brokerFigures is one row of brokerbench's summary: the round with the
// median rate; RSS under load is the maximum of all rounds.
type brokerFigures struct {
	Name      string  `json:"name"`
	MsgsPerS  float64 `json:"msgs_per_s"`
	P50ms     float64 `json:"p50_ms"`
	P99ms     float64 `json:"p99_ms"`
	RSSIdlekB int64   `json:"rss_idle_kb"`
	RSSLoadkB int64   `json:"rss_load_kb"`
	VmHWMkB   int64   `json:"vmhwm_kb"`
}

// goBenchmark is one result line of `go test -bench`.
type goBenchmark struct {
	Command    string             `json:"command"`
	Name       string             `json:"name"`
	Iterations int64              `json:"iterations"`
	Metrics    map[string]float64 `json:"metrics"` // by unit: "ns/op", "msgs/s", …
	// Units keeps the metrics' order of the line, for the table.
	Units []string `json:"-"`
}

// run runs both benchmarks within referenceBudget and removes the
// programs.
func (r *referenceBench) run(ctx context.Context, logf func(string, ...any)) *referenceReport {
	defer r.close()
	start := time.Now()
	rep := &referenceReport{Module: r.module}
	ctx, cancel := context.WithTimeout(ctx, referenceBudget)
	defer cancel()

	logf("reference: brokerbench %s", strings.Join(r.brokerbenchArgs, " "))
	out, err := runBounded(ctx, r.module, r.brokerbench, r.brokerbenchArgs...)
	if err == nil {
		rep.Brokers, err = parseBrokerbench(out)
	}
	if err != nil {
		rep.Errors = append(rep.Errors, fmt.Sprintf("brokerbench: %v%s", err, indentTail(out, 10)))
	} else {
		rep.Brokers.Command = "go run " + brokerbenchPkg + " " + strings.Join(r.brokerbenchArgs, " ")
	}

	goCmd := fmt.Sprintf("go test -run '^$' -bench '%s' -benchtime %s %s", inProcessBench, inProcessN, brokerPkg)
	logf("reference: %s", goCmd)
	out, err = runBounded(ctx, filepath.Join(r.module, "services", "broker"), r.brokerTest,
		"-test.run", "^$", "-test.bench", inProcessBench, "-test.benchtime", inProcessN)
	if err == nil {
		rep.InProcess, err = parseGoBench(out)
		for i := range rep.InProcess {
			rep.InProcess[i].Command = goCmd
		}
	}
	if err != nil {
		rep.Errors = append(rep.Errors, fmt.Sprintf("%s: %v%s", goCmd, err, indentTail(out, 10)))
	}
	rep.Seconds = time.Since(start).Seconds()
	return rep
}

// runBounded runs name with args in dir until it exits or ctx ends, and
// returns its output (stdout then stderr). It runs in a process group of
// its own, killed whole when ctx ends: brokerbench's brokers are its
// children and would outlive it.
func runBounded(ctx context.Context, dir, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	out := append(stdout.Bytes(), stderr.Bytes()...)
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return out, fmt.Errorf("not done within the %s of -reference: killed", referenceBudget)
	}
	if ctx.Err() != nil {
		return out, fmt.Errorf("stopped: %w", ctx.Err())
	}
	return out, err
}

// parseBrokerbench reads brokerbench's summary: its first line (the
// setup), the table after the "broker msg/s …" heading, the
// "tinyscada/mosquitto:" line and the start-up line.
func parseBrokerbench(out []byte) (*brokerComparison, error) {
	c := &brokerComparison{}
	inTable := false
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		f := strings.Fields(line)
		switch {
		case c.Setup == "" && strings.HasPrefix(line, "1 publisher"):
			c.Setup = line
		case len(f) > 1 && f[0] == "broker" && f[1] == "msg/s":
			inTable = true
		case strings.HasPrefix(line, "tinyscada/mosquitto:"):
			c.Ratio, inTable = line, false
		case strings.HasPrefix(line, "tinyscada broker start to READY=1"):
			c.Startup = line
		case inTable && len(f) == 7:
			b, err := parseBrokerRow(f)
			if err != nil {
				return nil, fmt.Errorf("summary row %q: %w", line, err)
			}
			c.Brokers = append(c.Brokers, b)
		case inTable && line != "":
			inTable = false
		}
	}
	if len(c.Brokers) == 0 {
		return nil, errors.New(`no summary table (a "broker msg/s …" heading and its rows) in its output`)
	}
	return c, nil
}

func parseBrokerRow(f []string) (brokerFigures, error) {
	b := brokerFigures{Name: f[0]}
	var err error
	if b.MsgsPerS, err = strconv.ParseFloat(f[1], 64); err != nil {
		return b, err
	}
	for i, p := range []*float64{&b.P50ms, &b.P99ms} {
		d, err := time.ParseDuration(f[2+i])
		if err != nil {
			return b, err
		}
		*p = float64(d) / float64(time.Millisecond)
	}
	for i, p := range []*int64{&b.RSSIdlekB, &b.RSSLoadkB, &b.VmHWMkB} {
		if *p, err = strconv.ParseInt(f[4+i], 10, 64); err != nil {
			return b, err
		}
	}
	return b, nil
}

// parseGoBench reads the result lines of `go test -bench`
// ("BenchmarkX-2  100000  28570 ns/op  35000 msgs/s …").
func parseGoBench(out []byte) ([]goBenchmark, error) {
	var res []goBenchmark
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") || len(f)%2 != 0 {
			continue
		}
		n, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			continue // a log line that starts with the name
		}
		b := goBenchmark{Name: f[0], Iterations: n, Metrics: map[string]float64{}}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				return nil, fmt.Errorf("%q: value %q: %w", sc.Text(), f[i], err)
			}
			b.Metrics[f[i+1]] = v
			b.Units = append(b.Units, f[i+1])
		}
		res = append(res, b)
	}
	if len(res) == 0 {
		return nil, errors.New("no benchmark result line in its output")
	}
	return res, nil
}

// write prints the reference figures after the stack's table.
func (rep *referenceReport) write(w io.Writer) error {
	fmt.Fprintf(w, "\nreference benchmarks (docs/broker-benchmark.md), %.0f s, module %s\n", rep.Seconds, rep.Module)
	if c := rep.Brokers; c != nil {
		fmt.Fprintf(w, "\n%s\n%s\n", c.Command, c.Setup)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "broker\tmsg/s\tp50 ms\tp99 ms\tRSS idle MB\tRSS load MB\tVmHWM MB\t")
		for _, b := range c.Brokers {
			fmt.Fprintf(tw, "%s\t%.0f\t%.3f\t%.3f\t%.2f\t%.2f\t%.2f\t\n", b.Name, b.MsgsPerS, b.P50ms, b.P99ms,
				float64(b.RSSIdlekB)/1024, float64(b.RSSLoadkB)/1024, float64(b.VmHWMkB)/1024)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		for _, l := range []string{c.Ratio, c.Startup} {
			if l != "" {
				fmt.Fprintln(w, l)
			}
		}
	}
	for i, b := range rep.InProcess {
		if i == 0 {
			fmt.Fprintf(w, "\n%s (the broker in the test's process, no comparison)\n", b.Command)
		}
		fmt.Fprintf(w, "%s  %d", b.Name, b.Iterations)
		for _, u := range b.Units {
			fmt.Fprintf(w, "  %s %s", strconv.FormatFloat(b.Metrics[u], 'f', -1, 64), u)
		}
		fmt.Fprintln(w)
	}
	for _, e := range rep.Errors {
		fmt.Fprintf(w, "\nfailed: %s\n", e)
	}
	return nil
}

// indentTail is the last n lines of out, indented, for an error.
func indentTail(out []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(out), "\n"), "\n")
	if len(lines) == 1 && lines[0] == "" {
		return ""
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "\n  " + strings.Join(lines, "\n  ")
}
