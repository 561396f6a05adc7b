package config

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
)

// FuzzParse checks that Parse never panics, that every error it returns is
// made of *Error values with a sensible line, and that whatever it accepts
// survives Encode and Parse unchanged.
func FuzzParse(f *testing.F) {
	for _, tc := range badCases {
		f.Add([]byte(tc.doc))
	}
	f.Add([]byte(fullExample))
	f.Add([]byte("version = 1\n"))
	f.Add([]byte(doc(
		"version = 1",
		"[[poller.device]]",
		"port = 1",
		"x.y = { a = [1, { b = 2 }] }",
		"[poller.device.extra]",
		`"quoted.key" = 1`,
	)))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse("fuzz.toml", data)
		if err != nil {
			if c != nil {
				t.Fatalf("a config with the error %v", err)
			}
			checkErrorTree(t, err, bytes.Count(data, []byte("\n"))+1)
			// Parse finds unknown keys itself: it must not find one where
			// the decoder finds every key a field.
			if decodeStrict(data, Default()) == nil {
				for _, e := range Errors(err) {
					if strings.HasPrefix(e.Msg, "unknown key") || strings.HasPrefix(e.Msg, "unknown table") {
						t.Fatalf("%v, but the decoder takes the document", e)
					}
				}
			}
			return
		}
		enc, err := c.Encode()
		if err != nil {
			t.Fatalf("Encode of an accepted config: %v", err)
		}
		back, err := Parse("encoded.toml", enc)
		if err != nil {
			t.Fatalf("the encoding of an accepted config is refused: %v\n%s", err, enc)
		}
		if !reflect.DeepEqual(back, c) {
			t.Fatalf("round trip gives\n%+v\nwant\n%+v", back, c)
		}
	})
}

// checkErrorTree fails unless err is an *Error or joins only *Error values,
// each with a line from 0 to lines.
func checkErrorTree(t *testing.T, err error, lines int) {
	t.Helper()
	switch e := err.(type) {
	case *Error:
		if e.Line < 0 || e.Line > lines {
			t.Fatalf("error %q: line %d is not in 0..%d", e, e.Line, lines)
		}
		if e.Msg == "" {
			t.Fatalf("error %+v has no message", e)
		}
	case interface{ Unwrap() []error }:
		errs := e.Unwrap()
		if len(errs) == 0 {
			t.Fatalf("empty joined error %v", err)
		}
		for _, x := range errs {
			checkErrorTree(t, x, lines)
		}
	default:
		t.Fatalf("error %v is a %T, not a *config.Error", err, err)
	}
}
