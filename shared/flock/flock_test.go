package flock

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestMain doubles as the helper process: with FLOCK_HELPER=path it locks
// path, says "locked" and holds the lock until stdin closes.
func TestMain(m *testing.M) {
	if path := os.Getenv("FLOCK_HELPER"); path != "" {
		l, err := Lock(path)
		if err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
		fmt.Println("locked")
		io.Copy(io.Discard, os.Stdin)
		l.Close()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestLockTwoProcesses(t *testing.T) {
	path := filepath.Join(t.TempDir(), "poller.lock")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "FLOCK_HELPER="+path)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		stdin.Close()
		cmd.Process.Kill()
		cmd.Wait()
	}()
	line, _ := bufio.NewReader(stdout).ReadString('\n')
	if line != "locked\n" {
		t.Fatalf("helper said %q, want locked", line)
	}

	l, err := Lock(path)
	if err == nil {
		l.Close()
		t.Fatal("Lock succeeded while another process holds the lock")
	}
	want := fmt.Sprintf("%s is locked by pid %d", path, cmd.Process.Pid)
	if err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}
	var le *LockedError
	if !errors.As(err, &le) || le.PID != cmd.Process.Pid || le.Path != path || !errors.Is(err, ErrLocked) {
		t.Errorf("error %#v: want a *LockedError for pid %d that is ErrLocked", err, cmd.Process.Pid)
	}

	// The kernel releases the lock of a killed process.
	cmd.Process.Kill()
	cmd.Wait()
	l, err = Lock(path)
	if err != nil {
		t.Fatalf("Lock after the holder was killed: %v", err)
	}
	defer l.Close()
	if got, _ := os.ReadFile(path); string(got) != fmt.Sprintf("%d\n", os.Getpid()) {
		t.Errorf("lock file holds %q, want our pid", got)
	}
}

func TestLockSameProcess(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.lock")
	// A longer stale pid must not leave digits behind.
	if err := os.WriteFile(path, []byte("123456789012\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	l1, err := Lock(path)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Lock(path)
	var le *LockedError
	if !errors.As(err, &le) || le.PID != os.Getpid() {
		t.Fatalf("second Lock in one process = %v, want locked by our pid %d", err, os.Getpid())
	}
	if err := l1.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l1.Close(); err != nil {
		t.Errorf("second Close = %v, want nil", err)
	}
	l2, err := Lock(path)
	if err != nil {
		t.Fatalf("Lock after Close: %v", err)
	}
	defer l2.Close()
	if got, _ := os.ReadFile(path); string(got) != fmt.Sprintf("%d\n", os.Getpid()) {
		t.Errorf("lock file holds %q, want our pid", got)
	}
}

func TestLockErrors(t *testing.T) {
	_, err := Lock(filepath.Join(t.TempDir(), "missing-dir", "x.lock"))
	if err == nil || errors.Is(err, ErrLocked) {
		t.Errorf("Lock in a missing directory = %v, want an error that is not ErrLocked", err)
	}
}

// openPTY opens a pseudo-terminal and returns the master and the slave path.
func openPTY(t *testing.T) (*os.File, string) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	rc, err := m.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var n uint32
	var ierr error
	rc.Control(func(fd uintptr) {
		if n, ierr = unix.IoctlGetUint32(int(fd), unix.TIOCGPTN); ierr == nil {
			ierr = unix.IoctlSetPointerInt(int(fd), unix.TIOCSPTLCK, 0)
		}
	})
	if ierr != nil {
		t.Fatal(ierr)
	}
	return m, fmt.Sprintf("/dev/pts/%d", n)
}

func TestLockFDTTY(t *testing.T) {
	master, slave := openPTY(t)
	open := func() *os.File {
		f, err := os.OpenFile(slave, os.O_RDWR|unix.O_NOCTTY, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	f1, f2 := open(), open()

	l1, err := LockFD(f1)
	if err != nil {
		t.Fatal(err)
	}
	_, err = LockFD(f2)
	want := fmt.Sprintf("%s is locked by pid %d", slave, os.Getpid())
	if err == nil || err.Error() != want {
		t.Fatalf("LockFD on a locked tty = %v, want %q (pid from /proc/locks)", err, want)
	}
	// Lock on the device path conflicts too, and writes nothing to it.
	if _, err := Lock(slave); !errors.Is(err, ErrLocked) {
		t.Errorf("Lock(%s) = %v, want ErrLocked", slave, err)
	}
	if err := l1.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := f1.Stat(); err != nil {
		t.Errorf("Close closed the caller's file: %v", err)
	}
	l2, err := LockFD(f2)
	if err != nil {
		t.Fatalf("LockFD after unlock: %v", err)
	}
	l2.Close()
	l3, err := Lock(slave)
	if err != nil {
		t.Fatalf("Lock(%s): %v", slave, err)
	}
	l3.Close()

	// Nothing may have reached the terminal.
	master.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	buf := make([]byte, 64)
	if n, _ := master.Read(buf); n > 0 {
		t.Errorf("locking wrote %q to the tty", buf[:n])
	}
}

func TestFindHolder(t *testing.T) {
	const locks = `1: POSIX  ADVISORY  WRITE 999 00:1a:5678 0 EOF
2: FLOCK  ADVISORY  WRITE 1234 08:03:5678 0 EOF
2: -> FLOCK  ADVISORY  WRITE 4321 00:1a:5678 0 EOF
3: FLOCK  ADVISORY  WRITE 1235 00:1a:5678 0 EOF
`
	dev := unix.Mkdev(0, 0x1a)
	tests := []struct {
		dev, ino uint64
		want     int
	}{
		{dev, 5678, 1235},
		{unix.Mkdev(8, 3), 5678, 1234},
		{dev, 5679, 0},
	}
	for _, tt := range tests {
		if got := findHolder(strings.NewReader(locks), tt.dev, tt.ino); got != tt.want {
			t.Errorf("findHolder(%x, %d) = %d, want %d", tt.dev, tt.ino, got, tt.want)
		}
	}
}
