package uplink

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/internal/testpeer"
	"github.com/tinyscada/tinyscada/shared/bus"
	"github.com/tinyscada/tinyscada/shared/crash"
)

// TestMain doubles as the helper program: with UPLINK_HELPER set, the test
// binary is a crashing role, a role restarting, or a second uplink.
func TestMain(m *testing.M) {
	if mode := os.Getenv("UPLINK_HELPER"); mode != "" {
		os.Exit(helper(mode))
	}
	os.Exit(m.Run())
}

func helper(mode string) int {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	dir, role := os.Getenv("UPLINK_CRASH_DIR"), os.Getenv("UPLINK_ROLE")
	switch mode {
	case "panic": // a role that panics, as every role captures crashes
		if _, err := crash.Capture(dir, role, log); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		go func() { panic("boom from a role") }()
		select {}
	case "restart": // the role started again: its Capture makes the report
		c, err := crash.Capture(dir, role, log)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		c.Close()
		return 0
	case "send": // another uplink making one pass
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		up, err := bus.Dial(ctx, bus.Options{Address: os.Getenv("UPLINK_BROKER"), ClientID: "sender-" + strconv.Itoa(os.Getpid()), CleanSession: true})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer up.Close()
		n, err := sendCrashReports(ctx, up, os.Getenv("UPLINK_TOPIC"), "n1", dir, log)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Println(n)
		return 0
	case "hold": // a live uplink holding a claim
		fmt.Println("ready")
		time.Sleep(time.Minute) // bounded, in case the test forgets us
		return 0
	}
	fmt.Fprintln(os.Stderr, "unknown helper mode", mode)
	return 1
}

func helperCmd(mode string, env ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(append(os.Environ(), "UPLINK_HELPER="+mode), env...)
	return cmd
}

