package simulate

import (
	"os"
	"reflect"
	"strings"
	"testing"
)

// mapKeys returns the TOML keys of the map file format, by table.
func mapKeys() map[string][]string {
	keys := map[string][]string{}
	for table, v := range map[string]any{"": fileMap{}, "unit": fileUnit{}, "unit.fault": fileFault{}, "unit.register": fileRegister{}} {
		t := reflect.TypeOf(v)
		for i := 0; i < t.NumField(); i++ {
			name, _, _ := strings.Cut(t.Field(i).Tag.Get("toml"), ",")
			if name == "unit" || name == "fault" || name == "register" {
				continue // the tables themselves
			}
			keys[table] = append(keys[table], name)
		}
	}
	return keys
}

// The format of a register map is documented in `tinyscada simulate -h`
// (MapFormat) and in docs/simulate.md, key by key, with every fault kind
// and generator: a key added to the decoder and not documented fails here.
func TestMapFormatNamesEveryKey(t *testing.T) {
	doc, err := os.ReadFile("../../docs/simulate.md")
	if err != nil {
		t.Fatal(err)
	}
	for table, keys := range mapKeys() {
		for _, k := range keys {
			if !strings.Contains(MapFormat, "\n  "+k+" = ") {
				t.Errorf("MapFormat does not show key %q of [%s]", k, table)
			}
			if !strings.Contains(string(doc), "`"+k+"`") {
				t.Errorf("docs/simulate.md does not name key %q of [%s]", k, table)
			}
		}
	}
	for _, name := range faultNames {
		if !strings.Contains(MapFormat, name) || !strings.Contains(string(doc), "`"+name+"`") {
			t.Errorf("fault kind %q is not documented in MapFormat and docs/simulate.md", name)
		}
	}
	for _, gen := range []string{"constant", "counter", "sine", "square"} {
		if !strings.Contains(MapFormat, gen) || !strings.Contains(string(doc), "| `"+gen+"` |") {
			t.Errorf("generator %q is not documented in MapFormat and docs/simulate.md", gen)
		}
	}
	for _, want := range []string{"[[unit]]", "[unit.fault]", "[[unit.register]]", "strict"} {
		if !strings.Contains(MapFormat, want) {
			t.Errorf("MapFormat lacks %q", want)
		}
	}
}
