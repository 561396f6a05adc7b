package config

import (
	"sort"
	"strconv"
	"strings"

	"github.com/pelletier/go-toml/v2/unstable"
)

// index maps the keys of a TOML document to where they are written. It is
// built once, with go-toml's unstable parser, which gives the byte range of
// every key and key-value.
type index struct {
	data       []byte
	lineStarts []int // byte offset of the start of each line; lineStarts[0] == 0

	// entries are the keys, table headers and array elements of the
	// document, in document order: an entry comes before those it holds.
	entries []entry
	// byPath maps a key path ("broker.listen[1]") to its first entry.
	byPath map[string]int
	// exprs are the top-level expressions (key-values and table headers),
	// in document order.
	exprs []expr

	// err is the parser's error, if the document is not valid TOML; the
	// entries and exprs then stop before it.
	err error
	// table is the path of the table the last expression parsed is in, and
	// lastEnd where that expression ends; both serve to name the key of a
	// syntax error.
	table   string
	lastEnd int
}

// entry is one key path written in the document.
type entry struct {
	path       string
	start, end int           // byte range: the whole key-value, the header's key or the array element
	value      int           // for KeyValue: the offset of its value
	kind       unstable.Kind // KeyValue, Table, ArrayTable, or the kind of an array element
	valueKind  unstable.Kind // for KeyValue: the kind of its value
	dotted     bool          // a Table made by a part of a dotted key
	dropped    bool          // left out of the decoding, for a problem reported
	table      string        // for KeyValue: the path of the table it is written in
	expr       int           // the top-level expression it is in
}

// expr is one top-level expression.
type expr struct {
	// start is the offset of the start of its first line, end where it
	// ends; a header's expression runs until the next header, so that it
	// holds the keys of its table.
	start, end int
	header     bool
	entry      int // its entry: the header or the key-value
}

// newIndex parses data and indexes every key in it. It never fails: a
// syntax error is kept in err and the index covers what came before it.
func newIndex(data []byte) (ix *index) {
	ix = &index{data: data}
	ix.lineStarts = append(ix.lineStarts, 0)
	for i, b := range data {
		if b == '\n' {
			ix.lineStarts = append(ix.lineStarts, i+1)
		}
	}
	// A line mostly holds one key or header: sized for that, the lists
	// and the map do not grow (and leave their old arrays behind) key by
	// key, which was a third of what parsing a field configuration
	// allocated (BenchmarkParseRetained).
	lines := len(ix.lineStarts)
	ix.entries, ix.exprs, ix.byPath = make([]entry, 0, lines), make([]expr, 0, lines), make(map[string]int, lines)
	w := walker{ix: ix, latest: map[string]string{}, count: map[string]int{}}
	var p unstable.Parser
	p.Reset(data)
	for p.NextExpression() {
		w.expression(p.Expression())
	}
	ix.err = p.Error()
	ix.table = w.table
	// A header's table ends where the next header starts.
	end := len(data)
	for i := len(ix.exprs) - 1; i >= 0; i-- {
		if x := &ix.exprs[i]; x.header {
			x.end, end = end, x.start
		}
	}
	return ix
}

// walker carries the state of one pass over the document.
type walker struct {
	ix    *index
	table string // resolved path of the current table ("" at top level)
	// latest maps the path of an array of tables ("poller.device") to the
	// path of its last element ("poller.device[2]"); count to its length.
	latest map[string]string
	count  map[string]int
}

func (w *walker) expression(n *unstable.Node) {
	ix := w.ix
	switch n.Kind {
	case unstable.Table, unstable.ArrayTable:
		parts, start, end := keyParts(n.Key())
		if parts == nil {
			return
		}
		w.table = w.resolve(parts, n.Kind == unstable.ArrayTable)
		ix.exprs = append(ix.exprs, expr{start: ix.lineStartOf(start), header: true, entry: len(ix.entries)})
		ix.add(entry{path: w.table, start: start, end: end, kind: n.Kind})
		ix.lastEnd = end
	case unstable.KeyValue:
		end := int(n.Raw.Offset + n.Raw.Length)
		ix.exprs = append(ix.exprs, expr{start: ix.lineStartOf(int(n.Raw.Offset)), end: end})
		i := w.keyValue(w.table, n)
		if i < 0 {
			ix.exprs = ix.exprs[:len(ix.exprs)-1]
			return
		}
		ix.exprs[len(ix.exprs)-1].entry = i
		ix.lastEnd = end
	}
}

