package logging

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
)

func TestParseLevel(t *testing.T) {
	tests := []struct {
		in      string
		want    slog.Level
		wantErr bool
	}{
		{"debug", slog.LevelDebug, false},
		{"INFO", slog.LevelInfo, false},
		{" warn ", slog.LevelWarn, false},
		{"Warning", slog.LevelWarn, false},
		{"error", slog.LevelError, false},
		{"info+2", slog.LevelInfo + 2, false},
		{"", slog.LevelInfo, false},
		{"verbose", 0, true},
		{"5", 0, true},
	}
	for _, tt := range tests {
		got, err := ParseLevel(tt.in)
		if (err != nil) != tt.wantErr || (!tt.wantErr && got != tt.want) {
			t.Errorf("ParseLevel(%q) = %v, %v; want %v, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
		if err != nil && !strings.Contains(err.Error(), fmt.Sprintf("%q", tt.in)) {
			t.Errorf("error %q does not name the value", err)
		}
	}
}

func TestPriority(t *testing.T) {
	tests := []struct {
		l    slog.Level
		want int
	}{
		{slog.LevelDebug - 4, 7}, {slog.LevelDebug, 7}, {slog.LevelInfo - 1, 7},
		{slog.LevelInfo, 6}, {slog.LevelInfo + 2, 5},
		{slog.LevelWarn, 4}, {slog.LevelError, 3}, {slog.LevelError + 4, 3},
	}
	for _, tt := range tests {
		if got := Priority(tt.l); got != tt.want {
			t.Errorf("Priority(%v) = %d, want %d", tt.l, got, tt.want)
		}
	}
}

var timeRE = regexp.MustCompile(`^time=\S+ `)

func TestNewPlain(t *testing.T) {
	t.Setenv("JOURNAL_STREAM", "")
	var buf bytes.Buffer
	log := New(&buf, "warn")
	log.Info("hidden")
	log.Warn("shown", "port", "ttyS0")
	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	if len(lines) != 1 {
		t.Fatalf("got %q, want one line", buf.String())
	}
	if !timeRE.MatchString(lines[0]) || !strings.HasSuffix(lines[0], ` level=WARN msg=shown port=ttyS0`) {
		t.Errorf("line %q, want time, level, msg and attrs", lines[0])
	}

	buf.Reset()
	New(&buf, "nonsense").Info("x")
	New(&buf, "nonsense").Debug("y")
	if s := buf.String(); !strings.Contains(s, "msg=x") || strings.Contains(s, "msg=y") {
		t.Errorf("invalid level: got %q, want info level", s)
	}
}

// journalFile makes a real file and points JOURNAL_STREAM at it, as systemd
// does for the socket it gives a service as stderr.
func journalFile(t *testing.T) *os.File {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), "journal"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	t.Setenv("JOURNAL_STREAM", fmt.Sprintf("%d:%d", st.Dev, st.Ino))
	return f
}

func TestIsJournal(t *testing.T) {
	f := journalFile(t)
	if !IsJournal(f) {
		t.Error("IsJournal = false for the file JOURNAL_STREAM names")
	}
	other, err := os.Create(filepath.Join(t.TempDir(), "other"))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if IsJournal(other) {
		t.Error("IsJournal = true for another file")
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	if IsJournal(w) {
		t.Error("IsJournal = true for a pipe")
	}
	for _, v := range []string{"", "1:", ":2", "a:b", "12"} {
		t.Setenv("JOURNAL_STREAM", v)
		if IsJournal(f) {
			t.Errorf("IsJournal = true with JOURNAL_STREAM=%q", v)
		}
	}
}

func TestNewJournal(t *testing.T) {
	f := journalFile(t)
	log := New(f, "debug").With("svc", "poller")
	log.Debug("d")
	log.Info("i", "n", 1)
	log.Log(t.Context(), slog.LevelInfo+2, "notice")
	log.WithGroup("dev").Warn("w", "id", 7)
	log.Error("e", "err", "line1\nline2")
	got, err := os.ReadFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	want := `<7>level=DEBUG msg=d svc=poller
<6>level=INFO msg=i svc=poller n=1
<5>level=INFO+2 msg=notice svc=poller
<4>level=WARN msg=w svc=poller dev.id=7
<3>level=ERROR msg=e svc=poller err="line1\nline2"
`
	if string(got) != want {
		t.Errorf("journal output:\n%s\nwant:\n%s", got, want)
	}

	// Another file while JOURNAL_STREAM names f: plain lines with time.
	var buf bytes.Buffer
	New(&buf, "info").Info("plain")
	if !timeRE.MatchString(buf.String()) {
		t.Errorf("non-journal output %q, want a time", buf.String())
	}
}

func TestJournalConcurrent(t *testing.T) {
	f := journalFile(t)
	log := New(f, "debug")
	levels := []slog.Level{slog.LevelDebug, slog.LevelInfo, slog.LevelWarn, slog.LevelError}
	var wg sync.WaitGroup
	for _, l := range levels {
		wg.Add(1)
		go func() {
			defer wg.Done()
			child := log.With("level_of", l.String())
			for i := range 200 {
				child.Log(t.Context(), l, "m", "i", i)
			}
		}()
	}
	wg.Wait()
	got, err := os.ReadFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(got), "\n"), "\n")
	if len(lines) != 800 {
		t.Fatalf("%d lines, want 800", len(lines))
	}
	for _, line := range lines {
		for _, l := range levels {
			if strings.Contains(line, "level_of="+l.String()) && !strings.HasPrefix(line, fmt.Sprintf("<%d>level=%s ", Priority(l), l)) {
				t.Fatalf("line %q has the wrong priority", line)
			}
		}
	}
}
