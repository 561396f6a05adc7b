package main

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/internal/testpeer"
)

// `tinyscada run` on a state directory whose disk is full (a real tmpfs,
// filled to the last byte after a first run made the credentials and the
// database): the stack comes up, the moment it is most needed to hold
// data. run itself writes nothing to start its roles (the effective
// configuration reaches them in a memfd); the broker says ready and the
// poller polls into its outbox. (What the logger does on a full disk is
// its own matter, tested in services/logger.)
func TestRunStartsOnFullDisk(t *testing.T) {
	t.Parallel()
	testpeer.Need(t, "mosquitto_sub")
	stateDir := filepath.Join(testpeer.Tmpfs(t, "16m"), "state")
	port := testpeer.FreePort(t)
	cfgPath := filepath.Join(t.TempDir(), "tinyscada.toml")
	body := fmt.Sprintf(`version = 1
state_dir = %q
[bus]
address = "127.0.0.1:%d"
heartbeat_interval = "200ms"
retry_max = "200ms"
[broker]
listen = ["127.0.0.1:%d"]
[run]
restart_backoff = "100ms"
roles = ["broker", "logger", "poller"]
[logger]
clock_sync = false
`, stateDir, port, port)
	if err := os.WriteFile(cfgPath, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)

	// A first run makes the state directory: credentials, database.
	cmd := startRun(t, cfgPath)
	if err := testpeer.WaitPort(addr, 15*time.Second); err != nil {
		t.Fatal(err)
	}
	w := watch(t, port)
	old := map[string]int{}
	for _, role := range []string{"broker", "logger", "poller"} {
		old[role] = w.readyPID(t, role, 0)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("first run: %v", err)
	}

	// run's lock file is made anew on the full disk (as after a cleanup of
	// the run directory).
	if err := os.Remove(filepath.Join(stateDir, "run", "lock")); err != nil {
		t.Fatal(err)
	}
	testpeer.FillDisk(t, filepath.Dir(stateDir))
	var st syscall.Statfs_t
	if err := syscall.Statfs(stateDir, &st); err != nil || st.Bavail != 0 {
		t.Fatalf("the tmpfs is not full: %d blocks free (%v)", st.Bavail, err)
	}

	cmd = startRun(t, cfgPath)
	if err := testpeer.WaitPort(addr, 15*time.Second); err != nil {
		t.Fatal(err)
	}
	w = watch(t, port)
	w.readyPID(t, "broker", old["broker"])
	w.readyPID(t, "poller", old["poller"])
	w.waitFor(t, "the poller's readings", 20*time.Second, func() bool { return w.poller.Seq > 0 })
	if err := syscall.Kill(cmd.Process.Pid, 0); err != nil {
		t.Fatalf("tinyscada run is gone: %v", err)
	}
	w.mu.Lock()
	t.Logf("on a full disk: broker and poller ready; the poller made %d messages, %d acknowledged; logger state %+v",
		w.poller.Seq, w.poller.Acked, w.states["logger"])
	w.mu.Unlock()
}
