// Package testpeer starts the outside programs that tests drive as real
// peers (Debian's mosquitto broker and clients, socat, mbpoll, ...), and
// makes a missing tool a skip locally but a failure in CI (CI=true). It
// holds the helpers the packages' tests share: Config (a configuration of
// the test's own: free port, temporary state directory), Eventually and
// Until (wait for a condition, bounded, instead of a fixed sleep), Main
// (more parallel tests where they mostly wait), Emulator (the tests run
// under qemu-user). Our broker in-process is testpeer/testbroker.
package testpeer

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/shared/flock"
)

// Need returns the path of tool, or skips the test when it is missing, or
// fails it when CI=true.
func Need(t testing.TB, tool string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err == nil {
		return p
	}
	Missing(t, fmt.Sprintf("%s not found on PATH (Debian: see .ci/run for the packages)", tool))
	return ""
}

// Missing skips the test with why, or fails it when CI=true.
func Missing(t testing.TB, why string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("CI=true and the test cannot run: %s", why)
	}
	t.Skip(why)
}

// Emulator names the user-mode emulator the tests run under, as
// TINYSCADA_EMULATOR says (.ci/run sets it to the qemu-user binary it gives
// go test -exec); "" when the tests run natively. A test may skip a check
// only when Emulator is not "" and the emulator itself is what stops the
// check (the skip says so): qemu-user passes to the kernel only the
// system calls and ioctls it knows how to translate.
func Emulator() string { return os.Getenv("TINYSCADA_EMULATOR") }

// FreePort returns a TCP port on 127.0.0.1 that is free and stays the
// test's until it ends. A port the kernel handed out for port 0 and that was
// closed again can go to anyone before the test listens on it: to another
// test process's port 0, or as the source port of any outgoing connection
// (the suite's packages run in parallel, and CI's did take each other's
// ports). So FreePort picks below the kernel's ephemeral range, which
// neither ever uses, and a lock file per port keeps the other test
// processes off the ones taken.
func FreePort(t testing.TB) int {
	t.Helper()
	lo, hi := testPorts()
	dir := filepath.Join(os.TempDir(), "tinyscada-test-ports")
	if err := os.MkdirAll(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	_ = os.Chmod(dir, 0o1777) // shared by every user's tests, like /tmp
	n := hi - lo
	first := rand.IntN(n)
	for i := range n {
		port := lo + (first+i)%n
		// Another holder (flock.ErrLocked), or another user's file: not ours.
		h, err := flock.Lock(filepath.Join(dir, strconv.Itoa(port)))
		if errors.Is(err, flock.ErrLocked) || errors.Is(err, os.ErrPermission) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
		if err != nil { // someone else's, outside the suite
			h.Close()
			continue
		}
		l.Close()
		t.Cleanup(func() { h.Close() })
		return port
	}
	t.Fatalf("no free port in %d-%d", lo, hi-1)
	return 0
}

// testPorts is the range FreePort picks from: the 10,000 ports below the
// kernel's ephemeral range (net.ipv4.ip_local_port_range, 32768 by default).
func testPorts() (lo, hi int) {
	hi = 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		var a, z int
		if _, err := fmt.Sscan(string(b), &a, &z); err == nil && a > 2048 {
			hi = a
		}
	}
	return max(1024, hi-10000), hi
}

// WaitPort waits until addr accepts TCP connections or the timeout passes.
func WaitPort(addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not accepting connections after %v: %w", addr, timeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Mosquitto starts Debian's mosquitto broker on 127.0.0.1:port, anonymous
// access, no persistence, and stops it when the test ends. It returns the
// process so a test can kill it.
func Mosquitto(t testing.TB, port int) *exec.Cmd {
	t.Helper()
	bin := Need(t, "mosquitto")
	dir := t.TempDir()
	conf := filepath.Join(dir, "mosquitto.conf")
	body := fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\nlog_type error\n", port)
	if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-c", conf)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	if err := WaitPort("127.0.0.1:"+strconv.Itoa(port), 10*time.Second); err != nil {
		t.Fatalf("mosquitto: %v; stderr: %s", err, stderr.String())
	}
	return cmd
}

// Sub runs mosquitto_sub with args (host and port added) and delivers each
// output line on the returned channel until the test ends.
func Sub(t testing.TB, port int, args ...string) <-chan string {
	t.Helper()
	bin := Need(t, "mosquitto_sub")
	ctx, cancel := context.WithCancel(context.Background())
	all := append([]string{"-h", "127.0.0.1", "-p", strconv.Itoa(port)}, args...)
	cmd := exec.CommandContext(ctx, bin, all...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 1024)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
		if t.Failed() && stderr.Len() > 0 {
			t.Logf("mosquitto_sub stderr: %s", stderr.String())
		}
	})
	return lines
}

// Pub runs mosquitto_pub once with args (host and port added) and returns
// its combined output and error.
func Pub(t testing.TB, port int, args ...string) (string, error) {
	t.Helper()
	bin := Need(t, "mosquitto_pub")
	all := append([]string{"-h", "127.0.0.1", "-p", strconv.Itoa(port)}, args...)
	out, err := exec.Command(bin, all...).CombinedOutput()
	return string(out), err
}

// Expect reads lines until one satisfies match, failing the test after
// timeout. It returns that line.
func Expect(t testing.TB, lines <-chan string, timeout time.Duration, what string, match func(string) bool) string {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("waiting for %s: subscriber ended", what)
			}
			if match(l) {
				return l
			}
		case <-deadline:
			t.Fatalf("waiting for %s: nothing after %v", what, timeout)
		}
	}
}
