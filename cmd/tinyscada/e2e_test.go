package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/internal/testpeer"
	"github.com/tinyscada/tinyscada/shared/config"
	"github.com/tinyscada/tinyscada/shared/service"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// binary builds the real tinyscada binary once for the package's tests.
func binary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "tinyscada-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "tinyscada")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

func TestMain(m *testing.M) {
	// The tests each run a stack of processes and wait for it.
	code := testpeer.Main(m, 8)
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

// writeConfig writes a configuration for a stack on a free port in a
// temporary state directory, with the given extra TOML appended.
func writeConfig(t testing.TB, port int, extra string) (path, stateDir string) {
	t.Helper()
	dir := t.TempDir()
	stateDir = filepath.Join(dir, "state")
	body := fmt.Sprintf(`version = 1
state_dir = %q
[bus]
address = "127.0.0.1:%d"
heartbeat_interval = "200ms"
retry_max = "200ms"
[broker]
listen = ["127.0.0.1:%d"]
[run]
restart_backoff = "100ms"
%s`, stateDir, port, port, extra)
	path = filepath.Join(dir, "tinyscada.toml")
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return path, stateDir
}

type stateMsg struct {
	State string `json:"state"`
	PID   int    `json:"pid"`
}

func parseState(t *testing.T, line string) (topic string, st stateMsg) {
	t.Helper()
	topic, payload, _ := strings.Cut(line, " ")
	if err := json.Unmarshal([]byte(payload), &st); err != nil {
		t.Fatalf("%s: bad state payload %q: %v", topic, payload, err)
	}
	return topic, st
}

// The demo path a newcomer takes: `tinyscada run`, then mosquitto_sub sees
// the broker ready and its heartbeats. Then the broker is killed with -9:
// the supervisor restarts it, and a connected client service publishes its
// retained state again without any manual step.
func TestRunRestartsKilledBrokerAndClientsRepublish(t *testing.T) {
	t.Parallel()
	testpeer.Need(t, "mosquitto_sub")
	port := testpeer.FreePort(t)
	cfgPath, _ := writeConfig(t, port, `roles = ["broker"]`+"\n")
	cmd := startRun(t, cfgPath)
	if err := testpeer.WaitPort(fmt.Sprintf("127.0.0.1:%d", port), 15*time.Second); err != nil {
		t.Fatal(err)
	}
	sub := testpeer.Sub(t, port, "-v", "-t", "tinyscada/svc/#")
	_, bst := parseState(t, testpeer.Expect(t, sub, 10*time.Second, "broker ready", func(l string) bool {
		return strings.HasPrefix(l, "tinyscada/svc/broker/state ") && strings.Contains(l, `"ready"`)
	}))
	testpeer.Expect(t, sub, 10*time.Second, "broker heartbeat", func(l string) bool {
		return strings.HasPrefix(l, "tinyscada/svc/broker/heartbeat ")
	})

	// A client service, connected with the poller's credential.
	cfg, err := config.Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	svc, err := service.Start(ctx, "poller", cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	go svc.Run(ctx)
	svc.Ready("test client")
	testpeer.Expect(t, sub, 10*time.Second, "client ready", func(l string) bool {
		return strings.HasPrefix(l, "tinyscada/svc/poller/state ") && strings.Contains(l, `"ready"`)
	})

	if err := syscall.Kill(bst.PID, syscall.SIGKILL); err != nil {
		t.Fatalf("kill broker pid %d: %v", bst.PID, err)
	}
	// mosquitto_sub dies with the broker; a new one sees what the new broker
	// holds: the restarted broker's state and the client's re-published one.
	waitNewBroker(t, port, bst.PID)
	sub2 := testpeer.Sub(t, port, "-v", "-t", "tinyscada/svc/+/state")
	seen := map[string]stateMsg{}
	testpeer.Expect(t, sub2, 15*time.Second, "restarted broker and re-published client state", func(l string) bool {
		topic, st := parseState(t, l)
		seen[topic] = st
		b, p := seen["tinyscada/svc/broker/state"], seen["tinyscada/svc/poller/state"]
		return b.State == "ready" && b.PID != bst.PID && p.State == "ready" && p.PID == os.Getpid()
	})

	// SIGTERM stops the stack cleanly.
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("tinyscada run after SIGTERM: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("tinyscada run did not stop after SIGTERM")
	}
	if err := testpeer.WaitPort(fmt.Sprintf("127.0.0.1:%d", port), 200*time.Millisecond); err == nil {
		t.Error("broker still listening after the stack stopped")
	}
}

// waitNewBroker waits until the port accepts connections again after the
// broker with oldPID died.
func waitNewBroker(t *testing.T, port, oldPID int) {
	t.Helper()
	testpeer.Eventually(t, 15*time.Second, fmt.Sprintf("the killed broker (pid %d) to be gone", oldPID), func() bool {
		return syscall.Kill(oldPID, 0) != nil
	})
	if err := testpeer.WaitPort(fmt.Sprintf("127.0.0.1:%d", port), 15*time.Second); err != nil {
		t.Fatal(err)
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

func TestConfigCheck(t *testing.T) {
	t.Parallel()
	bin := binary(t)
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.toml")
	os.WriteFile(bad, []byte("version = 1\n[bus]\nheartbeat_interval = \"5x\"\nbogus = 1\n"), 0o644)
	out, err := exec.Command(bin, "config", "check", bad).CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != exitConfig {
		t.Fatalf("config check of a bad file: err %v, want exit %d; output:\n%s", err, exitConfig, out)
	}
	for _, want := range []string{bad + ":3: bus.heartbeat_interval", bad + ":4: bus.bogus"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}

	good := filepath.Join(dir, "good.toml")
	os.WriteFile(good, []byte("version = 1\n[bus]\nheartbeat_interval = \"2s\"\n"), 0o644)
	out, err = exec.Command(bin, "config", "check", good).CombinedOutput()
	if err != nil {
		t.Fatalf("config check of a good file: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), `heartbeat_interval = '2s'`) && !strings.Contains(string(out), `heartbeat_interval = "2s"`) {
		t.Errorf("effective configuration lacks the file's value:\n%s", out)
	}
	if !strings.Contains(string(out), "keep_alive") {
		t.Errorf("effective configuration lacks defaults:\n%s", out)
	}
}

func TestEveryCommandHasHelp(t *testing.T) {
	t.Parallel()
	bin := binary(t)
	for _, c := range commands() {
		out, err := exec.Command(bin, c.name, "-h").CombinedOutput()
		if err != nil {
			t.Errorf("tinyscada %s -h: %v\n%s", c.name, err, out)
		}
		if !strings.Contains(string(out), "usage: tinyscada "+c.name) {
			t.Errorf("tinyscada %s -h prints no usage line:\n%s", c.name, out)
		}
	}
	out, _ := exec.Command(bin, "nonsense").CombinedOutput()
	if !strings.Contains(string(out), `unknown command "nonsense"`) {
		t.Errorf("unknown command output:\n%s", out)
	}
}

// startRun starts `tinyscada run -config cfgPath` and stops it (SIGKILL) when
// the test ends, logging its output if the test failed.
func startRun(t *testing.T, cfgPath string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(binary(t), "run", "-config", cfgPath)
	var out strings.Builder
	var mu sync.Mutex
	cmd.Stderr = writerFunc(func(p []byte) (int, error) { mu.Lock(); defer mu.Unlock(); return out.Write(p) })
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			mu.Lock()
			t.Logf("tinyscada run output:\n%s", out.String())
			mu.Unlock()
		}
	})
	return cmd
}

// The README's promise: `tinyscada run` with the demo devices (a simulator
// on a pseudo-terminal) and mosquitto_sub shows readings flowing.
func TestRunDemoShowsReadings(t *testing.T) {
	t.Parallel()
	testpeer.Need(t, "mosquitto_sub")
	port := testpeer.FreePort(t)
	cfgPath, _ := writeConfig(t, port, `roles = ["broker", "poller"]`+"\n")
	startRun(t, cfgPath)
	if err := testpeer.WaitPort(fmt.Sprintf("127.0.0.1:%d", port), 15*time.Second); err != nil {
		t.Fatal(err)
	}
	sub := testpeer.Sub(t, port, "-v", "-t", "tinyscada/data/#")
	seen := map[string]bool{}
	testpeer.Expect(t, sub, 20*time.Second, "readings of both demo devices", func(l string) bool {
		topic, payload, _ := strings.Cut(l, " ")
		var msg struct {
			Run string         `json:"run"`
			Seq uint64         `json:"seq"`
			V   map[string]any `json:"v"`
		}
		if err := json.Unmarshal([]byte(payload), &msg); err != nil {
			t.Fatalf("%s: bad data payload %q: %v", topic, payload, err)
		}
		if msg.Run == "" || msg.Seq == 0 || len(msg.V) == 0 {
			t.Fatalf("%s: data message without run, seq or values: %s", topic, payload)
		}
		seen[topic] = true
		return seen["tinyscada/data/meter"] && seen["tinyscada/data/climate"]
	})
}