// upstream starts mosquitto and returns its port and a client of it.
func upstream(t *testing.T) (int, *bus.Client) {
	t.Helper()
	port := testpeer.FreePort(t)
	testpeer.Mosquitto(t, port)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	up, err := bus.Dial(ctx, bus.Options{Address: fmt.Sprintf("127.0.0.1:%d", port), ClientID: "test-uplink", CleanSession: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(up.Close)
	return port, up
}

// collectUntilSentinel publishes a sentinel on topic through up and returns
// every crash message sub printed before it: mosquitto has handled every
// publish acknowledged before the sentinel's, so nothing sent earlier can
// still be on its way.
func collectUntilSentinel(t *testing.T, up *bus.Client, sub <-chan string, topic string) []crashMessage {
	t.Helper()
	if err := up.Publish(context.Background(), bus.Message{Topic: topic, QoS: 1, Payload: []byte(`{"sentinel":true}`)}); err != nil {
		t.Fatal(err)
	}
	var got []crashMessage
	testpeer.Expect(t, sub, 20*time.Second, "the sentinel", func(l string) bool {
		tp, payload, _ := strings.Cut(l, " ")
		if tp != topic {
			t.Fatalf("message on %s", tp)
		}
		if payload == `{"sentinel":true}` {
			return true
		}
		var m crashMessage
		if err := json.Unmarshal([]byte(payload), &m); err != nil {
			t.Fatalf("bad crash payload %q: %v", payload, err)
		}
		got = append(got, m)
		return false
	})
	return got
}

func listDir(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// A role panics; its next start makes the report; the uplink sends it
// upstream once and removes it.
func TestCrashReportReachesUpstreamOnce(t *testing.T) {
	t.Parallel()
	port, up := upstream(t)
	const topic = "fleet/n1/crash"
	sub := testpeer.Sub(t, port, "-v", "-q", "1", "-t", topic)
	// mosquitto_sub is subscribed once it got a retained-free topic's
	// first message; make sure with a probe.
	waitSubscribed(t, up, sub, topic)

	dir := filepath.Join(t.TempDir(), "crash")
	env := []string{"UPLINK_CRASH_DIR=" + dir, "UPLINK_ROLE=poller"}
	p := helperCmd("panic", env...)
	out, err := p.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 {
		t.Fatalf("panicking role: %v, want exit status 2; output:\n%s", err, out)
	}
	pid := p.Process.Pid
	if out, err := helperCmd("restart", env...).CombinedOutput(); err != nil {
		t.Fatalf("restarted role: %v\n%s", err, out)
	}
	reports, err := crash.Reports(dir)
	if err != nil || len(reports) != 1 {
		t.Fatalf("reports %q, err %v: want the one of pid %d", reports, err, pid)
	}
	name := filepath.Base(reports[0])

	n, err := sendCrashReports(context.Background(), up, topic, "n1", dir, nil)
	if err != nil || n != 1 {
		t.Fatalf("sendCrashReports = %d, %v; want 1, nil", n, err)
	}
	if left := listDir(t, dir); len(left) != 0 {
		t.Errorf("crash directory still holds %q", left)
	}
	if n, err := sendCrashReports(context.Background(), up, topic, "n1", dir, nil); err != nil || n != 0 {
		t.Errorf("second pass = %d, %v; want 0, nil", n, err)
	}

	got := collectUntilSentinel(t, up, sub, topic)
	if len(got) != 1 {
		t.Fatalf("upstream got %d crash messages, want 1: %+v", len(got), got)
	}
	m := got[0]
	if m.Node != "n1" || m.Role != "poller" || m.PID != pid || m.File != name || m.T <= 0 || m.Truncated {
		t.Errorf("message %+v: want node n1, role poller, pid %d, file %s", m, pid, name)
	}
	if !strings.Contains(m.Report, "panic: boom from a role") || !strings.Contains(m.Report, "goroutine ") || m.Size != len(m.Report) {
		t.Errorf("report text (size %d):\n%s", m.Size, m.Report)
	}
}

// waitSubscribed publishes probes until sub shows one.
func waitSubscribed(t *testing.T, up *bus.Client, sub <-chan string, topic string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if err := up.Publish(context.Background(), bus.Message{Topic: topic, QoS: 1, Payload: []byte(`{"sentinel":true}`)}); err != nil {
			t.Fatal(err)
		}
		select {
		case <-sub:
			for {
				select { // drain further probes
				case <-sub:
				case <-time.After(200 * time.Millisecond):
					return
				}
			}
		case <-time.After(200 * time.Millisecond):
		}
	}
	t.Fatal("mosquitto_sub never subscribed")
}

// Several uplinks on one crash directory: every report goes up exactly once.
func TestConcurrentSendersSendEachOnce(t *testing.T) {
	t.Parallel()
	port, up := upstream(t)
	const topic = "fleet/n1/crash"
	sub := testpeer.Sub(t, port, "-v", "-q", "1", "-t", topic)
	waitSubscribed(t, up, sub, topic)

	dir := t.TempDir()
	const total = 300
	for i := range total {
		name := fmt.Sprintf("logger-%d-%d.crash", 1000+i, 1764108000000+int64(i))
		if err := os.WriteFile(filepath.Join(dir, name), fmt.Appendf(nil, "panic: report %d\n", i), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	env := []string{"UPLINK_CRASH_DIR=" + dir, fmt.Sprintf("UPLINK_BROKER=127.0.0.1:%d", port), "UPLINK_TOPIC=" + topic}
	var wg sync.WaitGroup
	counts := make([]int, 3)
	for i := range 2 {
		wg.Go(func() {
			out, err := helperCmd("send", env...).Output()
			if err != nil {
				t.Errorf("sender %d: %v", i, err)
				return
			}
			counts[i], _ = strconv.Atoi(strings.TrimSpace(string(out)))
		})
	}
	wg.Go(func() {
		n, err := sendCrashReports(context.Background(), up, topic, "n1", dir, nil)
		if err != nil {
			t.Errorf("in-process sender: %v", err)
		}
		counts[2] = n
	})
	wg.Wait()
	if counts[0]+counts[1]+counts[2] != total {
		t.Errorf("senders sent %v, want %d in all", counts, total)
	}
	if left := listDir(t, dir); len(left) != 0 {
		t.Errorf("crash directory still holds %d files: %q", len(left), left)
	}
	seen := map[string]int{}
	for _, m := range collectUntilSentinel(t, up, sub, topic) {
		seen[m.File]++
	}
	if len(seen) != total {
		t.Errorf("upstream got %d distinct reports, want %d", len(seen), total)
	}
	for f, n := range seen {
		if n != 1 {
			t.Errorf("%s sent %d times", f, n)
		}
	}
	t.Logf("split between the senders: %v", counts)
}

// Claims of dead senders are taken over; a live sender's claim, pending
// crash output, dumps and strangers are left alone.
func TestStaleClaimsAreReclaimed(t *testing.T) {
	t.Parallel()
	port, up := upstream(t)
	const topic = "fleet/n1/crash"
	sub := testpeer.Sub(t, port, "-v", "-q", "1", "-t", topic)
	waitSubscribed(t, up, sub, topic)

	holder := helperCmd("hold")
	hout, err := holder.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { holder.Process.Kill(); holder.Wait() })
	if sc := bufio.NewScanner(hout); !sc.Scan() || sc.Text() != "ready" {
		t.Fatal("holder did not start")
	}

	other := exec.Command("sleep", "60") // a live pid running another program
	if err := other.Start(); err != nil {
		t.Skip(err)
	}
	t.Cleanup(func() { other.Process.Kill(); other.Wait() })
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Skip(err)
	}
	dir := t.TempDir()
	files := map[string]bool{ // name: sent
		"poller-10-1000" + claimSuffix(dead.Process.Pid):                             true, // dead sender
		"poller-11-1001" + crashClaimInfix + "0000beef-" + strconv.Itoa(os.Getpid()): true, // another boot
		"poller-12-1002" + claimSuffix(other.Process.Pid):                            true, // a live pid running another program
		"poller-13-1003" + claimSuffix(holder.Process.Pid):                           false,
		"poller-14.crash-pending":                                                    false,
		"poller-15-1005.stacks":                                                      false,
		"poller-x.crash":                                                             false, // not a report name
		".poller-16-1006.crash.tmp-1":                                                false,
		"health-17-1007.crash":                                                       true,
	}
	for name := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("panic: "+name+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	n, err := sendCrashReports(context.Background(), up, topic, "n1", dir, nil)
	if err != nil || n != 4 {
		t.Fatalf("sendCrashReports = %d, %v; want 4, nil; left %q", n, err, listDir(t, dir))
	}
	left := map[string]bool{}
	for _, f := range listDir(t, dir) {
		left[f] = true
	}
	for name, sent := range files {
		if sent == left[name] {
			t.Errorf("%s: sent %v, but present afterwards %v", name, sent, left[name])
		}
	}
	var order []string
	for _, m := range collectUntilSentinel(t, up, sub, topic) {
		order = append(order, m.File)
		if !strings.HasPrefix(m.Report, "panic: "+strings.TrimSuffix(m.File, ".crash")) {
			t.Errorf("%s carries %q", m.File, m.Report)
		}
	}
	want := []string{"poller-10-1000.crash", "poller-11-1001.crash", "poller-12-1002.crash", "health-17-1007.crash"}
	if strings.Join(order, " ") != strings.Join(want, " ") {
		t.Errorf("sent %q, want oldest first %q", order, want)
	}
}

func TestParseReportName(t *testing.T) {
	for _, c := range []struct {
		name string
		role string
		pid  int
		ms   int64
		ok   bool
	}{
		{"poller-42-1764108000123.crash", "poller", 42, 1764108000123, true},
		{"simulate-rtu0-7-5.crash", "simulate-rtu0", 7, 5, true},
		{"poller-42.crash-pending", "", 0, 0, false},
		{"poller-0-5.crash", "", 0, 0, false},
		{"-4-5.crash", "", 0, 0, false},
		{"poller-x-5.crash", "", 0, 0, false},
		{"poller-4-5.stacks", "", 0, 0, false},
	} {
		role, pid, ms, ok := parseReportName(c.name)
		if role != c.role || pid != c.pid || ms != c.ms || ok != c.ok {
			t.Errorf("parseReportName(%q) = %q %d %d %v, want %q %d %d %v", c.name, role, pid, ms, ok, c.role, c.pid, c.ms, c.ok)
		}
	}
}
