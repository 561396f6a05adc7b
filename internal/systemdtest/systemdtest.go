// Package systemdtest boots a private systemd in new PID, mount and
// network namespaces, so that system tests can install the real units,
// start the real target and watch readiness, watchdog kills, restarts and
// D-Bus calls without touching the host's services (see
// ../shared/notes/systemd-in-a-namespace.md in the project notes).
//
// Inside, /run, /tmp, /var/tmp and /var/log are private tmpfs mounts,
// /var/lib is a directory of the test, and the install tree of the test is
// bound at /usr/local; the host's /etc/passwd and /etc/group may be
// replaced by copies that hold the test's system user. Nothing is written to
// the host's /etc, /var or /usr. The network is private too, with only its
// own loopback (up): two runs, or a broker of the host on port 1883, cannot
// collide; reach the stack with NetCommand (nsenter -n), not from the host.
package systemdtest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/internal/testpeer"
)

// systemdPath is where Debian installs the system manager.
const systemdPath = "/usr/lib/systemd/systemd"

// Need checks that a private systemd can be booted here: root, util-linux's
// unshare and nsenter, and systemd itself. It skips the test saying what is
// missing, or fails it when CI=true.
func Need(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		testpeer.Missing(t, "booting systemd in PID and mount namespaces needs root (run the system tests as root)")
		return
	}
	for _, tool := range []string{"unshare", "nsenter"} {
		if _, err := exec.LookPath(tool); err != nil {
			testpeer.Missing(t, tool+" not found on PATH (Debian package util-linux)")
			return
		}
	}
	if _, err := exec.LookPath("ip"); err != nil {
		testpeer.Missing(t, "ip not found on PATH (Debian package iproute2), needed to bring up the loopback of the private network")
		return
	}
	if _, err := os.Stat(systemdPath); err != nil {
		testpeer.Missing(t, systemdPath+" not found (Debian package systemd)")
		return
	}
}

// Options say what the private systemd sees.
type Options struct {
	// Root is an install tree (the DESTDIR of deploy/install.sh):
	// Root/usr/local is bound at /usr/local and Root/run/systemd/system is
	// copied into the private /run/systemd/system.
	Root string
	// Etc, when set, holds passwd, group, shadow and gshadow, bound over
	// the host's (for a system user the host does not have).
	Etc string
	// VarLib is bound at /var/lib (the units' StateDirectory= lands in it).
	VarLib string
	// Wants are units the boot target pulls in besides basic.target.
	Wants []string
}

// System is a booted private systemd.
type System struct {
	t   testing.TB
	cmd *exec.Cmd
	// PID is the inner systemd (PID 1 inside) as the host sees it.
	PID  int
	done chan struct{}
	out  bytes.Buffer
}

