package modbus

import (
	"errors"
	"os"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// openPair returns a new pseudo-terminal's master and the path of its
// slave; the master is closed at the end of the test unless closed before.
func openPair(t *testing.T) (*os.File, string) {
	t.Helper()
	fd, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	master := os.NewFile(uintptr(fd), "ptmx")
	t.Cleanup(func() { master.Close() })
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetUint32(fd, unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	return master, "/dev/pts/" + strconv.Itoa(int(n))
}

func openLineT(t *testing.T, path string) *Line {
	t.Helper()
	l, err := Open(path, PortConfig{Baud: 115200})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// waitInput waits until l's driver holds n unread bytes (TIOCINQ).
func waitInput(t *testing.T, l *Line, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		k, err := unix.IoctlGetInt(l.fd, unix.TIOCINQ)
		if err != nil {
			t.Fatal(err)
		}
		if k >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d bytes arrived in 5s", k, n)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestLineReadWrite(t *testing.T) {
	master, path := openPair(t)
	l := openLineT(t, path)
	buf := make([]byte, 16)

	// Timeout 0: what is there, which is nothing yet.
	l.SetReadTimeout(0)
	if n, err := l.Read(buf); n != 0 || err != nil {
		t.Fatalf("Read of an empty line with timeout 0 = %d, %v; want 0, nil", n, err)
	}
	// A timeout: 0, nil after it, not before.
	l.SetReadTimeout(30 * time.Millisecond)
	start := time.Now()
	if n, err := l.Read(buf); n != 0 || err != nil {
		t.Fatalf("Read of an empty line with a timeout = %d, %v; want 0, nil", n, err)
	}
	if d := time.Since(start); d < 30*time.Millisecond {
		t.Fatalf("Read returned after %v, before its 30ms timeout", d)
	}

	// Bytes that arrive during a waiting Read end it.
	l.SetReadTimeout(5 * time.Second)
	go func() {
		time.Sleep(20 * time.Millisecond)
		master.Write([]byte("hello"))
	}()
	got := ""
	for len(got) < 5 {
		n, err := l.Read(buf)
		if err != nil || n == 0 {
			t.Fatalf("Read after %q = %d, %v", got, n, err)
		}
		got += string(buf[:n])
	}
	if got != "hello" {
		t.Fatalf("read %q, want hello", got)
	}

	// Writes reach the other end.
	if n, err := l.Write([]byte("xyz")); n != 3 || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	master.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := master.Read(buf); err != nil || string(buf[:n]) != "xyz" {
		t.Fatalf("the other end read %q, %v; want xyz", buf[:n], err)
	}

	// ResetInputBuffer drops what arrived unread.
	master.Write([]byte("junk"))
	waitInput(t, l, 4)
	if err := l.ResetInputBuffer(); err != nil {
		t.Fatal(err)
	}
	l.SetReadTimeout(0)
	if n, err := l.Read(buf); n != 0 || err != nil {
		t.Fatalf("Read after ResetInputBuffer = %q, %v; want nothing", buf[:n], err)
	}
}

// Close ends a Read that waits without bound, and later calls fail.
func TestLineCloseEndsRead(t *testing.T) {
	_, path := openPair(t)
	l := openLineT(t, path)
	l.SetReadTimeout(-1)
	done := make(chan error, 1)
	go func() {
		_, err := l.Read(make([]byte, 8))
		done <- err
	}()
	time.Sleep(20 * time.Millisecond) // most likely in ppoll by now; either way it must end
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, errClosed) {
			t.Fatalf("Read during Close: %v, want %v", err, errClosed)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not end a waiting Read")
	}
	if _, err := l.Write([]byte{1}); !errors.Is(err, errClosed) {
		t.Fatalf("Write after Close: %v", err)
	}
	if err := l.ResetInputBuffer(); !errors.Is(err, errClosed) {
		t.Fatalf("ResetInputBuffer after Close: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	// The port was released: it opens again.
	openLineT(t, path)
}

// A line whose other end is gone fails its Read (as a vanished USB
// adapter does) instead of reporting an empty line forever.
func TestLineHangUp(t *testing.T) {
	master, path := openPair(t)
	l := openLineT(t, path)
	for _, timeout := range []time.Duration{0, time.Second, -1} {
		if timeout == time.Second {
			master.Close()
		}
		l.SetReadTimeout(timeout)
		n, err := l.Read(make([]byte, 8))
		if timeout == 0 {
			if n != 0 || err != nil {
				t.Fatalf("Read before the hang-up = %d, %v", n, err)
			}
			continue
		}
		if err == nil {
			t.Fatalf("Read with timeout %v after the other end closed = %d, nil; want an error", timeout, n)
		}
	}
}
