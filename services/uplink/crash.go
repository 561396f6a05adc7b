package uplink

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tinyscada/tinyscada/shared/atomicfile"
	"github.com/tinyscada/tinyscada/shared/bus"
	"github.com/tinyscada/tinyscada/shared/clock"
)

// Crash reports go upstream from the crash directory (shared/crash). A report
// is complete by construction: shared/crash makes it by renaming a dead
// process's pending file to <role>-<pid>-<unix-ms>.crash, so only files with
// that name are taken (never a .crash-pending file, which a live process may
// still be writing, nor a .stacks dump, nor a temporary file).
//
// A sender claims a report by renaming it to
// <name>.sending-<boot>-<pid>, where boot is the start of the boot id and
// pid its own: of several uplinks (or a restarted one) exactly one rename
// succeeds, and no other sender looks at a claimed file while its claimer
// lives. The claimed file is published QoS 1 and removed only after the
// upstream broker's PUBACK. A claim whose sender is gone (another boot, no
// such pid, or a pid now running another program) is stale and is claimed
// again by the same kind of rename, so a report whose uplink was killed
// mid-send is sent later, never lost.

const (
	// crashReportSuffix is what shared/crash names a complete report.
	crashReportSuffix = ".crash"
	// crashClaimInfix separates a report's name from its claim.
	crashClaimInfix = ".crash.sending-"
	// maxCrashText bounds the report text sent in one message: 256 KiB
	// fits the smallest message limits of common cloud brokers. The head
	// is kept: the panic message and the crashing goroutine come first.
	maxCrashText = 256 << 10
)

// crashMessage is the payload on <prefix>/<node>/crash, one report each.
// A consumer deduplicates on (node, file): a report is sent again only
// when the connection was lost before the broker's PUBACK.
type crashMessage struct {
	// Node is the gateway's node name.
	Node string `json:"node"`
	// Role is the role whose process crashed, e.g. "poller".
	Role string `json:"role"`
	// PID is the process id of the crashed process.
	PID int `json:"pid"`
	// T is the wall time of the crash, Unix ms (the last write of the
	// crash output).
	T int64 `json:"t"`
	// File is the report's file name on the gateway, unique per node.
	File string `json:"file"`
	// Size is the size of the report file in bytes.
	Size int `json:"size"`
	// Truncated says that Report holds only the first maxCrashText bytes.
	Truncated bool `json:"truncated,omitempty"`
	// Report is the crash output: the panic or fatal error and the
	// goroutine stacks, as the Go runtime printed them.
	Report string `json:"report"`
}

// crashPassMu makes passes of one process run one at a time: a claim of
// this process's pid is this process's, and is taken up again by the next
// pass when a send failed.
var crashPassMu sync.Mutex

// sendCrashReports makes one pass over the crash directory dir: it claims
// every complete report and every stale claim, oldest first, publishes each
// QoS 1 on topic through up (payload: crashMessage, node given) and removes
// the file after the acknowledgement. It returns the number of reports
// sent and nil when every report found was sent (none is (0, nil), so is a
// missing dir); otherwise the count so far and the first error: up failing
// or ctx ending stops the pass, and the claimed file stays for the next
// pass. A file another sender claimed first is skipped silently. An
// unreadable report is logged and left claimed.
func sendCrashReports(ctx context.Context, up bus.Publisher, topic, node, dir string, log *slog.Logger) (int, error) {
	crashPassMu.Lock()
	defer crashPassMu.Unlock()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("crash reports: %w", err)
	}
	self := claimSuffix(os.Getpid())
	type item struct {
		name string // the report's name, without a claim
		file string // the file's name now
		ms   int64
	}
	var todo []item
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue
		}
		name, claim, ok := strings.Cut(e.Name(), crashClaimInfix)
		if ok {
			name += crashReportSuffix
			if claim != strings.TrimPrefix(self, crashClaimInfix) && !staleClaim(claim) {
				continue // another live sender's
			}
		} else if !strings.HasSuffix(name, crashReportSuffix) {
			continue
		}
		_, _, ms, ok := parseReportName(name)
		if !ok {
			continue
		}
		todo = append(todo, item{name, e.Name(), ms})
	}
	slices.SortFunc(todo, func(a, b item) int {
		return cmp.Or(cmp.Compare(a.ms, b.ms), strings.Compare(a.name, b.name))
	})
	sent := 0
	for _, it := range todo {
		if err := ctx.Err(); err != nil {
			return sent, err
		}
		claimed := filepath.Join(dir, strings.TrimSuffix(it.name, crashReportSuffix)+self)
		if it.file != filepath.Base(claimed) {
			if err := atomicfile.Claim(filepath.Join(dir, it.file), claimed); err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					continue // another sender was first
				}
				return sent, fmt.Errorf("crash reports: %w", err)
			}
		}
		msg, err := readCrashReport(claimed, it.name, node)
		if err != nil {
			log.Error("crash report unreadable; left claimed", "path", claimed, "err", err)
			continue
		}
		payload, err := json.Marshal(msg)
		if err != nil {
			return sent, fmt.Errorf("crash reports: encode %s: %w", it.name, err)
		}
		if err := up.Publish(ctx, bus.Message{Topic: topic, QoS: 1, Payload: payload}); err != nil {
			return sent, fmt.Errorf("crash reports: send %s: %w", it.name, err)
		}
		if err := os.Remove(claimed); err != nil && !errors.Is(err, fs.ErrNotExist) {
			// Sent, but it would be sent again: say so loudly.
			return sent + 1, fmt.Errorf("crash reports: %s sent but not removed (it will be sent again): %w", it.name, err)
		}
		log.Info("crash report sent upstream", "report", it.name, "role", msg.Role, "pid", msg.PID)
		sent++
	}
	return sent, nil
}