// Boot starts systemd in new PID and mount namespaces with opts and waits
// until it is running; the test's cleanup powers it off (or kills it). It
// fails the test when systemd does not come up within a minute.
func Boot(t testing.TB, opts Options) *System {
	t.Helper()
	Need(t)
	var sc strings.Builder
	q := strconv.Quote
	// The network namespace starts with its loopback down (systemd brings
	// it up too, but the units must not depend on that).
	sc.WriteString("set -e\nip link set lo up\nmount -t tmpfs tmpfs /run\nmkdir -p /run/systemd/system\n")
	if opts.Root != "" {
		if units := filepath.Join(opts.Root, "run/systemd/system"); exists(units) {
			fmt.Fprintf(&sc, "cp -a %s/. /run/systemd/system/\n", q(units))
		}
		if local := filepath.Join(opts.Root, "usr/local"); exists(local) {
			fmt.Fprintf(&sc, "mount --bind %s /usr/local\n", q(local))
		}
	}
	if opts.Etc != "" {
		for _, f := range []string{"passwd", "group", "shadow", "gshadow"} {
			if p := filepath.Join(opts.Etc, f); exists(p) {
				fmt.Fprintf(&sc, "mount --bind %s /etc/%s\n", q(p), f)
			}
		}
	}
	if opts.VarLib != "" {
		fmt.Fprintf(&sc, "mount --bind %s /var/lib\n", q(opts.VarLib))
	}
	// systemd-tmpfiles empties /tmp and cleans /var/tmp at boot, units with
	// PrivateTmp= get their directories there, and journald would write the
	// host's persistent journal: all private.
	sc.WriteString("mount -t tmpfs tmpfs /var/log\nmount -t tmpfs tmpfs /tmp\nmount -t tmpfs tmpfs /var/tmp\n")
	wants := strings.Join(append([]string{"basic.target"}, opts.Wants...), " ")
	fmt.Fprintf(&sc, "printf '[Unit]\\nRequires=%s\\nAfter=%s\\n' > /run/systemd/system/systemdtest.target\n", wants, wants)
	fmt.Fprintf(&sc, "exec env container=other %s --system --unit=systemdtest.target\n", systemdPath)

	s := &System{t: t, done: make(chan struct{})}
	s.cmd = exec.Command("unshare", "--pid", "--fork", "--kill-child", "--mount", "--mount-proc", "--propagation", "private", "--net", "sh", "-c", sc.String())
	s.cmd.Stdout, s.cmd.Stderr = &s.out, &s.out
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("systemdtest: unshare: %v", err)
	}
	go func() { _ = s.cmd.Wait(); close(s.done) }()
	t.Cleanup(s.shutdown)

	deadline := time.Now().Add(time.Minute)
	for s.PID == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("systemdtest: no systemd under unshare (pid %d): %s", s.cmd.Process.Pid, s.out.String())
		}
		select {
		case <-s.done:
			t.Fatalf("systemdtest: unshare ended: %s", s.out.String())
		case <-time.After(20 * time.Millisecond):
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", s.cmd.Process.Pid, s.cmd.Process.Pid))
		if err != nil {
			continue
		}
		if f := strings.Fields(string(b)); len(f) > 0 {
			if comm, _ := os.ReadFile("/proc/" + f[0] + "/comm"); strings.TrimSpace(string(comm)) == "systemd" {
				s.PID, _ = strconv.Atoi(f[0])
			}
		}
	}
	for {
		out, _ := s.Exec("systemctl", "is-system-running")
		state := strings.TrimSpace(out)
		if state == "running" || state == "degraded" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("systemdtest: systemd is %q after a minute; %s", state, s.out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return s
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

// Exec runs a command inside the namespaces (nsenter: mount, PID and
// network) and returns its combined output; the error says how it failed,
// with the output.
func (s *System) Exec(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	all := append([]string{"-t", strconv.Itoa(s.PID), "-m", "-p", "-n", "--"}, args...)
	out, err := exec.CommandContext(ctx, "nsenter", all...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// NetCommand returns a command that runs name with args from the host's
// filesystem in the private network of the system (nsenter -n): the way
// for a client on the host (mosquitto_sub, ...) to reach the stack's
// loopback listeners.
func (s *System) NetCommand(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "nsenter", append([]string{"-t", strconv.Itoa(s.PID), "-n", "--", name}, args...)...)
}

// MustExec is Exec that fails the test on an error.
func (s *System) MustExec(args ...string) string {
	s.t.Helper()
	out, err := s.Exec(args...)
	if err != nil {
		s.t.Fatal(err)
	}
	return out
}

// Show returns one property of a unit (systemctl show -p NAME --value).
func (s *System) Show(unit, prop string) string {
	s.t.Helper()
	return strings.TrimSpace(s.MustExec("systemctl", "show", "-p", prop, "--value", unit))
}

// ShowInt is Show for a number; it fails the test when it is none.
func (s *System) ShowInt(unit, prop string) int64 {
	s.t.Helper()
	v := s.Show(unit, prop)
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		s.t.Fatalf("%s %s = %q: not a number", unit, prop, v)
	}
	return n
}

// MainPID returns the unit's main pid inside the namespace (0: none).
func (s *System) MainPID(unit string) int {
	s.t.Helper()
	return int(s.ShowInt(unit, "MainPID"))
}

// WaitFor polls cond every 50ms until it returns true, failing the test
// with what after timeout. It returns how long it took.
func (s *System) WaitFor(timeout time.Duration, what string, cond func() bool) time.Duration {
	s.t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > timeout {
			s.t.Fatalf("after %v: %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return time.Since(start)
}

// Journal returns the journal of a unit inside (at most the last n lines).
func (s *System) Journal(unit string, n int) string {
	out, _ := s.Exec("journalctl", "--no-pager", "-o", "short-monotonic", "-n", strconv.Itoa(n), "-u", unit)
	return out
}

// shutdown powers the inner systemd off, and kills it after 30 s.
func (s *System) shutdown() {
	if s.PID != 0 {
		_, _ = s.Exec("systemctl", "poweroff", "--no-block")
	}
	select {
	case <-s.done:
	case <-time.After(30 * time.Second):
		_ = s.cmd.Process.Kill()
		if s.PID != 0 {
			_ = syscallKill(s.PID)
		}
		<-s.done
	}
}

// syscallKill SIGKILLs the inner PID 1 from the host, which ends the
// namespace and everything in it.
func syscallKill(pid int) error {
	p, err := os.FindProcess(pid)
	if err != nil {
		return err
	}
	return p.Kill()
}
