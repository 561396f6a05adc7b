package main

import (
	"bufio"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/shared/modbus"
)

// startSimulate starts `tinyscada simulate args...`, waits for the path it
// prints and returns it, the command and its stderr so far.
func startSimulate(t *testing.T, args ...string) (path string, cmd *exec.Cmd, logs func() string) {
	t.Helper()
	return startSimulateEnv(t, nil, args...)
}

// startSimulateEnv is startSimulate with env added to its environment.
func startSimulateEnv(t *testing.T, env []string, args ...string) (path string, cmd *exec.Cmd, logs func() string) {
	t.Helper()
	cmd = exec.Command(binary(t), append([]string{"simulate"}, args...)...)
	// Without -config, no configuration file of the environment's.
	cmd.Env = append(append(os.Environ(), "TINYSCADA_CONFIG="), env...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	var mu sync.Mutex
	cmd.Stderr = writerFunc(func(p []byte) (int, error) { mu.Lock(); defer mu.Unlock(); return stderr.Write(p) })
	logs = func() string { mu.Lock(); defer mu.Unlock(); return stderr.String() }
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	lines := make(chan string, 1)
	go func() {
		l, _ := bufio.NewReader(stdout).ReadString('\n')
		lines <- l
	}()
	select {
	case l := <-lines:
		return strings.TrimSpace(l), cmd, logs
	case <-time.After(15 * time.Second):
		t.Fatalf("no path printed; stderr:\n%s", logs())
	}
	return "", nil, nil
}

// stopSimulate sends SIGTERM and wants exit status 0.
func stopSimulate(t *testing.T, cmd *exec.Cmd, logs func() string) {
	t.Helper()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("tinyscada simulate after SIGTERM: %v; stderr:\n%s", err, logs())
	}
}

// `tinyscada simulate` as an operator (or the tinyscada-simulate@ unit)
// runs it: it prints the path to open, serves there, logs as the roles do
// (role=simulate, at the configuration's level), and on SIGTERM exits 0
// and removes its link.
func TestSimulateCommand(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	mapPath := filepath.Join(dir, "map.toml")
	if err := os.WriteFile(mapPath, []byte("[[unit]]\nid = 3\n[[unit.register]]\ntable = \"holding\"\naddress = 7\ntype = \"u16\"\nvalue = 4321\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "ttySIM")
	path, cmd, logs := startSimulate(t, "-map", mapPath, "-link", link, "-baud", "19200")
	if path != link {
		t.Fatalf("printed %q, want the link %q; stderr:\n%s", path, link, logs())
	}
	port, err := modbus.Open(link, modbus.PortConfig{Baud: 19200})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	regs, err := modbus.NewMaster(port, modbus.Options{Baud: 19200, Timeout: time.Second}).ReadHoldingRegisters(ctx, 3, 7, 1)
	port.Close()
	if err != nil || regs[0] != 4321 {
		t.Fatalf("read via the link: %v, %v; stderr:\n%s", regs, err, logs())
	}
	stopSimulate(t, cmd, logs)
	if _, err := os.Lstat(link); !os.IsNotExist(err) {
		t.Errorf("link left behind: %v", err)
	}
	for _, want := range []string{"level=INFO msg=serving role=simulate", "units=[3] baud=19200", "level=INFO msg=stopped role=simulate frames=1 "} {
		if !strings.Contains(logs(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, logs())
		}
	}

	// -config sets the level; without -link the pseudo-terminal's own
	// path is printed.
	cfgPath := filepath.Join(dir, "tinyscada.toml")
	if err := os.WriteFile(cfgPath, []byte("version = 1\n[log]\nlevel = \"warn\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	path, cmd, logs = startSimulate(t, "-config", cfgPath)
	if !strings.HasPrefix(path, "/dev/pts/") {
		t.Errorf("printed %q, want the pseudo-terminal", path)
	}
	stopSimulate(t, cmd, logs)
	if l := logs(); strings.Contains(l, "msg=serving") {
		t.Errorf("info lines at level warn:\n%s", l)
	}
}

// The mistakes an operator can make with `tinyscada simulate`, and their
// exit codes: usage (2) for flags, configuration (78) for a bad map or
// configuration file.
func TestSimulateCommandErrors(t *testing.T) {
	t.Parallel()
	bin := binary(t)
	dir := t.TempDir()
	badCfg := filepath.Join(dir, "bad.toml")
	if err := os.WriteFile(badCfg, []byte("version = 1\n[log]\nlevel = \"loud\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	badMap := filepath.Join(dir, "map.toml")
	if err := os.WriteFile(badMap, []byte("[[unit]]\nid = 1\nbogus = 2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		args []string
		code int
		out  string // in stdout or stderr
	}{
		{[]string{"-h"}, 0, "usage: tinyscada simulate"},
		{[]string{"-print-demo"}, 0, "[[unit]]"},
		{[]string{"-bogus"}, exitUsage, "flag provided but not defined: -bogus"},
		{[]string{"extra"}, exitUsage, "usage: tinyscada simulate"},
		{[]string{"-baud", "0"}, exitUsage, "-baud 0: want > 0"},
		{[]string{"-map", filepath.Join(dir, "missing.toml")}, exitConfig, "missing.toml: no such file"},
		{[]string{"-map", badMap}, exitConfig, badMap + ":3:1: unknown key unit.bogus"},
		{[]string{"-config", badCfg}, exitConfig, badCfg},
	}
	for _, tc := range tests {
		cmd := exec.Command(bin, append([]string{"simulate"}, tc.args...)...)
		cmd.Env = append(os.Environ(), "TINYSCADA_CONFIG=")
		out, err := cmd.CombinedOutput()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatalf("simulate %v: %v", tc.args, err)
		}
		if code != tc.code || !strings.Contains(string(out), tc.out) {
			t.Errorf("simulate %v: exit %d, want %d, with %q in the output:\n%s", tc.args, code, tc.code, tc.out, out)
		}
	}
}
