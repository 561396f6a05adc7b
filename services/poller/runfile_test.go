package poller

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/internal/testpeer"
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

// A clean stop with messages unacknowledged writes the run file at exit,
// with the run's last data_seq, even when nothing was old enough for the
// periodic note (ack_timeout 1h here): the next start records what the
// logger did not commit as a gap.
func TestRunFileAtStop(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	startSim(t, twoUnits, simLink(t, dir))
	cfg := testConfig(t, dir, twoDevices("100ms", "20ms", "50ms", `ack_timeout = "1h"`))
	p, err := New(cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx, newRecorder()) }()
	testpeer.Eventually(t, 10*time.Second, "5 messages", func() bool { return p.Outbox().Stats(time.Now()).Seq >= 5 })
	runFile := filepath.Join(dir, RunFileName)
	if r, err := ReadRunRecord(runFile); r != nil || err != nil {
		t.Fatalf("run file before the stop: %+v %v", r, err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	st := p.Outbox().Stats(time.Now())
	r, err := ReadRunRecord(runFile)
	if err != nil || r == nil || r.Run != p.RunID() || r.DataSeq != st.Seq {
		t.Fatalf("run file after the stop: %+v %v; want run %s, data_seq %d", r, err, p.RunID(), st.Seq)
	}
}
