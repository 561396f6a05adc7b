package config

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Adding a section
//
// A role that needs configuration adds, in its own file of this package:
//
//	// Poller configures the poller role.
//	type Poller struct {
//		Device []Device `toml:"device"`
//	}
//
//	func (p *Poller) validate(ch *checker) {
//		for i := range p.Device {
//			p.Device[i].validate(ch.sub(fmt.Sprintf("device[%d]", i)))
//		}
//	}
//
// then a field `Poller Poller` with the tag `toml:"poller"` in Config and its defaults
// in Default(), in types.go. Nothing else: Config.validate calls validate on
// every field of Config that has the method (see validateSections), with a
// checker whose keys are relative to the section, so ch.errorf("port", ...)
// in device 2 reports "poller.device[2].port" at the line where that key is
// written. Report every problem (do not stop at the first), name the key, and
// say what would be right. Cross-section checks go in Config.validate.

// validator is a section of the configuration that checks its own values.
type validator interface {
	validate(ch *checker)
}

// checker collects validation errors and knows where each key is written.
type checker struct {
	file   string
	ix     *index // nil for the built-in defaults
	prefix string
	state  *checkState
}

type checkState struct {
	errs []error
	// reported holds the keys that already had an error while decoding: a
	// key whose value could not be decoded kept its default, and checking
	// that default would only add noise.
	reported map[string]bool
}

func newChecker(file string, ix *index, reported map[string]bool) *checker {
	return &checker{file: file, ix: ix, state: &checkState{reported: reported}}
}

// sub returns a checker for the keys under key ("broker", "device[2]").
func (ch *checker) sub(key string) *checker {
	c := *ch
	c.prefix = joinKey(ch.prefix, key)
	return &c
}

// path returns the full path of a key relative to the checker.
func (ch *checker) path(key string) string { return joinKey(ch.prefix, key) }

// has reports whether key is written in the file.
func (ch *checker) has(key string) bool { return ch.ix.has(ch.path(key)) }

// errorf reports a problem with key at the line where it is written (or
// where its nearest written parent is).
func (ch *checker) errorf(key, format string, args ...any) {
	p := ch.path(key)
	if ch.state.reported[p] {
		return
	}
	ch.state.errs = append(ch.state.errs, &Error{
		File: ch.file, Line: ch.ix.lineOf(p), Key: p, Msg: fmt.Sprintf(format, args...),
	})
}

// validateSections calls validate on every field of c that implements
// validator, with a checker for that field's TOML key.
func validateSections(c *Config, ch *checker) {
	v := reflect.ValueOf(c).Elem()
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		f := v.Field(i)
		if !f.CanAddr() || !t.Field(i).IsExported() {
			continue
		}
		if s, ok := f.Addr().Interface().(validator); ok {
			name, _, _ := strings.Cut(t.Field(i).Tag.Get("toml"), ",")
			if name == "" {
				name = t.Field(i).Name
			}
			s.validate(ch.sub(name))
		}
	}
}

// oneOf checks that s is one of allowed.
func (ch *checker) oneOf(key, s string, allowed ...string) {
	for _, a := range allowed {
		if s == a {
			return
		}
	}
	ch.errorf(key, "%q is not one of %s", s, strings.Join(allowed, ", "))
}

// atLeast checks that d ≥ least.
func (ch *checker) atLeast(key string, d Duration, least time.Duration) {
	if d.Duration < least {
		ch.errorf(key, "%s is too short (want at least %s)", d.Duration, least)
	}
}

// atMost checks that d ≤ most.
func (ch *checker) atMost(key string, d Duration, most time.Duration) {
	if d.Duration > most {
		ch.errorf(key, "%s is too long (want at most %s)", d.Duration, most)
	}
}

// positive checks that d > 0.
func (ch *checker) positive(key string, d Duration) {
	if d.Duration <= 0 {
		ch.errorf(key, "must be more than 0s")
	}
}

// intRange checks that lo ≤ n ≤ hi.
func (ch *checker) intRange(key string, n, lo, hi int) {
	if n < lo || n > hi {
		ch.errorf(key, "%d is out of range (want %d to %d)", n, lo, hi)
	}
}

// sizeRange checks that lo ≤ s ≤ hi.
func (ch *checker) sizeRange(key string, s, lo, hi Size) {
	if s < lo || s > hi {
		ch.errorf(key, "%s is out of range (want %s to %s)", sizeString(s), sizeString(lo), sizeString(hi))
	}
}

func sizeString(s Size) string {
	b, _ := s.MarshalText()
	return string(b)
}

// maxUnixPath is the longest path a unix socket address can hold (the size
// of sun_path less its terminating NUL).
const maxUnixPath = 107

