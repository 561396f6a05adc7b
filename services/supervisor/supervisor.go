// Package supervisor runs the whole stack without systemd (`tinyscada run`):
// each role is a child process of the same binary, started in dependency
// order, with a NOTIFY_SOCKET the supervisor reads, so READY=1, STATUS= and
// WATCHDOG=1 take the same code paths as under systemd. Children that die are
// restarted with backoff.
package supervisor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"syscall"
	"time"
)

// ExitNoRestart is the exit status that means "do not restart me" (a bad
// configuration): the same code the units name in RestartPreventExitStatus=.
const ExitNoRestart = 78

// Role is one child to run.
type Role struct {
	Name string
	// Args follow the executable, e.g. {"broker", "-config", "/x.toml"}.
	Args []string
	// Watchdog, when non-zero, is passed as WATCHDOG_USEC; a child that then
	// stops sending WATCHDOG=1 for that long gets SIGABRT (a stack dump) and
	// is restarted, as systemd does.
	Watchdog time.Duration
}

// Options configure a Supervisor.
type Options struct {
	Exe   string
	Roles []Role
	// ReadyTimeout bounds the wait for one role's READY=1 before the next
	// role is started anyway (the slow one keeps running).
	ReadyTimeout time.Duration
	// RestartBackoff doubles after each quick death up to RestartBackoffMax
	// and resets once a child has run for a minute.
	RestartBackoff, RestartBackoffMax time.Duration
	// StopTimeout is how long a child may take to exit after SIGTERM.
	StopTimeout time.Duration
	// RunDir, when set, holds the notify socket (RunDir/notify); otherwise,
	// or when that path is too long for a socket, a temporary directory
	// does.
	RunDir string
	// Env is added to the children's environment.
	Env []string
	// ExtraFiles are given to every child as file descriptors 3, 4, …
	// (exec.Cmd.ExtraFiles), e.g. the effective configuration in a memfd.
	// They stay open, and are the caller's to close, after Run.
	ExtraFiles []*os.File

	Stderr io.Writer
	Log    *slog.Logger
	// OnStarted is called once every role was started and either said
	// READY=1 or timed out.
	OnStarted func()
}

// ChildStatus is a snapshot of one child.
type ChildStatus struct {
	Name     string
	PID      int
	Ready    bool
	Status   string
	Restarts int
}

// Supervisor runs the children. Create it with New.
type Supervisor struct {
	opts   Options
	log    *slog.Logger
	spawn  chan spawnReq
	notify *notifySocket

	mu       sync.Mutex
	children []*child
	byPID    map[int]*child
}

type child struct {
	role     Role
	pid      int
	ready    bool
	readyCh  chan struct{} // closed on the first READY=1 of the current process
	exited   chan struct{} // closed when the current process has exited
	status   string
	restarts int
	lastPing time.Time // monotonic
	cmd      *exec.Cmd
}

type spawnReq struct {
	cmd  *exec.Cmd
	c    *child
	errc chan error
}

// testHookStarted, when set by a test, runs between a child's start and its
// registration, to widen the window in which a quick READY=1 arrives.
var testHookStarted func()

// New returns a supervisor; nothing runs before Run.
func New(opts Options) *Supervisor {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.Stderr == nil {
		opts.Stderr = os.Stderr
	}
	if opts.StopTimeout <= 0 {
		opts.StopTimeout = 10 * time.Second
	}
	if opts.RestartBackoff <= 0 {
		opts.RestartBackoff = 500 * time.Millisecond
	}
	if opts.RestartBackoffMax < opts.RestartBackoff {
		opts.RestartBackoffMax = opts.RestartBackoff
	}
	if opts.ReadyTimeout <= 0 {
		opts.ReadyTimeout = 30 * time.Second
	}
	return &Supervisor{opts: opts, log: opts.Log, byPID: map[int]*child{}}
}

// Status returns a snapshot of every child, in start order.
func (s *Supervisor) Status() []ChildStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]ChildStatus, 0, len(s.children))
	for _, c := range s.children {
		out = append(out, ChildStatus{Name: c.role.Name, PID: c.pid, Ready: c.ready, Status: c.status, Restarts: c.restarts})
	}
	return out
}