// resolve turns the parts of a table header into a path, indexing arrays of
// tables by their latest element. For an [[array table]] header it appends
// a new element.
func (w *walker) resolve(parts []string, arrayTable bool) string {
	path := ""
	for i, part := range parts {
		path = joinKey(path, quoteKey(part))
		if arrayTable && i == len(parts)-1 {
			n := w.count[path]
			w.count[path] = n + 1
			elem := path + "[" + strconv.Itoa(n) + "]"
			w.latest[path] = elem
			return elem
		}
		if elem, ok := w.latest[path]; ok {
			path = elem
		}
	}
	return path
}

// keyValue indexes a key-value under prefix, and what its value holds. It
// returns the index of the key-value's entry, -1 if it has no key.
func (w *walker) keyValue(prefix string, n *unstable.Node) int {
	path, keyEnd := prefix, 0
	for it := n.Key(); it.Next(); {
		k := it.Node()
		path = joinKey(path, quoteKey(string(k.Data)))
		keyEnd = int(k.Raw.Offset + k.Raw.Length)
		if !it.IsLast() {
			// A dotted key defines the tables it goes through.
			w.ix.add(entry{path: path, start: int(k.Raw.Offset), end: keyEnd, kind: unstable.Table, dotted: true})
		}
	}
	if path == prefix {
		return -1
	}
	// The value follows the key, blanks and the equal sign (the parser
	// sets no range on arrays and inline tables).
	value := keyEnd
	for value < len(w.ix.data) && strings.IndexByte(" \t=", w.ix.data[value]) >= 0 {
		value++
	}
	v := n.Value()
	i := len(w.ix.entries)
	w.ix.add(entry{
		path: path, start: int(n.Raw.Offset), end: int(n.Raw.Offset + n.Raw.Length), value: value,
		kind: unstable.KeyValue, valueKind: v.Kind, table: prefix,
	})
	w.value(path, v)
	return i
}

// value indexes the elements of arrays and the keys of inline tables.
func (w *walker) value(path string, n *unstable.Node) {
	switch n.Kind {
	case unstable.Array:
		i := 0
		for it := n.Children(); it.Next(); {
			c := it.Node()
			if c.Kind == unstable.Comment {
				continue
			}
			elem := path + "[" + strconv.Itoa(i) + "]"
			i++
			if c.Raw.Length > 0 && c.Kind != unstable.InlineTable {
				w.ix.add(entry{path: elem, start: int(c.Raw.Offset), end: int(c.Raw.Offset + c.Raw.Length), kind: c.Kind})
			}
			w.value(elem, c)
		}
	case unstable.InlineTable:
		for it := n.Children(); it.Next(); {
			if c := it.Node(); c.Kind == unstable.KeyValue {
				w.keyValue(path, c)
			}
		}
	}
}

// keyParts returns the parts of a (dotted) key and its byte range; nil
// parts if the key is empty.
func keyParts(it unstable.Iterator) (parts []string, start, end int) {
	for it.Next() {
		k := it.Node()
		if parts == nil {
			start = int(k.Raw.Offset)
		}
		parts = append(parts, string(k.Data))
		end = int(k.Raw.Offset + k.Raw.Length)
	}
	return parts, start, end
}

func (ix *index) add(e entry) {
	if _, ok := ix.byPath[e.path]; !ok {
		ix.byPath[e.path] = len(ix.entries)
	}
	e.expr = len(ix.exprs) - 1
	ix.entries = append(ix.entries, e)
}

// line returns the 1-based line of a byte offset.
func (ix *index) line(offset int) int {
	return sort.Search(len(ix.lineStarts), func(i int) bool { return ix.lineStarts[i] > offset })
}

// lineStartOf returns the offset of the start of the line holding offset.
func (ix *index) lineStartOf(offset int) int {
	return ix.lineStarts[ix.line(offset)-1]
}

