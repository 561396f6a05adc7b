package broker

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/internal/testpeer"
	"github.com/tinyscada/tinyscada/shared/bus"
)

// sizedFile writes a file of n bytes (n a multiple of 1 MiB) without
// holding them in memory.
func sizedFile(t *testing.T, dir string, n int) string {
	t.Helper()
	path := filepath.Join(dir, strconv.Itoa(n))
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	chunk := bytes.Repeat([]byte("x"), 1<<20)
	for i := 0; i < n>>20; i++ {
		if _, err := f.Write(chunk); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

// peakRSS returns this process's peak resident memory since the last
// resetPeakRSS (VmHWM, in bytes).
func peakRSS(t *testing.T) int64 {
	t.Helper()
	f, err := os.Open("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("VmHWM %q: %v", rest, err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmHWM in /proc/self/status")
	return 0
}

// resetPeakRSS gives the memory the heap does not use back to the system
// and sets the peak to the current resident memory (Linux 4.0 and later).
func resetPeakRSS(t *testing.T) {
	t.Helper()
	runtime.GC()
	debug.FreeOSMemory()
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		t.Fatalf("reset the peak resident memory: %v", err)
	}
}

// refusedGrowth bounds how much the broker's resident memory may grow while
// it refuses an oversized packet. The broker idles at about 16 MB of its
// unit's MemoryMax=48M: a refused packet may take at most a third of the
// rest. (Before the packet size limit, a denied 64 MiB publish took it to
// 141 MB: mochi read the body, and copied it, before the access check.)
const refusedGrowth = 16 << 20

// TestOversizedPacketRefused: a publish over broker.max_packet_size, with a
// role's credential or anonymous, 1 MiB or 64 MiB, disconnects its sender
// before the broker buffers it: the broker logs it, no subscriber gets it,
// the broker's memory stays within budget, and a normal subscriber keeps
// getting messages right after.
//
// Not in parallel: it measures the peak resident memory of the whole test
// process, which the other tests, paused until it ends, leave alone.
func TestOversizedPacketRefused(t *testing.T) {
	testpeer.Need(t, "mosquitto_pub")
	cfg := testConfig(t)
	log, logs := newLogRecorder(t)
	b := startBroker(t, cfg, log)
	addr := b.addrs[0]
	h, p := hostPort(t, addr)
	obs := newRecorder(t, addr, "tinyscada/data/#")
	poller := dial(t, addr, "poller", password(t, cfg, "poller"))
	dir := t.TempDir()
	files := map[int]string{1 << 20: sizedFile(t, dir, 1<<20), 64 << 20: sizedFile(t, dir, 64<<20)}

	for _, c := range []struct {
		size int
		user string
	}{
		{1 << 20, "poller"}, {1 << 20, ""}, {64 << 20, "poller"}, {64 << 20, ""},
	} {
		name := fmt.Sprintf("%d MiB from %q", c.size>>20, c.user)
		args := []string{"-h", h, "-p", p, "-q", "1", "-t", "tinyscada/data/big", "-f", files[c.size]}
		if c.user != "" {
			args = append(args, "-u", c.user, "-P", password(t, cfg, c.user))
		}
		resetPeakRSS(t)
		base := peakRSS(t)
		out, err := mosq(t, "mosquitto_pub", args...)
		if err == nil {
			t.Errorf("%s: mosquitto_pub succeeded, want it disconnected: %s", name, out)
		}
		logs.wait(t, "refused packet", "user", c.user, "max_packet_size", "262144")
		grown := peakRSS(t) - base
		t.Logf("%s: peak resident memory %.1f MiB, %+.1f MiB while refusing it (mosquitto_pub: %v %s)",
			name, float64(base)/(1<<20), float64(grown)/(1<<20), err, strings.TrimSpace(out))
		if grown > refusedGrowth {
			t.Errorf("%s: the broker's resident memory grew by %d MiB, want at most %d MiB",
				name, grown>>20, refusedGrowth>>20)
		}
		marker := `{"after":"` + name + `"}`
		if err := poller.Publish(context.Background(), bus.Message{Topic: "tinyscada/data/meter1", QoS: 1, Payload: []byte(marker)}); err != nil {
			t.Fatal(err)
		}
		obs.waitFor(t, "tinyscada/data/meter1 "+marker)
	}
	for _, m := range obs.all() {
		if strings.HasPrefix(m, "tinyscada/data/big ") {
			t.Errorf("an oversized publish (%d bytes) was routed", len(m))
		}
	}
	// An MQTT 5 client learns the limit from the CONNACK and does not even
	// send the packet (mosquitto_pub then exits 0 without a word).
	out, _ := mosq(t, "mosquitto_pub", "-h", h, "-p", p, "-V", "mqttv5", "-d", "-q", "1", "-t", "tinyscada/data/big", "-f", files[1<<20])
	if !strings.Contains(out, "received CONNACK") || strings.Contains(out, "sending PUBLISH") {
		t.Errorf("an MQTT 5 client sent a packet over the limit the broker advertised:\n%s", out)
	}
	// The limit itself lets a packet of exactly max_packet_size through.
	payload := strings.Repeat("y", int(cfg.Broker.MaxPacketSize)-1-2-len("tinyscada/data/edge")-2)
	if err := poller.Publish(context.Background(), bus.Message{Topic: "tinyscada/data/edge", QoS: 1, Payload: []byte(payload)}); err != nil {
		t.Fatal(err)
	}
	obs.waitFor(t, "tinyscada/data/edge "+payload)
}

// TestDeniedSysPublish: a publish to $SYS/… is denied as any other
// (mosquitto_pub ends the same way, promptly, and the broker logs it);
// mochi used to drop it before the access check without acknowledging it,
// so that a QoS 1 publisher waited for good.
func TestDeniedSysPublish(t *testing.T) {
	t.Parallel()
	pub := testpeer.Need(t, "mosquitto_pub")
	cfg := testConfig(t)
	log, logs := newLogRecorder(t)
	b := startBroker(t, cfg, log)
	h, p := hostPort(t, b.addrs[0])

	// run publishes and reports how mosquitto_pub ended; it fails the test
	// if mosquitto_pub had to be killed.
	run := func(args ...string) string {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, pub, append([]string{"-h", h, "-p", p}, args...)...).CombinedOutput()
		if ctx.Err() != nil {
			t.Errorf("mosquitto_pub %v hung (neither acknowledged nor refused): killed after 10 s", args)
		}
		var ee *exec.ExitError
		switch {
		case err == nil:
			return "exit 0"
		case errors.As(err, &ee):
			return fmt.Sprintf("exit %d: %s", ee.ExitCode(), strings.TrimSpace(string(out)))
		}
		return err.Error()
	}
	for _, c := range []struct {
		name string
		args []string
	}{
		{"anonymous QoS 1", []string{"-q", "1"}},
		{"anonymous QoS 1 MQTT 5", []string{"-q", "1", "-V", "mqttv5"}},
		{"anonymous QoS 0", []string{"-q", "0"}},
		{"poller QoS 1", []string{"-q", "1", "-u", "poller", "-P", password(t, cfg, "poller")}},
		{"poller QoS 2 MQTT 5", []string{"-q", "2", "-V", "mqttv5", "-u", "poller", "-P", password(t, cfg, "poller")}},
	} {
		user := ""
		if i := slices.Index(c.args, "-u"); i >= 0 {
			user = c.args[i+1]
		}
		other := run(append([]string{"-t", "tinyscada/cmd/x", "-m", "denied"}, c.args...)...)
		logs.wait(t, "denied publish", "topic", "tinyscada/cmd/x", "user", user)
		sys := run(append([]string{"-t", "$SYS/broker/x", "-m", "denied"}, c.args...)...)
		logs.wait(t, "denied publish", "topic", "$SYS/broker/x", "user", user)
		// The error text names the topic's packet id or not; the exit
		// code is the outcome.
		if code(sys) != code(other) {
			t.Errorf("%s: to $SYS mosquitto_pub ended with %q, to another denied topic with %q", c.name, sys, other)
		}
		t.Logf("%s: %s", c.name, sys)
	}
}

// code is the "exit N" part of run's result.
func code(s string) string { c, _, _ := strings.Cut(s, ":"); return c }