// Run starts the roles in order, waiting for each one's READY=1 (at most
// ReadyTimeout), keeps them running, and when ctx ends stops them in reverse
// order (SIGTERM, then SIGKILL after StopTimeout). It returns nil after a
// clean stop, or an error if the supervisor itself could not work (no notify
// socket, the executable cannot be started).
func (s *Supervisor) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ns, err := listenNotify(s.opts.RunDir)
	if err != nil {
		return err
	}
	s.notify = ns
	defer ns.Close()
	go s.readNotifications()

	// Children get PDEATHSIG so that a kill -9 of the supervisor does not
	// leave orphans. The signal fires when the *thread* that forked exits,
	// so all forks happen on one locked thread that lives as long as Run.
	s.spawn = make(chan spawnReq)
	spawnDone := make(chan struct{})
	go s.spawner(spawnDone)
	defer close(s.spawn)

	var wg sync.WaitGroup
	for _, r := range s.opts.Roles {
		c := &child{role: r}
		s.mu.Lock()
		s.children = append(s.children, c)
		s.mu.Unlock()
		if err := s.start(c); err != nil {
			cancel()
			s.stopAll()
			wg.Wait()
			return err
		}
		wg.Add(1)
		go func() { defer wg.Done(); s.manage(ctx, c) }()
		s.awaitReady(ctx, c)
		if ctx.Err() != nil {
			break
		}
	}
	if ctx.Err() == nil && s.opts.OnStarted != nil {
		s.opts.OnStarted()
	}
	<-ctx.Done()
	s.stopAll()
	wg.Wait()
	return nil
}

func (s *Supervisor) spawner(done chan struct{}) {
	runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
	defer close(done)
	for req := range s.spawn {
		// The child is registered under the lock held across its start: a
		// READY=1 it sends at once waits for the lock instead of coming
		// from a pid not known yet, and being dropped.
		s.mu.Lock()
		err := req.cmd.Start()
		if err == nil {
			if testHookStarted != nil {
				testHookStarted()
			}
			c := req.c
			c.cmd = req.cmd
			c.pid = req.cmd.Process.Pid
			c.ready = false
			c.readyCh = make(chan struct{})
			c.exited = make(chan struct{})
			c.status = ""
			c.lastPing = time.Now()
			s.byPID[c.pid] = c
		}
		s.mu.Unlock()
		req.errc <- err
	}
}

func (s *Supervisor) start(c *child) error {
	cmd := exec.Command(s.opts.Exe, c.role.Args...)
	cmd.Stdout = s.opts.Stderr
	cmd.Stderr = s.opts.Stderr
	cmd.Env = append(os.Environ(), s.opts.Env...)
	cmd.Env = append(cmd.Env, "NOTIFY_SOCKET="+s.notify.path)
	cmd.ExtraFiles = s.opts.ExtraFiles
	if c.role.Watchdog > 0 {
		cmd.Env = append(cmd.Env, fmt.Sprintf("WATCHDOG_USEC=%d", c.role.Watchdog.Microseconds()))
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	errc := make(chan error, 1)
	s.spawn <- spawnReq{cmd: cmd, c: c, errc: errc}
	if err := <-errc; err != nil {
		return fmt.Errorf("start %s: %w", c.role.Name, err)
	}
	s.log.Info("started", "child", c.role.Name, "pid", c.pid)
	return nil
}

// awaitReady waits until c says READY=1, dies, or ReadyTimeout passes. A
// role that dies before it is ready (a logger that cannot open its
// database on a full disk) does not hold back the next ones for
// ReadyTimeout: it is restarted in the background.
func (s *Supervisor) awaitReady(ctx context.Context, c *child) {
	s.mu.Lock()
	ch, exited := c.readyCh, c.exited
	s.mu.Unlock()
	t := time.NewTimer(s.opts.ReadyTimeout)
	defer t.Stop()
	select {
	case <-ch:
	case <-exited:
		s.log.Warn("exited before READY=1; starting the next role, this one is restarted", "child", c.role.Name)
	case <-t.C:
		s.log.Warn("no READY=1 in time; starting the next role anyway", "child", c.role.Name, "timeout", s.opts.ReadyTimeout)
	case <-ctx.Done():
	}
}

// manage waits for the child to exit and restarts it with backoff until ctx
// ends.
func (s *Supervisor) manage(ctx context.Context, c *child) {
	backoff := s.opts.RestartBackoff
	for {
		s.mu.Lock()
		cmd, exited := c.cmd, c.exited
		s.mu.Unlock()
		startedAt := time.Now()
		stopWD := s.watchdog(c, cmd)
		err := cmd.Wait()
		close(exited)
		stopWD()
		s.mu.Lock()
		delete(s.byPID, c.pid)
		c.ready = false
		s.mu.Unlock()
		if ctx.Err() != nil {
			return
		}
		code := cmd.ProcessState.ExitCode()
		if code == ExitNoRestart {
			s.log.Error("exited with 'do not restart' status; fix the configuration", "child", c.role.Name, "status", code)
			return
		}
		if time.Since(startedAt) > time.Minute {
			backoff = s.opts.RestartBackoff
		}
		s.log.Warn("died; restarting", "child", c.role.Name, "err", err, "after", backoff)
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return
		}
		backoff = min(backoff*2, s.opts.RestartBackoffMax)
		s.mu.Lock()
		c.restarts++
		s.mu.Unlock()
		if err := s.start(c); err != nil {
			s.log.Error("restart failed", "child", c.role.Name, "err", err)
			return
		}
	}
}

