package health

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tinyscada/tinyscada/internal/testpeer"
	"github.com/tinyscada/tinyscada/internal/testpeer/testbroker"
	"github.com/tinyscada/tinyscada/shared/bus"
	"github.com/tinyscada/tinyscada/shared/config"
	"github.com/tinyscada/tinyscada/shared/credentials"
	"github.com/tinyscada/tinyscada/shared/service"
)

// notifySink is a NOTIFY_SOCKET that records who sent WATCHDOG=1, by the
// pid in SCM_CREDENTIALS, as systemd and the run supervisor attribute it.
type notifySink struct {
	mu    sync.Mutex
	pings map[int]int
	ch    chan int // every pinged pid
}

func listenNotify(t *testing.T) *notifySink {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := conn.SyscallConn()
	_ = raw.Control(func(fd uintptr) { err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1) })
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("NOTIFY_SOCKET", path)
	n := &notifySink{pings: map[int]int{}, ch: make(chan int, 4096)}
	go func() {
		buf, oob := make([]byte, 4096), make([]byte, 256)
		for {
			nb, noob, _, _, err := conn.ReadMsgUnix(buf, oob)
			if err != nil {
				return
			}
			msgs, _ := unix.ParseSocketControlMessage(oob[:noob])
			for _, m := range msgs {
				if c, err := unix.ParseUnixCredentials(&m); err == nil && strings.Contains(string(buf[:nb]), "WATCHDOG=1") {
					n.mu.Lock()
					n.pings[int(c.Pid)]++
					n.mu.Unlock()
					select {
					case n.ch <- int(c.Pid):
					default:
					}
				}
			}
		}
	}()
	t.Cleanup(func() { conn.Close() })
	return n
}

func (n *notifySink) count(pid int) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.pings[pid]
}

// waitPing waits for a WATCHDOG=1 on behalf of pid.
func (n *notifySink) waitPing(t *testing.T, pid int, what string) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case p := <-n.ch:
			if p == pid {
				return
			}
		case <-deadline:
			t.Fatalf("no watchdog ping for pid %d (%s)", pid, what)
		}
	}
}

// child starts a process of ours that stands for a service's main process.
func child(t *testing.T) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("sleep", "600")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return cmd
}

// fakeService publishes a service's state and heartbeats with its
// credential, on behalf of a pid.
type fakeService struct {
	name string
	cl   *bus.Client
	mu   sync.Mutex
	hb   service.Heartbeat
	beat bool
	// frozen stops the progress counter.
	frozen bool
}

func startFake(t *testing.T, ctx context.Context, cfg *config.Config, name string, pid int, every time.Duration) *fakeService {
	t.Helper()
	cl := dialAs(t, cfg, name)
	f := &fakeService{name: name, cl: cl, hb: service.Heartbeat{PID: pid}, beat: true}
	st, _ := json.Marshal(service.State{State: service.Ready, PID: pid})
	if err := cl.Publish(ctx, bus.Message{Topic: cfg.TopicPrefix + "/svc/" + name + "/state", QoS: 1, Retain: true, Payload: st}); err != nil {
		t.Fatal(err)
	}
	go func() {
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			f.mu.Lock()
			f.hb.Seq++
			if !f.frozen {
				f.hb.Progress++
			}
			b, _ := json.Marshal(f.hb)
			beat := f.beat
			f.mu.Unlock()
			if beat {
				_ = cl.Publish(ctx, bus.Message{Topic: cfg.TopicPrefix + "/svc/" + name + "/heartbeat", Payload: b})
			}
		}
	}()
	return f
}

func (f *fakeService) set(fn func(h *service.Heartbeat, beat *bool)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(&f.hb, &f.beat)
}

