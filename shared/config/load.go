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

// maxDecodeErrors bounds how many decoding errors (wrong types, bad values,
// duplicate keys) Parse reports; each one costs a decoding of the document.
// Unknown keys are all reported, however many.
const maxDecodeErrors = 50

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
	if !ix.has("version") {
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

// decode decodes data strictly on top of Default(). To report more than the
// first error, it blanks out the expression that failed and decodes again,
// until the document decodes or only unknown keys are left (the decoder
// reports those all at once, after decoding the rest). complete says whether
// the returned configuration holds every key that could be decoded, so that
// validating it makes sense.
func decode(name string, data []byte, ix *index) (c *Config, ch *checker, complete bool) {
	ch = newChecker(name, ix, map[string]bool{})
	add := func(line int, key, msg string) {
		ch.state.errs = append(ch.state.errs, &Error{File: name, Line: line, Key: key, Msg: msg})
		if key != "" {
			ch.state.reported[key] = true
		}
	}
	checkCase(ix, add)
	work := bytes.Clone(data)
	excised := make([]bool, len(ix.exprs))

	// Find the unknown keys first, and blank out the expressions that hold
	// them: the decoder would report them too, but takes time in the size
	// of the document for each one.
	for j := range ix.entries {
		if e := &ix.entries[j]; ix.unknown(e) {
			add(ix.line(e.start), e.path, unknownMessage(e))
			if i := ix.exprAt(e.start); i >= 0 && !excised[i] {
				excise(work, ix, i, excised)
			}
		}
	}
	for n := 0; ; n++ {
		c = Default()
		err := decodeStrict(work, c)
		if err == nil {
			return c, ch, true
		}
		var strict *toml.StrictMissingError
		var de *toml.DecodeError
		var off int
		switch {
		case errors.As(err, &strict):
			for i := range strict.Errors {
				line, col := strict.Errors[i].Position()
				if key, msg := unknownKey(ix, ix.offset(line, col)); !ch.state.reported[key] {
					add(line, key, msg)
				}
			}
			return c, ch, true
		case errors.As(err, &de):
			line, col := de.Position()
			off = ix.offset(line, col)
			key, msg := decodeMessage(ix, off, de)
			add(line, key, msg)
		default:
			// Some errors carry no position (those of an UnmarshalText
			// given a TOML integer, float or boolean): find the expression
			// that causes them.
			i := locate(work, ix, err)
			if i < 0 {
				add(0, "", err.Error())
				return c, ch, false
			}
			e := &ix.entries[ix.exprs[i].entry]
			msg := err.Error()
			if k := e.valueKind; k != unstable.String && k != unstable.Array && k != unstable.InlineTable {
				msg += fmt.Sprintf(" (got a TOML %s)", strings.ToLower(k.String()))
			}
			off = e.start
			add(ix.line(off), e.path, msg)
		}
		i := ix.exprAt(off)
		if i < 0 || excised[i] || n+1 >= maxDecodeErrors {
			return c, ch, false
		}
		excise(work, ix, i, excised)
	}
}

// decodeStrict decodes doc into c, rejecting unknown keys. A panic in the
// decoder is returned as an error.
func decodeStrict(doc []byte, c *Config) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("the TOML decoder failed: %v", r)
		}
	}()
	d := toml.NewDecoder(bytes.NewReader(doc))
	d.DisallowUnknownFields()
	return d.Decode(c)
}

// excise blanks out expression i of work (a header with the keys of its
// table), keeping the newlines so that lines keep their numbers.
func excise(work []byte, ix *index, i int, excised []bool) {
	end := ix.exprEnd(i, true)
	for j := ix.exprs[i].start; j < end; j++ {
		if work[j] != '\n' {
			work[j] = ' '
		}
	}
	for j := i; j < len(ix.exprs) && ix.exprs[j].start < end; j++ {
		excised[j] = true
	}
}

// locate returns the index of the expression whose decoding gives err: the
// shortest prefix of the document that fails with the same message ends with
// it. It returns -1 if none is found.
func locate(work []byte, ix *index, err error) int {
	msg := err.Error()
	fails := func(k int) bool { // decoding the first k expressions fails with msg
		e := decodeStrict(work[:ix.exprEnd(k-1, false)], Default())
		return e != nil && e.Error() == msg
	}
	k := 1 + slicesSearch(len(ix.exprs), func(i int) bool { return fails(i + 1) })
	if k > len(ix.exprs) || !fails(k) {
		return -1
	}
	return k - 1
}

// slicesSearch is sort.Search: the smallest i in [0, n) for which f is
// true, or n.
func slicesSearch(n int, f func(int) bool) int {
	lo, hi := 0, n
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		if !f(mid) {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	return lo
}

// unknownKey names the key the decoder found no field for at off.
func unknownKey(ix *index, off int) (key, msg string) {
	e, i := ix.at(off)
	if e == nil {
		return "", "unknown key"
	}
	// For a dotted key (log.colour = 1) the decoder points at its first
	// part; name the whole key, whose entry follows those of its parts.
	for ; e.dotted && i+1 < len(ix.entries); i++ {
		e = &ix.entries[i+1]
	}
	return e.path, unknownMessage(e)
}

// decodeMessage turns a decoder error at off into the key it concerns and
// a message for people.
func decodeMessage(ix *index, off int, de *toml.DecodeError) (key, msg string) {
	msg = strings.TrimPrefix(de.Error(), "toml: ")
	e, _ := ix.at(off)
	if e == nil {
		return strings.Join(de.Key(), "."), msg
	}
	key = e.path
	first := ix.line(ix.entries[ix.byPath[key]].start)
	switch {
	case strings.HasPrefix(msg, "cannot decode TOML "):
		got, _, _ := strings.Cut(strings.TrimPrefix(msg, "cannot decode TOML "), " ")
		if want := describe(typeAt(key)); want != "" {
			msg = fmt.Sprintf("wrong type: got a TOML %s, want %s", got, want)
		}
	case strings.HasSuffix(msg, "is already defined"):
		msg = fmt.Sprintf("duplicate key (first set on line %d)", first)
	case strings.HasSuffix(msg, "already exists"):
		msg = fmt.Sprintf("duplicate table (first defined on line %d)", first)
	case msg == "cannot store an array table in a struct":
		key = parentKey(key)
		msg = fmt.Sprintf("wrong type: got an array of tables ([[%s]]), want a table ([%s])", key, key)
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
// from an encoding).
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
