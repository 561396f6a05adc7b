package supervisor

import (
	"context"
	"os"
	"testing"
	"time"
)

// A role that dies before READY=1 (a logger that cannot open its database)
// does not hold back the next role (the poller) for ReadyTimeout: the next
// one starts at once, the dead one is restarted in the background.
func TestDeadRoleDoesNotHoldBackTheNext(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	s := New(Options{
		Exe: exe,
		Roles: []Role{
			{Name: "dies", Args: []string{"-test.run=^$", "-child-mode=die"}},
			{Name: "next", Args: []string{"-test.run=^$"}},
		},
		Env:            childEnv("ok"),
		ReadyTimeout:   time.Hour,
		RestartBackoff: 50 * time.Millisecond,
		StopTimeout:    2 * time.Second,
		OnStarted:      func() { close(started) },
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() { cancel(); <-done }()
	select {
	case <-started:
	case <-time.After(15 * time.Second):
		t.Fatal("the next role was not started: the supervisor still waits for the dead one's READY=1")
	}
	waitFor(t, "the next role ready and the dead one restarted", func() bool {
		st := s.Status()
		return st[1].Ready && st[0].Restarts > 0
	})
}
