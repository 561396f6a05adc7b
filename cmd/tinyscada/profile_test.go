package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/shared/modbus"
)

// With $TINYSCADA_CPUPROFILE, a process of the stack writes a CPU profile
// of its life into that directory (made if missing) when it stops cleanly:
// a gzipped pprof profile whose sample types are the CPU's.
func TestCPUProfileWrittenOnStop(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "profiles", "run1")
	link := filepath.Join(t.TempDir(), "ttySIM")
	_, cmd, logs := startSimulateEnv(t, []string{profileEnv + "=" + dir}, "-link", link, "-baud", "115200")
	port, err := modbus.Open(link, modbus.PortConfig{Baud: 115200})
	if err != nil {
		t.Fatal(err)
	}
	m := modbus.NewMaster(port, modbus.Options{Baud: 115200, Timeout: time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for range 20 { // some work for the profile; the demo's units are 1 and 2
		if _, err := m.ReadHoldingRegisters(ctx, 1, 0, 4); err != nil {
			t.Fatalf("read: %v; stderr:\n%s", err, logs())
		}
	}
	port.Close()
	stopSimulate(t, cmd, logs)

	path := filepath.Join(dir, fmt.Sprintf("simulate-%d.pprof", cmd.Process.Pid))
	data, err := os.ReadFile(path)
	if err != nil {
		entries, _ := os.ReadDir(dir)
		t.Fatalf("%v (the directory holds %v); stderr:\n%s", err, entries, logs())
	}
	zr, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("%s: not gzipped: %v", path, err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	// The profile's string table names its sample types.
	for _, want := range []string{"samples", "cpu", "nanoseconds"} {
		if !bytes.Contains(raw, []byte(want)) {
			t.Errorf("%s (%d bytes unzipped) lacks %q: not a CPU profile", path, len(raw), want)
		}
	}
	if strings.Contains(logs(), profileEnv) {
		t.Errorf("a warning about the profile:\n%s", logs())
	}
}

// A profile that cannot be written is no reason not to run: the process
// says which file and why, serves, and stops with status 0.
func TestCPUProfileUnwritableWarns(t *testing.T) {
	t.Parallel()
	notDir := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notDir, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(t.TempDir(), "ttySIM")
	path, cmd, logs := startSimulateEnv(t, []string{profileEnv + "=" + notDir}, "-link", link)
	if path != link {
		t.Fatalf("printed %q, want %q; stderr:\n%s", path, link, logs())
	}
	stopSimulate(t, cmd, logs)
	if want := "tinyscada simulate: " + profileEnv + ": no CPU profile: "; !strings.Contains(logs(), want) || !strings.Contains(logs(), notDir) {
		t.Errorf("stderr lacks %q naming %s:\n%s", want, notDir, logs())
	}
}
