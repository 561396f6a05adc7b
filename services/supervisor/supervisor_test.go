package supervisor

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/internal/testpeer"
)

// TestMain lets the test binary act as a child role: with SUPERVISOR_CHILD
// set it sends READY=1 (after an optional delay) and then WATCHDOG=1 pings
// until told otherwise, the way a real role uses NOTIFY_SOCKET.
func TestMain(m *testing.M) {
	if mode := os.Getenv("SUPERVISOR_CHILD"); mode != "" {
		actAsChild(mode)
		return
	}
	// The tests wait for their children: more of them at once.
	os.Exit(testpeer.Main(m, 8))
}

func actAsChild(mode string) {
	// A role's own mode, in its Args, overrides the environment's.
	for _, a := range os.Args[1:] {
		if m, ok := strings.CutPrefix(a, "-child-mode="); ok {
			mode = m
		}
	}
	if mode == "die" {
		os.Exit(1)
	}
	send := func(s string) {
		c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: os.Getenv("NOTIFY_SOCKET"), Net: "unixgram"})
		if err != nil {
			os.Exit(3)
		}
		c.Write([]byte(s))
		c.Close()
	}
	if mode == "badconfig" {
		os.Exit(ExitNoRestart)
	}
	if mode == "slow" {
		time.Sleep(300 * time.Millisecond)
	}
	send(fmt.Sprintf("READY=1\nSTATUS=serving as %s", mode))
	if mode == "hang" { // ready, then never pings the watchdog
		select {}
	}
	for {
		time.Sleep(50 * time.Millisecond)
		send("WATCHDOG=1")
	}
}

// newTestSupervisor runs roles of the test binary acting as children in
// mode until the test ends, and returns once all are ready.
func newTestSupervisor(t *testing.T, mode string, roles ...Role) (*Supervisor, context.CancelFunc, chan error) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for i := range roles {
		roles[i].Args = []string{"-test.run=^$"}
	}
	started := make(chan struct{})
	var once sync.Once
	s := New(Options{
		Exe:            exe,
		Roles:          roles,
		Env:            childEnv(mode),
		ReadyTimeout:   5 * time.Second,
		RestartBackoff: 50 * time.Millisecond,
		StopTimeout:    2 * time.Second,
		OnStarted:      func() { once.Do(func() { close(started) }) },
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	select {
	case <-started:
	case err := <-done:
		t.Fatalf("Run ended early: %v", err)
	case <-time.After(15 * time.Second):
		t.Fatal("roles never started")
	}
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return s, cancel, done
}

// childEnv gives each child its mode through the environment the
// supervisor adds to its children's (Options.Env), not the test process's
// own: the tests run in parallel.
func childEnv(mode string) []string { return []string{"SUPERVISOR_CHILD=" + mode} }

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testpeer.Eventually(t, 10*time.Second, what, cond)
}

func TestStartsInOrderAndReadsReady(t *testing.T) {
	t.Parallel()
	s, _, _ := newTestSupervisor(t, "slow", Role{Name: "a"}, Role{Name: "b"})
	st := s.Status()
	if len(st) != 2 {
		t.Fatalf("status has %d children, want 2", len(st))
	}
	// OnStarted fires only after each READY=1 in turn: both are ready now.
	for _, c := range st {
		if !c.Ready || c.PID == 0 || !strings.HasPrefix(c.Status, "serving as slow") {
			t.Errorf("child %+v: want ready with a STATUS line", c)
		}
	}
}

// A child that says READY=1 before the supervisor has noted its pid (a
// loaded machine deschedules the supervisor right after the fork) is still
// seen as ready: the notification is not dropped as from an unknown pid.
// Not parallel: it sets a package hook.
func TestReadyBeforeRegistration(t *testing.T) {
	testHookStarted = func() { time.Sleep(300 * time.Millisecond) }
	t.Cleanup(func() { testHookStarted = nil })
	s, cancel, done := newTestSupervisor(t, "ok", Role{Name: "a"})
	c := s.Status()[0]
	cancel()
	<-done
	done <- nil // for the cleanup
	if !c.Ready {
		t.Fatalf("child %+v: its READY=1 was lost", c)
	}
}

func TestRestartsKilledChild(t *testing.T) {
	t.Parallel()
	s, _, _ := newTestSupervisor(t, "ok", Role{Name: "a"})
	old := s.Status()[0].PID
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "restart", func() bool {
		c := s.Status()[0]
		return c.PID != old && c.Ready && c.Restarts == 1
	})
}

// The supervisor logs that it gives up on the child before it leaves it
// for good: after that log line no restart can come.
func TestNoRestartOnConfigExit(t *testing.T) {
	t.Parallel()
	exe, _ := os.Executable()
	var logs syncBuffer
	s := New(Options{Exe: exe, Roles: []Role{{Name: "a", Args: []string{"-test.run=^$"}}}, Env: childEnv("badconfig"),
		ReadyTimeout: 300 * time.Millisecond, RestartBackoff: 10 * time.Millisecond,
		Log: slog.New(slog.NewTextHandler(&logs, nil))})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	waitFor(t, "the supervisor giving up on the child", func() bool {
		return strings.Contains(logs.String(), "exited with 'do not restart' status")
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if c := s.Status()[0]; c.Restarts != 0 {
		t.Fatalf("restarted %d times after exit status %d, want 0", c.Restarts, ExitNoRestart)
	}
}

func TestWatchdogAbortsHungChild(t *testing.T) {
	t.Parallel()
	s, _, _ := newTestSupervisor(t, "hang", Role{Name: "a", Watchdog: 300 * time.Millisecond})
	old := s.Status()[0].PID
	waitFor(t, "watchdog restart", func() bool {
		c := s.Status()[0]
		return c.PID != old && c.Restarts >= 1
	})
}

func TestStopTerminatesChildren(t *testing.T) {
	t.Parallel()
	s, cancel, done := newTestSupervisor(t, "ok", Role{Name: "a"}, Role{Name: "b"})
	var pids []int
	for _, c := range s.Status() {
		pids = append(pids, c.PID)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	done <- nil // for the cleanup
	for _, pid := range pids {
		if err := syscall.Kill(pid, 0); err == nil {
			t.Errorf("child %d still alive after stop", pid)
		}
	}
}

// A child stopped with SIGSTOP (hung, not dead) misses its watchdog and is
// restarted at once: SIGABRT is followed by SIGCONT, as systemd does, instead
// of waiting for the stop timeout's SIGKILL.
func TestWatchdogRestartsStoppedChild(t *testing.T) {
	t.Parallel()
	exe, _ := os.Executable()
	runDir := t.TempDir()
	// A stale socket from a killed supervisor is replaced.
	if err := os.WriteFile(runDir+"/notify", nil, 0o600); err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	s := New(Options{
		Exe:            exe,
		Roles:          []Role{{Name: "a", Args: []string{"-test.run=^$"}, Watchdog: 300 * time.Millisecond}},
		Env:            childEnv("ok"),
		RunDir:         runDir,
		ReadyTimeout:   5 * time.Second,
		RestartBackoff: 50 * time.Millisecond,
		StopTimeout:    time.Minute, // far longer than the wait below
		OnStarted:      func() { close(started) },
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() { cancel(); <-done }()
	select {
	case <-started:
	case err := <-done:
		t.Fatalf("Run: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("never started")
	}
	old := s.Status()[0].PID
	if err := syscall.Kill(old, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "restart of the stopped child", func() bool {
		c := s.Status()[0]
		return c.PID != old && c.Ready
	})
}

// syncBuffer is a bytes.Buffer for a logger writing from several
// goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
