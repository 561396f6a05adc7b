package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

// The roles the issue sums, and the processes reported beside them.
var (
	summedRoles = []string{"broker", "poller", "logger", "health"}
	// simulator is the Modbus simulator (started by the bench for the field
	// workload, by `run` for the demo); run is the `tinyscada run`
	// supervisor itself, which systemd replaces on a device.
	otherRoles = []string{"simulator", "run"}
)

// Bounds of one run, so that a stack that never comes up or never stops
// cannot hang the bench.
const (
	readyTimeout = 60 * time.Second
	stopTimeout  = 30 * time.Second
	pssSamples   = 10 // PSS samples over the window
)

// roleRun is what one process did over the window.
type roleRun struct {
	PID        int     `json:"pid"`
	CPUus      float64 `json:"cpu_us"`
	WriteBytes uint64  `json:"write_bytes"`
	Voluntary  uint64  `json:"wakeups"`
	PSSkB      float64 `json:"pss_kb_mean"`
	PSSMaxkB   uint64  `json:"pss_kb_max"`
	// PSSAnonkB is the mean of the anonymous part of the PSS samples.
	PSSAnonkB float64 `json:"pss_anon_kb_mean"`
	// CPUFromTicks says CPUus comes from the process's ticks, not to the
	// nanosecond from its threads' schedstat (cpuMicros).
	CPUFromTicks bool `json:"cpu_from_ticks,omitempty"`
}

