package config

import (
	"encoding"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"sync"

	"github.com/pelletier/go-toml/v2/unstable"
)

// splitPath splits a key path into its parts: "a.b[2].\"c.d\"" gives
// "a", "b", "[2]", "c.d".
func splitPath(path string) []string {
	var parts []string
	for part, rest, ok := cutPart(path); ok; part, rest, ok = cutPart(rest) {
		parts = append(parts, part)
	}
	return parts
}

// cutPart returns the first part of a key path (as splitPath splits it)
// and the rest of the path after it; ok is false when there is none. It
// allocates only to unquote a quoted key.
func cutPart(path string) (part, rest string, ok bool) {
	path = strings.TrimLeft(path, ".")
	switch {
	case path == "":
		return "", "", false
	case path[0] == '[':
		j := strings.IndexByte(path, ']')
		if j < 0 {
			return path, "", true
		}
		return path[:j+1], path[j+1:], true
	case path[0] == '"':
		j := 1
		for j < len(path) && path[j] != '"' {
			if path[j] == '\\' {
				j++
			}
			j++
		}
		j = min(j+1, len(path))
		s, err := strconv.Unquote(path[:j])
		if err != nil {
			s = path[:j]
		}
		return s, path[j:], true
	}
	j := strings.IndexAny(path, ".[")
	if j < 0 {
		return path, "", true
	}
	return path[:j], path[j:], true
}

// typeAt returns the Go type a key path decodes into, or nil if there is
// no such key in Config. Keys match struct fields as go-toml matches them:
// exactly, or else ignoring case.
func typeAt(path string) reflect.Type { return typeAtCase(path, true) }

// typeAtCase is typeAt; with fold false keys must match exactly.
func typeAtCase(path string, fold bool) reflect.Type {
	t := reflect.TypeFor[Config]()
	for part, rest, ok := cutPart(path); ok; part, rest, ok = cutPart(rest) {
		switch {
		case t.Kind() == reflect.Interface:
			return t // holds anything
		case strings.HasPrefix(part, "["):
			if t.Kind() != reflect.Slice && t.Kind() != reflect.Array {
				return nil
			}
			t = t.Elem()
		case t.Kind() == reflect.Map:
			t = t.Elem()
		case t.Kind() == reflect.Struct:
			f, ok := fieldByKey(t, part, fold)
			if !ok {
				return nil
			}
			t = f.Type
		default:
			return nil
		}
		for t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
	}
	return t
}

// keyField is a field of a struct that a key decodes into, with that key:
// its toml tag, or its name.
type keyField struct {
	key string
	reflect.StructField
}

// fieldByKey finds the field of struct type t that key decodes into, as
// go-toml does: the exact key first, then (with fold) ignoring case. The
// fields of embedded structs without a key count as fields of t; fields
// tagged "-" and unexported fields do not count.
func fieldByKey(t reflect.Type, key string, fold bool) (reflect.StructField, bool) {
	fields := keyFields(t)
	for _, f := range fields {
		if f.key == key {
			return f.StructField, true
		}
	}
	for _, f := range fields {
		if fold && strings.EqualFold(f.key, key) {
			return f.StructField, true
		}
	}
	return reflect.StructField{}, false
}

// fieldsOf caches keyFields by type: it is asked for every level of every
// key's path, several times a key, and listing a struct's fields
// allocates them all (parsing a configuration with every key written out,
// as `tinyscada run` passes it to its roles, took 10 MB without the cache,
// and every role kept most of that heap); it keeps each field's key too,
// which reading from the tag took a third of a field configuration's
// parse (BenchmarkParseRetained).
var fieldsOf sync.Map // reflect.Type → []keyField

// keyFields lists the fields of struct type t that keys decode into. The
// slice is shared: do not modify it.
func keyFields(t reflect.Type) []keyField {
	if f, ok := fieldsOf.Load(t); ok {
		return f.([]keyField)
	}
	f := listKeyFields(t)
	fieldsOf.Store(t, f)
	return f
}

func listKeyFields(t reflect.Type) []keyField {
	var out []keyField
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		ft := f.Type
		if ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		switch {
		case name == "-":
		case f.Anonymous && name == "" && ft.Kind() == reflect.Struct:
			out = append(out, listKeyFields(ft)...)
		case f.IsExported():
			if name == "" {
				name = f.Name
			}
			out = append(out, keyField{name, f})
		}
	}
	return out
}

var textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()

// describe says in words what a value of type t is written as; "" for nil.
func describe(t reflect.Type) string {
	switch {
	case t == nil:
		return ""
	case t == reflect.TypeFor[Duration]():
		return `a duration string such as "500ms", "5s" or "1m"`
	case t == reflect.TypeFor[Size]():
		return `a size such as 4096 or "4KiB"`
	case reflect.PointerTo(t).Implements(textUnmarshaler):
		return "a string"
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Slice, reflect.Array:
		if e := describe(t.Elem()); e != "" {
			return "an array of " + plural(e)
		}
		return "an array"
	case reflect.Struct, reflect.Map:
		return "a table"
	}
	return t.String()
}

