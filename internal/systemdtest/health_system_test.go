//go:build system

package systemdtest

// System tests of health and the units (issue 11, "Health and systemd"):
// status lines, the journal, health's own restarts, the stack without
// health, a slow schedule and a silent device, and a fresh install. Run as
// root with the other system tests:
//
//	go test -tags system -count=1 -v -timeout 15m ./internal/systemdtest/
//
// Timings are the test's (installAndBoot): heartbeats every 1s, stale_after
// 3s, stall_after 10s, the roles' WatchdogSec 8s (production: 5s, 15s, 1m,
// 30s). A production duration is scaled by about WatchdogSec, so that the
// same number of stale and watchdog periods pass: see soakSlow and
// soakNoHealth.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/internal/testpeer"
	"github.com/tinyscada/tinyscada/shared/topics"
)

const (
	// soakSlow stands for the 10 minutes of a device polled
	// every 2 minutes: the device here is polled every 30s (three times
	// stall_after, as 2m is twice the production 1m), and 2 minutes are
	// 4 of its intervals and 11 periods of stale_after + WatchdogSec.
	soakSlow = 2 * time.Minute
	// soakNoHealth stands for the 3 minutes without health: 4
	// periods of stale_after + WatchdogSec in production (45s), 5 here.
	soakNoHealth = time.Minute
)