func dialAs(t *testing.T, cfg *config.Config, user string) *bus.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl, err := bus.Dial(ctx, bus.Options{
		Address:  cfg.Bus.Address,
		ClientID: fmt.Sprintf("test-%s-%d", user, time.Now().UnixNano()),
		Credentials: func() (string, string, error) {
			p, err := credentials.Read(cfg.StateDir, user)
			return user, p, err
		},
		CleanSession: true,
		RetryMax:     100 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return cl
}

// events collects <prefix>/health/event and the retained <prefix>/health.
type watcher struct {
	events chan event
	mu     sync.Mutex
	report Report
}

func watch(t *testing.T, cfg *config.Config) *watcher {
	t.Helper()
	w := &watcher{events: make(chan event, 256)}
	cl := dialAs(t, cfg, "logger")
	if err := cl.Subscribe(cfg.TopicPrefix+"/health/event", 1, func(_ string, b []byte) {
		var e event
		if json.Unmarshal(b, &e) == nil {
			w.events <- e
		}
	}); err != nil {
		t.Fatal(err)
	}
	if err := cl.Subscribe(cfg.TopicPrefix+"/health", 1, func(_ string, b []byte) {
		var r Report
		if json.Unmarshal(b, &r) == nil {
			w.mu.Lock()
			w.report = r
			w.mu.Unlock()
		}
	}); err != nil {
		t.Fatal(err)
	}
	return w
}

func (w *watcher) waitEvent(t *testing.T, what string, match func(event) bool) event {
	t.Helper()
	deadline := time.After(15 * time.Second)
	for {
		select {
		case e := <-w.events:
			if match(e) {
				return e
			}
		case <-deadline:
			t.Fatalf("no event: %s", what)
		}
	}
}

func (w *watcher) waitReport(t *testing.T, what string, match func(Report) bool) Report {
	t.Helper()
	var r Report
	if !testpeer.Until(15*time.Second, func() bool {
		w.mu.Lock()
		r = w.report
		w.mu.Unlock()
		return match(r)
	}) {
		t.Fatalf("no report: %s; last %+v", what, r)
	}
	return r
}

func testConfig(t *testing.T, port int, extra string) *config.Config {
	t.Helper()
	doc := fmt.Sprintf(`version = 1
state_dir = %q
[bus]
address = "127.0.0.1:%d"
heartbeat_interval = "100ms"
retry_max = "100ms"
[broker]
listen = ["127.0.0.1:%d"]
[poller]
port = []
[health]
expect = ["broker", "poller"]
interval = "100ms"
stale_after = "500ms"
stall_after = "1s"
%s`, t.TempDir(), port, port, extra)
	c, err := config.Parse("test.toml", []byte(doc))
	if err != nil {
		t.Fatalf("%v\n%s", err, doc)
	}
	return c
}

// startHealth runs health until the test ends, and returns a function
// that waits until it has taken n more steps (each step advances its
// progress once): the witness that time passed for it, where a test
// checks that something does not happen.
func startHealth(t *testing.T, ctx context.Context, cfg *config.Config) (steps func(n uint64)) {
	t.Helper()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	svc, err := service.Start(ctx, "health", cfg, log.With("role", "health"))
	if err != nil {
		t.Fatal(err)
	}
	h, err := New(svc, Options{Supervisor: RunSupervisor{Parent: os.Getpid()}})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = h.Serve(ctx) }()
	go func() { _ = svc.Run(ctx) }()
	t.Cleanup(func() { <-done })
	// Heartbeat advances the heartbeat's sequence number too; no test
	// here looks at health's own.
	return func(n uint64) {
		t.Helper()
		from := svc.Heartbeat().Progress
		testpeer.Eventually(t, 10*time.Second, fmt.Sprintf("%d steps of health", n), func() bool {
			return svc.Heartbeat().Progress >= from+n
		})
	}
}

// needRoot: pinging for another pid takes CAP_SYS_ADMIN.
func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		testpeer.Missing(t, "watchdog pings on behalf of another pid need CAP_SYS_ADMIN (run as root)")
	}
}

