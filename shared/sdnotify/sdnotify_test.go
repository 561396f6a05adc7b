package sdnotify

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// listen opens a receiving unixgram socket with SO_PASSCRED set, as systemd
// does, and points NOTIFY_SOCKET at it.
func listen(t *testing.T, name string) *net.UnixConn {
	t.Helper()
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	raw, err := conn.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1)
	}); err != nil {
		t.Fatal(err)
	}
	if serr != nil {
		t.Fatal(serr)
	}
	t.Setenv("NOTIFY_SOCKET", name)
	return conn
}

// receive reads one datagram and the sender credentials the kernel attached.
func receive(t *testing.T, conn *net.UnixConn) (string, *unix.Ucred) {
	t.Helper()
	// The deadline only keeps a broken test from hanging.
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(unix.SizeofUcred))
	n, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 1 {
		t.Fatalf("got %d control messages, want 1 (credentials)", len(msgs))
	}
	cred, err := unix.ParseUnixCredentials(&msgs[0])
	if err != nil {
		t.Fatal(err)
	}
	return string(buf[:n]), cred
}

func TestNotifyPathSocket(t *testing.T) {
	conn := listen(t, filepath.Join(t.TempDir(), "notify.sock"))
	tests := []struct {
		name string
		send func() error
		want string
	}{
		{"Notify", func() error {
			ok, err := Notify("READY=1\nSTATUS=hello")
			if !ok && err == nil {
				return errors.New("Notify returned (false, nil) with NOTIFY_SOCKET set")
			}
			return err
		}, "READY=1\nSTATUS=hello"},
		{"Ready", Ready, "READY=1"},
		{"Stopping", Stopping, "STOPPING=1"},
		{"Watchdog", Watchdog, "WATCHDOG=1"},
		{"Status", func() error { return Status("polled %d devices\nline two", 3) }, "STATUS=polled 3 devices line two"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.send(); err != nil {
				t.Fatal(err)
			}
			got, cred := receive(t, conn)
			if got != tt.want {
				t.Errorf("payload %q, want %q", got, tt.want)
			}
			if int(cred.Pid) != os.Getpid() {
				t.Errorf("sender pid %d, want ours %d", cred.Pid, os.Getpid())
			}
		})
	}
	if got := os.Getenv("NOTIFY_SOCKET"); got == "" {
		t.Error("NOTIFY_SOCKET was unset by a notification")
	}
}

func TestNotifyAbstractSocket(t *testing.T) {
	name := fmt.Sprintf("@tinyscada-sdnotify-test-%d-%d", os.Getpid(), time.Now().UnixNano())
	conn := listen(t, name)
	ok, err := Notify("WATCHDOG=1")
	if !ok || err != nil {
		t.Fatalf("Notify = (%v, %v), want (true, nil)", ok, err)
	}
	if got, _ := receive(t, conn); got != "WATCHDOG=1" {
		t.Errorf("payload %q, want WATCHDOG=1", got)
	}
}

func TestNotifyUnset(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	os.Unsetenv("NOTIFY_SOCKET")
	if ok, err := Notify("READY=1"); ok || err != nil {
		t.Errorf("Notify = (%v, %v), want (false, nil)", ok, err)
	}
	if ok, err := NotifyPID(os.Getpid(), "READY=1"); ok || err != nil {
		t.Errorf("NotifyPID = (%v, %v), want (false, nil)", ok, err)
	}
	for name, f := range map[string]func() error{"Ready": Ready, "Stopping": Stopping, "Watchdog": Watchdog,
		"Status": func() error { return Status("x") }} {
		if err := f(); err != nil {
			t.Errorf("%s = %v, want nil", name, err)
		}
	}
}

func TestNotifyErrors(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", filepath.Join(t.TempDir(), "nobody-listens"))
	if ok, err := Notify("READY=1"); ok || err == nil {
		t.Errorf("Notify to a missing socket = (%v, %v), want (false, error)", ok, err)
	}
	if err := Ready(); err == nil {
		t.Error("Ready to a missing socket = nil, want an error")
	}
	t.Setenv("NOTIFY_SOCKET", "vsock:2:1234")
	if ok, err := Notify("READY=1"); ok || err == nil || !strings.Contains(err.Error(), "vsock") {
		t.Errorf("Notify to vsock = (%v, %v), want (false, error naming the address)", ok, err)
	}
	if _, err := NotifyPID(0, "READY=1"); err == nil {
		t.Error("NotifyPID(0) = nil error, want one")
	}
}

