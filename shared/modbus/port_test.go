package modbus

import (
	"errors"
	"strings"
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
