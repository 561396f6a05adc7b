package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/pprof"
)

// profileEnv names a directory: a role (or the simulator) started with it
// set writes a CPU profile of its whole life there, as ROLE-PID.pprof,
// when it ends cleanly (SIGTERM, Ctrl-C, or an error it returns). It is
// for measuring where a role's CPU goes under a workload, also under
// qemu-user where perf cannot look inside (docs/performance.md,
// "Profiling a role"); `tinyscada run` passes it on to every role. A
// process that is killed or crashes writes no profile.
const profileEnv = "TINYSCADA_CPUPROFILE"

// startProfile starts the CPU profile that $TINYSCADA_CPUPROFILE asks for,
// if any, and returns what ends it and writes it out. A profile that cannot
// be started is no reason not to run: warn names the file and the error,
// and the role runs unprofiled.
func startProfile(name string, warn io.Writer) (stop func()) {
	dir := os.Getenv(profileEnv)
	if dir == "" {
		return func() {}
	}
	path := filepath.Join(dir, fmt.Sprintf("%s-%d.pprof", name, os.Getpid()))
	f, err := createProfile(path)
	if err != nil {
		fmt.Fprintf(warn, "tinyscada %s: %s: no CPU profile: %v\n", name, profileEnv, err)
		return func() {}
	}
	return func() {
		pprof.StopCPUProfile()
		if err := f.Close(); err != nil {
			fmt.Fprintf(warn, "tinyscada %s: %s: CPU profile %s: %v\n", name, profileEnv, path, err)
		}
	}
}

// createProfile creates the profile's file (and its directory) and starts
// the profiler writing to it.
func createProfile(path string) (*os.File, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		os.Remove(path)
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return f, nil
}
