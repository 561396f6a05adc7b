package testpeer

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/shared/flock"
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
// a test holds them, in this process or another (a lock on an open file
// conflicts with any other open file's, whichever process has it).
func TestFreePortOutsideEphemeralRange(t *testing.T) {
	lo, hi := testPorts()
	seen := map[int]bool{}
	last := 0
	for range 50 {
		p := FreePort(t)
		if p < lo || p >= hi {
			t.Fatalf("port %d: want one in %d-%d, below the ephemeral range", p, lo, hi-1)
		}
		if seen[p] {
			t.Fatalf("port %d handed out twice", p)
		}
		seen[p], last = true, p
	}
	_, err := flock.Lock(filepath.Join(os.TempDir(), "tinyscada-test-ports", strconv.Itoa(last)))
	if !errors.Is(err, flock.ErrLocked) {
		t.Fatalf("port %d: its lock file could be locked again (%v)", last, err)
	}
}
