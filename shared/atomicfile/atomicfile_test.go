package atomicfile

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// names lists the entries of dir.
func names(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

func TestWriteFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.json")
	for i, data := range []string{"first", "second, longer than the first", ""} {
		perm := os.FileMode(0o600 + i) // 0600, 0601, 0602
		if err := WriteFile(path, []byte(data), perm); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != data {
			t.Errorf("content %q, want %q", got, data)
		}
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != perm {
			t.Errorf("mode %v, want %v", st.Mode().Perm(), perm)
		}
		if n := names(t, dir); len(n) != 1 || n[0] != "state.json" {
			t.Errorf("directory holds %q, want only state.json", n)
		}
	}
}

func TestWriteFileRenameFails(t *testing.T) {
	dir := t.TempDir()
	// A non-empty directory cannot be renamed over: the write succeeds and
	// the rename fails.
	path := filepath.Join(dir, "target")
	if err := os.MkdirAll(filepath.Join(path, "child"), 0o755); err != nil {
		t.Fatal(err)
	}
	err := WriteFile(path, []byte("data"), 0o644)
	if err == nil {
		t.Fatal("WriteFile over a non-empty directory succeeded")
	}
	if !strings.Contains(err.Error(), path) {
		t.Errorf("error %q does not name %s", err, path)
	}
	if n := names(t, dir); len(n) != 1 || n[0] != "target" {
		t.Errorf("directory holds %q, want only target (temp file left behind?)", n)
	}
}

func TestWriteFileMissingDir(t *testing.T) {
	err := WriteFile(filepath.Join(t.TempDir(), "no", "such", "f"), []byte("x"), 0o644)
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("err = %v, want fs.ErrNotExist", err)
	}
}

// TestWriteFileWriteFails makes the write itself fail (EFBIG) in a child
// process whose file size limit is smaller than the data.
func TestWriteFileWriteFails(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state")
	old := []byte("old content")
	if err := os.WriteFile(path, old, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$")
	cmd.Env = append(os.Environ(), "ATOMICFILE_HELPER="+path)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helper: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "WriteFile error:") || !strings.Contains(string(out), "file too large") {
		t.Fatalf("helper output %q: want a failed write (file too large)", out)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, old) {
		t.Errorf("content %q, want the old %q", got, old)
	}
	if n := names(t, dir); len(n) != 1 || n[0] != "state" {
		t.Errorf("directory holds %q, want only state (temp file left behind?)", n)
	}
}

func TestHelperProcess(t *testing.T) {
	path := os.Getenv("ATOMICFILE_HELPER")
	if path == "" {
		t.Skip("helper process for TestWriteFileWriteFails")
	}
	// Go ignores SIGXFSZ, so writing past the limit returns EFBIG.
	if err := unix.Setrlimit(unix.RLIMIT_FSIZE, &unix.Rlimit{Cur: 4096, Max: 4096}); err != nil {
		fmt.Println("setrlimit:", err)
		os.Exit(1)
	}
	err := WriteFile(path, make([]byte, 64<<10), 0o644)
	fmt.Println("WriteFile error:", err)
	os.Exit(0)
}

func TestClaim(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "job.pending")
	dst := filepath.Join(dir, "sub", "job.mine")
	if err := os.WriteFile(src, []byte("job"), 0o644); err != nil {
		t.Fatal(err)
	}

	// Destination directory missing: an error, but not "src is gone".
	err := Claim(src, dst)
	if err == nil || errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Claim into a missing directory = %v, want an error that is not fs.ErrNotExist", err)
	}
	if _, err := os.Stat(src); err != nil {
		t.Fatalf("src gone after a failed claim: %v", err)
	}

	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := Claim(src, dst); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(dst); err != nil || string(got) != "job" {
		t.Errorf("dst = %q, %v; want job", got, err)
	}
	err = Claim(src, dst+"2")
	if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), src) {
		t.Errorf("second claim = %v, want fs.ErrNotExist naming %s", err, src)
	}
}

func TestClaimRace(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "job")
	if err := os.WriteFile(src, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	const n = 8
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = Claim(src, filepath.Join(dir, fmt.Sprintf("claimed-%d", i)))
		}()
	}
	wg.Wait()
	won := 0
	for _, err := range errs {
		switch {
		case err == nil:
			won++
		case !errors.Is(err, fs.ErrNotExist):
			t.Errorf("unexpected error: %v", err)
		}
	}
	if won != 1 {
		t.Errorf("%d claims succeeded, want exactly 1", won)
	}
}

func TestCleanTemp(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.json")
	if err := WriteFile(path, []byte("kept"), 0o644); err != nil {
		t.Fatal(err)
	}
	// What a kill -9 during WriteFile leaves: temporaries of state.json.
	left := []string{filepath.Join(dir, ".state.json.tmp-123"), filepath.Join(dir, ".state.json.tmp-456")}
	others := []string{filepath.Join(dir, ".other.json.tmp-1"), filepath.Join(dir, "state.json.tmp-2"),
		filepath.Join(dir, ".state.json.tmp-x.tmp-3")} // a temporary of "state.json.tmp-x"
	for _, p := range append(left, others...) {
		if err := os.WriteFile(p, []byte("partial"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	removed, err := CleanTemp(path)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(removed) != fmt.Sprint(left) {
		t.Errorf("removed %q, want %q", removed, left)
	}
	if n := names(t, dir); len(n) != 4 {
		t.Errorf("directory holds %q, want state.json and the three unrelated files", n)
	}
	if removed, err := CleanTemp(path); len(removed) != 0 || err != nil {
		t.Errorf("second CleanTemp = %q, %v; want nothing", removed, err)
	}
}
