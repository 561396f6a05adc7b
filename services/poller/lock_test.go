package poller

import (
	"errors"
	"os"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/shared/config"
	"github.com/tinyscada/tinyscada/shared/pty"
)

// The descriptor a port is locked through stays out of Go's poller: it is
// only held, and a pollable one woke the process for every few bytes the
// device sent (the netpoller's edge-triggered epoll on the node), dozens
// of wake-ups a reply. A file outside the poller takes no deadline.
func TestLockedNodeNotPolled(t *testing.T) {
	t.Parallel()
	p, err := pty.Open()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	f, held, err := lockNode(&PortPlan{Config: &config.PollerPort{Name: "sim"}, Path: p.SlavePath})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	defer held.Close()
	if err := f.SetReadDeadline(time.Now().Add(time.Hour)); !errors.Is(err, os.ErrNoDeadline) {
		t.Errorf("SetReadDeadline on the locked node: %v, want os.ErrNoDeadline (the file is in Go's poller)", err)
	}
}
