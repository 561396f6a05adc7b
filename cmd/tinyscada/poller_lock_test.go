package main

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/internal/testpeer"
	"github.com/tinyscada/tinyscada/shared/pty"
)

// TestSecondPollerRefusesToStart: two real pollers with one configuration
// on a real pseudo-terminal, with mosquitto as the broker. The second
// finds the port locked before it connects anywhere, says by whom, and
// exits with exitLocked (in the unit's RestartPreventExitStatus=); the
// first is never knocked off the broker (no "lost", no second "starting"
// on its retained state).
func TestSecondPollerRefusesToStart(t *testing.T) {
	t.Parallel()
	port := testpeer.FreePort(t)
	testpeer.Mosquitto(t, port)
	line, err := pty.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer line.Close()
	cfgPath, _ := writeConfig(t, port, fmt.Sprintf(`
[[poller.port]]
name = "bus"
device = %q
baud = 115200
timeout = "50ms"
[[poller.device]]
name = "meter"
port = "bus"
unit = 1
[[poller.device.point]]
name = "v"
table = "holding"
`, line.SlavePath))
	states := testpeer.Sub(t, port, "-v", "-t", "tinyscada/svc/poller/state", "-t", "test/marker")

	first := exec.Command(binary(t), "poller", "-config", cfgPath)
	var firstOut strings.Builder
	var mu sync.Mutex
	first.Stderr = writerFunc(func(p []byte) (int, error) { mu.Lock(); defer mu.Unlock(); return firstOut.Write(p) })
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = first.Process.Kill()
		_ = first.Wait()
		if t.Failed() {
			mu.Lock()
			t.Logf("first poller:\n%s", firstOut.String())
			mu.Unlock()
		}
	})
	want := fmt.Sprintf(`"pid":%d`, first.Process.Pid)
	deadline := time.After(20 * time.Second)
	for ready := false; !ready; {
		select {
		case l := <-states:
			ready = strings.Contains(l, `"state":"ready"`) && strings.Contains(l, want)
		case <-deadline:
			t.Fatal("the first poller never said ready")
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, binary(t), "poller", "-config", cfgPath).CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != exitLocked {
		t.Errorf("second poller: %v, want exit status %d; output:\n%s", err, exitLocked, out)
	}
	if w := fmt.Sprintf("is locked by pid %d", first.Process.Pid); !strings.Contains(string(out), w) {
		t.Errorf("second poller's output lacks %q:\n%s", w, out)
	}

	// Everything the broker routed before the marker: the first poller's
	// session was never taken over.
	if _, err := testpeer.Pub(t, port, "-t", "test/marker", "-m", "done"); err != nil {
		t.Fatal(err)
	}
	for done := false; !done; {
		select {
		case l := <-states:
			if strings.HasPrefix(l, "test/marker ") {
				done = true
			} else if !strings.Contains(l, want) || strings.Contains(l, `"lost"`) || strings.Contains(l, `"starting"`) {
				t.Errorf("the first poller's session was disturbed: %s", l)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("marker not received")
		}
	}
	if err := first.Process.Signal(syscall.Signal(0)); err != nil {
		t.Errorf("the first poller is gone: %v", err)
	}
}
