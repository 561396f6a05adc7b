package health

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/shared/service"
)

var t0 = time.Unix(1000, 0)

func at(d time.Duration) time.Time { return t0.Add(d) }

const s = time.Second

// event is one step of a service's story: a heartbeat or a state at a time.
type step struct {
	at    time.Duration
	hb    *heartbeat
	state *stateMsg
}

// hb is a heartbeat whose seq follows its progress.
func hb(pid int, progress uint64) *heartbeat {
	return &heartbeat{PID: pid, Seq: progress, Progress: progress}
}

func TestJudge(t *testing.T) {
	r := rules{stale: 3 * s, stall: 10 * s}
	cases := []struct {
		name     string
		svc      string
		expected bool
		steps    []step
		now      time.Duration
		brokerUp bool
		graced   bool
		grace    time.Duration // graceUntil
		ping     bool
		level    string
		reason   string
	}{
		{"fresh and progressing", "poller", true, []step{{0, hb(10, 1), nil}, {2 * s, hb(10, 2), nil}}, 4 * s, true, false, 0, true, OK, ""},
		{"starting", "poller", true, []step{{0, nil, &stateMsg{"starting", 10, ""}}, {1 * s, hb(10, 1), nil}}, 2 * s, true, false, 0, true, Degraded, "starting"},
		{"stale", "poller", true, []step{{0, hb(10, 1), nil}}, 4 * s, true, false, 0, false, Failed, "heartbeat stale (4s old)"},
		{"stale, unexpected", "script", false, []step{{0, hb(10, 1), nil}}, 4 * s, true, false, 0, false, Degraded, "heartbeat stale"},
		{"stalled", "poller", true, []step{{0, &heartbeat{PID: 10, Seq: 1, Progress: 5}, nil}, {9 * s, &heartbeat{PID: 10, Seq: 2, Progress: 5}, nil}, {11 * s, &heartbeat{PID: 10, Seq: 3, Progress: 5}, nil}}, 12 * s, true, false, 0, false, Failed, "no progress for 12s"},
		{"idle is not stalled", "poller", true, []step{{0, &heartbeat{PID: 10, Seq: 1, Progress: 5}, nil}, {11 * s, &heartbeat{PID: 10, Seq: 2, Progress: 5, Idle: true}, nil}}, 12 * s, true, false, 0, true, OK, ""},
		{"failing by its own report", "poller", true, []step{{0, hb(10, 1), nil}, {1 * s, &heartbeat{PID: 10, Seq: 2, Progress: 2, Failing: "port gone"}, nil}}, 3 * s, true, false, 0, true, Degraded, "failing for 2s: port gone"},
		{"failing withdrawn", "poller", true, []step{{0, &heartbeat{PID: 10, Seq: 2, Progress: 2, Failing: "port gone"}, nil}, {1 * s, hb(10, 3), nil}}, 2 * s, true, false, 0, true, OK, ""},
		{"lost", "poller", true, []step{{0, hb(10, 1), nil}, {1 * s, nil, &stateMsg{"lost", 10, ""}}}, 2 * s, true, false, 0, false, Failed, "lost"},
		{"stopping", "poller", true, []step{{0, hb(10, 1), nil}, {1 * s, nil, &stateMsg{"stopping", 10, ""}}}, 2 * s, true, false, 0, false, Failed, "stopping"},
		{"states out of order", "poller", true, []step{{0, nil, &stateMsg{"ready", 10, ""}}, {0, nil, &stateMsg{"starting", 10, ""}}, {1 * s, hb(10, 1), nil}}, 2 * s, true, false, 0, true, OK, ""},
		{"back on the bus after lost", "poller", true, []step{{0, hb(10, 1), nil}, {1 * s, nil, &stateMsg{"lost", 10, ""}}, {2 * s, hb(10, 2), nil}}, 3 * s, true, false, 0, true, OK, ""},
		{"ready again after lost", "poller", true, []step{{0, hb(10, 1), nil}, {1 * s, nil, &stateMsg{"lost", 10, ""}}, {2 * s, nil, &stateMsg{"ready", 10, ""}}, {2 * s, hb(10, 2), nil}}, 3 * s, true, false, 0, true, OK, ""},
		{"late will of an old pid is ignored", "poller", true, []step{{0, hb(10, 1), nil}, {1 * s, hb(11, 1), nil}, {2 * s, nil, &stateMsg{"lost", 10, ""}}}, 2 * s, true, false, 0, true, OK, ""},
		{"new instance waits for its heartbeat", "poller", true, []step{{0, hb(10, 1), nil}, {1 * s, nil, &stateMsg{"ready", 11, ""}}}, 2 * s, true, false, 0, false, Degraded, "waiting for its first heartbeat"},
		{"new instance never beats", "poller", true, []step{{0, hb(10, 1), nil}, {1 * s, nil, &stateMsg{"ready", 11, ""}}}, 5 * s, true, false, 0, false, Failed, "no heartbeat for 4s"},
		{"never seen, early", "logger", true, nil, 1 * s, true, false, 0, false, Degraded, "waiting"},
		{"never seen", "logger", true, nil, 4 * s, true, false, 0, false, Failed, "never seen"},
		{"broker down: no pings for the broker", "broker", true, []step{{0, hb(10, 1), nil}}, 1 * s, false, true, 60 * s, false, Failed, "broker unreachable"},
		{"broker down: grace for the others", "poller", true, []step{{0, hb(10, 1), nil}}, 30 * s, false, true, 60 * s, true, Degraded, "grace for 30s more"},
		{"broker down: its wills do not end the grace", "poller", true, []step{{0, hb(10, 1), nil}, {1 * s, nil, &stateMsg{"lost", 10, ""}}}, 30 * s, false, true, 60 * s, true, Degraded, "grace"},
		{"grace over", "poller", true, []step{{0, hb(10, 1), nil}}, 61 * s, false, true, 60 * s, false, Failed, "heartbeat stale"},
		{"no grace when not pinged before", "poller", true, []step{{0, hb(10, 1), nil}}, 30 * s, false, false, 60 * s, false, Failed, "heartbeat stale"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tr := newTracked(tc.svc, tc.expected, t0)
			for _, st := range tc.steps {
				if st.hb != nil {
					tr.observeHeartbeat(*st.hb, at(st.at))
				}
				if st.state != nil {
					tr.observeState(*st.state, at(st.at))
				}
			}
			tr.graced = tc.graced
			v := tr.judge(at(tc.now), r, tc.brokerUp, at(tc.grace))
			if v.ping != tc.ping || v.level != tc.level || !strings.Contains(v.reason, tc.reason) {
				t.Errorf("got %+v, want ping %t, level %s, reason with %q", v, tc.ping, tc.level, tc.reason)
			}
		})
	}
}

