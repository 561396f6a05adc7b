package testpeer

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Broker is a Debian mosquitto that a test stops, kills and starts again
// on the same port with the same configuration (and, with persistence,
// the same database of sessions).
type Broker struct {
	t    testing.TB
	bin  string
	conf string
	Port int

	mu     sync.Mutex
	cmd    *exec.Cmd
	stderr *bytes.Buffer
}

// NewBroker writes a mosquitto configuration of body (a listener on port
// among it) plus the lines every test needs, and returns the Broker, not
// started. It is killed when the test ends.
func NewBroker(t testing.TB, port int, body string) *Broker {
	t.Helper()
	bin := Need(t, "mosquitto")
	dir := t.TempDir()
	conf := filepath.Join(dir, "mosquitto.conf")
	// As root, mosquitto drops to its own user before it reads its files,
	// which that user cannot reach in the test's directory.
	body += "user root\nlog_dest stderr\nlog_type error\n"
	if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	b := &Broker{t: t, bin: bin, conf: conf, Port: port}
	t.Cleanup(b.Kill)
	return b
}

// PersistentBroker is NewBroker with anonymous access on 127.0.0.1:port
// and persistence in a directory of its own, saved every second: sessions
// (and the messages queued for them) survive a Stop and Start, and a Kill
// loses at most the last second of them.
func PersistentBroker(t testing.TB, port int) *Broker {
	dir := t.TempDir()
	return NewBroker(t, port, fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location %s/\nautosave_interval 1\nmax_inflight_messages 0\nmax_queued_messages 0\n", port, dir))
}

// Start starts the broker and waits until it accepts connections.
func (b *Broker) Start() {
	b.t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cmd != nil {
		b.t.Fatal("testpeer: mosquitto started twice")
	}
	cmd := exec.Command(b.bin, "-c", b.conf)
	b.stderr = &bytes.Buffer{}
	cmd.Stderr = b.stderr
	if err := cmd.Start(); err != nil {
		b.t.Fatal(err)
	}
	b.cmd = cmd
	if err := WaitPort("127.0.0.1:"+strconv.Itoa(b.Port), 10*time.Second); err != nil {
		b.t.Fatalf("mosquitto: %v; stderr: %s", err, b.stderr.String())
	}
}

// Stop stops the broker with SIGTERM (it saves its persistence) and waits.
func (b *Broker) Stop() { b.end(syscall.SIGTERM) }

// Kill kills the broker with SIGKILL and waits; nothing when not running.
func (b *Broker) Kill() { b.end(syscall.SIGKILL) }

func (b *Broker) end(sig syscall.Signal) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cmd == nil {
		return
	}
	_ = b.cmd.Process.Signal(sig)
	_ = b.cmd.Wait()
	b.cmd = nil
}