// watchdog enforces WatchdogSec like systemd: no WATCHDOG=1 for that long
// after READY means SIGABRT. It returns a func that stops the check.
func (s *Supervisor) watchdog(c *child, cmd *exec.Cmd) func() {
	if c.role.Watchdog <= 0 {
		return func() {}
	}
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(c.role.Watchdog / 4)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				s.mu.Lock()
				late := c.ready && time.Since(c.lastPing) > c.role.Watchdog
				s.mu.Unlock()
				if late {
					s.log.Error("watchdog timeout; aborting", "child", c.role.Name, "pid", cmd.Process.Pid)
					_ = cmd.Process.Signal(syscall.SIGABRT)
					// A stopped (SIGSTOP) child acts on it only once
					// continued, as systemd does too.
					_ = cmd.Process.Signal(syscall.SIGCONT)
					time.AfterFunc(s.opts.StopTimeout, func() { _ = cmd.Process.Kill() })
					return
				}
			}
		}
	}()
	return func() { close(done) }
}

func (s *Supervisor) readNotifications() {
	for {
		n, err := s.notify.read()
		if err != nil {
			if !errors.Is(err, os.ErrClosed) {
				s.log.Debug("notify socket closed", "err", err)
			}
			return
		}
		s.mu.Lock()
		c := s.byPID[n.pid]
		if c == nil {
			s.mu.Unlock()
			s.log.Debug("notification from unknown pid", "pid", n.pid)
			continue
		}
		if st, ok := n.fields["STATUS"]; ok {
			c.status = st
		}
		if n.fields["WATCHDOG"] == "1" || n.fields["READY"] == "1" {
			c.lastPing = time.Now()
		}
		if n.fields["WATCHDOG"] == "trigger" {
			c.lastPing = time.Time{}
		}
		becameReady := n.fields["READY"] == "1" && !c.ready
		if becameReady {
			c.ready = true
			close(c.readyCh)
		}
		name, status := c.role.Name, c.status
		s.mu.Unlock()
		if becameReady {
			s.log.Info("ready", "child", name, "pid", n.pid, "status", status)
		}
	}
}

// stopAll stops the children in reverse start order.
func (s *Supervisor) stopAll() {
	s.mu.Lock()
	children := append([]*child(nil), s.children...)
	s.mu.Unlock()
	for i := len(children) - 1; i >= 0; i-- {
		s.mu.Lock()
		cmd, alive := children[i].cmd, s.byPID[children[i].pid] != nil
		s.mu.Unlock()
		if cmd == nil || !alive {
			continue
		}
		_ = cmd.Process.Signal(syscall.SIGTERM)
		deadline := time.Now().Add(s.opts.StopTimeout)
		for time.Now().Before(deadline) {
			s.mu.Lock()
			alive = s.byPID[children[i].pid] != nil
			s.mu.Unlock()
			if !alive {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if alive {
			s.log.Warn("did not stop in time; killing", "child", children[i].role.Name)
			_ = cmd.Process.Kill()
		}
	}
}
