// Package crash keeps the evidence of crashes and hangs on disk: a panic or
// fatal error of the runtime is written to a per-process file that the next
// start turns into a report for the uplink, and SIGUSR1 dumps every
// goroutine's stack, after the runtime's account of the process's memory.
//
// Files in the crash directory, for a role such as "poller":
//
//	poller-<pid>.crash-pending       crash output of a running process
//	poller-<pid>-<unix-ms>.crash     a report: a crashed process's output
//	poller-<pid>-<unix-ms>.stacks    a goroutine dump taken on SIGUSR1
package crash

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tinyscada/tinyscada/shared/atomicfile"
	"golang.org/x/sys/unix"
)

const (
	pendingSuffix = ".crash-pending"
	reportSuffix  = ".crash"
	stacksSuffix  = ".stacks"
)

// MaxReports bounds the crash reports kept in a directory: when collecting
// makes more, the oldest are deleted, so a crash loop cannot fill the disk.
const MaxReports = 32

// MaxStacks bounds the goroutine dumps kept per role; older ones are deleted.
const MaxStacks = 5

// Capturer is the crash capture of this process, as set up by Capture.
type Capturer struct {
	// Path is this process's pending file, which receives its crash output.
	Path string
	// Reports are the crash reports made from leftovers of earlier
	// processes by this call of Capture (paths, oldest first).
	Reports []string
}

// Capture sets up crash capture for this process in dir (created with mode
// 0700 if missing) under role, and first collects what earlier processes of
// the same role left behind:
//
//   - a pending file of a process that is gone (no such pid, a pid that does
//     not hold the file open any more, or our own pid, which then belonged to
//     an earlier process) becomes a report if it is not empty, by an atomic
//     rename to <role>-<pid>-<unix-ms>.crash (ms of the crash, from the
//     file's modification time); an empty one is removed;
//   - pending files of live processes are left alone;
//   - beyond MaxReports reports in dir, the oldest are removed.
//
// Then it creates <role>-<ownpid>.crash-pending and makes the runtime write
// any fatal panic or fatal error there as well as to stderr
// (debug.SetCrashOutput). Call it once, early in main.
//
// It returns the capture, whose Reports lists the reports made now, or an
// error if dir or the pending file cannot be created or crash output cannot
// be set. Trouble with a single leftover is logged and skipped, not returned.
func Capture(dir, role string, log *slog.Logger) (*Capturer, error) {
	log = orDiscard(log)
	if err := checkRole(role); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("crash: create directory: %w", err)
	}
	c := &Capturer{Path: filepath.Join(dir, fmt.Sprintf("%s-%d%s", role, os.Getpid(), pendingSuffix))}
	reports := collect(dir, role, log)
	pruneOldest(dir, reportSuffix, "", MaxReports, log)
	for _, r := range reports {
		if _, err := os.Lstat(r); err == nil {
			c.Reports = append(c.Reports, r)
		}
	}

	f, err := os.OpenFile(c.Path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("crash: create pending file: %w", err)
	}
	defer f.Close() // SetCrashOutput keeps its own duplicate descriptor.
	if err := debug.SetCrashOutput(f, debug.CrashOptions{}); err != nil {
		os.Remove(c.Path)
		return nil, fmt.Errorf("crash: set crash output to %s: %w", c.Path, err)
	}
	return c, nil
}

// Close stops writing crash output to the pending file and removes the file
// if it is empty. A crash-only program need not call it; tests and a process
// that hands over to another do. It returns the error of the removal, if any.
func (c *Capturer) Close() error {
	if err := debug.SetCrashOutput(nil, debug.CrashOptions{}); err != nil {
		return fmt.Errorf("crash: reset crash output: %w", err)
	}
	st, err := os.Stat(c.Path)
	if err != nil || st.Size() > 0 {
		return nil
	}
	if err := os.Remove(c.Path); err != nil {
		return fmt.Errorf("crash: remove pending file: %w", err)
	}
	return nil
}

