package crash

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/internal/testpeer"
)

// TestMain doubles as the helper program: with CRASH_HELPER set, the test
// binary behaves as a small daemon instead of running tests.
func TestMain(m *testing.M) {
	if mode := os.Getenv("CRASH_HELPER"); mode != "" {
		helper(mode, os.Getenv("CRASH_DIR"), os.Getenv("CRASH_ROLE"))
		return
	}
	os.Exit(m.Run())
}

func helper(mode, dir, role string) {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	switch mode {
	case "panic":
		if _, err := Capture(dir, role, log); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		go func() { panic("boom from the helper") }()
		select {}
	case "hold":
		if _, err := Capture(dir, role, log); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	case "dump":
		DumpOnSignal(context.Background(), dir, role, log)
	default:
		fmt.Fprintln(os.Stderr, "unknown helper mode", mode)
		os.Exit(1)
	}
	fmt.Println("ready")
	time.Sleep(time.Minute) // bounded, in case the test forgets us
	os.Exit(0)
}

// helperCmd returns the helper command for mode.
func helperCmd(mode, dir, role string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "CRASH_HELPER="+mode, "CRASH_DIR="+dir, "CRASH_ROLE="+role)
	return cmd
}

// startHelper starts a long-running helper and waits until it says ready.
// The returned channel is closed when the helper has exited.
func startHelper(t *testing.T, mode, dir, role string) (*exec.Cmd, <-chan struct{}) {
	t.Helper()
	cmd := helperCmd(mode, dir, role)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	lines := bufio.NewScanner(out)
	ready := lines.Scan() && lines.Text() == "ready"
	go func() {
		cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	if !ready {
		t.Fatalf("helper %s did not become ready", mode)
	}
	return cmd, exited
}

func write(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// deadPID returns the pid of a process that has exited and been reaped.
func deadPID(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Skipf("cannot run true: %v", err)
	}
	return cmd.Process.Pid
}

func TestCaptureCollectsCrash(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "crash") // Capture creates it
	const role = "poller"

	cmd := helperCmd("panic", dir, role)
	stderr, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 {
		t.Fatalf("helper: %v, want exit status 2 from a panic; output:\n%s", err, stderr)
	}
	pid := cmd.Process.Pid
	pending := filepath.Join(dir, fmt.Sprintf("%s-%d.crash-pending", role, pid))
	crashText, err := os.ReadFile(pending)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"panic: boom from the helper", "goroutine ", "crash_test.go"} {
		if !strings.Contains(string(crashText), want) {
			t.Errorf("pending file lacks %q:\n%s", want, crashText)
		}
	}
	if !strings.Contains(string(stderr), "panic: boom from the helper") {
		t.Errorf("stderr lacks the panic:\n%s", stderr)
	}

	// More leftovers: an empty one of a dead process, a non-empty one of a
	// live pid that does not hold it (pid 1: a reused pid), another role's.
	empty := filepath.Join(dir, fmt.Sprintf("%s-%d.crash-pending", role, deadPID(t)))
	write(t, empty, "")
	reused := filepath.Join(dir, role+"-1.crash-pending")
	write(t, reused, "fatal error: out of memory\n")
	other := filepath.Join(dir, fmt.Sprintf("logger-%d.crash-pending", deadPID(t)))
	write(t, other, "panic: not the poller's\n")
	unrelated := filepath.Join(dir, role+"-x.crash-pending")
	write(t, unrelated, "?")

	c, err := Capture(dir, role, slog.New(slog.NewTextHandler(os.Stderr, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })

	if len(c.Reports) != 2 {
		t.Fatalf("Reports = %q, want 2 (the helper's crash and pid 1's leftover)", c.Reports)
	}
	var helperReport string
	for _, r := range c.Reports {
		if strings.HasPrefix(filepath.Base(r), fmt.Sprintf("%s-%d-", role, pid)) && strings.HasSuffix(r, ".crash") {
			helperReport = r
		}
	}
	if helperReport == "" {
		t.Fatalf("no report named %s-%d-<ms>.crash in %q", role, pid, c.Reports)
	}
	if got, err := os.ReadFile(helperReport); err != nil || string(got) != string(crashText) {
		t.Errorf("report content differs from the crash output (err %v)", err)
	}
	for _, gone := range []string{pending, empty, reused} {
		if exists(gone) {
			t.Errorf("%s still exists", gone)
		}
	}
	for _, kept := range []string{other, unrelated, c.Path} {
		if !exists(kept) {
			t.Errorf("%s was removed", kept)
		}
	}
	if want := filepath.Join(dir, fmt.Sprintf("%s-%d.crash-pending", role, os.Getpid())); c.Path != want {
		t.Errorf("Path = %s, want %s", c.Path, want)
	}

	all, err := Reports(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(all, c.Reports) {
		t.Errorf("Reports(dir) = %q, want %q", all, c.Reports)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if exists(c.Path) {
		t.Error("Close left the empty pending file")
	}
}

func TestCaptureLeavesLiveProcess(t *testing.T) {
	dir := t.TempDir()
	const role = "logger"
	cmd, exited := startHelper(t, "hold", dir, role)
	held := filepath.Join(dir, fmt.Sprintf("%s-%d.crash-pending", role, cmd.Process.Pid))
	write(t, held, "text written while the process runs\n")

	c, err := Capture(dir, role, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if len(c.Reports) != 0 || !exists(held) {
		t.Fatalf("a live process's pending file was collected: reports %q", c.Reports)
	}

	cmd.Process.Kill()
	<-exited
	c2, err := Capture(dir, role, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if len(c2.Reports) != 1 || exists(held) {
		t.Fatalf("after the process died: reports %q, pending file exists %v", c2.Reports, exists(held))
	}
}

func TestCaptureBoundsReports(t *testing.T) {
	dir := t.TempDir()
	old := time.Now().Add(-time.Hour)
	var names []string
	for i := range MaxReports + 3 {
		p := filepath.Join(dir, fmt.Sprintf("uplink-%d-%d.crash", 100+i, old.UnixMilli()))
		write(t, p, "panic\n")
		if err := os.Chtimes(p, old, old.Add(time.Duration(i)*time.Second)); err != nil {
			t.Fatal(err)
		}
		names = append(names, p)
	}
	c, err := Capture(dir, "uplink", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	all, err := Reports(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != MaxReports {
		t.Fatalf("%d reports kept, want %d", len(all), MaxReports)
	}
	for i, p := range names {
		if want := i >= 3; exists(p) != want {
			t.Errorf("report %d (%s): exists %v, want %v", i, p, exists(p), want)
		}
	}
}

func TestReportsMissingDir(t *testing.T) {
	r, err := Reports(filepath.Join(t.TempDir(), "none"))
	if r != nil || err != nil {
		t.Errorf("Reports(missing) = %q, %v; want nil, nil", r, err)
	}
}

func TestCaptureBadRole(t *testing.T) {
	if _, err := Capture(t.TempDir(), "a/b", nil); err == nil {
		t.Error("Capture with a role containing / succeeded")
	}
}

// waitStacks waits until dir holds n .stacks files and returns them.
func waitStacks(t *testing.T, dir string, n int, exited <-chan struct{}) []string {
	t.Helper()
	var files []string
	gone := false
	if !testpeer.Until(10*time.Second, func() bool { // the bound only against a hang
		files, _ = filepath.Glob(filepath.Join(dir, "*.stacks"))
		select {
		case <-exited:
			gone = true
		default:
		}
		return len(files) >= n || gone
	}) || len(files) < n {
		t.Fatalf("%d .stacks files, want %d (helper exited: %v)", len(files), n, gone)
	}
	return files
}

func TestDumpOnSignal(t *testing.T) {
	dir := t.TempDir()
	cmd, exited := startHelper(t, "dump", dir, "health")
	if err := cmd.Process.Signal(syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	files := waitStacks(t, dir, 1, exited)
	text, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	prefix := fmt.Sprintf("health-%d-", cmd.Process.Pid)
	if !strings.HasPrefix(filepath.Base(files[0]), prefix) {
		t.Errorf("file %s, want name %s<ms>.stacks", files[0], prefix)
	}
	// The helper goroutine shows wherever it is (it may still be returning
	// from writing "ready" rather than asleep).
	for _, want := range []string{"goroutine ", "crash.helper(", "memory (runtime/metrics):\n",
		"/memory/classes/heap/objects:bytes", "/memory/classes/heap/stacks:bytes", "/memory/classes/total:bytes", "/gc/heap/goal:bytes"} {
		if !strings.Contains(string(text), want) {
			t.Errorf("dump lacks %q:\n%s", want, text)
		}
	}
	// A second signal proves the process survived the first.
	if err := cmd.Process.Signal(syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	waitStacks(t, dir, 2, exited)
	select {
	case <-exited:
		t.Fatal("helper exited after SIGUSR1")
	default:
	}
}

func TestDumpBounded(t *testing.T) {
	dir := t.TempDir()
	for range MaxStacks + 2 {
		if _, err := Dump(dir, "broker"); err != nil {
			t.Fatal(err)
		}
	}
	files, _ := filepath.Glob(filepath.Join(dir, "broker-*.stacks"))
	if len(files) != MaxStacks+2 {
		t.Fatalf("Dump made %d files, want %d distinct ones", len(files), MaxStacks+2)
	}
	pruneOldest(dir, stacksSuffix, "broker-", MaxStacks, slog.New(slog.DiscardHandler))
	files, _ = filepath.Glob(filepath.Join(dir, "broker-*.stacks"))
	if len(files) != MaxStacks {
		t.Errorf("%d files after pruning, want %d", len(files), MaxStacks)
	}
}

// The memory section comes before the stacks and carries real figures: a
// running Go process has heap objects and a total above them.
func TestDumpMemory(t *testing.T) {
	path, err := Dump(t.TempDir(), "logger")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	mem, stacks := strings.Index(text, "memory (runtime/metrics):"), strings.Index(text, "\ngoroutine ")
	if mem < 0 || stacks < 0 || mem > stacks {
		t.Fatalf("want the memory section before the stacks:\n%s", text)
	}
	figure := func(name string) uint64 {
		t.Helper()
		for _, line := range strings.Split(text[mem:stacks], "\n") {
			f := strings.Fields(line)
			if len(f) == 2 && f[0] == name {
				v, err := strconv.ParseUint(f[1], 10, 64)
				if err != nil {
					t.Fatalf("%s: %v", line, err)
				}
				return v
			}
		}
		t.Fatalf("no %s line in:\n%s", name, text[mem:stacks])
		return 0
	}
	objects, total := figure("/memory/classes/heap/objects:bytes"), figure("/memory/classes/total:bytes")
	if objects == 0 || total <= objects {
		t.Errorf("heap objects %d, total %d: want 0 < objects < total", objects, total)
	}
	if g := figure("/sched/goroutines:goroutines"); g == 0 {
		t.Error("no goroutine counted")
	}
}
