package config

import (
	"errors"
	"strconv"
	"strings"
)

// Error is one problem in a configuration: a syntax error, an unknown key, a
// value of the wrong type or a value that fails validation. Load and Parse
// return one *Error, or several joined with errors.Join; find them with
// errors.As, or walk them with Errors.
type Error struct {
	// File is the name of the file, as given to Load or Parse; "" for the
	// built-in defaults.
	File string
	// Line is the 1-based line of the offending key, or 0 when the key is
	// not written in the file (a default value failed validation).
	Line int
	// Key is the path of the offending key, as in "bus.heartbeat_interval",
	// "broker.listen[1]" or "poller.device[2].port"; "" when the problem
	// (a syntax error outside any key) has none.
	Key string
	// Msg says what is wrong.
	Msg string
}

// Error formats the problem as "FILE:LINE: KEY: MSG", leaving out LINE when
// it is 0 and KEY when it is empty. The built-in defaults are named
// "(defaults)".
func (e *Error) Error() string {
	var b strings.Builder
	if e.File == "" {
		b.WriteString("(defaults)")
	} else {
		b.WriteString(e.File)
	}
	if e.Line > 0 {
		b.WriteString(":")
		b.WriteString(strconv.Itoa(e.Line))
	}
	b.WriteString(": ")
	if e.Key != "" {
		b.WriteString(e.Key)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Errors returns every *Error in err, however deeply joined or wrapped, in
// order; nil if there is none.
func Errors(err error) []*Error {
	var out []*Error
	var walk func(error)
	walk = func(err error) {
		switch e := err.(type) {
		case nil:
		case *Error:
			out = append(out, e)
		case interface{ Unwrap() []error }:
			for _, x := range e.Unwrap() {
				walk(x)
			}
		default:
			walk(errors.Unwrap(err))
		}
	}
	walk(err)
	return out
}
