package testpeer

import (
	"bufio"
	"database/sql"
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

// MissingCovered checks, in a readings database (docs/logger.md's schema),
// that every sample id from 1 to last that is not in the database was
// uploaded (≤ uploaded) or is named by a 'dropped' gap record; it fails the
// test otherwise, and returns how many samples the 'dropped' gaps name.
func MissingCovered(t testing.TB, db *sql.DB, last, uploaded int64) (dropped int64) {
	t.Helper()
	present := map[int64]bool{}
	rows, err := db.Query(`SELECT id FROM sample`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		present[id] = true
	}
	rows.Close()
	type span struct{ a, b int64 }
	var gaps []span
	rows, err = db.Query(`SELECT first_row, last_row, samples FROM gap WHERE kind = 'dropped'`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var sp span
		var n int64
		if err := rows.Scan(&sp.a, &sp.b, &n); err != nil {
			t.Fatal(err)
		}
		gaps = append(gaps, sp)
		dropped += n
	}
	rows.Close()
	for id := int64(1); id <= last; id++ {
		if present[id] || id <= uploaded {
			continue
		}
		covered := false
		for _, g := range gaps {
			if id >= g.a && id <= g.b {
				covered = true
				break
			}
		}
		if !covered {
			t.Fatalf("sample %d is gone without a gap record (uploaded up to %d)", id, uploaded)
		}
	}
	return dropped
}
