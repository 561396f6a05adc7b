package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tinyscada/tinyscada/services/supervisor"
	"github.com/tinyscada/tinyscada/shared/config"
)

// roleStack is a started stack: whatever started it, the bench measures
// its processes by pid.
type roleStack interface {
	// pids returns the process of every role found so far, by the
	// bench's role names (summedRoles, "simulator", and "run" for the
	// supervisor when it is a process of its own); extra lists further
	// processes of a role as "role:pid".
	pids() (roles map[string]int, extra []string, err error)
	// alive is nil while the stack runs, else says why it stopped.
	alive() error
	// stop stops every process of the stack, bounded in time; the error
	// says when that was not clean.
	stop() error
}

// runStack is `tinyscada run`: the roles are its children, found in /proc
// by parent pid and command line (`BIN ROLE …`).
type runStack struct {
	cmd       *exec.Cmd
	proc, bin string
}

// startRun starts `bin run -config …` in dir.
func (b *bench) startRun(s *setup, dir string, logf *os.File) (*runStack, error) {
	cmd := b.command(context.Background(), "run", "-config", s.Config)
	cmd.Dir = dir
	if b.Env != "" {
		cmd.Env = append(os.Environ(), strings.Split(b.Env, ",")...)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group, so that a stack that does not stop on
	// SIGTERM can be killed without touching the bench; run's children
	// die with it (the supervisor sets their parent-death signal).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return &runStack{cmd: cmd, proc: b.Proc, bin: b.Bin}, nil
}

func (r *runStack) pids() (map[string]int, []string, error) {
	roles, extra, err := children(r.proc, r.cmd.Process.Pid, r.bin)
	if err != nil {
		return nil, nil, err
	}
	// The demo's simulator, which run starts.
	if pid, ok := roles["simulate"]; ok {
		roles["simulator"] = pid
		delete(roles, "simulate")
	}
	roles["run"] = r.cmd.Process.Pid
	return roles, extra, nil
}

func (r *runStack) alive() error {
	// An exited run is a zombie until stop() waits for it.
	st, err := os.ReadFile(filepath.Join(r.proc, strconv.Itoa(r.cmd.Process.Pid), "stat"))
	if err != nil || isZombie(st) {
		return fmt.Errorf("run exited")
	}
	return nil
}

func (r *runStack) stop() error { return stop(r.cmd, stopTimeout) }

// directStack is the bench as the supervisor: the project's own supervisor
// (the one in `tinyscada run`) hosted in the bench, so that readiness,
// watchdogs and restarts work as under run, but every role is a child of
// the bench started as `[EXEC…] BIN ROLE -config FILE`, the command line of
// its systemd unit (deploy/units). Health drives it as it drives run's
// (supervisor.UnderRun: the bench is its parent). There is no "run"
// process: the supervisor's own work is the bench's, not measured.
type directStack struct {
	sup    *supervisor.Supervisor
	cancel context.CancelFunc
	done   chan struct{} // closed when the supervisor's Run has returned
	err    error         // what Run returned, once done is closed
}

// startDirect starts the roles of s's configuration that the bench
// measures, in run's order, with the build's wrapper if any.
func (b *bench) startDirect(s *setup, logf *os.File) (*directStack, error) {
	cfg, err := config.Load(s.Config)
	if err != nil {
		return nil, fmt.Errorf("direct: %w", err)
	}
	log := slog.New(slog.NewTextHandler(logf, nil)).With("role", "bench")
	roles := directRoles(cfg, s.Config, b.Bin, b.Exec, log)
	exe := b.Bin
	if b.Exec != nil {
		exe = b.Exec[0]
	}
	// The supervisor's notify socket is there, as run's.
	runDir := filepath.Join(cfg.StateDir, "run")
	if err := os.MkdirAll(runDir, 0o700); err != nil {
		return nil, err
	}
	env := []string{supervisor.UnderRun}
	if b.Env != "" {
		env = append(env, strings.Split(b.Env, ",")...)
	}
	sup := supervisor.New(supervisor.Options{
		Exe:               exe,
		Roles:             roles,
		RunDir:            runDir,
		Env:               env,
		ReadyTimeout:      cfg.Run.ReadyTimeout.Duration,
		RestartBackoff:    cfg.Run.RestartBackoff.Duration,
		RestartBackoffMax: cfg.Run.RestartBackoffMax.Duration,
		Stderr:            logf,
		Log:               log,
	})
	ctx, cancel := context.WithCancel(context.Background())
	d := &directStack{sup: sup, cancel: cancel, done: make(chan struct{})}
	go func() {
		d.err = sup.Run(ctx)
		close(d.done)
	}()
	return d, nil
}

// directRoles are the roles `tinyscada run` would start for cfg, limited
// to the ones the bench sums (and the simulators of the ports marked
// simulate = true), each as `[wrapper…] bin ROLE …` when wrapped: the
// supervisor then executes wrapper[0] with the rest as arguments.
func directRoles(cfg *config.Config, cfgPath, bin string, wrapper []string, log *slog.Logger) []supervisor.Role {
	roles, _ := supervisor.Stack(cfg, cfgPath, func(role string) bool { return slices.Contains(summedRoles, role) }, log)
	if wrapper != nil {
		for i := range roles {
			roles[i].Args = append(append(append([]string{}, wrapper[1:]...), bin), roles[i].Args...)
		}
	}
	return roles
}

func (d *directStack) pids() (map[string]int, []string, error) {
	roles := map[string]int{}
	var extra []string
	for _, c := range d.sup.Status() {
		if c.PID == 0 {
			continue
		}
		name := c.Name
		if strings.HasPrefix(name, supervisor.SimulatorPrefix) {
			name = "simulator"
		}
		if _, dup := roles[name]; dup {
			extra = append(extra, fmt.Sprintf("%s:%d", name, c.PID))
			continue
		}
		roles[name] = c.PID
	}
	return roles, extra, nil
}

func (d *directStack) alive() error {
	select {
	case <-d.done:
		return fmt.Errorf("the bench's supervisor stopped: %v", d.err)
	default:
		return nil
	}
}

func (d *directStack) stop() error {
	d.cancel()
	// The supervisor stops the roles in reverse order, each within its
	// StopTimeout (10 s), killing the late ones.
	bound := time.Duration(len(d.sup.Status())+1) * stopTimeout
	select {
	case <-d.done:
		return d.err
	case <-time.After(bound):
	}
	for _, c := range d.sup.Status() {
		if c.PID > 0 {
			_ = syscall.Kill(-c.PID, syscall.SIGKILL) // its own group (Setpgid)
		}
	}
	<-d.done
	return fmt.Errorf("the roles were still running %s after SIGTERM: killed", bound)
}
