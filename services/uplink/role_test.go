package uplink

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/internal/testpeer"
	"github.com/tinyscada/tinyscada/shared/bus"
)

// The uplink role itself, as `tinyscada run` starts it with an upstream
// configured (Debian's mosquitto): a crash report dropped in the crash
// directory reaches <prefix>/<node>/crash once and its file goes; a
// configuration sent to config/set is applied by the role (the poller,
// restarted through health, polls the new point) and reported.
func TestUplinkRoleCrashAndRemoteConfig(t *testing.T) {
	t.Parallel()
	testpeer.Need(t, "mosquitto_sub")
	bin := buildBinary(t)
	upPort := testpeer.FreePort(t)
	testpeer.Mosquitto(t, upPort)
	port := testpeer.FreePort(t)
	dir := t.TempDir()
	stateDir := filepath.Join(dir, "state")
	uplinkSection := fmt.Sprintf("[uplink]\naddress = \"127.0.0.1:%d\"\nprefix = \"fleet\"\nretry_max = \"1s\"\ncrash_interval = \"1s\"\nconfig_deadline = \"20s\"\n", upPort)
	doc := func(points ...string) string {
		d := stackDoc(stateDir, port, points, uplinkSection)
		return strings.Replace(d, `roles = ["broker", "poller", "health"]`, `roles = ["broker", "logger", "poller", "uplink", "health"]`, 1)
	}
	srcPath := filepath.Join(dir, "tinyscada.toml")
	if err := os.WriteFile(srcPath, []byte(doc("voltage")), 0o644); err != nil {
		t.Fatal(err)
	}
	run := exec.Command(bin, "run", "-config", srcPath)
	var runOut lockedBuffer
	run.Stderr = &runOut
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = run.Process.Kill()
		_ = run.Wait()
		if t.Failed() {
			t.Logf("tinyscada run output:\n%s", runOut.String())
		}
	})
	if err := testpeer.WaitPort(fmt.Sprintf("127.0.0.1:%d", port), 20*time.Second); err != nil {
		t.Fatal(err)
	}
	crashes := testpeer.Sub(t, upPort, "-q", "1", "-t", "fleet/n1/crash")
	res := results(t, upPort)
	data := testpeer.Sub(t, port, "-t", "tinyscada/data/meter")

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	up, err := bus.Dial(ctx, bus.Options{Address: fmt.Sprintf("127.0.0.1:%d", upPort), ClientID: "fleet-test", CleanSession: true})
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()

	// A report as shared/crash leaves it for a crashed poller.
	report := filepath.Join(stateDir, "crash", fmt.Sprintf("poller-4242-%d.crash", time.Now().UnixMilli()))
	if err := os.MkdirAll(filepath.Dir(report), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(report, []byte("panic: the test's own crash\n\ngoroutine 1 [running]:\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	testpeer.Expect(t, crashes, time.Minute, "the crash report upstream", func(l string) bool {
		return strings.Contains(l, "the test's own crash") && strings.Contains(l, `"role":"poller"`)
	})
	testpeer.Eventually(t, 10*time.Second, "the sent report's file removed", func() bool {
		_, err := os.Stat(report)
		return os.IsNotExist(err)
	})

	// The role answers config/get once it subscribed upstream.
	testpeer.Eventually(t, time.Minute, "an answer to config/get", func() bool {
		if err := up.Publish(ctx, bus.Message{Topic: "fleet/n1/config/get", QoS: 1, Payload: []byte(`{"id":"get"}`)}); err != nil {
			t.Fatal(err)
		}
		select {
		case l := <-res:
			return strings.HasPrefix(l, "fleet/n1/config/current ")
		case <-time.After(time.Second):
			return false
		}
	})
	setRequest(t, up, "add-current", doc("voltage", "current"))
	if r := nextResult(t, res, "add-current", statusApplying, statusApplied); r.Status == statusApplying {
		nextResult(t, res, "add-current", statusApplied)
	}
	testpeer.Expect(t, data, time.Minute, "the new point polled", func(l string) bool { return strings.Contains(l, `"current":`) })
	for i := 0; i < 3; i++ { // nothing more than the one report
		select {
		case l := <-crashes:
			t.Errorf("a crash report again: %s", l)
		case <-time.After(time.Second):
		}
	}
}