func TestOlderHeartbeatIgnored(t *testing.T) {
	tr := newTracked("poller", true, t0)
	tr.observeHeartbeat(heartbeat{PID: 10, Seq: 5, Progress: 9}, t0)
	tr.observeHeartbeat(heartbeat{PID: 10, Seq: 4, Progress: 8, Failing: "old"}, at(s))
	if tr.seq != 5 || tr.progress != 9 || tr.failing != "" || tr.lastHB != t0 {
		t.Errorf("an overtaken heartbeat was taken: %+v", tr)
	}
}

func TestReusedPIDIsNewInstance(t *testing.T) {
	tr := newTracked("poller", true, t0)
	tr.observeHeartbeat(heartbeat{PID: 10, Seq: 50, Progress: 9}, t0)
	tr.observeHeartbeat(heartbeat{PID: 10, Seq: 1, Progress: 0}, at(s))
	if tr.instances != 2 || tr.seq != 1 || tr.lastHB != at(s) {
		t.Errorf("a new process with the same pid was not taken as one: %+v", tr)
	}
}

func TestHeartbeatEndsGrace(t *testing.T) {
	tr := newTracked("poller", true, t0)
	tr.observeHeartbeat(*hb(10, 1), t0)
	tr.graced = true
	tr.observeHeartbeat(*hb(10, 2), at(s))
	if tr.graced {
		t.Error("a heartbeat did not end the grace")
	}
}