// standInUplink installs the unit of the stand-in uplink (the test binary
// as a fake role, see fakeRole) while the binary has no uplink role and so
// ships no uplink unit: the logger's unit as installed, with its hardening,
// running the fake role; and a drop-in of the target that wants it.
func standInUplink(t *testing.T, root string) {
	t.Helper()
	dir := filepath.Join(root, "run/systemd/system")
	b, err := os.ReadFile(filepath.Join(dir, unit(topics.Logger)))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		switch {
		case strings.HasPrefix(line, "Description="):
			line = "Description=stand-in uplink of the system test (a fake role that heartbeats)"
		case strings.HasPrefix(line, "ExecStart="):
			line = "Environment=" + fakeRoleEnv + "=" + string(topics.Uplink) + "\nExecStart=/usr/local/bin/systemdtest-fake-role /usr/local/etc/tinyscada/tinyscada.toml"
		case strings.HasPrefix(line, "SyslogIdentifier="):
			line = "SyslogIdentifier=tinyscada-uplink"
		}
		out = append(out, line)
	}
	if err := os.WriteFile(filepath.Join(dir, unit(topics.Uplink)), []byte(strings.Join(out, "\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	td := filepath.Join(dir, "tinyscada.target.d")
	if err := os.MkdirAll(td, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(td, "standin.conf"), []byte("[Unit]\nWants="+unit(topics.Uplink)+"\nAfter="+unit(topics.Uplink)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

// retained returns the retained payload of topic (mosquitto_sub in the
// system's network), or "" when none arrived within 5s.
func (s *stack) retained(topic string) string {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, _ := s.sys.NetCommand(ctx, "mosquitto_sub", "-h", "127.0.0.1", "-p", strconv.Itoa(s.port), "-C", "1", "-W", "5", "-t", topic).Output()
	return strings.TrimSpace(string(out))
}

// operatorPub publishes a command with the operator credential.
func (s *stack) operatorPub(topic, payload string) {
	s.t.Helper()
	pw, err := os.ReadFile(filepath.Join(s.varLib, "tinyscada", "credentials", "operator"))
	if err != nil {
		s.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if out, err := s.sys.NetCommand(ctx, "mosquitto_pub", "-h", "127.0.0.1", "-p", strconv.Itoa(s.port), "-q", "1",
		"-u", "operator", "-P", strings.TrimSpace(string(pw)), "-t", topic, "-m", payload).CombinedOutput(); err != nil {
		s.t.Fatalf("mosquitto_pub %s: %v\n%s", topic, err, out)
	}
}

// reports follows the statuses of tinyscada/health and of each service in
// it, until stop is called.
type reports struct {
	mu   sync.Mutex
	seen []map[string]any
	stop func()
}

func (s *stack) followReports() *reports {
	r := &reports{}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := s.sys.NetCommand(ctx, "mosquitto_sub", "-h", "127.0.0.1", "-p", strconv.Itoa(s.port), "-t", "tinyscada/health")
	out, err := cmd.StdoutPipe()
	if err != nil || cmd.Start() != nil {
		cancel()
		s.t.Fatalf("mosquitto_sub: %v", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			var v map[string]any
			if json.Unmarshal(sc.Bytes(), &v) == nil {
				r.mu.Lock()
				r.seen = append(r.seen, v)
				r.mu.Unlock()
			}
		}
		_ = cmd.Wait()
	}()
	r.stop = func() { cancel(); <-done }
	return r
}

// failed returns the reports in which service was "failed".
func (r *reports) failed(service string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var bad []string
	for _, v := range r.seen {
		svcs, _ := v["services"].(map[string]any)
		if st, _ := svcs[service].(map[string]any); st != nil && st["status"] == "failed" {
			b, _ := json.Marshal(st)
			bad = append(bad, string(b))
		}
	}
	return bad
}

// restarts is what systemd says of every unit of the stack: main pid and
// restart count.
func (s *stack) restarts(units []string) map[string]string {
	m := map[string]string{}
	for _, u := range units {
		m[u] = fmt.Sprintf("pid %d, %s restarts", s.sys.MainPID(u), s.sys.Show(u, "NRestarts"))
	}
	return m
}

func (s *stack) stackUnits() []string {
	units := []string{"tinyscada-simulate@sim.service"}
	for _, r := range s.roles {
		units = append(units, unit(r))
	}
	return units
}

// withheldFor returns the watchdog-withheld events of service from index
// from on.
func (s *stack) withheldFor(from int, service string) []map[string]any {
	s.mon.mu.Lock()
	defer s.mon.mu.Unlock()
	var out []map[string]any
	for _, e := range s.mon.events[from:] {
		if e["event"] == "watchdog-withheld" && e["service"] == service {
			out = append(out, e)
		}
	}
	return out
}

// sigstopRestarted SIGSTOPs role's main process and waits for its watchdog
// to restart it; it returns how long that took.
func (s *stack) sigstopRestarted(t *testing.T, role topics.Role) time.Duration {
	t.Helper()
	before := s.watchdogResults(role)
	// Never "kill -STOP 0" (the caller's own process group): wait for a
	// main process that is up.
	pid := 0
	s.sys.WaitFor(time.Minute, string(role)+" has no running main process", func() bool {
		pid = s.sys.MainPID(unit(role))
		return pid != 0 && s.activeAgain(role, 0)
	})
	s.sys.MustExec("kill", "-STOP", strconv.Itoa(pid))
	d := s.sys.WaitFor(time.Minute, string(role)+" not restarted by its watchdog after SIGSTOP", func() bool { return s.activeAgain(role, pid) })
	if s.watchdogResults(role) <= before {
		t.Errorf("%s was restarted, but not by its watchdog:\n%s", role, s.sys.Journal(unit(role), 40))
	}
	return d
}

// watchdogResults counts systemd's "Failed with result 'watchdog'" in
// role's journal (the whole of it: a goroutine dump is hundreds of lines).
func (s *stack) watchdogResults(role topics.Role) int {
	out, _ := s.sys.Exec("journalctl", "--no-pager", "-o", "cat", "-u", unit(role))
	return strings.Count(out, "Failed with result 'watchdog'")
}

func TestSystemHealth(t *testing.T) {
	s := installAndBoot(t)
	sys := s.sys
	defer func() {
		if !t.Failed() {
			return
		}
		for _, u := range append(s.stackUnits(), "systemdtest-silent.service") {
			t.Logf("journal of %s:\n%s", u, sys.Journal(u, 60))
		}
	}()
	start := time.Now()
	// The target alone: it wants the demo's simulator.
	sys.MustExec("systemctl", "start", "tinyscada.target")
	if st := sys.Show("tinyscada-simulate@sim.service", "ActiveState"); st != "active" {
		t.Errorf("the target did not start the demo's simulator: %s", st)
		sys.MustExec("systemctl", "start", "tinyscada-simulate@sim.service") // to test the rest
	}
	s.watch()
	s.waitOK(start, time.Minute, "after start")

	s.run(t, "status follows", func(t *testing.T) {
		// READY comes once the port was tried, before any round: the
		// count must follow the rounds.
		online := regexp.MustCompile(`\b([1-9]\d*) devices online`)
		status := func() string { return sys.Show(unit(topics.Poller), "StatusText") }
		d := sys.WaitFor(30*time.Second, "systemctl status of the poller never shows the devices online: "+status(), func() bool {
			return online.MatchString(status())
		})
		t.Logf("figure: poller StatusText with the devices online %v after health ok: %q", d.Round(time.Millisecond), status())
		sys.WaitFor(30*time.Second, "retained poller state with the live status", func() bool {
			return online.MatchString(s.retained("tinyscada/svc/poller/state"))
		})
		m := regexp.MustCompile(`(\d+) clients`).FindStringSubmatch(s.retained("tinyscada/svc/broker/state"))
		if m == nil || m[1] == "0" {
			t.Errorf("retained broker state: %s, want its clients counted", s.retained("tinyscada/svc/broker/state"))
		}
		// A change: the devices go away with the simulator.
		at := time.Now()
		sys.MustExec("systemctl", "stop", "tinyscada-simulate@sim.service")
		d = sys.WaitFor(30*time.Second, "systemctl status of the poller does not follow the devices going offline: "+status(), func() bool {
			return strings.Contains(status(), " 0 devices online")
		})
		t.Logf("figure: poller StatusText after the simulator stopped: %q within %v", status(), d.Round(time.Millisecond))
		sys.MustExec("systemctl", "start", "tinyscada-simulate@sim.service")
		d = sys.WaitFor(time.Minute, "poller status not back to devices online", func() bool { return online.MatchString(status()) })
		t.Logf("figure: poller StatusText back to %q %v after the simulator started", status(), d.Round(time.Millisecond))
		s.waitOK(at, time.Minute, "after the simulator came back")
	})

	s.run(t, "journal", func(t *testing.T) {
		for _, r := range s.realRoles() {
			id := strings.TrimSuffix(r, ".service")
			if out, _ := sys.Exec("journalctl", "--no-pager", "-o", "short", "-t", id, "-n", "3"); !strings.Contains(out, id+"[") {
				t.Errorf("no journal lines as %s[pid]:\n%s", id, out)
			}
		}
		// What systemd does at a watchdog timeout: SIGABRT.
		pid := sys.MainPID(unit(topics.Logger))
		sys.MustExec("kill", "-ABRT", strconv.Itoa(pid))
		sys.WaitFor(time.Minute, "logger not restarted after SIGABRT", func() bool { return s.activeAgain(topics.Logger, pid) })
		j := sys.Journal(unit(topics.Logger), 400)
		if !strings.Contains(j, "status=6/ABRT") || strings.Contains(j, "status=2/INVALIDARGUMENT") {
			t.Errorf("after SIGABRT systemd reports no signal=ABRT (or an exit status 2):\n%s", j)
		}
		dump, _ := sys.Exec("journalctl", "--no-pager", "-o", "cat", "-p", "warning", "_PID="+strconv.Itoa(pid))
		if !strings.Contains(dump, "SIGABRT") || !strings.Contains(dump, "goroutine ") {
			t.Errorf("journalctl -p warning misses the goroutine dump of the SIGABRT:\n%s", dump)
		}
		t.Logf("figure: goroutine dump of a SIGABRT: %d lines at warning or above", strings.Count(dump, "\n"))
		s.waitOK(time.Now(), time.Minute, "after the logger's SIGABRT")
	})

	s.run(t, "own restart, no false alarm", func(t *testing.T) {
		rep := s.followReports()
		from := s.eventCount()
		pid := sys.MainPID(unit(topics.Poller))
		at := time.Now()
		s.operatorPub("tinyscada/cmd/restart/poller", "{}")
		e, _ := s.waitEvent(from, 30*time.Second, "restart of the poller by command", func(e map[string]any) bool {
			return e["event"] == "restart" && e["service"] == string(topics.Poller)
		})
		if e["result"] != "done" {
			t.Errorf("restart event: %v", e)
		}
		sys.WaitFor(time.Minute, "poller not active again", func() bool { return s.activeAgain(topics.Poller, pid) })
		ok := s.waitOK(at, time.Minute, "after health restarted the poller")
		time.Sleep(3 * time.Second) // a few more judgements
		rep.stop()
		t.Logf("figure: restart by command: health ok again %v after the command", (time.Since(at) - 3*time.Second).Round(time.Millisecond))
		_ = ok
		for _, w := range s.withheldFor(from, string(topics.Poller)) {
			t.Errorf("false alarm after health's own restart: %v", w)
		}
		for _, f := range rep.failed(string(topics.Poller)) {
			t.Errorf("poller reported failed during health's own restart: %s", f)
		}
		from = s.eventCount()
		s.operatorPub("tinyscada/cmd/restart/health", "{}")
		e, _ = s.waitEvent(from, 30*time.Second, "answer to a restart of health", func(e map[string]any) bool {
			return e["event"] == "restart" && e["service"] == string(topics.Health)
		})
		// Health exits and systemd starts it again (docs/health.md).
		if e["result"] != "exiting" {
			t.Errorf("restart of health: %v", e)
		}
	})

	s.run(t, "without health", func(t *testing.T) {
		units := s.stackUnits()
		var others []string
		for _, u := range units {
			if u != unit(topics.Health) {
				others = append(others, u)
			}
		}
		before := s.restarts(others)
		sys.MustExec("systemctl", "stop", unit(topics.Health))
		at := time.Now()
		time.Sleep(soakNoHealth / 2)
		// A hung role is still restarted while health is away.
		d := s.sigstopRestarted(t, topics.Poller)
		t.Logf("figure: without health, SIGSTOP poller: restarted by its own watchdog after %v", d.Round(time.Millisecond))
		s.flowing("the poller's watchdog restart without health")
		if rest := soakNoHealth - time.Since(at); rest > 0 {
			time.Sleep(rest)
		}
		after := s.restarts(others)
		for _, u := range others {
			if u == unit(topics.Poller) {
				continue
			}
			if after[u] != before[u] {
				t.Errorf("%s restarted while health was stopped (%s → %s):\n%s", u, before[u], after[u], sys.Journal(u, 20))
			}
		}
		t.Logf("figure: %v without health: %v", time.Since(at).Round(time.Second), after)
		back := time.Now()
		sys.MustExec("systemctl", "start", unit(topics.Health))
		s.waitOK(back, time.Minute, "after health came back")
		s.flowing("health's return")
	})

	s.run(t, "slow schedule and silent device", func(t *testing.T) {
		// A second simulator, never addressed: a line device that sends
		// nothing.
		sys.MustExec("systemd-run", "--unit=systemdtest-silent", "-p", "Type=notify", "-p", "NotifyAccess=main",
			"-p", "User=tinyscada", "-p", "Group=tinyscada", "-p", "StateDirectory=tinyscada",
			"/usr/local/bin/tinyscada", "simulate", "-config", "/usr/local/etc/tinyscada/tinyscada.toml", "-link", "/var/lib/tinyscada/run/silent-tty")
		s.writeConfig(`[poller]
[[poller.port]]
name = "sim"
device = "run/sim-tty"
simulate = true
[[poller.port]]
name = "line"
device = "run/silent-tty"
mode = "line"
timeout = "1s"
[[poller.device]]
name = "slow"
port = "sim"
unit = 1
interval = "30s"
[[poller.device.point]]
name = "voltage"
table = "input"
address = 0
type = "f32"
[[poller.device]]
name = "silent"
port = "line"
`)
		pid := sys.MainPID(unit(topics.Poller))
		sys.MustExec("systemctl", "restart", unit(topics.Poller))
		sys.WaitFor(time.Minute, "poller not active with the slow configuration", func() bool { return s.activeAgain(topics.Poller, pid) })
		from := s.eventCount()
		before := s.restarts([]string{unit(topics.Poller)})
		slow := func() int {
			n, _ := strconv.Atoi(s.query("SELECT count(*) FROM sample s JOIN device d ON d.id = s.device WHERE d.name = 'slow'"))
			return n
		}
		n0 := slow()
		time.Sleep(soakSlow)
		if after := s.restarts([]string{unit(topics.Poller)}); after[unit(topics.Poller)] != before[unit(topics.Poller)] {
			t.Errorf("poller with a slow and a silent device restarted (%v → %v):\n%s", before, after, sys.Journal(unit(topics.Poller), 40))
		}
		for _, r := range []topics.Role{topics.Poller, topics.Logger} {
			for _, w := range s.withheldFor(from, string(r)) {
				t.Errorf("pings withheld from the %s with a slow and a silent device: %v", r, w)
			}
		}
		rounds := slow() - n0
		t.Logf("figure: %v with a device every 30s and a silent line device: %d rounds of the slow device stored, poller %v", soakSlow, rounds, s.restarts([]string{unit(topics.Poller)}))
		if rounds < int(soakSlow/(30*time.Second))-1 {
			t.Errorf("%d rounds of the slow device in %v, want about %d", rounds, soakSlow, soakSlow/(30*time.Second))
		}
		// Still, a hung poller is restarted.
		d := s.sigstopRestarted(t, topics.Poller)
		t.Logf("figure: slow schedule, SIGSTOP poller: restarted by its watchdog after %v (stale_after 3s + WatchdogSec 8s)", d.Round(time.Millisecond))
	})
}

// installFresh builds the binary and installs it with deploy/install.sh
// and nothing else: the sample configuration, the units as shipped.
func installFresh(t *testing.T) (root, varLib, etc string) {
	t.Helper()
	dir := t.TempDir()
	root, varLib, etc = filepath.Join(dir, "root"), filepath.Join(dir, "varlib"), filepath.Join(dir, "etc")
	for _, d := range []string{root, varLib, filepath.Join(etc, "etc")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	repo, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	inst := exec.Command("sh", filepath.Join(repo, "deploy/install.sh"))
	inst.Env = append(os.Environ(), "DESTDIR="+root, "PREFIX=/usr/local", "SYSCONFDIR=/usr/local/etc", "UNITDIR=/run/systemd/system")
	if out, err := inst.CombinedOutput(); err != nil {
		t.Fatalf("install.sh: %v\n%s", err, out)
	}
	for _, f := range []string{"passwd", "group", "shadow", "gshadow"} {
		if _, err := os.Stat("/etc/" + f); err == nil {
			copyFile(t, "/etc/"+f, filepath.Join(etc, "etc", f), 0o644)
		}
	}
	if out, err := exec.Command("systemd-sysusers", "--root="+etc, filepath.Join(root, "usr/local/lib/sysusers.d/tinyscada.conf")).CombinedOutput(); err != nil {
		t.Fatalf("systemd-sysusers: %v\n%s", err, out)
	}
	return root, varLib, filepath.Join(etc, "etc")
}

// Installed and enabled as the README says, on a fresh system (with its own
// network, so the sample's port 1883 is free): readings in the database
// within 10s, and no unit failed or restarting.
func TestSystemInstall(t *testing.T) {
	Need(t)
	testpeer.Need(t, "systemd-sysusers")
	testpeer.Need(t, "sqlite3")
	root, varLib, etc := installFresh(t)
	sys := Boot(t, Options{Root: root, Etc: etc, VarLib: varLib})
	defer func() {
		if t.Failed() {
			out, _ := sys.Exec("journalctl", "--no-pager", "-n", "200", "-u", "tinyscada*")
			t.Logf("journal:\n%s", out)
		}
	}()
	db := filepath.Join(varLib, "tinyscada", "readings.db")
	samples := func() int {
		out, err := exec.Command("sqlite3", "-readonly", "-batch", db, "SELECT count(*) FROM sample").Output()
		if err != nil {
			return 0
		}
		n, _ := strconv.Atoi(strings.TrimSpace(string(out)))
		return n
	}
	start := time.Now()
	// --runtime: the enablement goes to /run (private here), not to the
	// host's /etc; otherwise what `systemctl enable --now` does.
	sys.MustExec("systemctl", "enable", "--runtime", "--now", "tinyscada.target")
	d := sys.WaitFor(time.Minute, "no reading in the database after enabling the target", func() bool { return samples() > 0 })
	t.Logf("figure: install + systemctl enable --now tinyscada.target: first reading in the database after %v", d.Round(time.Millisecond))
	if d > 10*time.Second {
		t.Errorf("first reading after %v, want within 10s", d.Round(time.Millisecond))
	}
	// Long enough for a looping unit (RestartSec=2s) to show.
	time.Sleep(20 * time.Second)
	out := sys.MustExec("systemctl", "list-units", "--all", "--no-legend", "--plain", "tinyscada*")
	t.Logf("units %v after enabling:\n%s", time.Since(start).Round(time.Second), out)
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 4 {
			continue
		}
		u, active := f[0], f[2]
		if active != "active" && sys.Show(u, "Result") == "exec-condition" {
			// Skipped by its ExecCondition= (the uplink without an
			// upstream): not a failure, and it does not loop.
			t.Logf("%s skipped by its condition", u)
		} else if active != "active" {
			t.Errorf("%s is %s", u, strings.Join(f[2:4], "/"))
		}
		if strings.HasSuffix(u, ".service") {
			if n := sys.Show(u, "NRestarts"); n != "0" {
				t.Errorf("%s restarted %s times", u, n)
			}
		}
	}
	if failed := sys.MustExec("systemctl", "list-units", "--failed", "--no-legend", "--plain"); strings.TrimSpace(failed) != "" {
		t.Errorf("failed units:\n%s", failed)
	}
	if n := samples(); n < 10 {
		t.Errorf("%d readings after %v", n, time.Since(start).Round(time.Second))
	}
}