// offsetAt returns the byte offset in doc of a 1-based line and column, as
// go-toml's errors give them, clamped to doc.
func offsetAt(doc []byte, line, col int) int {
	off := 0
	for ; line > 1 && off < len(doc); off++ {
		if doc[off] == '\n' {
			line--
		}
	}
	return min(off+max(col, 1)-1, len(doc))
}

// at returns the innermost entry whose range holds offset, or nil: the last
// one in document order, since an entry comes before those it holds.
func (ix *index) at(offset int) *entry {
	for i := len(ix.entries) - 1; i >= 0; i-- {
		if e := &ix.entries[i]; e.start <= offset && offset < e.end {
			return e
		}
	}
	return nil
}

// lineOf returns the line where path, or failing that its nearest written
// ancestor ("broker" for "broker.listen"), is written; 0 if none is.
func (ix *index) lineOf(path string) int {
	if ix == nil {
		return 0
	}
	for path != "" {
		if i, ok := ix.byPath[path]; ok {
			return ix.line(ix.entries[i].start)
		}
		path = parentKey(path)
	}
	return 0
}

// has reports whether path itself is written in the document, and was
// decoded.
func (ix *index) has(path string) bool {
	if ix == nil {
		return false
	}
	i, ok := ix.byPath[path]
	return ok && !ix.entries[i].dropped
}

// joinKey appends a key to a path.
func joinKey(path, key string) string {
	switch {
	case path == "":
		return key
	case key == "":
		return path
	case strings.HasPrefix(key, "["):
		return path + key
	}
	return path + "." + key
}

// parentKey strips the last part of a path: "a.b[2]" → "a.b", "a.b" → "a".
func parentKey(path string) string {
	if strings.HasSuffix(path, "]") {
		if i := strings.LastIndexByte(path, '['); i > 0 {
			return path[:i]
		}
	}
	// Quoted parts may hold dots; find the last dot outside quotes.
	last, quoted := -1, false
	for i := 0; i < len(path); i++ {
		switch c := path[i]; {
		case c == '\\' && quoted:
			i++
		case c == '"':
			quoted = !quoted
		case c == '.' && !quoted:
			last = i
		}
	}
	if last < 0 {
		return ""
	}
	return path[:last]
}

// quoteKey writes a key part as TOML would: bare if it can be, else quoted.
func quoteKey(k string) string {
	if k == "" {
		return `""`
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return strconv.Quote(k)
		}
	}
	return k
}

// failedKey names the key of the expression that failed to parse at off:
// the first one after the last expression parsed. It returns "" when that
// expression does not start with something that looks like a key.
func (ix *index) failedKey(off int) string {
	start := 0
	if len(ix.exprs) > 0 {
		if l := ix.line(ix.lastEnd); l < len(ix.lineStarts) {
			start = ix.lineStarts[l]
		} else {
			start = len(ix.data)
		}
	}
	// Skip blank and comment lines.
	var text string
	for start < len(ix.data) {
		end := len(ix.data)
		if l := ix.line(start); l < len(ix.lineStarts) {
			end = ix.lineStarts[l]
		}
		text = strings.TrimLeft(string(ix.data[start:end]), " \t")
		if t := strings.TrimSpace(text); t != "" && t[0] != '#' {
			break
		}
		start, text = end, ""
	}
	if text == "" || off < start {
		return ""
	}
	prefix := ix.table
	if text[0] == '[' {
		text, prefix = strings.TrimLeft(text, "[ \t"), ""
		if i := strings.IndexByte(text, ']'); i >= 0 {
			text = text[:i]
		} else {
			text = strings.TrimSpace(text)
		}
	} else if i := strings.IndexByte(text, '='); i >= 0 {
		text = text[:i]
	} else {
		return ""
	}
	parts := strings.Split(text, ".")
	for i, p := range parts {
		p = strings.TrimSpace(p)
		if p == "" || strings.Trim(p, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-") != "" {
			return ""
		}
		parts[i] = p
	}
	return joinKey(prefix, strings.Join(parts, "."))
}
