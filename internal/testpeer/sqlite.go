package testpeer

import (
	"bufio"
	"io"
	"os/exec"
	"sync"
	"testing"
)

// LockSQLite opens Debian's sqlite3 shell on the database at path and holds
// a write transaction (BEGIN IMMEDIATE, then stmts) until release is
// called, like a technician's shell left open; release rolls it back and
// quits. It fails the test when the shell cannot take the lock within 10 s.
func LockSQLite(t testing.TB, path string, stmts ...string) (release func()) {
	t.Helper()
	sh := exec.Command(Need(t, "sqlite3"), path)
	stdin, err := sh.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := sh.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := sh.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sh.Process.Kill(); _ = sh.Wait() })
	script := ".timeout 10000\nBEGIN IMMEDIATE;\n"
	for _, s := range stmts {
		script += s + "\n"
	}
	if _, err := io.WriteString(stdin, script+"SELECT 'locked';\n"); err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewScanner(stdout)
	if !lines.Scan() || lines.Text() != "locked" {
		t.Fatalf("sqlite3 did not take the lock on %s: %q %v", path, lines.Text(), lines.Err())
	}
	var once sync.Once
	return func() {
		t.Helper()
		once.Do(func() {
			if _, err := io.WriteString(stdin, "ROLLBACK;\n.quit\n"); err != nil {
				t.Fatal(err)
			}
			if err := sh.Wait(); err != nil {
				t.Fatalf("sqlite3: %v", err)
			}
		})
	}
}