// collect turns the stale pending files of role into reports.
func collect(dir, role string, log *slog.Logger) []string {
	ents, err := os.ReadDir(dir)
	if err != nil {
		log.Warn("crash: cannot list crash directory", "dir", dir, "err", err)
		return nil
	}
	var reports []string
	for _, e := range ents {
		pid, ok := parsePending(e.Name(), role)
		if !ok {
			continue
		}
		path := filepath.Join(dir, e.Name())
		st, err := os.Stat(path)
		if err != nil {
			continue // claimed by a concurrent start
		}
		if !stale(pid, st) {
			continue
		}
		if st.Size() == 0 {
			if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
				log.Warn("crash: cannot remove empty pending file", "path", path, "err", err)
			}
			continue
		}
		report, err := claimReport(dir, role, pid, st.ModTime(), path)
		if err != nil {
			if !errors.Is(err, fs.ErrNotExist) {
				log.Warn("crash: cannot turn pending file into a report", "path", path, "err", err)
			}
			continue
		}
		log.Warn("crash: found the crash output of an earlier process", "pid", pid, "report", report)
		reports = append(reports, report)
	}
	return reports
}

// claimReport renames a pending file to a report name that is not taken.
func claimReport(dir, role string, pid int, when time.Time, pending string) (string, error) {
	ms := when.UnixMilli()
	for {
		report := filepath.Join(dir, fmt.Sprintf("%s-%d-%d%s", role, pid, ms, reportSuffix))
		if _, err := os.Lstat(report); err == nil {
			ms++
			continue
		}
		return report, atomicfile.Claim(pending, report)
	}
}

// parsePending returns the pid of a name "<role>-<pid>.crash-pending".
func parsePending(name, role string) (int, bool) {
	rest, ok := strings.CutPrefix(name, role+"-")
	if !ok {
		return 0, false
	}
	rest, ok = strings.CutSuffix(rest, pendingSuffix)
	if !ok {
		return 0, false
	}
	pid, err := strconv.Atoi(rest)
	if err != nil || pid <= 0 {
		return 0, false
	}
	return pid, true
}

// stale reports whether the pending file st of pid has no live owner: pid is
// ours (so the file is an earlier process's), is not running, or is running
// without holding the file open (the pid was reused, e.g. after a reboot).
// When it cannot tell, it says the owner lives.
func stale(pid int, st fs.FileInfo) bool {
	if pid == os.Getpid() {
		return true
	}
	if err := unix.Kill(pid, 0); errors.Is(err, unix.ESRCH) {
		return true
	}
	fdDir := fmt.Sprintf("/proc/%d/fd", pid)
	fds, err := os.ReadDir(fdDir)
	if err != nil {
		return errors.Is(err, fs.ErrNotExist)
	}
	for _, fd := range fds {
		if fst, err := os.Stat(filepath.Join(fdDir, fd.Name())); err == nil && os.SameFile(fst, st) {
			return false
		}
	}
	return true
}

// Reports lists the crash reports in dir, of every role, as paths sorted by
// name. A missing dir has none: (nil, nil). Other errors are returned.
func Reports(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("crash: list reports: %w", err)
	}
	var out []string
	for _, e := range ents {
		if e.Type().IsRegular() && strings.HasSuffix(e.Name(), reportSuffix) {
			out = append(out, filepath.Join(dir, e.Name()))
		}
	}
	return out, nil
}

// DumpOnSignal makes SIGUSR1 dump the stacks of all goroutines, to stderr
// and to <dir>/<role>-<pid>-<unix-ms>.stacks (written atomically; dir is
// created if missing), and the process keeps running. At most MaxStacks dumps
// of role are kept; older ones are removed. It returns at once, with the
// signal already caught; when ctx ends it stops catching SIGUSR1, whose
// default action then ends the process. Failures to write a dump are logged.
func DumpOnSignal(ctx context.Context, dir, role string, log *slog.Logger) {
	log = orDiscard(log)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGUSR1)
	go func() {
		defer signal.Stop(sig)
		for {
			select {
			case <-ctx.Done():
				return
			case <-sig:
				path, err := Dump(dir, role)
				if err != nil {
					log.Error("crash: goroutine dump", "err", err)
					continue
				}
				log.Info("crash: wrote goroutine dump", "path", path)
				pruneOldest(dir, stacksSuffix, role+"-", MaxStacks, log)
			}
		}
	}()
}

