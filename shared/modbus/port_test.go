package modbus

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/tinyscada/tinyscada/internal/testpeer"
)

// openPTY returns the slave path of a new pseudo-terminal pair; the pair
// is closed at the end of the test.
func openPTY(t *testing.T) string {
	t.Helper()
	_, path := openPair(t)
	return path
}

func TestOpen(t *testing.T) {
	path := openPTY(t)
	p, err := Open(path, PortConfig{Baud: 19200, Parity: "E", StopBits: 1})
	if err != nil {
		t.Fatalf("Open(%s): %v", path, err)
	}
	p.Close()

	// A pseudo-terminal cannot do RS-485: the error says so and names it.
	t.Run("RS-485 refused", func(t *testing.T) {
		_, err := Open(path, PortConfig{RS485: true, RS485RTSOnSend: true})
		if emu := testpeer.Emulator(); emu != "" && errors.Is(err, unix.ENOSYS) {
			// A kernel answers ENOTTY; ENOSYS is qemu-user's own answer to
			// an ioctl it cannot translate (qemu-aarch64-static -d unimp:
			// "Unsupported ioctl: cmd=0x542f").
			t.Skipf("under %s: qemu-user does not translate the TIOCSRS485 ioctl (ENOSYS, the kernel never sees it): %v", emu, err)
		}
		if !errors.Is(err, errNoRS485) || !strings.Contains(err.Error(), path) {
			t.Fatalf("RS-485 on a pty: %v", err)
		}
	})
	// The port was closed again: it opens fine afterwards.
	p, err = Open(path, PortConfig{})
	if err != nil {
		t.Fatalf("reopen after the RS-485 failure: %v", err)
	}
	p.Close()

	for _, cfg := range []PortConfig{{Parity: "X"}, {StopBits: 3}, {DataBits: 5}} {
		if _, err := Open(path, cfg); err == nil || !strings.Contains(err.Error(), path) {
			t.Errorf("Open(%+v) = %v, want an error naming %s", cfg, err, path)
		}
	}
	if _, err := Open("/dev/nonexistent-tty", PortConfig{}); err == nil || !strings.Contains(err.Error(), "/dev/nonexistent-tty") {
		t.Errorf("Open of a missing device: %v", err)
	}
}

// rs485UserEnv carries the pseudo-terminal's path to the test binary run
// as an unprivileged user by TestOpenRS485NotRoot.
const rs485UserEnv = "TINYSCADA_MODBUS_RS485_AS_USER"

// Open with RS-485 as a user that is not root, as the poller's unit runs:
// go.bug.st/serial sets TIOCEXCL, which refuses every later open of the
// device to such a user, so the RS-485 ioctl must not need one. A pty
// cannot do RS-485: the error must be that, not "device or resource busy".
func TestOpenRS485NotRoot(t *testing.T) {
	if path := os.Getenv(rs485UserEnv); path != "" {
		_, err := Open(path, PortConfig{RS485: true, RS485RTSOnSend: true})
		if !errors.Is(err, errNoRS485) {
			t.Fatalf("as uid %d: %v, want the refusal of RS-485 (%v)", os.Getuid(), err, errNoRS485)
		}
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root, to run the check as another user")
	}
	if emu := testpeer.Emulator(); emu != "" {
		t.Skipf("under %s: the test binary cannot be run again as another user (no binfmt_misc)", emu)
	}
	_, path := openPair(t)
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	// A copy of the test binary where the other user may run it.
	dir, err := os.MkdirTemp("", "modbus-rs485-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	self, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "modbus.test")
	if err := os.WriteFile(bin, self, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-test.run=^TestOpenRS485NotRoot$", "-test.count=1", "-test.v")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), rs485UserEnv+"="+path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestOpenRS485NotRoot") {
		t.Fatalf("as uid 65534: %v\n%s", err, out)
	}
}