func TestNotifyPID(t *testing.T) {
	conn := listen(t, filepath.Join(t.TempDir(), "notify.sock"))
	child := exec.Command("sleep", "10")
	if err := child.Start(); err != nil {
		t.Skipf("cannot start a child process: %v", err)
	}
	t.Cleanup(func() {
		child.Process.Kill()
		child.Wait()
	})
	pid := child.Process.Pid

	ok, err := NotifyPID(pid, "WATCHDOG=1")
	if can := CanNotifyPID(); can != (err == nil) {
		t.Errorf("CanNotifyPID() = %v, but NotifyPID for another pid returned %v", can, err)
	}
	if !ok || err != nil {
		t.Fatalf("NotifyPID(%d) = (%v, %v), want (true, nil) (running as root with CAP_SYS_ADMIN?)", pid, ok, err)
	}
	got, cred := receive(t, conn)
	if got != "WATCHDOG=1" {
		t.Errorf("payload %q, want WATCHDOG=1", got)
	}
	if int(cred.Pid) != pid || int(cred.Uid) != os.Getuid() || int(cred.Gid) != os.Getgid() {
		t.Errorf("credentials %+v, want pid %d uid %d gid %d", *cred, pid, os.Getuid(), os.Getgid())
	}

	// Our own pid needs no capability.
	if ok, err := NotifyPID(os.Getpid(), "READY=1"); !ok || err != nil {
		t.Fatalf("NotifyPID(own) = (%v, %v)", ok, err)
	}
	if _, cred := receive(t, conn); int(cred.Pid) != os.Getpid() {
		t.Errorf("sender pid %d, want ours %d", cred.Pid, os.Getpid())
	}
}

// TestNotifyPIDWithoutCapability drops CAP_SYS_ADMIN from one OS thread
// (capabilities are per thread on Linux) and sends from that thread;
// CanNotifyPID says so on that thread before the send fails.
func TestNotifyPIDWithoutCapability(t *testing.T) {
	listen(t, filepath.Join(t.TempDir(), "notify.sock"))
	errc := make(chan error, 1)
	can := make(chan bool, 1)
	go func() {
		// Never unlocked: the thread, with its reduced capabilities, ends
		// with this goroutine.
		runtime.LockOSThread()
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if err := unix.Capget(&hdr, &data[0]); err != nil {
			errc <- fmt.Errorf("capget: %w", err)
			return
		}
		data[0].Effective &^= 1 << unix.CAP_SYS_ADMIN
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			errc <- fmt.Errorf("capset: %w", err)
			return
		}
		can <- CanNotifyPID()
		_, err := NotifyPID(1, "WATCHDOG=1")
		errc <- err
	}()
	err := <-errc
	if len(can) == 1 && <-can {
		t.Error("CanNotifyPID() = true on the thread without CAP_SYS_ADMIN")
	}
	if err == nil {
		t.Fatal("NotifyPID(1) without CAP_SYS_ADMIN succeeded, want EPERM")
	}
	if !errors.Is(err, unix.EPERM) || !strings.Contains(err.Error(), "CAP_SYS_ADMIN") {
		t.Errorf("error %q: want EPERM and a mention of CAP_SYS_ADMIN", err)
	}
}

func TestWatchdogInterval(t *testing.T) {
	own := strconv.Itoa(os.Getpid())
	tests := []struct {
		usec, pid string
		want      time.Duration
		wantErr   bool
	}{
		{"", "", 0, false},
		{"3000000", "", 3 * time.Second, false},
		{"3000000", own, 3 * time.Second, false},
		{"3000000", strconv.Itoa(os.Getpid() + 1), 0, false},
		{"abc", "", 0, true},
		{"0", "", 0, true},
		{"-5", own, 0, true},
		{"3000000", "x", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.usec+"/"+tt.pid, func(t *testing.T) {
			t.Setenv("WATCHDOG_USEC", tt.usec)
			t.Setenv("WATCHDOG_PID", tt.pid)
			got, err := WatchdogInterval()
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("WatchdogInterval() = (%v, %v), want (%v, error %v)", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

// TestNotifyFullQueue fills the receiver's queue (nothing reads it), then
// notifies: the send waits for room instead of failing at once, and fails
// only after sendTimeout.
func TestNotifyFullQueue(t *testing.T) {
	conn := listen(t, filepath.Join(t.TempDir(), "notify.sock"))
	name := os.Getenv("NOTIFY_SOCKET")
	queued := 0
	for {
		err := sendNow(name, "STATUS=filling the queue", nil)
		if err == unix.EAGAIN {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if queued++; queued > 1<<16 {
			t.Fatal("the queue never filled")
		}
	}
	if queued == 0 {
		t.Fatal("not one datagram queued")
	}
	// Room comes after 200 ms: the notification must wait for it.
	read := make(chan error, 1)
	go func() {
		time.Sleep(200 * time.Millisecond)
		_, _, _, _, err := conn.ReadMsgUnix(make([]byte, 64), make([]byte, 64))
		read <- err
	}()
	start := time.Now()
	if ok, err := Notify("WATCHDOG=1"); !ok || err != nil {
		t.Fatalf("Notify with the queue full for 200 ms = (%v, %v), want (true, nil) after waiting", ok, err)
	}
	if waited := time.Since(start); waited < 150*time.Millisecond {
		t.Errorf("Notify returned after %s, before the receiver made room", waited)
	}
	if err := <-read; err != nil {
		t.Fatal(err)
	}
	t.Logf("%d datagrams filled the queue", queued)
}
