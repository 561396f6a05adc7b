package config

import (
	"reflect"
	"testing"
)

// splitPath (and typeAt's walk, which cuts the same parts without
// building the list) splits at dots and before indexes, keeps quoted parts
// whole, and takes what it cannot parse as it stands.
func TestSplitPath(t *testing.T) {
	for _, c := range []struct {
		path string
		want []string
	}{
		{``, nil},
		{`version`, []string{"version"}},
		{`poller.device[12].point[3].name`, []string{"poller", "device", "[12]", "point", "[3]", "name"}},
		{`a.b[2]."c.d"`, []string{"a", "b", "[2]", "c.d"}},
		{`"x\"y".z`, []string{`x"y`, "z"}},
		{`a..b`, []string{"a", "b"}},
		{`.a`, []string{"a"}},
		{`a[1`, []string{"a", "[1"}},
		{`a."unterminated`, []string{"a", `"unterminated`}},
		{`a.b"c`, []string{"a", `b"c`}},
	} {
		if got := splitPath(c.path); !reflect.DeepEqual(got, c.want) {
			t.Errorf("splitPath(%q) = %q, want %q", c.path, got, c.want)
		}
	}
}

// typeAt finds the field a key path decodes into, through tables and
// arrays of tables, with go-toml's case folding, and nil for a path that
// Config has no field for.
func TestTypeAt(t *testing.T) {
	for _, c := range []struct {
		path string
		fold bool
		want reflect.Type
	}{
		{"version", false, reflect.TypeFor[int]()},
		{"poller.device[3].point[0]", false, reflect.TypeFor[PollerPoint]()},
		{"poller.device[3].point[0].address", false, reflect.TypeFor[int]()},
		{"Poller.Device[3]", true, reflect.TypeFor[PollerDevice]()},
		{"Poller.Device[3]", false, nil},
		{"poller.nosuch", true, nil},
		{"version[0]", true, nil},
	} {
		if got := typeAtCase(c.path, c.fold); got != c.want {
			t.Errorf("typeAtCase(%q, %v) = %v, want %v", c.path, c.fold, got, c.want)
		}
	}
}