// absPath checks that s is an absolute path, no longer than max bytes when
// max > 0.
func (ch *checker) absPath(key, s string, max int) {
	switch {
	case !filepath.IsAbs(s):
		ch.errorf(key, "%q is not an absolute path", s)
	case strings.IndexByte(s, 0) >= 0:
		ch.errorf(key, "%q holds a NUL byte", s)
	case max > 0 && len(s) > max:
		ch.errorf(key, "path is %d bytes long (a unix socket path can be at most %d)", len(s), max)
	}
}

// hostPort checks a TCP address "host:port" with a port from 1 to 65535 and
// a host that is an IP address or a DNS name; with anyHost, an empty host
// (all interfaces, ":1883") is accepted too.
func (ch *checker) hostPort(key, s string, anyHost bool) {
	if msg := checkHostPort(s, anyHost); msg != "" {
		ch.errorf(key, "bad address %q: %s", s, msg)
	}
}

func checkHostPort(s string, anyHost bool) string {
	const want = `want host:port, e.g. "127.0.0.1:1883" or "[::1]:1883"`
	host, port, err := splitHostPort(s)
	if err != "" {
		return err + " (" + want + ")"
	}
	n, perr := strconv.Atoi(port)
	if perr != nil || n < 1 || n > 65535 || port[0] == '+' {
		return fmt.Sprintf("port %q is not a number from 1 to 65535", port)
	}
	if host == "" {
		if anyHost {
			return ""
		}
		return "no host (" + want + ")"
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return ""
	}
	if !isDNSName(host) {
		return fmt.Sprintf("host %q is neither an IP address nor a host name", host)
	}
	return ""
}

// splitHostPort splits "host:port" or "[host]:port"; brackets are needed
// around an IPv6 address.
func splitHostPort(s string) (host, port, problem string) {
	if strings.HasPrefix(s, "[") {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return "", "", "missing ']'"
		}
		host, rest := s[1:end], s[end+1:]
		if !strings.HasPrefix(rest, ":") {
			return "", "", "missing port"
		}
		if _, err := netip.ParseAddr(host); err != nil || !strings.Contains(host, ":") {
			return "", "", fmt.Sprintf("%q in brackets is not an IPv6 address", host)
		}
		return host, rest[1:], ""
	}
	i := strings.LastIndexByte(s, ':')
	if i < 0 {
		return "", "", "missing port"
	}
	host, port = s[:i], s[i+1:]
	if strings.Contains(host, ":") {
		return "", "", "an IPv6 address needs brackets"
	}
	return host, port, ""
}

// isDNSName reports whether s is a host name: dot-separated labels of
// letters, digits and hyphens, each 1 to 63 long and not starting or ending
// with a hyphen, 253 bytes at most.
func isDNSName(s string) bool {
	s = strings.TrimSuffix(s, ".")
	if s == "" || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// topic checks that s can stand in an MQTT topic name (see TopicProblem).
func (ch *checker) topic(key, s string, oneLevel bool) {
	if msg := TopicProblem(s, oneLevel); msg != "" {
		ch.errorf(key, "%s", msg)
	}
}

// NameProblem says what is wrong with s as a name that is one topic level
// (a port, device or point name; a field a line device sends that becomes
// a point), or returns "" when nothing is: the rule of TopicProblem with
// oneLevel. The poller applies it to record fields, so a point named by
// line noise never reaches the bus, and the logger to the device and point
// names that come from the bus, so that what it stores obeys the same rule
// as what can be configured.
func NameProblem(s string) string { return TopicProblem(s, true) }

// TopicProblem says what keeps s from standing in an MQTT topic name as
// levels, or returns "" when nothing does: not empty, valid UTF-8 without
// NUL or other control characters (MQTT says topics should have none, and
// they turn logs and CSV exports into noise), no wildcard (+ #), no empty
// level, not starting with $ (reserved for $SYS); with oneLevel, no '/'
// either. The message quotes s.
func TopicProblem(s string, oneLevel bool) string {
	switch {
	case s == "":
		return "must not be empty"
	case !utf8.ValidString(s) || strings.ContainsRune(s, 0):
		return fmt.Sprintf("%q is not valid UTF-8 text without NUL", s)
	case strings.ContainsFunc(s, unicode.IsControl):
		return fmt.Sprintf("%q holds a control character", s)
	case strings.ContainsAny(s, "+#"):
		return fmt.Sprintf("%q holds an MQTT wildcard (+ or #)", s)
	case s[0] == '$':
		return fmt.Sprintf("%q starts with $, which is reserved for broker topics", s)
	case oneLevel && strings.Contains(s, "/"):
		return fmt.Sprintf("%q holds a '/' (want a single topic level)", s)
	case strings.HasPrefix(s, "/") || strings.HasSuffix(s, "/") || strings.Contains(s, "//"):
		return fmt.Sprintf("%q has an empty topic level (a leading, trailing or double '/')", s)
	}
	return ""
}
