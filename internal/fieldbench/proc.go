package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// userHZ is the unit of the times in /proc/PID/stat. The kernel fixes it at
// 100 for user space on every architecture tinyscada builds for (sysconf's
// _SC_CLK_TCK, which needs cgo to ask).
const userHZ = 100

// counters are the cumulative figures of one process read from /proc.
type counters struct {
	// CPUTicks is utime+stime of every thread, in 1/userHZ s.
	CPUTicks uint64
	// CPUns is the sum over the threads alive now of the time each ran,
	// in ns (the first field of /proc/PID/task/TID/schedstat; 0 where the
	// kernel has no schedstat): CPUTicks to the nanosecond, less what
	// threads that exited ran (see cpuMicros).
	CPUns uint64
	// WriteBytes is /proc/PID/io write_bytes: what the process caused to
	// be sent to the storage layer (page cache writes that reach the
	// disk, not the bytes of its write calls).
	WriteBytes uint64
	// Voluntary is the sum over the process's threads of
	// voluntary_ctxt_switches: how often a thread slept and was woken.
	Voluntary uint64
}

// readStat returns the parent pid and utime+stime (ticks) of pid from
// /proc/PID/stat. The command name in parentheses may hold spaces and
// parentheses, so the fields are counted after the last ')'.
func readStat(proc string, pid int) (ppid int, ticks uint64, err error) {
	b, err := os.ReadFile(filepath.Join(proc, strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0, 0, err
	}
	return parseStat(b)
}

func parseStat(b []byte) (ppid int, ticks uint64, err error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("stat: no ')' after the command name")
	}
	// After ") ": state(3) ppid(4) pgrp(5) session(6) tty_nr(7) tpgid(8)
	// flags(9) minflt(10) cminflt(11) majflt(12) cmajflt(13) utime(14)
	// stime(15); f[0] is field 3.
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, 0, fmt.Errorf("stat: %d fields after the command name, want at least 13", len(f))
	}
	ppid, err = strconv.Atoi(f[1])
	if err != nil {
		return 0, 0, fmt.Errorf("stat: ppid %q: %w", f[1], err)
	}
	utime, err := strconv.ParseUint(f[11], 10, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("stat: utime %q: %w", f[11], err)
	}
	stime, err := strconv.ParseUint(f[12], 10, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("stat: stime %q: %w", f[12], err)
	}
	return ppid, utime + stime, nil
}

// keyValue returns the number after "key:" in a /proc file of
// "key: value [unit]" lines (smaps_rollup, io, status).
func keyValue(b []byte, key string) (uint64, error) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Text()
		k, rest, ok := strings.Cut(line, ":")
		if !ok || k != key {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			return 0, fmt.Errorf("%s: no value", key)
		}
		v, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", key, err)
		}
		return v, nil
	}
	return 0, fmt.Errorf("no %s line", key)
}

// pss is a process's proportional set size, in kB, and the part of it
// that is anonymous memory (heap, stacks, the runtime's, SQLite's cache):
// what the kernel cannot drop. The rest is mostly the executable's pages,
// shared by every process of the stack and clean, so reclaimable under
// memory pressure.
type pss struct {
	Total, Anon uint64
}

// readPSS returns the proportional set size of pid from
// /proc/PID/smaps_rollup (its Pss and Pss_Anon lines; Pss_Anon is in
// Linux since 5.3).
func readPSS(proc string, pid int) (pss, error) {
	file := filepath.Join(proc, strconv.Itoa(pid), "smaps_rollup")
	b, err := os.ReadFile(file)
	if err != nil {
		return pss{}, err
	}
	var p pss
	if p.Total, err = keyValue(b, "Pss"); err != nil {
		return pss{}, fmt.Errorf("%s: %w", file, err)
	}
	if p.Anon, err = keyValue(b, "Pss_Anon"); err != nil {
		return pss{}, fmt.Errorf("%s: %w", file, err)
	}
	return p, nil
}

// readCounters reads the cumulative counters of pid.
func readCounters(proc string, pid int) (counters, error) {
	var c counters
	var err error
	if _, c.CPUTicks, err = readStat(proc, pid); err != nil {
		return c, err
	}
	dir := filepath.Join(proc, strconv.Itoa(pid))
	b, err := os.ReadFile(filepath.Join(dir, "io"))
	if err != nil {
		return c, err
	}
	if c.WriteBytes, err = keyValue(b, "write_bytes"); err != nil {
		return c, fmt.Errorf("%s/io: %w", dir, err)
	}
	tasks, err := os.ReadDir(filepath.Join(dir, "task"))
	if err != nil {
		return c, err
	}
	for _, t := range tasks {
		b, err := os.ReadFile(filepath.Join(dir, "task", t.Name(), "status"))
		if err != nil {
			continue // the thread exited meanwhile
		}
		v, err := keyValue(b, "voluntary_ctxt_switches")
		if err != nil {
			return c, fmt.Errorf("%s/task/%s/status: %w", dir, t.Name(), err)
		}
		c.Voluntary += v
		if b, err := os.ReadFile(filepath.Join(dir, "task", t.Name(), "schedstat")); err == nil {
			if f := strings.Fields(string(b)); len(f) > 0 {
				if ns, err := strconv.ParseUint(f[0], 10, 64); err == nil {
					c.CPUns += ns
				}
			}
		}
	}
	return c, nil
}

