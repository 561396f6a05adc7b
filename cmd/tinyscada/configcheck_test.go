package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// `config check -config FILE` is the form deploy/tinyscada.toml documents
// and every unit's command line uses: it checks FILE like `config check
// FILE`. Both forms at once, or two files, are a usage error. The
// effective configuration shows the values in force.
func TestConfigCheckFlagForm(t *testing.T) {
	t.Parallel()
	bin := binary(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "t.toml")
	doc := "version = 1\nstate_dir = \"" + dir + "\"\n" +
		"[[poller.port]]\nname = \"bus1\"\ndevice = \"/dev/ttyUSB0\"\ntimeout = \"300ms\"\n" +
		"[[poller.device]]\nname = \"m\"\nport = \"bus1\"\nunit = 1\n[[poller.device.point]]\nname = \"v\"\ntable = \"input\"\n"
	if err := os.WriteFile(file, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"config", "check", "-config", file}, {"config", "check", file}} {
		out, err := exec.Command(bin, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("tinyscada %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		if !strings.HasPrefix(string(out), "# "+file+": ok\n") {
			t.Errorf("tinyscada %s: output does not start with %q:\n%s", strings.Join(args, " "), "# "+file+": ok", out)
		}
		if !strings.Contains(string(out), "\ntimeout = '300ms'\n") || strings.Contains(string(out), "\ntimeout = '0s'\n") {
			t.Errorf("tinyscada %s: the device's timeout in force (300ms) is not shown:\n%s", strings.Join(args, " "), out)
		}
		if strings.Contains(string(out), "line_format") {
			t.Errorf("tinyscada %s: line_format shown for an rtu port:\n%s", strings.Join(args, " "), out)
		}
	}
	bad := filepath.Join(dir, "bad.toml")
	if err := os.WriteFile(bad, []byte("version = 1\n[bus]\nbogus = 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "config", "check", "-config", bad).CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != exitConfig || !strings.Contains(string(out), bad+":3: bus.bogus") {
		t.Errorf("config check -config of a bad file: %v, want exit %d naming %s:3; output:\n%s", err, exitConfig, bad, out)
	}
	for _, args := range [][]string{{"config", "check", "-config", file, file}, {"config", "check", file, file}, {"config", "check", "-bogus"}} {
		out, err := exec.Command(bin, args...).CombinedOutput()
		if !errors.As(err, &ee) || ee.ExitCode() != exitUsage || !strings.Contains(string(out), "usage: tinyscada config check") {
			t.Errorf("tinyscada %s: %v, want exit %d with the usage; output:\n%s", strings.Join(args, " "), err, exitUsage, out)
		}
	}
}
