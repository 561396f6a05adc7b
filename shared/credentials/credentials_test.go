package credentials

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

func TestEnsureCreatesPrivateFilesAndKeepsThem(t *testing.T) {
	dir := t.TempDir()
	if _, err := Read(dir, "poller"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Read before Ensure: %v, want fs.ErrNotExist", err)
	}
	first, err := Ensure(dir, []string{"poller", Operator})
	if err != nil {
		t.Fatal(err)
	}
	if len(first["poller"]) != 64 || first["poller"] == first[Operator] {
		t.Fatalf("passwords %q: want 64 hex chars, distinct per user", first)
	}
	for _, u := range []string{"poller", Operator} {
		st, err := os.Stat(filepath.Join(Dir(dir), u))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", u, st.Mode().Perm())
		}
	}
	again, err := Ensure(dir, []string{"poller", Operator, "logger"})
	if err != nil {
		t.Fatal(err)
	}
	if again["poller"] != first["poller"] || again[Operator] != first[Operator] {
		t.Error("Ensure replaced existing credentials")
	}
	if p, err := Read(dir, "logger"); err != nil || p != again["logger"] {
		t.Errorf("Read(logger) = %q, %v; want %q", p, err, again["logger"])
	}
}

func TestReadEmptyFile(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(Dir(dir), 0o700)
	os.WriteFile(filepath.Join(Dir(dir), "poller"), []byte("\n"), 0o600)
	if _, err := Read(dir, "poller"); err == nil {
		t.Fatal("Read of an empty credential succeeded")
	}
}
