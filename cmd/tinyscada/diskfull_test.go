package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/internal/testpeer"
)

// tmpfsDir mounts a tmpfs of size on a temporary directory until the test
// ends (root or CAP_SYS_ADMIN needed: skipped without, failing under CI).
func tmpfsDir(t *testing.T, size string) string {
	t.Helper()
	dir := t.TempDir()
	out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size+",mode=0700", "tmpfs", dir).CombinedOutput()
	if err != nil {
		testpeer.Missing(t, "cannot mount a tmpfs (needs root or CAP_SYS_ADMIN): "+err.Error()+": "+string(out))
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", "-l", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	return dir
}

// fill writes a file in dir until its file system is full.
func fill(t *testing.T, dir string) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(dir, "filler"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errorsIsENOSPC(err) {
				t.Fatalf("filling %s: %v", dir, err)
			}
			break
		}
	}
	// The last pages too.
	for {
		if _, err := f.Write(buf[:512]); err != nil {
			return
		}
	}
}

func errorsIsENOSPC(err error) bool {
	pe, ok := err.(*os.PathError)
	return ok && pe.Err == syscall.ENOSPC
}

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
	stateDir := filepath.Join(tmpfsDir(t, "16m"), "state")
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
	fill(t, filepath.Dir(stateDir))
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