// Dump writes the stacks of all goroutines to stderr and to a new file
// <dir>/<role>-<pid>-<unix-ms>.stacks, and returns its path. dir is created
// (mode 0700) if missing. The error says which write failed; the stderr copy
// is best effort.
func Dump(dir, role string) (string, error) {
	if err := checkRole(role); err != nil {
		return "", err
	}
	now := time.Now()
	var b strings.Builder
	fmt.Fprintf(&b, "goroutine dump of %s pid %d at %s\n\n", role, os.Getpid(), now.UTC().Format(time.RFC3339Nano))
	writeMemory(&b)
	b.WriteString("\n")
	b.Write(allStacks())
	text := []byte(b.String())
	os.Stderr.Write(text)

	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("crash: create directory: %w", err)
	}
	ms := now.UnixMilli()
	for {
		path := filepath.Join(dir, fmt.Sprintf("%s-%d-%d%s", role, os.Getpid(), ms, stacksSuffix))
		if _, err := os.Lstat(path); err == nil {
			ms++
			continue
		}
		if err := atomicfile.WriteFile(path, text, 0o600); err != nil {
			return "", fmt.Errorf("crash: goroutine dump: %w", err)
		}
		return path, nil
	}
}

// writeMemory writes what the Go runtime says the process's memory is
// made of (runtime/metrics: every /memory/classes/ figure, the collector's
// goal and settings, the goroutines), a line each, so that a dump answers
// "where does this role's memory go" as well as "what is it doing".
func writeMemory(b *strings.Builder) {
	var samples []metrics.Sample
	for _, d := range metrics.All() {
		if d.Kind == metrics.KindUint64 && (strings.HasPrefix(d.Name, "/memory/classes/") || memoryExtra[d.Name]) {
			samples = append(samples, metrics.Sample{Name: d.Name})
		}
	}
	metrics.Read(samples)
	b.WriteString("memory (runtime/metrics):\n")
	for _, s := range samples {
		fmt.Fprintf(b, "  %-48s %d\n", s.Name, s.Value.Uint64())
	}
}

// memoryExtra are the figures writeMemory adds to the memory classes.
var memoryExtra = map[string]bool{
	"/gc/heap/goal:bytes":          true,
	"/gc/heap/live:bytes":          true,
	"/gc/gogc:percent":             true,
	"/gc/gomemlimit:bytes":         true,
	"/gc/cycles/total:gc-cycles":   true,
	"/sched/goroutines:goroutines": true,
}

// allStacks returns runtime.Stack of all goroutines, growing the buffer
// until it fits (up to 64 MiB).
func allStacks() []byte {
	buf := make([]byte, 64<<10)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) || len(buf) >= 64<<20 {
			return buf[:n]
		}
		buf = make([]byte, 2*len(buf))
	}
}

// pruneOldest removes the oldest files named prefix*suffix in dir beyond keep.
func pruneOldest(dir, suffix, prefix string, keep int, log *slog.Logger) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	type file struct {
		path string
		mod  time.Time
	}
	var files []file
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), prefix) || !strings.HasSuffix(e.Name(), suffix) {
			continue
		}
		if info, err := e.Info(); err == nil && info.Mode().IsRegular() {
			files = append(files, file{filepath.Join(dir, e.Name()), info.ModTime()})
		}
	}
	if len(files) <= keep {
		return
	}
	slices.SortFunc(files, func(a, b file) int {
		if c := a.mod.Compare(b.mod); c != 0 {
			return c
		}
		return strings.Compare(a.path, b.path)
	})
	for _, f := range files[:len(files)-keep] {
		if err := os.Remove(f.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			log.Warn("crash: cannot remove old file", "path", f.path, "err", err)
			continue
		}
		log.Info("crash: removed old file to bound the directory", "path", f.path)
	}
}

func checkRole(role string) error {
	if role == "" || strings.ContainsAny(role, "/\x00") {
		return fmt.Errorf("crash: role %q: must be a non-empty file name", role)
	}
	return nil
}

func orDiscard(log *slog.Logger) *slog.Logger {
	if log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return log
}
