package poller

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The run file is optional; a damaged one is an error that names it (New
// then logs it and carries on without it).
func TestReadRunRecord(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, RunFileName)
	if r, err := ReadRunRecord(path); r != nil || err != nil {
		t.Fatalf("missing file: %+v, %v", r, err)
	}
	for _, bad := range []string{`{"run":"a","data_seq":`, `{"data_seq":3}`, "\x00\x01"} {
		if err := os.WriteFile(path, []byte(bad), 0o600); err != nil {
			t.Fatal(err)
		}
		if r, err := ReadRunRecord(path); err == nil || !strings.Contains(err.Error(), path) {
			t.Errorf("%q: %+v, %v; want an error naming the file", bad, r, err)
		}
		if _, err := New(testConfig(t, dir, ""), Options{}); err != nil {
			t.Errorf("New with a damaged run file: %v", err)
		}
	}
	if err := os.WriteFile(path, []byte(`{"run":"a1","data_seq":42,"at":1}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if r, err := ReadRunRecord(path); err != nil || r.Run != "a1" || r.DataSeq != 42 {
		t.Errorf("good file: %+v, %v", r, err)
	}
}