// plural turns "a string" into "strings", roughly.
func plural(s string) string {
	switch {
	case strings.HasPrefix(s, "a table"):
		return "tables"
	case strings.HasPrefix(s, "a string"):
		return "strings"
	case strings.HasPrefix(s, "an integer"):
		return "integers"
	}
	return "(" + s + ")"
}

// suggest returns the known key closest to the unknown key path, or "" if
// none is close: "bus.heartbeat_intervall" gives "bus.heartbeat_interval".
func suggest(path string) string {
	parts := splitPath(path)
	if len(parts) == 0 {
		return ""
	}
	parent := parentKey(path)
	t := typeAt(parent)
	if t == nil || t.Kind() != reflect.Struct {
		return ""
	}
	key := parts[len(parts)-1]
	best, bestD := "", max(1, (len(key)+1)/3)+1
	for _, f := range keyFields(t) {
		if d := editDistance(strings.ToLower(key), f.key); d < bestD {
			best, bestD = f.key, d
		}
	}
	if best == "" || best == key {
		return ""
	}
	return joinKey(parent, best)
}

// editDistance is the Levenshtein distance between a and b, in bytes.
func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return len(a) + len(b)
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// problem says what is wrong with entry i as the schema of Config sees it,
// before any value is decoded: a key written with the wrong case, a key or
// table that Config has no field for, a table where Config holds a value or
// an array, a key or table written twice. It returns the key to report and
// the message, "" if nothing is wrong.
//
// go-toml reports unknown keys too, but not all: it takes
// [[poller.device.point]] with no [[poller.device]] before it for a point
// of a new device, or of the last default one.
func (ix *index) problem(i int) (key, msg string) {
	e := &ix.entries[i]
	if e.kind != unstable.KeyValue && e.kind != unstable.Table && e.kind != unstable.ArrayTable {
		return "", "" // an array element: its value is checked with its key
	}
	path, header := e.path, "["+e.path+"]"
	if e.kind == unstable.ArrayTable {
		path = parentKey(path) // "poller.device[2]" is an element of "poller.device"
		header = "[[" + path + "]]"
	}
	t := typeAt(path)
	first, seen := ix.byPath[path]
	if e.kind != unstable.ArrayTable {
		seen = first != i
	}
	switch {
	case t != nil && typeAtCase(path, false) == nil && typeAtCase(parentKey(path), false) != nil:
		// go-toml matches keys to fields ignoring case, but TOML keys are
		// case-sensitive: "Version" is not "version".
		return path, "keys are case-sensitive" + didYouMean(path)
	case t == nil:
		// The nearest key that Config knows holds tables: the key is
		// unknown, unless written in a table that is unknown too. Or it
		// holds a value, that a header makes a table.
		p := parentKey(path)
		for typeAt(p) == nil {
			p = parentKey(p)
		}
		switch {
		case !holdsTable(typeAt(p)) && (e.kind == unstable.KeyValue || e.dotted):
			return "", "" // reported for the dotted part that is a value
		case !holdsTable(typeAt(p)):
			return p, fmt.Sprintf("wrong type: got a table (%s), want %s", header, wantTable(p))
		case e.dotted || e.kind == unstable.KeyValue && len(p) < len(e.table):
			return "", ""
		}
		return e.path, unknownMessage(e)
	case e.dotted && !holdsTable(t):
		return path, "wrong type: got a table (a dotted key), want " + wantTable(path)
	case e.dotted:
	case e.kind == unstable.Table && !holdsTable(t):
		return path, fmt.Sprintf("wrong type: got a table (%s), want %s", header, wantTable(path))
	case e.kind == unstable.ArrayTable && holdsTable(t):
		return path, fmt.Sprintf("wrong type: got an array of tables (%s), want a table ([%s])", header, path)
	case e.kind == unstable.ArrayTable && (t.Kind() != reflect.Slice || !holdsTable(t.Elem())):
		return path, fmt.Sprintf("wrong type: got an array of tables (%s), want %s", header, describe(t))
	case seen && e.kind == unstable.KeyValue:
		return path, fmt.Sprintf("duplicate key (first set on line %d)", ix.line(ix.entries[first].start))
	case seen:
		return path, fmt.Sprintf("duplicate table (first defined on line %d)", ix.line(ix.entries[first].start))
	}
	return "", ""
}

// holdsTable reports whether a value of type t is written as a table.
func holdsTable(t reflect.Type) bool {
	switch t.Kind() {
	case reflect.Map:
		return true
	case reflect.Struct:
		return !reflect.PointerTo(t).Implements(textUnmarshaler) // a Duration is a string
	}
	return false
}

// wantTable says what the key path, written as a table, should be instead.
func wantTable(path string) string {
	t := typeAt(path)
	if t.Kind() == reflect.Slice && holdsTable(t.Elem()) {
		return "an array of tables ([[" + path + "]])"
	}
	return describe(t)
}

// unknownMessage says that e is unknown, and what was perhaps meant.
func unknownMessage(e *entry) string {
	msg := "unknown key"
	if e.kind != unstable.KeyValue || e.valueKind == unstable.InlineTable {
		msg = "unknown table"
	}
	return msg + didYouMean(e.path)
}

// didYouMean suggests the known key closest to the unknown key path, if one
// is close.
func didYouMean(path string) string {
	if s := suggest(path); s != "" {
		return " (did you mean " + s + "?)"
	}
	return ""
}
