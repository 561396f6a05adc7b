package testpeer

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

func TestUntil(t *testing.T) {
	n := 0
	if !Until(10*time.Second, func() bool { n++; return n == 3 }) || n != 3 {
		t.Errorf("Until: the condition held at the third look, looked %d times", n)
	}
	n = 0
	if Until(30*time.Millisecond, func() bool { n++; return false }) {
		t.Error("Until reported a condition that never held")
	}
	if n < 2 {
		t.Errorf("Until looked %d times in 30 ms, want the first look and at least the last", n)
	}
	if !Until(0, func() bool { return true }) {
		t.Error("Until with no time left does not look even once")
	}
}

func TestConfig(t *testing.T) {
	a, b := Config(t), Config(t)
	if a.StateDir == b.StateDir || a.Bus.Address == b.Bus.Address {
		t.Errorf("two configurations share a state directory or an address: %s %s, %s %s", a.StateDir, b.StateDir, a.Bus.Address, b.Bus.Address)
	}
	if len(a.Broker.Listen) != 1 || a.Broker.Listen[0] != a.Bus.Address {
		t.Errorf("the broker listens on %v, the clients dial %s", a.Broker.Listen, a.Bus.Address)
	}
	if fi, err := os.Stat(a.StateDir); err != nil || !fi.IsDir() {
		t.Errorf("state directory: %v", err)
	}
	l, err := net.Listen("tcp", a.Bus.Address)
	if err != nil {
		t.Fatalf("the configured address is not free: %v", err)
	}
	l.Close()
	if p := Port(t, a); a.Bus.Address != "127.0.0.1:"+strconv.Itoa(p) {
		t.Errorf("Port(%s) = %d", a.Bus.Address, p)
	}
	if err := os.WriteFile(filepath.Join(a.StateDir, "x"), nil, 0o600); err != nil {
		t.Error(err)
	}
}

// FreePort's ports lie below the kernel's ephemeral range, where no port 0
// bind and no outgoing connection lands, and are not handed out twice while
// a test holds them, in this process or another.
func TestFreePortOutsideEphemeralRange(t *testing.T) {
	_, hi := testPorts()
	seen := map[int]bool{}
	for range 50 {
		p := FreePort(t)
		if p >= hi || p < 1024 {
			t.Fatalf("port %d: want one below the ephemeral range (from %d)", p, hi)
		}
		if seen[p] {
			t.Fatalf("port %d handed out twice", p)
		}
		seen[p] = true
	}
	// Another process sees the ports as taken: its lock on one fails.
	for p := range seen {
		out, err := exec.Command("flock", "-n", filepath.Join(os.TempDir(), "tinyscada-test-ports", strconv.Itoa(p)), "true").CombinedOutput()
		if err == nil {
			t.Fatalf("port %d: another process could take its lock (%s)", p, out)
		}
		break
	}
}