// runResult is one run of one binary.
type runResult struct {
	Label        string              `json:"label"`
	Round        int                 `json:"round"`
	WindowS      float64             `json:"window_s"`
	Readings     int64               `json:"readings"`
	Bad          int64               `json:"bad"`
	Samples      int64               `json:"samples"`
	Transactions int64               `json:"transactions"` // -1: unknown
	Roles        map[string]*roleRun `json:"roles"`
	// ResidentkB is the mean over the PSS samples of the memory the
	// summed roles hold together, each page once (residentkB); 0 when it
	// could not be measured (a warning says why).
	ResidentkB float64  `json:"roles_resident_kb_mean,omitempty"`
	Warnings   []string `json:"warnings,omitempty"`
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// bench is one run's parameters.
type bench struct {
	Label, Bin, Workload string
	Env                  string   // NAME=VALUE,… added to the stack's environment
	Exec                 []string // the wrapper every process of Bin runs under (EXEC=), or nil
	Stack                string   // stackRun or stackDirect
	Warmup, Window       time.Duration
	Proc                 string // /proc
	Log                  func(format string, args ...any)
}

// run starts the workload's stack with b.Bin in a new temporary directory,
// waits until readings are stored, lets it warm up, measures it over the
// window, stops it and removes the directory.
func (b *bench) run(ctx context.Context, round int) (res *runResult, err error) {
	dir, err := os.MkdirTemp("", "fieldbench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	logPath := filepath.Join(dir, "run.log")
	defer func() {
		if err != nil {
			err = fmt.Errorf("%s (round %d): %w%s", b.Label, round, err, tail(logPath, 15))
		}
	}()
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	s, err := prepare(b.Workload, dir, port)
	if err != nil {
		return nil, err
	}
	// The binary under test checks the configuration and says how many
	// requests a round takes.
	if out, err := b.command(ctx, "config", "check", s.Config).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("config check: %w: %s", err, firstLines(out, 10))
	}
	res = &runResult{Label: b.Label, Round: round, Transactions: -1, Roles: map[string]*roleRun{}}
	var plan map[string]int
	if out, err := b.command(ctx, "poller", "-plan", "-config", s.Config).Output(); err != nil {
		res.Warnings = append(res.Warnings, fmt.Sprintf("poller -plan: %v: transactions not counted", err))
	} else if plan, err = parsePlan(string(out)); err != nil {
		res.Warnings = append(res.Warnings, err.Error()+": transactions not counted")
	}

	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close()

	var sim *exec.Cmd
	if s.SimMap != "" {
		sim, err = b.startSimulator(ctx, s, logf)
		if err != nil {
			return nil, err
		}
		defer stop(sim, stopTimeout)
	}
	var st roleStack
	if b.Stack == stackDirect {
		st, err = b.startDirect(s, logf)
	} else {
		st, err = b.startRun(s, dir, logf)
	}
	if err != nil {
		return nil, err
	}
	defer func() {
		if stopErr := st.stop(); stopErr != nil && err == nil {
			err = fmt.Errorf("stopping the stack: %w", stopErr)
		}
	}()

	want := slices.Clone(summedRoles)
	if sim == nil {
		want = append(want, "simulator")
	}
	pids, err := b.waitReady(ctx, st, s.DB, want)
	if err != nil {
		return nil, err
	}
	if sim != nil {
		pids["simulator"] = sim.Process.Pid
	}
	b.Log("%s round %d: ready (pids %v); warming up %s", b.Label, round, pids, b.Warmup)
	if err := sleep(ctx, b.Warmup); err != nil {
		return nil, err
	}

	b.Log("%s round %d: measuring for %s", b.Label, round, b.Window)
	c0, t0, err := b.snapshot(pids)
	if err != nil {
		return nil, err
	}
	samples := map[string][]pss{}
	var resident []uint64 // kB of the summed roles, each page once
	var residentErr error
	step := b.Window / pssSamples
	for i := 0; i < pssSamples; i++ {
		if err := sleep(ctx, time.Until(t0.Add(time.Duration(i)*step+step/2))); err != nil {
			return nil, err
		}
		for role, pid := range pids {
			p, err := readPSS(b.Proc, pid)
			if err != nil {
				return nil, fmt.Errorf("%s (pid %d) during the window: %w", role, pid, err)
			}
			samples[role] = append(samples[role], p)
		}
		if residentErr == nil {
			var kB uint64
			kB, residentErr = b.residentkB(pids)
			resident = append(resident, kB)
		}
	}
	if err := sleep(ctx, time.Until(t0.Add(b.Window))); err != nil {
		return nil, err
	}
	c1, t1, err := b.snapshot(pids)
	if err != nil {
		return nil, err
	}
	// The readings of the window are those of the samples stamped in it,
	// counted once the logger has stored what came after: counting the
	// rows at t0 and t1 would be off by up to a batch at either end.
	sto, err := waitStored(ctx, s.DB, t0, t1)
	if err != nil {
		return nil, err
	}
	// A role restarted in the window would have other pids now (or be
	// gone): its counters would not cover the window.
	now, extra, err := st.pids()
	if err != nil {
		return nil, err
	}
	for _, role := range summedRoles {
		if now[role] != pids[role] {
			return nil, fmt.Errorf("%s: pid %d at the start of the window, %d at its end: it restarted", role, pids[role], now[role])
		}
	}
	if len(extra) > 0 {
		res.Warnings = append(res.Warnings, "more than one process of a role: "+strings.Join(extra, " "))
	}

	res.WindowS = t1.Sub(t0).Seconds()
	res.Readings, res.Bad = sto.Readings, sto.Bad
	for _, n := range sto.Samples {
		res.Samples += n
	}
	if plan != nil {
		if n, ok := transactions(sto, plan); ok {
			res.Transactions = n
		} else {
			res.Warnings = append(res.Warnings, "a device with samples is not in the plan: transactions not counted")
		}
	}
	for role, pid := range pids {
		r := &roleRun{
			PID:        pid,
			WriteBytes: c1[role].WriteBytes - c0[role].WriteBytes,
			Voluntary:  c1[role].Voluntary - c0[role].Voluntary,
		}
		var precise bool
		if r.CPUus, precise = cpuMicros(c0[role], c1[role]); !precise {
			r.CPUFromTicks = true
			res.Warnings = append(res.Warnings, role+": CPU time from the process's 10 ms ticks (its threads' schedstat disagrees or is missing)")
		}
		var sum, anon uint64
		for _, p := range samples[role] {
			sum += p.Total
			anon += p.Anon
			r.PSSMaxkB = max(r.PSSMaxkB, p.Total)
		}
		r.PSSkB = float64(sum) / float64(len(samples[role]))
		r.PSSAnonkB = float64(anon) / float64(len(samples[role]))
		res.Roles[role] = r
	}
	if residentErr != nil {
		res.Warnings = append(res.Warnings, "resident memory of the roles not measured: "+residentErr.Error())
	} else {
		var sum uint64
		for _, kB := range resident {
			sum += kB
		}
		res.ResidentkB = float64(sum) / float64(len(resident))
	}
	if res.Readings <= 0 {
		return nil, fmt.Errorf("no reading stored over the %s window", b.Window)
	}
	b.Log("%s round %d: %d readings in %.1fs; stopping", b.Label, round, res.Readings, res.WindowS)
	return res, nil
}

// residentkB is the memory the summed roles of pids hold together, in
// kB: every page in memory that any of them maps, counted once
// (addFrames). Their PSS splits a page of the executable with every
// process that maps it, the simulator and run among them, which a device
// does not have; this does not.
func (b *bench) residentkB(pids map[string]int) (uint64, error) {
	frames := map[uint64]struct{}{}
	for _, role := range summedRoles {
		pid, ok := pids[role]
		if !ok {
			continue
		}
		if err := addFrames(b.Proc, pid, frames); err != nil {
			return 0, fmt.Errorf("%s (pid %d): %w", role, pid, err)
		}
	}
	return uint64(len(frames)) * uint64(os.Getpagesize()) / 1024, nil
}

// snapshot reads every process's counters and the time.
func (b *bench) snapshot(pids map[string]int) (map[string]counters, time.Time, error) {
	t := time.Now()
	c := map[string]counters{}
	for role, pid := range pids {
		var err error
		if c[role], err = readCounters(b.Proc, pid); err != nil {
			return nil, t, fmt.Errorf("%s (pid %d): %w", role, pid, err)
		}
	}
	return c, t, nil
}

// catchUp is how far past the window a sample must be stored before the
// window's samples are counted: every device's next round (1s), and the
// logger's batch delay.
const catchUp = 1500 * time.Millisecond

// waitStored waits until the database holds a sample stamped catchUp after
// t1, then counts the samples stamped in [t0, t1).
func waitStored(ctx context.Context, db string, t0, t1 time.Time) (stored, error) {
	deadline := time.Now().Add(readyTimeout)
	for {
		newest, err := newestSample(ctx, db)
		if err != nil {
			return stored{}, err
		}
		if newest >= t1.Add(catchUp).UnixMilli() {
			return countStored(ctx, db, t0.UnixMilli(), t1.UnixMilli())
		}
		if time.Now().After(deadline) {
			return stored{}, fmt.Errorf("the logger stored nothing stamped after %s within %s", t1.Add(catchUp).Format(time.TimeOnly), readyTimeout)
		}
		if err := sleep(ctx, 200*time.Millisecond); err != nil {
			return stored{}, err
		}
	}
}

// waitReady waits until the stack has a process for every role in want
// and the database holds a reading, and returns the processes' pids by
// role.
func (b *bench) waitReady(ctx context.Context, st roleStack, db string, want []string) (map[string]int, error) {
	deadline := time.Now().Add(readyTimeout)
	var missing []string
	var dbErr error
	for time.Now().Before(deadline) {
		if err := sleep(ctx, 200*time.Millisecond); err != nil {
			return nil, err
		}
		if err := st.alive(); err != nil {
			return nil, fmt.Errorf("before the stack was ready: %w", err)
		}
		pids, _, err := st.pids()
		if err != nil {
			return nil, err
		}
		missing = missing[:0]
		for _, r := range want {
			if pids[r] == 0 {
				missing = append(missing, r)
			}
		}
		if len(missing) > 0 {
			continue
		}
		sto, err := countStored(ctx, db, 0, math.MaxInt64)
		if dbErr = err; err == nil && sto.Readings > 0 {
			return pids, nil
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("not ready after %s: no process for %s", readyTimeout, strings.Join(missing, ", "))
	}
	return nil, fmt.Errorf("not ready after %s: no reading stored (%v)", readyTimeout, dbErr)
}

// command is bin (under the build's wrapper, if any) with args.
func (b *bench) command(ctx context.Context, args ...string) *exec.Cmd {
	argv := append(append(slices.Clone(b.Exec), b.Bin), args...)
	return exec.CommandContext(ctx, argv[0], argv[1:]...)
}

// startSimulator starts `bin simulate -map … -link …` and waits until it
// prints the path of its line, which then exists.
func (b *bench) startSimulator(ctx context.Context, s *setup, logf *os.File) (*exec.Cmd, error) {
	// Not bound to ctx: stop() ends it, with SIGTERM first.
	cmd := b.command(context.Background(), "simulate", "-map", s.SimMap, "-link", s.SimLink)
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	line := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		if sc.Scan() {
			line <- sc.Text()
		}
		close(line)
		for sc.Scan() {
		}
	}()
	select {
	case p, ok := <-line:
		if ok && p == s.SimLink {
			return cmd, nil
		}
		stop(cmd, stopTimeout)
		return nil, fmt.Errorf("simulator: printed %q, want its line %s", p, s.SimLink)
	case <-time.After(readyTimeout):
	case <-ctx.Done():
	}
	stop(cmd, stopTimeout)
	return nil, fmt.Errorf("simulator: no line within %s", readyTimeout)
}

// stop sends SIGTERM to cmd and waits for it; after timeout it kills
// cmd's process group (its own, see Setpgid). The error says when it did
// not exit by itself or exited with a failure.
func stop(cmd *exec.Cmd, timeout time.Duration) error {
	_ = cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(timeout):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		return fmt.Errorf("pid %d still running %s after SIGTERM: killed", cmd.Process.Pid, timeout)
	}
}

// sleep waits for d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// tail returns the last n lines of the file at path, indented, for an
// error message.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil || len(b) == 0 {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "\nlast lines of the stack's output:\n  " + strings.Join(lines, "\n  ")
}

func firstLines(b []byte, n int) string {
	lines := strings.SplitN(string(bytes.TrimSpace(b)), "\n", n+1)
	if len(lines) > n {
		lines = lines[:n]
	}
	return strings.Join(lines, "\n")
}