func TestInstancesCountRestarts(t *testing.T) {
	tr := newTracked("poller", true, t0)
	tr.observeState(stateMsg{"ready", 10, ""}, t0)
	tr.observeHeartbeat(*hb(10, 1), t0)
	tr.observeHeartbeat(*hb(11, 1), at(s))
	tr.observeState(stateMsg{"ready", 11, ""}, at(s))
	tr.observeState(stateMsg{"ready", 12, ""}, at(2*s))
	if tr.instances != 3 || tr.pid != 12 {
		t.Errorf("instances %d, pid %d; want 3, 12", tr.instances, tr.pid)
	}
}

func TestAllowRestart(t *testing.T) {
	tr := newTracked("poller", true, t0)
	window := 10 * s
	for i, want := range []bool{true, true, false} {
		if got := tr.allowRestart(at(time.Duration(i)*s), 2, window); got != want {
			t.Errorf("restart %d: %t, want %t", i, got, want)
		}
	}
	if !tr.allowRestart(at(11*s), 2, window) {
		t.Error("the window did not move on")
	}
	if tr.allowRestart(at(11*s), 0, window) {
		t.Error("limit 0 allowed a restart")
	}
}

// The heartbeats the services publish are what health reads.
func TestParseServiceHeartbeat(t *testing.T) {
	b, err := json.Marshal(service.Heartbeat{PID: 42, Seq: 3, Progress: 7, Idle: true, Failing: "disk full", Extra: map[string]any{"x": 1}})
	if err != nil {
		t.Fatal(err)
	}
	h, err := parseHeartbeat(b)
	if err != nil || h != (heartbeat{PID: 42, Seq: 3, Progress: 7, Idle: true, Failing: "disk full"}) {
		t.Errorf("got %+v, %v from %s", h, err, b)
	}
	for _, bad := range []string{`{"pid":0}`, `{"pid":-1}`, `[]`, `{"pid":"1"}`, ``} {
		if _, err := parseHeartbeat([]byte(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
	if _, err := parseState([]byte(`{"state":"ready"}`)); err == nil {
		t.Error("a state without pid: no error")
	}
}

func TestStatusLine(t *testing.T) {
	cases := []struct {
		r    Report
		want string
	}{
		{Report{Status: OK, Broker: "reachable", Services: map[string]ServiceReport{"poller": {Status: OK}, "broker": {Status: OK}}}, "ok: broker, poller"},
		{Report{Status: Degraded, Broker: "reachable", Services: map[string]ServiceReport{"poller": {Status: Degraded, Reason: "failing for 3s: port gone"}, "broker": {Status: OK}}},
			"degraded: poller: failing for 3s: port gone; 1 ok"},
		{Report{Status: Failed, Broker: "unreachable", Services: map[string]ServiceReport{"broker": {Status: Failed, Reason: "broker unreachable"}}},
			"failed: broker: broker unreachable; 0 ok"},
		{Report{Status: Failed, Broker: "unreachable"}, "failed: broker unreachable; 0 ok"},
		{Report{Status: OK, Broker: "reachable"}, "ok: no services seen yet"},
	}
	for _, tc := range cases {
		if got := tc.r.StatusLine(); got != tc.want {
			t.Errorf("got %q\nwant %q", got, tc.want)
		}
	}
}

func TestProcStat(t *testing.T) {
	p, err := procStat(1)
	if err != nil || p.ppid != 0 || p.comm == "" {
		t.Errorf("pid 1: %+v, %v", p, err)
	}
	if p, err := procStat(os.Getpid()); err != nil || p.ppid != os.Getppid() || p.start == 0 {
		t.Errorf("our pid: %+v, %v; want our parent %d and a start time", p, err, os.Getppid())
	}
	if _, err := procStat(1 << 30); err == nil {
		t.Error("a pid that does not exist: no error")
	}
}

func TestReadProcFile(t *testing.T) {
	// Longer than its buffer: the read goes on until the end. A file of
	// our own, as /proc files such as cpuinfo change between two reads.
	want := bytes.Repeat([]byte("0123456789abcdef\n"), 300)
	path := filepath.Join(t.TempDir(), "stat")
	if err := os.WriteFile(path, want, 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := readProcFile(path, make([]byte, 0, 16))
	if err != nil || !bytes.Equal(got, want) {
		t.Errorf("got %d bytes (%v), want the %d of os.ReadFile", len(got), err, len(want))
	}
	_, err = readProcFile("/proc/1073741824/stat", nil)
	if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "/proc/1073741824/stat") {
		t.Errorf("missing file: %v, want ErrNotExist naming the path", err)
	}
}

// TestSystemdVerifyAsksOnce: systemd is asked for a unit's MainPID when
// its main process is new, not at every interval; again at once for a new
// process, never from a failed answer, and again after reverify.
func TestSystemdVerifyAsksOnce(t *testing.T) {
	ctx := context.Background()
	calls := 0
	main := uint32(os.Getpid())
	var fail error
	s := &Systemd{mainPID: func(context.Context, string) (uint32, error) {
		calls++
		return main, fail
	}}
	for range 5 {
		if err := s.Verify(ctx, "tinyscada-poller.service", os.Getpid()); err != nil {
			t.Fatal(err)
		}
	}
	if calls != 1 {
		t.Errorf("5 verifications of one process: %d calls to systemd, want 1", calls)
	}

	child := exec.Command("sleep", "10")
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { child.Process.Kill(); child.Wait() })
	main = uint32(child.Process.Pid) // the unit restarted
	if err := s.Verify(ctx, "tinyscada-poller.service", child.Process.Pid); err != nil {
		t.Fatal(err)
	}
	if calls != 2 {
		t.Errorf("a new main process: %d calls in all, want 2", calls)
	}
	if err := s.Verify(ctx, "tinyscada-poller.service", os.Getpid()); err == nil || !strings.Contains(err.Error(), "not the main process") {
		t.Errorf("the old process after the restart: %v, want refused", err)
	}

	main = uint32(os.Getpid()) // another unit, whose main process we are
	fail = errors.New("systemd D-Bus: connection lost")
	for range 2 {
		if err := s.Verify(ctx, "tinyscada-logger.service", os.Getpid()); err == nil {
			t.Error("a failed MainPID call: verified")
		}
	}
	fail = nil
	before := calls
	if err := s.Verify(ctx, "tinyscada-logger.service", os.Getpid()); err != nil {
		t.Fatal(err)
	}
	if calls != before+1 {
		t.Errorf("after failed calls: %d calls, want 1 more (a failure is not remembered)", calls-before)
	}

	s.mu.Lock()
	v := s.verified["tinyscada-logger.service"]
	v.at = v.at.Add(-reverify)
	s.verified["tinyscada-logger.service"] = v
	s.mu.Unlock()
	before = calls
	if err := s.Verify(ctx, "tinyscada-logger.service", os.Getpid()); err != nil {
		t.Fatal(err)
	}
	if calls != before+1 {
		t.Errorf("after %s: %d calls, want 1 more", reverify, calls-before)
	}
}

// A pid /proc does not show is asked about every time, never remembered.
func TestSystemdVerifyUnseenPID(t *testing.T) {
	calls := 0
	const gone = 1 << 30
	s := &Systemd{mainPID: func(context.Context, string) (uint32, error) {
		calls++
		return gone, nil
	}}
	for range 3 {
		if err := s.Verify(context.Background(), "tinyscada-poller.service", gone); err != nil {
			t.Fatal(err)
		}
	}
	if calls != 3 {
		t.Errorf("3 verifications of a pid /proc does not show: %d calls to systemd, want 3", calls)
	}
}
