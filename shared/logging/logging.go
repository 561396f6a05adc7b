// Package logging makes the slog loggers of tinyscada: text lines on stderr,
// which under systemd carry the journal priority of their level.
package logging

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// New returns a logger that writes text lines (slog.TextHandler) to w, or
// to os.Stderr if w is nil, at level and above. level is parsed by
// ParseLevel; an invalid one means info (validate it beforehand with
// ParseLevel to report it). When w is the journal's stream (see IsJournal),
// each line starts with its syslog priority, "<N>" as sd-daemon(3)
// describes (debug 7, info 6, notice 5 for levels between info and warn,
// warn 4, error 3), and carries no time, which the journal adds.
func New(w io.Writer, level string) *slog.Logger {
	l, err := ParseLevel(level)
	if err != nil {
		l = slog.LevelInfo
	}
	return slog.New(NewHandler(w, l))
}

// NewHandler returns the handler New uses, with any slog.Leveler (such as
// a *slog.LevelVar, to change the level while running).
func NewHandler(w io.Writer, level slog.Leveler) slog.Handler {
	if w == nil {
		w = os.Stderr
	}
	f, isFile := w.(*os.File)
	if !isFile || !IsJournal(f) {
		return slog.NewTextHandler(w, &slog.HandlerOptions{Level: level})
	}
	out := &prefixWriter{w: w}
	return &journalHandler{
		inner: slog.NewTextHandler(out, &slog.HandlerOptions{
			Level: level,
			ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
				if len(groups) == 0 && a.Key == slog.TimeKey {
					return slog.Attr{}
				}
				return a
			},
		}),
		out: out,
	}
}

// ParseLevel parses debug, info, warn (or warning) or error, in any case,
// optionally with an offset as slog writes it ("info+2"). The empty string
// is info, the default. Anything else is an error naming the value.
func ParseLevel(s string) (slog.Level, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	switch t {
	case "":
		return slog.LevelInfo, nil
	case "warning":
		return slog.LevelWarn, nil
	}
	var l slog.Level
	if err := l.UnmarshalText([]byte(t)); err != nil {
		return 0, fmt.Errorf("logging: level %q: want debug, info, warn or error", s)
	}
	return l, nil
}

// IsJournal reports whether f is the stream systemd connected to the
// journal: $JOURNAL_STREAM ("<device>:<inode>", set by systemd for a
// service whose output goes to the journal) names f's device and inode.
// It is false when the variable is unset or malformed, or f cannot be
// examined.
func IsJournal(f *os.File) bool {
	v := os.Getenv("JOURNAL_STREAM")
	devS, inoS, ok := strings.Cut(v, ":")
	if !ok {
		return false
	}
	dev, err1 := strconv.ParseUint(devS, 10, 64)
	ino, err2 := strconv.ParseUint(inoS, 10, 64)
	if err1 != nil || err2 != nil {
		return false
	}
	st, err := f.Stat()
	if err != nil {
		return false
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	return ok && uint64(sys.Dev) == dev && uint64(sys.Ino) == ino
}

// Priority returns the syslog priority for a level: 7 (debug) below info,
// 6 (info), 5 (notice) between info and warn, 4 (warning), 3 (err) from
// error up.
func Priority(l slog.Level) int {
	switch {
	case l >= slog.LevelError:
		return 3
	case l >= slog.LevelWarn:
		return 4
	case l > slog.LevelInfo:
		return 5
	case l == slog.LevelInfo:
		return 6
	default:
		return 7
	}
}

// journalHandler prefixes each line of a TextHandler with the priority.
// The TextHandler writes a record with one Write to out; Handle sets the
// prefix for that Write under out's lock.
type journalHandler struct {
	inner slog.Handler
	out   *prefixWriter
}

type prefixWriter struct {
	mu     sync.Mutex
	w      io.Writer
	prefix string
	buf    []byte
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.buf = append(append(p.buf[:0], p.prefix...), b...)
	if _, err := p.w.Write(p.buf); err != nil {
		return 0, err
	}
	return len(b), nil
}

func (h *journalHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.inner.Enabled(ctx, l)
}

func (h *journalHandler) Handle(ctx context.Context, r slog.Record) error {
	h.out.mu.Lock()
	defer h.out.mu.Unlock()
	h.out.prefix = "<" + strconv.Itoa(Priority(r.Level)) + ">"
	return h.inner.Handle(ctx, r)
}

func (h *journalHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &journalHandler{inner: h.inner.WithAttrs(as), out: h.out}
}

func (h *journalHandler) WithGroup(name string) slog.Handler {
	return &journalHandler{inner: h.inner.WithGroup(name), out: h.out}
}