// cpuMicros returns the CPU time of a process between readings a and b,
// in µs, and whether it is to the nanosecond: the threads' schedstat
// when it agrees with the process's utime+stime within the two ticks
// their truncation may cost (a thread that exited in between takes its
// time out of the threads' sum, not out of the process's ticks), else the
// ticks (a tick is 10 ms: at the demo's rate a role's minute is a few
// dozen ticks, which made its figure move by a tenth from run to run).
func cpuMicros(a, b counters) (us float64, precise bool) {
	ticks := float64(b.CPUTicks-a.CPUTicks) * 1e6 / userHZ
	if a.CPUns == 0 || b.CPUns < a.CPUns {
		return ticks, false
	}
	ns := float64(b.CPUns-a.CPUns) / 1e3
	if d := ns - ticks; d < -2e6/userHZ || d > 2e6/userHZ {
		return ticks, false
	}
	return ns, true
}

// roleOf returns the tinyscada role a command line runs: its first
// argument when the executable is exe ("tinyscada poller -config …" gives
// "poller"), else "".
func roleOf(cmdline []byte, exe string) string {
	args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
	if len(args) < 2 || args[0] != exe {
		return ""
	}
	return args[1]
}

// children returns the children of ppid that run exe, by role (the first
// argument of their command line); a role with several processes keeps the
// one seen first, and extra lists the others as "role:pid".
func children(proc string, ppid int, exe string) (roles map[string]int, extra []string, err error) {
	entries, err := os.ReadDir(proc)
	if err != nil {
		return nil, nil, err
	}
	roles = map[string]int{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		parent, _, err := readStat(proc, pid)
		if err != nil || parent != ppid {
			continue
		}
		b, err := os.ReadFile(filepath.Join(proc, e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		role := roleOf(b, exe)
		if role == "" {
			continue
		}
		if _, dup := roles[role]; dup {
			extra = append(extra, fmt.Sprintf("%s:%d", role, pid))
			continue
		}
		roles[role] = pid
	}
	return roles, extra, nil
}

// isZombie reports whether a /proc/PID/stat says the process has exited
// and waits to be reaped (state Z or X).
func isZombie(stat []byte) bool {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 || i+2 >= len(stat) {
		return false
	}
	return stat[i+2] == 'Z' || stat[i+2] == 'X'
}

// pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst).
const (
	pagePresent = 1 << 63
	pageFrame   = 1<<55 - 1
)

// errFramesHidden says the kernel shows page frame numbers as 0: only a
// process with CAP_SYS_ADMIN sees them (Linux 4.2 and later).
var errFramesHidden = errors.New("/proc/PID/pagemap shows no page frame numbers to this process (needs CAP_SYS_ADMIN, e.g. root)")

// addFrames adds to frames the page frame number of every page of pid
// that is in memory, from /proc/PID/maps and /proc/PID/pagemap. Pages
// that several processes map (the executable's, shared libraries') are
// one frame however many map them, so the size of frames over a set of
// processes is the memory they hold together, each page once: what
// their PSS adds up to when no other process maps any of those pages.
func addFrames(proc string, pid int, frames map[uint64]struct{}) error {
	dir := filepath.Join(proc, strconv.Itoa(pid))
	maps, err := os.ReadFile(filepath.Join(dir, "maps"))
	if err != nil {
		return err
	}
	pm, err := os.Open(filepath.Join(dir, "pagemap"))
	if err != nil {
		return err
	}
	defer pm.Close()
	page := uint64(os.Getpagesize())
	buf := make([]byte, 8*512)
	for line := range bytes.Lines(maps) {
		f := bytes.Fields(line)
		if len(f) < 2 || bytes.HasPrefix(f[1], []byte("---")) {
			continue // a reservation without access holds no page
		}
		lo, hi, ok := bytes.Cut(f[0], []byte("-"))
		if !ok {
			return fmt.Errorf("%s/maps: bad line %q", dir, line)
		}
		start, err1 := strconv.ParseUint(string(lo), 16, 64)
		end, err2 := strconv.ParseUint(string(hi), 16, 64)
		if err1 != nil || err2 != nil || end < start {
			return fmt.Errorf("%s/maps: bad range %q", dir, f[0])
		}
		if len(f) >= 6 && string(f[5]) == "[vsyscall]" {
			continue // above the range pagemap covers
		}
		for p := start / page; p < end/page; {
			n := min(end/page-p, uint64(len(buf)/8))
			b := buf[:8*n]
			if _, err := pm.ReadAt(b, int64(p*8)); err != nil {
				return fmt.Errorf("%s/pagemap at page %#x: %w", dir, p, err)
			}
			for i := range n {
				e := binary.LittleEndian.Uint64(b[8*i:])
				if e&pagePresent == 0 {
					continue
				}
				if e&pageFrame == 0 {
					return errFramesHidden
				}
				frames[e&pageFrame] = struct{}{}
			}
			p += n
		}
	}
	return nil
}
