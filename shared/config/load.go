package config

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"

	toml "github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"
)

// EnvVar names the environment variable that Resolve consults when no
// -config flag is given.
const EnvVar = "TINYSCADA_CONFIG"

// Resolve returns the configuration file a command should load:
//   - flagValue, when it is not empty (the -config flag);
//   - else the value of $TINYSCADA_CONFIG, when it is set and not empty;
//   - else DefaultPath, when something exists there (even if it cannot be
//     read: Load then reports why, rather than silently running the demo);
//   - else "", which Load turns into the built-in demo configuration.
func Resolve(flagValue string) (path string) {
	return resolve(flagValue, os.Getenv(EnvVar), DefaultPath)
}

func resolve(flagValue, env, defaultPath string) string {
	switch {
	case flagValue != "":
		return flagValue
	case env != "":
		return env
	}
	if _, err := os.Stat(defaultPath); err == nil || !errors.Is(err, fs.ErrNotExist) {
		return defaultPath
	}
	return ""
}

// Load returns the configuration in the file at path, as Parse does.
// With path "" it reads no file and returns Default(), with node filled in
// from the host name and state_dir made absolute. A file that cannot be read
// gives an error wrapping the *fs.PathError (errors.Is(err, fs.ErrNotExist)
// holds for a missing file); a bad file gives what Parse gives.
func Load(path string) (*Config, error) {
	if path == "" {
		c := Default()
		if errs := finish(c, newChecker("", nil, map[string]bool{})); len(errs) > 0 {
			return nil, errors.Join(errs...)
		}
		return c, nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return Parse(path, data)
}

// Parse decodes data, the content of the file name, on top of Default(), so
// that keys left out keep their defaults, and validates the result.
//
// The file must set version = 1. Unknown keys, values of the wrong type, bad
// values (durations, sizes, addresses...), duplicate keys and syntax errors
// are errors. On success Parse returns the configuration with node filled in
// from the host name when empty and state_dir made absolute (relative to the
// current directory), and a nil error. Otherwise it returns nil and every
// problem found, each a *Error that names name, the line and the key, joined
// with errors.Join when there are several and sorted by line. After a syntax
// error nothing else is reported.
func Parse(name string, data []byte) (*Config, error) {
	if bytes.HasPrefix(data, []byte("\uFEFF")) {
		// A byte order mark, as some editors write: read it as blanks,
		// which keeps the columns.
		data = append([]byte("   "), data[3:]...)
	}
	data = data[:len(data):len(data)] // offsets are computed from capacities
	ix := newIndex(data)
	if ix.err != nil {
		return nil, syntaxError(name, ix)
	}
	c, ch, complete := decode(name, data, ix)
	if _, written := ix.byPath["version"]; !written {
		ch.state.errs = append(ch.state.errs, &Error{File: name, Line: 1, Key: "version",
			Msg: "missing: a configuration file must set version = 1"})
		ch.state.reported["version"] = true
	}
	errs := ch.state.errs
	if complete {
		errs = finish(c, ch)
	}
	if len(errs) > 0 {
		slices.SortStableFunc(errs, func(a, b error) int {
			return cmp.Compare(sortLine(a), sortLine(b))
		})
		return nil, errors.Join(errs...)
	}
	return c, nil
}

// sortLine orders errors by line, those without a line last.
func sortLine(err error) int {
	var e *Error
	if errors.As(err, &e) && e.Line > 0 {
		return e.Line
	}
	return int(^uint(0) >> 1)
}

// finish fills in the derived values of a decoded configuration, validates
// it and returns every error collected by ch.
func finish(c *Config, ch *checker) []error {
	normalize(reflect.ValueOf(c))
	if c.Node == "" {
		host, err := os.Hostname()
		switch {
		case err != nil:
			ch.errorf("node", "not set, and the host name is unknown (%v): set node", err)
		case strings.ContainsAny(host, "/+#") || host == "" || host[0] == '$':
			ch.errorf("node", "not set, and the host name %q cannot be a topic level: set node", host)
			ch.state.reported["node"] = true
		default:
			c.Node = host
		}
	}
	c.validate(ch)
	if c.StateDir != "" {
		abs, err := filepath.Abs(c.StateDir)
		if err != nil {
			ch.errorf("state_dir", "cannot make %q absolute: %v", c.StateDir, err)
		} else {
			c.StateDir = abs
		}
	}
	return ch.state.errs
}

// decode decodes data strictly on top of Default(), once, and returns every
// problem with it. go-toml stops at the first value it cannot decode, so
// the keys are checked first, each on its own: against the fields of Config
// (see problem), then by decoding the value of each top-level key-value
// alone into its field's type (see checkValue). The expressions with a
// problem are blanked out of the document, which then decodes at once;
// anything else go-toml refuses (which the checks should have found) is
// reported at the position it gives. complete says whether the returned
// configuration holds every key that could be decoded, so that validating
// it makes sense.
func decode(name string, data []byte, ix *index) (c *Config, ch *checker, complete bool) {
	ch = newChecker(name, ix, map[string]bool{})
	add := func(line int, key, msg string) {
		ch.state.errs = append(ch.state.errs, &Error{File: name, Line: line, Key: key, Msg: msg})
		if key != "" {
			ch.state.reported[key] = true
		}
	}
	bad := make([]bool, len(ix.exprs)) // the expressions left out of the decoding
	skip := 0                          // the end of a table refused as a whole
	for i := range ix.entries {
		e := &ix.entries[i]
		if e.start < skip {
			bad[e.expr] = true // without its header, the key would land in the table before
			continue
		}
		if key, msg := ix.problem(i); msg != "" {
			add(ix.line(e.start), key, msg)
			bad[e.expr] = true
			if x := ix.exprs[e.expr]; x.header {
				skip = x.end
			}
		}
	}
	for i, x := range ix.exprs {
		if !bad[i] && !x.header {
			if line, key, msg := ix.checkValue(&ix.entries[x.entry]); msg != "" {
				add(line, key, msg)
				bad[i] = true
			}
		}
	}
	work := data
	if slices.Contains(bad, true) {
		work = bytes.Clone(data)
	}
	for i := range ix.entries {
		ix.entries[i].dropped = bad[ix.entries[i].expr]
	}
	for i, x := range ix.exprs {
		if bad[i] {
			for j := x.start; j < x.end; j++ {
				if work[j] != '\n' {
					work[j] = ' ' // keeping the newlines keeps the line numbers
				}
			}
		}
	}

	c = Default()
	err := decodeStrict(work, c)
	var strict *toml.StrictMissingError
	var de *toml.DecodeError
	switch {
	case err == nil:
		return c, ch, true
	case errors.As(err, &strict):
		// Keys that go-toml has no field for, and problem missed. It
		// reports them after decoding everything else, at the start of
		// the key (the dotted log.colour is at "log"): the key-value's
		// entry comes after those of its parts, so at finds it.
		for i := range strict.Errors {
			line, col := strict.Errors[i].Position()
			if e := ix.at(offsetAt(work, line, col)); e == nil {
				add(line, strings.Join(strict.Errors[i].Key(), "."), "unknown key")
			} else if !ch.state.reported[e.path] {
				add(line, e.path, unknownMessage(e))
			}
		}
		return c, ch, true
	case errors.As(err, &de):
		line, col := de.Position()
		key, msg := decodeMessage(ix, ix.at(offsetAt(work, line, col)), de)
		add(line, key, msg)
	default:
		add(0, "", err.Error())
	}
	return c, ch, false
}

// decodeStrict decodes doc into v, rejecting unknown keys.
func decodeStrict(doc []byte, v any) error {
	d := toml.NewDecoder(bytes.NewReader(doc))
	d.DisallowUnknownFields()
	return d.Decode(v)
}

// checkValue decodes the value of key-value e alone, as go-toml would decode
// it into its field, and returns the line, key and message of what is wrong
// with it; "" if nothing is or if Config has no field for e.
func (ix *index) checkValue(e *entry) (line int, key, msg string) {
	t := typeAt(e.path)
	if t == nil {
		return 0, "", ""
	}
	v := reflect.New(reflect.StructOf([]reflect.StructField{{Name: "V", Type: t, Tag: `toml:"v"`}}))
	const prefix = "v="
	doc := append([]byte(prefix), ix.data[e.value:e.end]...)
	err := toml.Unmarshal(doc, v.Interface())
	var de *toml.DecodeError
	switch {
	case err == nil:
		return 0, "", ""
	case errors.As(err, &de):
		// The position is in doc; an element of an array or a key of an
		// inline table is named by the entry that holds it.
		l, col := de.Position()
		off := e.value + offsetAt(doc, l, col) - len(prefix)
		inner := ix.at(off)
		if inner == nil || inner.start < e.start || inner.end > e.end {
			inner = e
		}
		key, msg = decodeMessage(ix, inner, de)
		return ix.line(off), key, msg
	}
	// An UnmarshalText given a TOML integer, float or boolean: go-toml
	// gives no position, and the message does not say what was written.
	msg = err.Error()
	if k := e.valueKind; k != unstable.String && k != unstable.Array && k != unstable.InlineTable {
		msg += fmt.Sprintf(" (got a TOML %s)", strings.ToLower(k.String()))
	}
	return ix.line(e.start), e.path, msg
}

// decodeMessage turns a decoder error about entry e (nil if unknown) into
// the key it concerns and a message for people.
func decodeMessage(ix *index, e *entry, de *toml.DecodeError) (key, msg string) {
	msg = strings.TrimPrefix(de.Error(), "toml: ")
	if e == nil {
		return strings.Join(de.Key(), "."), msg
	}
	key = e.path
	first := ix.line(ix.entries[ix.byPath[key]].start)
	switch {
	case strings.HasPrefix(msg, "cannot decode TOML "):
		got, _, _ := strings.Cut(strings.TrimPrefix(msg, "cannot decode TOML "), " into ")
		if want := describe(typeAt(key)); want != "" {
			msg = fmt.Sprintf("wrong type: got a TOML %s, want %s", got, want)
		}
	case strings.HasSuffix(msg, "is already defined"):
		msg = fmt.Sprintf("duplicate key (first set on line %d)", first)
	case strings.HasSuffix(msg, "already exists"):
		msg = fmt.Sprintf("duplicate table (first defined on line %d)", first)
	}
	return key, msg
}

// syntaxError reports the parser's error, naming the key of the expression
// it is in when that can be told.
func syntaxError(name string, ix *index) error {
	msg := ix.err.Error()
	off := len(ix.data)
	var pe *unstable.ParserError
	if errors.As(ix.err, &pe) {
		// The highlight is a subslice of data: its capacity tells where.
		if o := len(ix.data) - cap(pe.Highlight); cap(pe.Highlight) > 0 && o >= 0 {
			off = o
		}
	}
	if off >= len(ix.data) && off > 0 {
		off = len(ix.data) - 1
	}
	return &Error{File: name, Line: ix.line(off), Key: ix.failedKey(off), Msg: "syntax error: " + msg}
}

// Encode returns the configuration as a TOML file holding every key,
// defaults included; Parse gives back an equal Config. It fails only if a
// value cannot be written (never for a Config that Parse or Load returned).
func (c *Config) Encode() ([]byte, error) {
	var buf bytes.Buffer
	buf.WriteString("# tinyscada configuration (docs/configuration.md)\n\n")
	enc := toml.NewEncoder(&buf)
	if err := enc.Encode(c); err != nil {
		return nil, fmt.Errorf("config: encode: %w", err)
	}
	return buf.Bytes(), nil
}

// normalize replaces the empty slices and maps in v (a pointer) by nil,
// recursively, so that equal configurations compare equal with
// reflect.DeepEqual however they were written (`listen = []` or decoded
// from an encoding). It also moves each other slice to an array of its
// length: the decoder grows a slice an element at a time, which leaves up
// to half of its array unused, and every role keeps its configuration for
// its lifetime (go test -bench ParseRetained ./shared/config: a field
// configuration of 1000 points kept 403 KB of heap before, 280 KB after).
func normalize(v reflect.Value) {
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface:
		if !v.IsNil() {
			normalize(v.Elem())
		}
	case reflect.Struct:
		for i := 0; i < v.NumField(); i++ {
			if f := v.Field(i); f.CanSet() {
				normalize(f)
			}
		}
	case reflect.Slice:
		if v.Len() == 0 {
			if !v.IsNil() && v.CanSet() {
				v.SetZero()
			}
			return
		}
		if v.Cap() > v.Len() && v.CanSet() {
			exact := reflect.MakeSlice(v.Type(), v.Len(), v.Len())
			reflect.Copy(exact, v)
			v.Set(exact)
		}
		fallthrough
	case reflect.Array:
		for i := 0; i < v.Len(); i++ {
			normalize(v.Index(i))
		}
	case reflect.Map:
		if v.Len() == 0 && !v.IsNil() && v.CanSet() {
			v.SetZero()
		}
	}
}
