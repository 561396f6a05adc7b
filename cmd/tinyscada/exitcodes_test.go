package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/internal/testpeer"
)

// A watchdog timeout (SIGABRT) ends a role by that signal, after every
// goroutine's stack on stderr: systemd then reports signal=ABRT, not exit
// status 2, which reads as a bad command line (the Go runtime's default
// after SIGABRT is to exit 2).
func TestWatchdogAbortEndsByTheSignal(t *testing.T) {
	bin := binary(t)
	port := testpeer.FreePort(t)
	cfg, _ := writeConfig(t, port, "")
	var stderr bytes.Buffer
	// No core file from the test (the units set LimitCORE=0).
	cmd := exec.Command("sh", "-c", `ulimit -c 0; exec "$0" broker -config "$1"`, bin, cfg)
	cmd.Env = append(os.Environ(), "TINYSCADA_CONFIG=", "NOTIFY_SOCKET=")
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if err := testpeer.WaitPort("127.0.0.1:"+strconv.Itoa(port), 10*time.Second); err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("broker not serving: %v\n%s", err, stderr.String())
	}
	if err := cmd.Process.Signal(syscall.SIGABRT); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("broker after SIGABRT: %v, want it to end by the signal", err)
	}
	ws := ee.Sys().(syscall.WaitStatus)
	if !ws.Signaled() || ws.Signal() != syscall.SIGABRT {
		t.Errorf("broker after SIGABRT: %v (exit status %d), want killed by SIGABRT", err, ws.ExitStatus())
	}
	if out := stderr.String(); !strings.Contains(out, "SIGABRT") || !strings.Contains(out, "goroutine ") {
		t.Errorf("no goroutine dump on stderr:\n%s", out)
	}
}

// A role that can never start exits with a code its unit does not restart
// (RestartPreventExitStatus=): a bad command line (64) as a bad
// configuration (78).
func TestCannotStartIsNotRestarted(t *testing.T) {
	bin := binary(t)
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.toml")
	if err := os.WriteFile(bad, []byte("version = 1\n[bus]\nbogus = 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		code int
	}{
		{[]string{"broker", "-bogus"}, exitUsage},
		{[]string{"poller", "extra"}, exitUsage},
		{[]string{"logger", "-config", bad}, exitConfig},
		{[]string{"nosuchrole"}, exitUsage},
	} {
		cmd := exec.Command(bin, tc.args...)
		cmd.Env = append(os.Environ(), "TINYSCADA_CONFIG=")
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != tc.code {
			t.Errorf("tinyscada %s: %v, want exit %d:\n%s", strings.Join(tc.args, " "), err, tc.code, out)
		}
	}
	units, err := filepath.Glob(filepath.Join("..", "..", "deploy", "units", "*.service"))
	if err != nil || len(units) == 0 {
		t.Fatalf("units: %v %v", units, err)
	}
	for _, u := range units {
		b, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		prevent := unitList(string(b), "RestartPreventExitStatus=")
		for _, code := range []int{exitUsage, exitConfig} {
			if !strings.Contains(" "+strings.Join(prevent, " ")+" ", " "+strconv.Itoa(code)+" ") {
				t.Errorf("%s: RestartPreventExitStatus=%s lacks %d", filepath.Base(u), strings.Join(prevent, " "), code)
			}
		}
	}
}