// The life of a supervised service: pinged while it beats and progresses,
// not pinged once it stalls, restarted when it reports failure for too long
// and on an authorised command, within the rate limit; health's own watchdog
// pinged; the aggregate published.
func TestSupervision(t *testing.T) {
	needRoot(t)
	port := testpeer.FreePort(t)
	cfg := testConfig(t, port, "failing_restart_after = \"300ms\"\nrestart_limit = 2\nrestart_window = \"1h\"\n")
	sink := listenNotify(t)
	testbroker.Start(t, cfg, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := watch(t, cfg)

	p1 := child(t)
	poller := startFake(t, ctx, cfg, "poller", p1.Process.Pid, 100*time.Millisecond)
	steps := startHealth(t, ctx, cfg)

	sink.waitPing(t, p1.Process.Pid, "a healthy service")
	sink.waitPing(t, os.Getpid(), "health's own watchdog")
	r := w.waitReport(t, "poller ok", func(r Report) bool { return r.Services["poller"].Status == OK })
	if s := r.Services["poller"]; s.PID != p1.Process.Pid || !s.Pinged || !s.Expected || s.Unit != "tinyscada-poller.service" {
		t.Errorf("poller in the report: %+v", s)
	}

	// Progress stands still: pings stop, health says why.
	poller.set(func(_ *service.Heartbeat, _ *bool) { poller.frozen = true })
	e := w.waitEvent(t, "pings withheld from a stalled service", func(e event) bool {
		return e.Event == "watchdog-withheld" && e.Service == "poller"
	})
	if !strings.Contains(e.Reason, "no progress") || e.PID != p1.Process.Pid {
		t.Errorf("withheld event: %+v", e)
	}
	before := sink.count(p1.Process.Pid)
	steps(5)
	if after := sink.count(p1.Process.Pid); after != before {
		t.Errorf("%d pings for a stalled service after the withheld event", after-before)
	}
	poller.set(func(_ *service.Heartbeat, _ *bool) { poller.frozen = false })
	sink.waitPing(t, p1.Process.Pid, "progress again")

	// Failing by its own report for longer than failing_restart_after:
	// restarted (under run: SIGTERM to the pid).
	poller.set(func(h *service.Heartbeat, _ *bool) { h.Failing = "serial port gone" })
	e = w.waitEvent(t, "restart of a failing service", func(e event) bool { return e.Event == "restart" && e.Service == "poller" })
	if e.Result != "done" || !strings.Contains(e.Reason, "serial port gone") || e.PID != p1.Process.Pid {
		t.Errorf("restart event: %+v", e)
	}
	if err := p1.Wait(); err == nil || !strings.Contains(err.Error(), "terminated") {
		t.Errorf("the failing service's process ended with %v, want SIGTERM", err)
	}

	// The supervisor started it again: a new pid.
	p2 := child(t)
	poller.set(func(h *service.Heartbeat, _ *bool) { *h = service.Heartbeat{PID: p2.Process.Pid} })
	sink.waitPing(t, p2.Process.Pid, "the new instance")
	w.waitReport(t, "one restart counted", func(r Report) bool { return r.Services["poller"].Restarts == 1 && r.Services["poller"].Status == OK })

	// An authorised command restarts it; the rate limit (2 an hour) then
	// refuses the next.
	op := dialAs(t, cfg, credentials.Operator)
	if err := op.Publish(ctx, bus.Message{Topic: cfg.TopicPrefix + "/cmd/restart/poller", QoS: 1, Payload: []byte("{}")}); err != nil {
		t.Fatal(err)
	}
	e = w.waitEvent(t, "restart by command", func(e event) bool { return e.Event == "restart" && e.Reason == "command" })
	if e.Result != "done" || e.PID != p2.Process.Pid {
		t.Errorf("command restart event: %+v", e)
	}
	_ = p2.Wait()
	p3 := child(t)
	poller.set(func(h *service.Heartbeat, _ *bool) { *h = service.Heartbeat{PID: p3.Process.Pid} })
	sink.waitPing(t, p3.Process.Pid, "the third instance")
	if err := op.Publish(ctx, bus.Message{Topic: cfg.TopicPrefix + "/cmd/restart/poller", QoS: 1, Payload: []byte("{}")}); err != nil {
		t.Fatal(err)
	}
	e = w.waitEvent(t, "refused restart", func(e event) bool { return e.Event == "restart" && e.Reason == "command" })
	if e.Result != "refused" || !strings.Contains(e.Error, "rate limit") {
		t.Errorf("third restart: %+v", e)
	}

	// An anonymous client cannot command a restart (the broker drops it);
	// a restart of a service nobody has seen is refused.
	if _, err := testpeer.Pub(t, port, "-t", cfg.TopicPrefix+"/cmd/restart/nothing", "-m", "{}"); err != nil {
		t.Logf("anonymous publish: %v", err)
	}
	if err := op.Publish(ctx, bus.Message{Topic: cfg.TopicPrefix + "/cmd/restart/nothing", QoS: 1, Payload: []byte("{}")}); err != nil {
		t.Fatal(err)
	}
	e = w.waitEvent(t, "restart of an unknown service", func(e event) bool { return e.Event == "restart" && e.Service == "nothing" })
	if e.Result != "refused" {
		t.Errorf("unknown service restart: %+v", e)
	}

	// A pid that is not a child of the supervisor is never pinged.
	poller.set(func(h *service.Heartbeat, _ *bool) { *h = service.Heartbeat{PID: 1} })
	e = w.waitEvent(t, "pings withheld from a foreign pid", func(e event) bool {
		return e.Event == "watchdog-withheld" && e.Service == "poller" && e.PID == 1
	})
	if !strings.Contains(e.Reason, "not a child") {
		t.Errorf("foreign pid: %+v", e)
	}
	if n := sink.count(1); n != 0 {
		t.Errorf("%d pings for pid 1", n)
	}
}

// A service nobody configured gets supervision by publishing heartbeats; the
// broker going away stops the broker's pings and puts the others on grace;
// after the grace, normal rules; when it is back, pings resume.
func TestBrokerGraceAndCustomService(t *testing.T) {
	needRoot(t)
	port := testpeer.FreePort(t)
	cfg := testConfig(t, port, "broker_grace = \"1s\"\n")
	sink := listenNotify(t)
	stopBroker := testbroker.Start(t, cfg, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := watch(t, cfg)

	p := child(t)
	// The uplink credential stands for a customer's service here: it may
	// publish under svc/uplink/.
	startFake(t, ctx, cfg, "uplink", p.Process.Pid, 100*time.Millisecond)
	steps := startHealth(t, ctx, cfg)
	sink.waitPing(t, p.Process.Pid, "an unexpected service")
	w.waitReport(t, "uplink supervised", func(r Report) bool {
		s := r.Services["uplink"]
		return s.Pinged && !s.Expected && s.Unit == "run:sleep"
	})

	stopBroker()
	since := time.Now()
	// Grace: pings go on, health pings itself too, for about broker_grace.
	sink.waitPing(t, p.Process.Pid, "on grace")
	for time.Since(since) < 600*time.Millisecond {
		sink.waitPing(t, p.Process.Pid, "on grace")
	}
	sink.waitPing(t, os.Getpid(), "health on grace")
	// Then no more: once the grace is over (two steps without a ping, at
	// most a few seconds after it began), five more steps without one.
	var before, self int
	testpeer.Eventually(t, 10*time.Second, "the end of the grace (two steps without pings)", func() bool {
		before, self = sink.count(p.Process.Pid), sink.count(os.Getpid())
		steps(2)
		return sink.count(p.Process.Pid) == before && sink.count(os.Getpid()) == self
	})
	steps(5)
	if n := sink.count(p.Process.Pid) - before; n != 0 {
		t.Errorf("%d pings for a service after the grace", n)
	}
	if n := sink.count(os.Getpid()) - self; n != 0 {
		t.Errorf("health pinged itself %d times without a broker after the grace", n)
	}

	// The broker is back (same port, same credentials): all resumes.
	testbroker.Start(t, cfg, nil)
	sink.waitPing(t, p.Process.Pid, "after the broker came back")
	sink.waitPing(t, os.Getpid(), "health after the broker came back")
}

// A restart command for health itself: it says so and Serve returns
// ErrRestartRequested, so the process exits and its supervisor starts it
// again.
func TestRestartCommandForHealthItself(t *testing.T) {
	port := testpeer.FreePort(t)
	cfg := testConfig(t, port, "")
	testbroker.Start(t, cfg, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := watch(t, cfg)
	svc, err := service.Start(ctx, "health", cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	h, err := New(svc, Options{Supervisor: RunSupervisor{Parent: os.Getpid()}, SelfPing: func() error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- h.Serve(ctx) }()
	w.waitReport(t, "health running", func(r Report) bool { return r.T != 0 })

	op := dialAs(t, cfg, credentials.Operator)
	if err := op.Publish(ctx, bus.Message{Topic: cfg.TopicPrefix + "/cmd/restart/health", QoS: 1, Payload: []byte("{}")}); err != nil {
		t.Fatal(err)
	}
	e := w.waitEvent(t, "health's own restart", func(e event) bool { return e.Event == "restart" && e.Service == "health" })
	if e.Result != "exiting" || e.Reason != "command" {
		t.Errorf("event %+v", e)
	}
	select {
	case err := <-served:
		if !errors.Is(err, ErrRestartRequested) {
			t.Errorf("Serve returned %v, want ErrRestartRequested", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after a restart command for health")
	}
}
