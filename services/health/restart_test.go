package health

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/internal/testpeer"
	"github.com/tinyscada/tinyscada/internal/testpeer/testbroker"
	"github.com/tinyscada/tinyscada/shared/bus"
	"github.com/tinyscada/tinyscada/shared/credentials"
	"github.com/tinyscada/tinyscada/shared/service"
)

// A heartbeat that says a loop is hung is withheld at once, however fresh
// and whatever its progress; the next heartbeat without it is pinged again.
func TestJudgeHung(t *testing.T) {
	r := rules{stale: 3 * s, stall: 10 * s}
	tr := newTracked("poller", true, t0)
	tr.observeHeartbeat(heartbeat{PID: 10, Seq: 1, Progress: 1}, at(0))
	tr.observeHeartbeat(heartbeat{PID: 10, Seq: 2, Progress: 2, Hung: "loop port sim: busy for 20s, promised at most 1s"}, at(1*s))
	v := tr.judge(at(1*s), r, true, time.Time{})
	if v.ping || v.level != Failed || !strings.Contains(v.reason, "hung: loop port sim") {
		t.Errorf("hung: %+v, want withheld and failed with the loop", v)
	}
	tr.observeHeartbeat(heartbeat{PID: 10, Seq: 3, Progress: 3}, at(2*s))
	if v := tr.judge(at(2*s), r, true, time.Time{}); !v.ping || v.level != OK {
		t.Errorf("no longer hung: %+v", v)
	}
}

// While health restarts a service itself, the old pid is not pinged but
// that is no failure; the new instance ends it, and so does the end of the
// wait.
func TestJudgeRestarting(t *testing.T) {
	r := rules{stale: 3 * s, stall: 10 * s}
	tr := newTracked("poller", true, t0)
	tr.observeHeartbeat(*hb(10, 1), at(0))
	tr.restartPID, tr.restartUntil = 10, at(5*s)
	tr.observeState(stateMsg{State: "stopping", PID: 10}, at(1*s))
	if v := tr.judge(at(2*s), r, true, time.Time{}); v.ping || v.level != Degraded || v.reason != "restarting" {
		t.Errorf("restarting: %+v", v)
	}
	if v := tr.judge(at(6*s), r, true, time.Time{}); v.level != Failed {
		t.Errorf("after the wait: %+v, want the usual verdict (failed)", v)
	}
	tr.observeState(stateMsg{State: "starting", PID: 11}, at(6*s))
	if tr.restartPID != 0 {
		t.Errorf("a new instance keeps the restart mark %d", tr.restartPID)
	}
}

// A restart health makes itself (here by command, under the run supervisor:
// SIGTERM) raises no false alarm: no watchdog-withheld event and never
// "failed" while the old pid is gone and the new one has not spoken yet.
// A restart of health itself is refused, saying why.
func TestOwnRestartNoAlarm(t *testing.T) {
	port := testpeer.FreePort(t)
	cfg := testConfig(t, port, "")
	listenNotify(t)
	testbroker.Start(t, cfg, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := watch(t, cfg)

	p1 := child(t)
	poller := startFake(t, ctx, cfg, "poller", p1.Process.Pid, 100*time.Millisecond)
	startHealth(t, ctx, cfg)
	w.waitReport(t, "poller ok", func(r Report) bool {
		return r.Services["poller"].Status == OK && r.Services["poller"].PID == p1.Process.Pid
	})

	op := dialAs(t, cfg, credentials.Operator)
	if err := op.Publish(ctx, bus.Message{Topic: cfg.TopicPrefix + "/cmd/restart/poller", QoS: 1, Payload: []byte("{}")}); err != nil {
		t.Fatal(err)
	}
	var withheld []event
	wait := func(what string, match func(event) bool) event {
		t.Helper()
		e := w.waitEvent(t, what, func(e event) bool {
			if e.Event == "watchdog-withheld" && e.Service == "poller" {
				withheld = append(withheld, e)
			}
			return match(e)
		})
		return e
	}
	e := wait("restart by command", func(e event) bool { return e.Event == "restart" && e.Service == "poller" })
	if e.Result != "done" || e.PID != p1.Process.Pid {
		t.Fatalf("restart event: %+v", e)
	}
	_ = p1.Wait()
	// The old process is gone (its heartbeats, from the fake, go on for a
	// while, as a late one would): judgements pass, for less than
	// stale_after (after which a new instance that never speaks is a
	// failure again).
	deadline := time.Now().Add(cfg.Health.StaleAfter.Duration * 3 / 4)
	for time.Now().Before(deadline) {
		w.mu.Lock()
		st := w.report.Services["poller"]
		w.mu.Unlock()
		if st.Status == Failed {
			t.Errorf("poller reported failed during its own restart: %+v", st)
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	p2 := child(t)
	poller.set(func(h *service.Heartbeat, _ *bool) { *h = service.Heartbeat{PID: p2.Process.Pid} })
	w.waitReport(t, "the new instance ok", func(r Report) bool {
		return r.Services["poller"].Status == OK && r.Services["poller"].PID == p2.Process.Pid
	})

	for _, e := range withheld {
		t.Errorf("false alarm during health's own restart: %+v", e)
	}
}

// Time spent idle is no stall: a service idle for longer than stall_after
// that gets work again (not idle, progress not moved yet, as a logger
// between a reading and its commit) is not "without progress".
func TestIdleIsNoStall(t *testing.T) {
	r := rules{stale: 3 * s, stall: 10 * s}
	tr := newTracked("logger", true, t0)
	for i := 0; i <= 30; i++ {
		tr.observeHeartbeat(heartbeat{PID: 10, Seq: uint64(i + 1), Progress: 5, Idle: true}, at(time.Duration(i)*s))
	}
	tr.observeHeartbeat(heartbeat{PID: 10, Seq: 40, Progress: 5}, at(31*s))
	if v := tr.judge(at(31*s), r, true, time.Time{}); !v.ping || v.level != OK {
		t.Errorf("busy again after 30s idle: %+v", v)
	}
	tr.observeHeartbeat(heartbeat{PID: 10, Seq: 41, Progress: 5}, at(42*s))
	if v := tr.judge(at(42*s), r, true, time.Time{}); v.ping || !strings.Contains(v.reason, "no progress for 11s") {
		t.Errorf("busy without progress for 11s after idle: %+v", v)
	}
}
