package main

import (
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/internal/testpeer"
	"github.com/tinyscada/tinyscada/shared/sdnotify"
)

// Under `tinyscada run`, health drives the supervisor's watchdogs as it
// drives systemd's: a healthy role outlives its watchdog timeout many times
// over, and a stopped (hung) role's pings stop, so the supervisor aborts it
// and starts it again.
func TestRunHealthDrivesWatchdogs(t *testing.T) {
	t.Parallel()
	if !sdnotify.CanNotifyPID() {
		testpeer.Missing(t, "health pings on behalf of other pids only with CAP_SYS_ADMIN (run as root)")
	}
	testpeer.Need(t, "mosquitto_sub")
	port := testpeer.FreePort(t)
	cfgPath, _ := writeConfig(t, port, `roles = ["broker", "poller", "health"]
[health]
expect = ["broker", "poller"]
interval = "200ms"
stale_after = "1s"
stall_after = "2s"
run_watchdog = "1500ms"
run_self_watchdog = "1s"
`)
	startRun(t, cfgPath)
	if err := testpeer.WaitPort(fmt.Sprintf("127.0.0.1:%d", port), 15*time.Second); err != nil {
		t.Fatal(err)
	}
	states := testpeer.Sub(t, port, "-v", "-t", "tinyscada/svc/poller/state")
	health := testpeer.Sub(t, port, "-t", "tinyscada/health")
	_, st := parseState(t, testpeer.Expect(t, states, 20*time.Second, "poller ready", func(l string) bool {
		return strings.Contains(l, `"state":"ready"`)
	}))
	testpeer.Expect(t, health, 20*time.Second, "health ok", func(l string) bool { return strings.Contains(l, `{"status":"ok"`) })

	// Three watchdog timeouts later, still the same poller.
	time.Sleep(3 * 1500 * time.Millisecond)
	if err := syscall.Kill(st.PID, 0); err != nil {
		t.Fatalf("the healthy poller (pid %d) is gone: %v", st.PID, err)
	}
	testpeer.Expect(t, health, 5*time.Second, "health still ok", func(l string) bool { return strings.Contains(l, `{"status":"ok"`) })

	// Hung: no heartbeats, no pings, the supervisor sends SIGABRT. (A
	// stopped process acts on it once continued; systemd sends SIGCONT
	// after its kill signal, the run supervisor kills it after its stop
	// timeout: continue it here to keep the test short.)
	p, _ := os.FindProcess(st.PID)
	if err := p.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	ok := testpeer.Until(15*time.Second, func() bool { return aborted(st.PID) })
	_ = p.Signal(syscall.SIGCONT)
	if !ok {
		t.Fatalf("the stopped poller (pid %d) got no SIGABRT", st.PID)
	}
	testpeer.Expect(t, states, 20*time.Second, "a new poller ready", func(l string) bool {
		_, s := parseState(t, l)
		return s.State == "ready" && s.PID != st.PID
	})
}

// aborted reports whether SIGABRT is pending for the stopped process pid
// (/proc/<pid>/status, SigPnd or ShdPnd bit 6).
func aborted(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return true // gone already
	}
	for _, line := range strings.Split(string(b), "\n") {
		for _, k := range []string{"SigPnd:", "ShdPnd:"} {
			if v, ok := strings.CutPrefix(line, k); ok {
				var mask uint64
				if _, err := fmt.Sscanf(strings.TrimSpace(v), "%x", &mask); err == nil && mask&(1<<(syscall.SIGABRT-1)) != 0 {
					return true
				}
			}
		}
	}
	return false
}