// readCrashReport reads the claimed report at path, named name.
func readCrashReport(path, name, node string) (crashMessage, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return crashMessage{}, err
	}
	role, pid, ms, _ := parseReportName(name)
	m := crashMessage{Node: node, Role: role, PID: pid, T: ms, File: name, Size: len(b)}
	if len(b) > maxCrashText {
		b, m.Truncated = b[:maxCrashText], true
	}
	m.Report = strings.ToValidUTF8(string(b), "\uFFFD")
	return m, nil
}

// parseReportName splits "<role>-<pid>-<unix-ms>.crash"; the role may hold
// dashes.
func parseReportName(name string) (role string, pid int, ms int64, ok bool) {
	rest, ok := strings.CutSuffix(name, crashReportSuffix)
	if !ok {
		return "", 0, 0, false
	}
	i := strings.LastIndexByte(rest, '-')
	if i <= 0 {
		return "", 0, 0, false
	}
	ms, err := strconv.ParseInt(rest[i+1:], 10, 64)
	if err != nil {
		return "", 0, 0, false
	}
	rest = rest[:i]
	j := strings.LastIndexByte(rest, '-')
	if j <= 0 {
		return "", 0, 0, false
	}
	pid, err = strconv.Atoi(rest[j+1:])
	if err != nil || pid <= 0 {
		return "", 0, 0, false
	}
	return rest[:j], pid, ms, true
}

// claimSuffix is what a claim by pid of this boot appends to a report's
// name (after removing .crash): ".crash.sending-<boot>-<pid>".
func claimSuffix(pid int) string {
	return crashClaimInfix + bootTag() + "-" + strconv.Itoa(pid)
}

// bootTag is the first 8 characters of the boot id, "noboot" if unknown.
var bootTag = sync.OnceValue(func() string {
	id, err := clock.BootID()
	if err != nil || len(id) < 8 {
		return "noboot"
	}
	return id[:8]
})

// staleClaim reports whether the claim "<boot>-<pid>" has no live sender:
// it is of another boot, its pid is gone, or the pid now runs another
// program than this one. When it cannot tell, the claim is live.
func staleClaim(claim string) bool {
	boot, p, ok := strings.Cut(claim, "-")
	pid, err := strconv.Atoi(p)
	if !ok || err != nil || pid <= 0 {
		return false // not a claim of ours: leave it alone
	}
	if boot != bootTag() {
		return true
	}
	if err := unix.Kill(pid, 0); errors.Is(err, unix.ESRCH) {
		return true
	}
	theirs, err1 := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
	ours, err2 := os.Readlink("/proc/self/exe")
	if err1 != nil || err2 != nil {
		return false
	}
	return theirs != ours
}

// crashLoop sends the crash reports of dir now and every interval until
// ctx ends, logging failures (rate-limited to changes of the error). It
// returns when ctx ends.
func crashLoop(ctx context.Context, up bus.Publisher, topic, node, dir string, interval time.Duration, log *slog.Logger) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	var last string
	for {
		_, err := sendCrashReports(ctx, up, topic, node, dir, log)
		switch {
		case err == nil:
			last = ""
		case ctx.Err() != nil:
			return
		case err.Error() != last:
			last = err.Error()
			log.Warn("crash reports not all sent; retrying", "err", err, "every", interval)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
