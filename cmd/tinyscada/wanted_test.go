package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// `simulate -wanted` (the ExecCondition= of the simulator's unit) says yes
// exactly for the link of a simulate = true port of the configuration: the
// built-in demo's, the installed sample's; not for another link or a
// configuration without a simulated port, so that the target does not start
// a simulator nobody polls.
func TestSimulatorWanted(t *testing.T) {
	bin := binary(t)
	dir := t.TempDir()
	sample := filepath.Join(dir, "sample.toml")
	b, err := os.ReadFile(filepath.Join("..", "..", "deploy", "tinyscada.toml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(sample, b, 0o644); err != nil {
		t.Fatal(err)
	}
	field := filepath.Join(dir, "field.toml")
	if err := os.WriteFile(field, []byte("version = 1\nstate_dir = \"/var/lib/tinyscada\"\n[poller]\nport = []\ndevice = []\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// Both keep their state in ./tinyscada-state, made absolute.
	demoState := filepath.Join(dir, "tinyscada-state")
	sampleState := demoState
	for _, tc := range []struct {
		name string
		args []string
		code int
	}{
		{"demo", []string{"-link", filepath.Join(demoState, "run", "sim-tty")}, 0},
		{"sample", []string{"-config", sample, "-link", filepath.Join(sampleState, "run", "sim-tty")}, 0},
		{"another link", []string{"-link", filepath.Join(demoState, "run", "other-tty")}, exitFailure},
		{"no simulated port", []string{"-config", field, "-link", "/var/lib/tinyscada/run/sim-tty"}, exitFailure},
		{"no link", nil, exitUsage},
	} {
		cmd := exec.Command(bin, append([]string{"simulate", "-wanted"}, tc.args...)...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "TINYSCADA_CONFIG=")
		out, err := cmd.CombinedOutput()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if code != tc.code {
			t.Errorf("%s: simulate -wanted %v: exit %d, want %d\n%s", tc.name, tc.args, code, tc.code, out)
		}
	}
}
