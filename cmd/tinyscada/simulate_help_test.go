package main

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/tinyscada/tinyscada/services/simulate"
)

// `tinyscada simulate -h` documents the register-map format, not only the
// flags.
func TestSimulateHelpShowsMapFormat(t *testing.T) {
	t.Parallel()
	out, err := exec.Command(binary(t), "simulate", "-h").CombinedOutput()
	if err != nil {
		t.Fatalf("tinyscada simulate -h: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), simulate.MapFormat) {
		t.Errorf("tinyscada simulate -h does not print the map format:\n%s", out)
	}
}
