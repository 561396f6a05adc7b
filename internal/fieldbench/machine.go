package main

import (
	"bufio"
	"bytes"
	"debug/buildinfo"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
)

// machine is what the bench ran on, for the report: figures of two
// machines, or of one machine under different load, are not comparable.
type machine struct {
	NProc    int    `json:"nproc"`
	CPUModel string `json:"cpu_model"`
	Kernel   string `json:"kernel"`
	// GoVersion is the bench's own toolchain; each build's is in its
	// result (Build).
	GoVersion string `json:"go_version"`
	// LoadBefore and LoadAfter are /proc/loadavg's 1, 5 and 15 minute
	// averages before the first run and after the last.
	LoadBefore string `json:"load_before"`
	LoadAfter  string `json:"load_after"`
}

// readMachine describes this machine from proc (/proc) and the runtime.
func readMachine(proc string) *machine {
	m := &machine{NProc: runtime.NumCPU(), GoVersion: runtime.Version(), LoadBefore: readLoad(proc)}
	if b, err := os.ReadFile(filepath.Join(proc, "cpuinfo")); err == nil {
		m.CPUModel = cpuModel(b)
	}
	if b, err := os.ReadFile(filepath.Join(proc, "sys", "kernel", "osrelease")); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	return m
}

// cpuModel returns the first "model name" of a /proc/cpuinfo (x86), or
// else its "Hardware"/"Processor" line or the "CPU part" (ARM boards), or
// "".
func cpuModel(cpuinfo []byte) string {
	found := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(cpuinfo))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if !ok || v == "" {
			continue
		}
		if _, seen := found[k]; !seen {
			found[k] = v
		}
	}
	for _, k := range []string{"model name", "Hardware", "Processor", "CPU part"} {
		if v := found[k]; v != "" {
			return v
		}
	}
	return ""
}

// readLoad returns the three load averages of proc/loadavg, or "" when it
// cannot be read.
func readLoad(proc string) string {
	b, err := os.ReadFile(filepath.Join(proc, "loadavg"))
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

// buildOf says which toolchain and target built the Go binary at path,
// e.g. "go1.26.8 linux/arm GOARM=5", from its embedded build information
// (readable whatever the binary's architecture), or "" when it has none.
func buildOf(path string) string {
	bi, err := buildinfo.ReadFile(path)
	if err != nil {
		return ""
	}
	set := map[string]string{}
	for _, s := range bi.Settings {
		set[s.Key] = s.Value
	}
	s := fmt.Sprintf("%s %s/%s", bi.GoVersion, set["GOOS"], set["GOARCH"])
	for _, k := range []string{"GOARM", "GOAMD64", "GOARM64", "CGO_ENABLED"} {
		if v := set[k]; v != "" {
			s += " " + k + "=" + v
		}
	}
	return s
}
